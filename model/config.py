"""Configuration dataclasses for every stage, in dependency order.

A bundle stores these as JSON (``asdict``) and rebuilds its models from them alone, as nanoGPT's
checkpoints do with ``GPTConfig(**checkpoint["model_args"])``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

# Bounds for every config read from a file (a bundle, a dVAE), checked before a model is built
# from it: wide enough for the DALL·E family that importers bring (DALL·E Mega: dim 2048, 24 + 24
# layers, 50264 text and 16384 image codes, text_len 64; ruDALL-E XL: dim 2560, depth 32,
# text_len 128, a 32x32 grid of 8192 codes at 256 px), narrow enough that a file cannot make
# the loader build a million layers or a 20000-wide model before its tensors are checked.
MAX_DIM = 16384
MAX_DEPTH = 256
MAX_VOCAB = 2**20
MAX_TEXT_LEN = 4096
MAX_GRID = 128
MAX_IMAGE_SIZE = 4096
MAX_GROUPS = 8  # dVAE downsampling 2**7 = 128
MAX_BLOCKS = 64  # dVAE blocks per group
MAX_CHANNELS = 4
MAX_PATCH = 64  # VQ PixelUnshuffle factor: 3 * 64**2 = 12288 channels into the first conv


@dataclass
class DVAEConfig:
    """Discrete VAE in the layout of OpenAI's released DALL·E dVAE (``dall_e/encoder.py``)."""

    image_size: int = 128  # S: the model's own resolution; the grid is S / 2**(n_groups - 1)
    channels: int = 3
    n_groups: int = 4  # downsampling factor 2**(n_groups-1) = 8, as in the paper
    n_hid: int = 64  # width of group 1; group g is 2**(g-1) * n_hid wide (paper: 256)
    n_blk_per_group: int = 1  # paper: 2; one keeps the CPU default small
    vocab_size: int = 1024  # K codes (paper: 8192; a 16x16 grid of simple scenes needs far fewer)
    n_init: int = 128  # decoder's first 1x1 conv width, as released
    logit_laplace_eps: float = 0.1  # pixels are mapped into (eps, 1 - eps)
    # the decoder's own width and depth (0 = same as the encoder's): a decoder retrained on a
    # frozen encoder's codes (`train vae --decoder-only`) can be bigger without changing a token
    dec_n_hid: int = 0
    dec_n_blk_per_group: int = 0

    @property
    def decoder_n_hid(self) -> int:
        return self.dec_n_hid or self.n_hid

    @property
    def decoder_blocks(self) -> int:
        return self.dec_n_blk_per_group or self.n_blk_per_group

    def encoder_config(self) -> DVAEConfig:
        """This config with the decoder-only fields cleared: equal for dVAEs whose encoders (and
        so tokens) can be the same."""
        return dataclasses.replace(self, dec_n_hid=0, dec_n_blk_per_group=0)

    @property
    def factor(self) -> int:
        return 2 ** (self.n_groups - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.factor


@dataclass
class VQConfig:
    """VQ-VAE tokenizer in the layout of taming-transformers' VQGAN (``model/vq.py``).

    The defaults are the tokenizer study's best recipe for the 64 px scenes (issue 17, "psw64e"):
    31.4 dB and twice the dVAE's scenes ceiling at equal images seen.
    """

    image_size: int = 64  # S
    channels: int = 3
    patch: int = 4  # PixelUnshuffle factor: a 4x4 pixel patch per cell, so a 16x16 grid at 64 px
    width: int = 64  # every convolution's width; all run at grid resolution (w96 was slower)
    res_blocks: int = 2  # residual blocks in the encoder and again in the decoder
    z_channels: int = 32  # encoder output / decoder input (taming's z_channels)
    embed_dim: int = 32  # code vector dimension
    vocab_size: int = 512  # K codes, as the shipped dVAE
    # training only (the weights do not depend on them; a resumed run needs the same values)
    decay: float = 0.99  # EMA of the codebook; 0.99 follows the encoder within ~100 steps
    commitment: float = 0.25  # weight of |z - sg(e)|^2 (VQ-VAE paper's beta)
    edge_weight: float = 4.0  # pixel loss weight near colour edges (study: the largest gain)
    restart_every: int = 25  # steps between dead-code restarts at the worst-reconstructed cells

    def encoder_config(self) -> VQConfig:
        """This config with the training-only fields at their defaults: equal for VQ tokenizers
        whose tokens can be the same (as ``DVAEConfig.encoder_config``)."""
        defaults = VQConfig()
        training = ("decay", "commitment", "edge_weight", "restart_every")
        return dataclasses.replace(self, **{name: getattr(defaults, name) for name in training})

    @property
    def factor(self) -> int:
        return self.patch

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


@dataclass
class TextConfig:
    """BPE tokenizer settings; the vocabulary itself lives in the tokenizer JSON."""

    vocab_size: int = 1024  # BPE merges target, specials included (paper: 16384)
    text_len: int = 32  # caption length in tokens, padded per position (paper: 256)
    bpe_dropout: float = 0.1  # applied only while training, as in the paper


@dataclass
class TransformerConfig:
    """Decoder-only transformer over ``[text ; start-of-image ; image]``."""

    text_vocab: int = 1024  # BPE ids; the per-position padding ids follow them
    text_len: int = 32
    image_vocab: int = 1024  # equals the dVAE's vocab_size
    grid: int = 16  # image tokens form a grid x grid raster
    dim: int = 256
    depth: int = 8
    heads: int = 8
    conv_kernel: int = (
        7  # paper: 11 on a 32x32 grid; conv_kernel_for(16) scales it and keeps it odd
    )
    dropout: float = 0.0
    text_loss_weight: float = 1 / 8  # paper: 1/8 text, 7/8 image

    @property
    def image_len(self) -> int:
        return self.grid * self.grid

    @property
    def seq_len(self) -> int:
        # text positions, then one slot per image cell; slot 0 holds start-of-image and slot s
        # holds cell s - 1, so the output at slot s predicts cell s.
        return self.text_len + self.image_len

    @property
    def text_vocab_padded(self) -> int:
        return self.text_vocab + self.text_len


def conv_kernel_for(grid: int) -> int:
    """The paper's 11x11 window on a 32x32 grid, scaled to ``grid`` and kept odd (at least 3)."""
    k = max(3, round(11 * grid / 32))
    return k if k % 2 == 1 else k + 1


@dataclass
class RerankerConfig:
    """Small contrastive image-caption scorer (a CLIP stand-in trained on our data)."""

    text_vocab: int = 1024  # the bundle tokenizer's padded vocabulary (BPE ids + padding ids)
    text_len: int = 32
    image_size: int = 128  # scores images at the bundle's resolution
    dim: int = 128  # shared embedding width
    text_layers: int = 2
    heads: int = 4
    image_width: int = 32  # channels of the first conv stage; doubled at each downsampling


# Sampling options' bounds: logits divided by MIN_TEMPERATURE stay far from fp32's overflow; a
# guidance scale beyond MAX_GUIDANCE only saturates (DALL·E Mega samples at 10-16); a seed is
# what torch.Generator.manual_seed takes.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0
MAX_GUIDANCE = 100.0
MAX_SEED = 2**64 - 1


@dataclass
class SamplingOptions:
    """How to sample a completion; every field is exposed in the CLI and the studio."""

    n: int = 1  # candidates, sampled in one batch
    temperature: float = 1.0  # the paper samples at 1
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    guidance: float = 1.0  # classifier-free guidance scale; 1 = conditional only
    seed: int | None = None  # None = fresh randomness

    @staticmethod
    def add_arguments(parser, skip: tuple[str, ...] = ()) -> None:
        """The CLI flags for every field (``--n --seed --temperature --top-k --top-p
        --guidance``), their defaults this class's. ``skip`` leaves out the flags of those
        fields (``dalle eval`` has its own ``--samples`` and a ``--seed`` for its scenes)."""
        if "n" not in skip:
            parser.add_argument("--n", type=int, default=1, help="candidates, sampled in one batch")
        if "seed" not in skip:
            parser.add_argument(
                "--seed", type=int, default=None, help="fixed seed (default: random)"
            )
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--top-k", type=int, default=0, help="0 = off")
        parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
        parser.add_argument(
            "--guidance", type=float, default=1.0, help="classifier-free guidance scale"
        )

    @classmethod
    def from_args(cls, args, *, validate: bool = True, **changes: Any) -> SamplingOptions:
        """The options ``add_arguments``' flags parsed into ``args`` (``changes`` override, and
        stand for skipped flags), validated (ValueError naming the field) unless ``validate`` is
        False: a holder that checks its own fields first validates them later."""
        values = {
            f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in changes
        }
        options = cls(**{**values, **changes})
        if validate:
            options.validate()
        return options

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (a project's history entry, a bundle card, a server reply)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> SamplingOptions:
        """Options read from a file: unknown keys refused, each field's type and range checked
        (ValueError naming the field)."""
        if not isinstance(values, dict):
            raise ValueError(f"sampling options must be a JSON object, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling option(s): {', '.join(map(str, unknown))}")
        types = {"n": int, "top_k": int, "temperature": float, "top_p": float, "guidance": float}
        for name, kind in types.items():
            value = values.get(name, getattr(cls, name))
            ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
            if isinstance(value, bool) or not ok:
                raise ValueError(f"sampling option {name} must be a number, got {value!r}")
        seed = values.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"sampling option seed must be an integer or null, got {seed!r}")
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        if self.n <= 0:
            raise ValueError(f"number of candidates must be at least 1, got {self.n}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:  # also refuses NaN
            raise ValueError(
                f"temperature must be from {MIN_TEMPERATURE} to {MAX_TEMPERATURE}, "
                f"got {self.temperature}"
            )
        if self.top_k < 0:
            raise ValueError(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(
                f"guidance scale must be from 0 to {MAX_GUIDANCE}, got {self.guidance}"
            )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be from 0 to 2**64 - 1, got {self.seed}")


@dataclass
class BundleConfig:
    """Everything needed to rebuild a bundle's models."""

    # the image tokenizer; its kind is the config's class, stored as vae.kind (see VAE_KINDS)
    vae: DVAEConfig | VQConfig = field(default_factory=DVAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    reranker: RerankerConfig | None = None

    @property
    def vae_kind(self) -> str:
        return vae_kind(self.vae)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.vae_kind != DEFAULT_VAE_KIND:
            # a dVAE's section stays as it always was, so its bundles are written byte for byte
            # as before this key existed
            data["vae"] = {"kind": self.vae_kind, **data["vae"]}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleConfig:
        """A config read from a file: every section a JSON object, every field of the right type
        and within ``FIELD_RANGES`` (ValueError naming ``section.field``, its value and what was
        expected). Only the reranker may be absent (None)."""
        reranker = data.get("reranker")
        return cls(
            vae=vae_config_from_dict(data["vae"]),
            text=config_from_dict(TextConfig, data["text"], "text"),
            transformer=config_from_dict(TransformerConfig, data["transformer"], "transformer"),
            reranker=None
            if reranker is None
            else config_from_dict(RerankerConfig, reranker, "reranker"),
        )


# The image tokenizer kinds a bundle can carry, by the name its config's vae.kind holds. A bundle
# written before VQ tokenizers has no vae.kind: it is a dVAE.
VAE_KINDS: dict[str, type] = {"dvae": DVAEConfig, "vq": VQConfig}
DEFAULT_VAE_KIND = "dvae"


def vae_kind(config: DVAEConfig | VQConfig) -> str:
    """``"dvae"`` or ``"vq"``: the kind of image tokenizer ``config`` builds."""
    for name, kind in VAE_KINDS.items():
        if type(config) is kind:
            return name
    raise TypeError(f"not an image tokenizer config: {type(config).__name__}")


def vae_config_from_dict(values: Any, section: str = "vae") -> DVAEConfig | VQConfig:
    """The image tokenizer's config from a file: ``values["kind"]`` (absent: a dVAE) picks the
    class, the other fields are checked by ``config_from_dict``."""
    if not isinstance(values, dict):
        raise ValueError(f"{section} must be a JSON object, got {values!r:.40}")
    values = dict(values)
    kind = values.pop("kind", DEFAULT_VAE_KIND)
    if type(kind) is not str or kind not in VAE_KINDS:
        raise ValueError(f"{section}.kind is {kind!r:.40}; expected one of {sorted(VAE_KINDS)}")
    return config_from_dict(VAE_KINDS[kind], values, section)


# (lowest, highest) of every field a file may set; ints must be JSON integers, floats numbers
FIELD_RANGES: dict[type, dict[str, tuple[float, float]]] = {
    DVAEConfig: {
        "image_size": (1, MAX_IMAGE_SIZE),
        "channels": (1, MAX_CHANNELS),
        "n_groups": (1, MAX_GROUPS),
        "n_hid": (1, MAX_DIM),
        "n_blk_per_group": (1, MAX_BLOCKS),
        "vocab_size": (2, MAX_VOCAB),
        "n_init": (1, MAX_DIM),
        "logit_laplace_eps": (0.0, 0.5),
        "dec_n_hid": (0, MAX_DIM),
        "dec_n_blk_per_group": (0, MAX_BLOCKS),
    },
    VQConfig: {
        "image_size": (1, MAX_IMAGE_SIZE),
        "channels": (1, MAX_CHANNELS),
        "patch": (1, MAX_PATCH),
        "width": (1, MAX_DIM),
        "res_blocks": (0, MAX_BLOCKS),
        "z_channels": (1, MAX_DIM),
        "embed_dim": (1, MAX_DIM),
        "vocab_size": (2, MAX_VOCAB),
        "decay": (0.0, 0.9999),
        "commitment": (0.0, 100.0),
        "edge_weight": (0.0, 100.0),
        "restart_every": (1, 2**31 - 1),
    },
    TextConfig: {
        "vocab_size": (1, MAX_VOCAB),
        "text_len": (1, MAX_TEXT_LEN),
        "bpe_dropout": (0.0, 1.0),
    },
    TransformerConfig: {
        "text_vocab": (1, MAX_VOCAB),
        "text_len": (1, MAX_TEXT_LEN),
        "image_vocab": (2, MAX_VOCAB),
        "grid": (1, MAX_GRID),
        "dim": (1, MAX_DIM),
        "depth": (1, MAX_DEPTH),
        "heads": (1, MAX_DIM),
        "conv_kernel": (1, 2 * MAX_GRID + 1),
        "dropout": (0.0, 1.0),
        "text_loss_weight": (0.0, 1.0),
    },
    RerankerConfig: {
        "text_vocab": (1, MAX_VOCAB + MAX_TEXT_LEN),  # BPE ids and the padding ids
        "text_len": (1, MAX_TEXT_LEN),
        "image_size": (8, MAX_IMAGE_SIZE),
        "dim": (1, MAX_DIM),
        "text_layers": (1, MAX_DEPTH),
        "heads": (1, MAX_DIM),
        "image_width": (1, MAX_DIM),
    },
}


def config_from_dict(kind: type, values: Any, section: str):
    """``kind(**values)`` for values read from a file, each checked against ``FIELD_RANGES``.

    Raises ValueError naming ``section.field``, the value and what was expected; missing fields
    take their defaults.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{section} must be a JSON object, got {values!r:.40}")
    ranges = FIELD_RANGES[kind]
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    for name, value in values.items():
        low, high = ranges[name]
        where = f"{section}.{name} is {value!r:.40}"
        if fields[name].type == "int":
            if type(value) is not int:  # not a bool, a float or a string
                raise ValueError(f"{where}; expected an integer from {low} to {high}")
        elif type(value) not in (int, float) or not math.isfinite(value):
            raise ValueError(f"{where}; expected a number from {low} to {high}")
        if value < low:
            raise ValueError(f"{where}; expected at least {low}")
        if value > high:
            raise ValueError(f"{where}; expected at most {high}")
    config = kind(**values)
    heads = getattr(config, "heads", None)
    if heads is not None and config.dim % heads:
        raise ValueError(
            f"{section}.heads is {heads}; expected a number that divides dim {config.dim}"
        )
    return config


# -- presets and --set -----------------------------------------------------------------------------

# Model sizes for `dalle train --preset`: each stage's config fields, and the TrainConfig fields
# the preset changes (model.train.TrainConfig; its own defaults are the rest).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # a few-minute CPU run for tests and smoke checks: 32x32 images, a 4x4 grid
    "tiny": {
        "vae": dict(
            image_size=32, n_groups=3, n_hid=16, n_blk_per_group=1, vocab_size=64, n_init=32
        ),
        "vq": dict(image_size=32, width=16, res_blocks=1, z_channels=8, embed_dim=8, vocab_size=64),
        "text": dict(vocab_size=300, text_len=16),
        "transformer": dict(dim=64, depth=4, heads=4, conv_kernel=3),
        "train": dict(steps=300, batch_size=16, lr=2e-3, warmup=20, checkpoint_every=100, ema=0.99),
    },
    # 64x64 images and an 8x8 grid: trains on a CPU in well under an hour
    "small": {
        "vae": dict(image_size=64, n_groups=4, n_hid=32, n_blk_per_group=1, vocab_size=512),
        "vq": dict(image_size=64, patch=8, width=64, res_blocks=2, vocab_size=512),
        "text": dict(vocab_size=512, text_len=24),
        "transformer": dict(dim=192, depth=6, heads=6, conv_kernel=5),
        "train": dict(steps=4000, batch_size=32, lr=1e-3, warmup=100),
    },
    # the embedded model's recipe (resources/models/MODEL_CARD.md): 64x64 images, a 16x16 grid
    "default": {
        "vae": dict(image_size=64, n_groups=3, n_hid=32, n_blk_per_group=1, vocab_size=512),
        # the tokenizer study's best recipe (issue 17, "psw64e"): 64 px, a 16x16 grid, K = 512
        "vq": dict(image_size=64, patch=4, width=64, res_blocks=2, vocab_size=512),
        "text": dict(vocab_size=512, text_len=32),
        "transformer": dict(dim=192, depth=6, heads=6, conv_kernel=5),
        "train": dict(kl_warmup=0.5, code_usage=1.0),
    },
}

# train vq's defaults under every preset's own train values (the study's: Adam at 2e-3 with 100
# warm-up steps, then cosine; its batch of 32 is TrainConfig's)
VQ_TRAIN: dict[str, Any] = dict(lr=2e-3, warmup=100)

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def preset(name: str) -> dict[str, dict[str, Any]]:
    """The preset called ``name``, as a fresh copy (changing it changes no other run's)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return {stage: dict(values) for stage, values in PRESETS[name].items()}


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items as {KEY: VALUE}, both stripped; the values still text."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def sets_under(sets: dict[str, str], prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """``sets`` split into those whose key starts with ``prefix`` (``"train."``, the prefix cut
    off) and the rest."""
    inside = {k[len(prefix) :]: v for k, v in sets.items() if k.startswith(prefix)}
    rest = {k: v for k, v in sets.items() if not k.startswith(prefix)}
    return inside, rest


def set_values(kind: type, sets: dict[str, str], prefix: str = "") -> dict[str, Any]:
    """``--set`` texts for fields of the dataclass ``kind``, each parsed as its field's type:
    bool (true/false, 1/0, yes/no), int, float, str, or a tuple of those ("0.9,0.96").

    Raises one-line ValueErrors naming the key as typed (``prefix`` + field): an unknown field
    (listing the known ones), or a value its type cannot take.
    """
    types = typing.get_type_hints(kind)
    names = {f.name for f in dataclasses.fields(kind)}
    values = {}
    for key, text in sets.items():
        if key not in names:
            raise ValueError(
                f"--set {prefix}{key}: unknown {kind.__name__} field {key!r}; "
                f"known: {sorted(names)}"
            )
        values[key] = _parse_value(types[key], text, f"{prefix}{key}")
    return values


def apply_sets(config: Any, sets: dict[str, str], prefix: str = "") -> Any:
    """A new ``config`` with ``set_values``' fields changed; ``config`` itself stays as it was."""
    return dataclasses.replace(config, **set_values(type(config), sets, prefix))


def _parse_value(kind: Any, text: str, key: str) -> Any:
    """``text`` as a value of the type ``kind`` (a field's resolved annotation)."""
    where = f"--set {key}={text!r:.40}"
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{where}: expected true or false (or 1/0, yes/no)")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise ValueError(f"{where}: expected {noun}") from None
    if kind is str:
        return text
    item_types = typing.get_args(kind)
    if typing.get_origin(kind) is tuple and Ellipsis not in item_types:
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != len(item_types):
            raise ValueError(
                f"{where}: expected {len(item_types)} comma-separated values, like 0.9,0.96"
            )
        return tuple(
            _parse_value(item, part, key) for item, part in zip(item_types, parts, strict=True)
        )
    raise ValueError(f"--set {key}: this field cannot be set from the command line")
