"""A bundle's config (``BundleConfig``): which kind of model each section holds, and how a section
is read from and written to the bundle's JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.config.imported import BartConfig, BartTextConfig, VQGANConfig, YttmTextConfig
from model.config.ours import (
    DVAE_TRAINING,
    DVAEConfig,
    RerankerConfig,
    TextConfig,
    TransformerConfig,
    VQConfig,
)
from model.config.ranges import config_from_dict


@dataclass
class BundleConfig:
    """Everything needed to rebuild a bundle's models.

    Each of vae, text and transformer is one of several kinds (``VAE_KINDS``, ``TEXT_KINDS``,
    ``TRANSFORMER_KINDS``): the config's class, stored as the section's ``kind``. The product's
    own kinds (a dVAE, our BPE, our transformer) are written without one, so every bundle made
    before kinds existed reads, and is written, byte for byte as it was.
    """

    vae: DVAEConfig | VQConfig | VQGANConfig = field(default_factory=DVAEConfig)
    text: TextConfig | BartTextConfig | YttmTextConfig = field(default_factory=TextConfig)
    transformer: TransformerConfig | BartConfig = field(default_factory=TransformerConfig)
    reranker: RerankerConfig | None = None  # scores captions in our BPE's ids: ours only

    @property
    def vae_kind(self) -> str:
        return vae_kind(self.vae)

    @property
    def text_kind(self) -> str:
        return _kind_of(self.text, TEXT_KINDS, "caption tokenizer")

    @property
    def transformer_kind(self) -> str:
        return _kind_of(self.transformer, TRANSFORMER_KINDS, "transformer")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for section in ("vae", "text", "transformer"):
            for name, default in LATER_FIELDS.get(type(getattr(self, section)), {}).items():
                if data[section][name] == default:
                    del data[section][name]
        for section, kind, default in (
            ("vae", self.vae_kind, DEFAULT_VAE_KIND),
            ("text", self.text_kind, DEFAULT_TEXT_KIND),
            ("transformer", self.transformer_kind, DEFAULT_TRANSFORMER_KIND),
        ):
            if kind != default:
                data[section] = {"kind": kind, **data[section]}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleConfig:
        """A config read from a file: every section a JSON object, its ``kind`` (absent: the
        product's own) one of the known kinds, every field of the right type and within
        ``FIELD_RANGES`` (ValueError naming ``section.field``, its value and what was expected).
        Only the reranker may be absent (None)."""
        reranker = data.get("reranker")
        return cls(
            vae=vae_config_from_dict(data["vae"]),
            text=_config_of_kind(data["text"], "text", TEXT_KINDS, DEFAULT_TEXT_KIND),
            transformer=_config_of_kind(
                data["transformer"], "transformer", TRANSFORMER_KINDS, DEFAULT_TRANSFORMER_KIND
            ),
            reranker=None
            if reranker is None
            else config_from_dict(RerankerConfig, reranker, "reranker"),
        )


# The kinds a bundle's sections can hold, by the name its ``kind`` key stores. A bundle written
# before a section had kinds has no key there: it is the first kind listed (the product's own).
VAE_KINDS: dict[str, type] = {"dvae": DVAEConfig, "vq": VQConfig, "vqgan": VQGANConfig}
DEFAULT_VAE_KIND = "dvae"
TEXT_KINDS: dict[str, type] = {"bpe": TextConfig, "bart": BartTextConfig, "yttm": YttmTextConfig}
DEFAULT_TEXT_KIND = "bpe"
TRANSFORMER_KINDS: dict[str, type] = {"dalle": TransformerConfig, "bart": BartConfig}
DEFAULT_TRANSFORMER_KIND = "dalle"
# Fields added after bundles of their kind shipped, with the value every earlier bundle has: a
# bundle writes one only where it differs, so earlier bundles are written byte for byte as before.
LATER_FIELDS: dict[type, dict[str, Any]] = {
    # the dVAE's and the caption tokenizer's training-only fields, once TrainConfig's
    DVAEConfig: {name: getattr(DVAEConfig(), name) for name in DVAE_TRAINING},
    TextConfig: {"caption_dropout": TextConfig().caption_dropout},
    VQConfig: {"pool": 1},
    TransformerConfig: {
        "layout": "studio",
        "sandwich_norm": False,
        "head_norm": False,
        "head_bias": False,
    },
    VQGANConfig: {"quantize": "vq"},
}


def _kind_of(config: Any, kinds: dict[str, type], what: str) -> str:
    for name, kind in kinds.items():
        if type(config) is kind:
            return name
    raise TypeError(f"not a {what} config: {type(config).__name__}")


def vae_kind(config: DVAEConfig | VQConfig | VQGANConfig) -> str:
    """``"dvae"``, ``"vq"`` or ``"vqgan"``: the kind of image tokenizer ``config`` builds."""
    return _kind_of(config, VAE_KINDS, "image tokenizer")


def _config_of_kind(values: Any, section: str, kinds: dict[str, type], default: str):
    """A section's config from a file: ``values["kind"]`` (absent: ``default``) picks the class,
    the other fields are checked by ``config_from_dict``."""
    if not isinstance(values, dict):
        raise ValueError(f"{section} must be a JSON object, got {values!r:.40}")
    values = dict(values)
    kind = values.pop("kind", default)
    if type(kind) is not str or kind not in kinds:
        raise ValueError(f"{section}.kind is {kind!r:.40}; expected one of {sorted(kinds)}")
    return config_from_dict(kinds[kind], values, section)


def vae_config_from_dict(values: Any, section: str = "vae") -> DVAEConfig | VQConfig | VQGANConfig:
    """The image tokenizer's config from a file: ``values["kind"]`` (absent: a dVAE) picks the
    class, the other fields are checked by ``config_from_dict``."""
    return _config_of_kind(values, section, VAE_KINDS, DEFAULT_VAE_KIND)
