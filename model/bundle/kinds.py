"""The registry of what a bundle's sections can hold: for each kind (``BundleConfig.vae_kind``,
``text_kind``, ``transformer_kind``), the model or tokenizer it builds, whether it is loaded by
assignment (built on the meta device, taking the file's tensors in their stored dtype), and what
it costs in memory beyond its weights. Adding a kind is one entry here (and its config class in
``model.config``'s ``*_KINDS``, which names the kinds a file may store).

The networks are imported when a kind is built, not when this module is imported: the imported
families' (``model.networks.bart``, ``model.networks.vqgan``) are large modules a bundle of the
product's own kinds never needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.bundle.format import BundleError, Header
from model.config import TRANSFORMER_KINDS, BundleConfig, vae_kind
from model.tokenizers.bart_text import BartTokenizer
from model.tokenizers.text import CaptionTokenizer
from model.tokenizers.yttm_text import RudallePrompt


@dataclass(frozen=True)
class ModelKind:
    """A kind of image tokenizer or transformer: ``build`` makes one from its config section."""

    build: Callable[[Any], nn.Module]
    # loaded by assignment (the imported kinds, whose size makes a second copy unaffordable)
    assigned: Callable[[Any], bool] = lambda section: False
    # attention tables built with it (not weights, so not in the file): our transformer's
    tables: bool = False

    def table_bytes(self, section: Any) -> int:
        """Bytes of the attention tables it builds for ``section``; 0 for a kind without."""
        if not self.tables:
            return 0
        from model.networks.transformer import attention_table_bytes

        return attention_table_bytes(section)


@dataclass(frozen=True)
class TextKind:
    """A kind of caption tokenizer: its class and how it is read from the bundle's metadata."""

    cls: type
    parse: Callable[[str, BundleConfig], Any]


def _parse_bart(text: str, config: BundleConfig) -> BartTokenizer:
    tokenizer = BartTokenizer.from_json(text)
    # an id past the encoder's rows (DALL·E Mini's "<mask>") reads as <unk>
    tokenizer.rows = config.transformer.text_vocab
    return tokenizer


# Each builder imports its network when called: a bundle of the product's own kinds never loads
# the imported families' modules. The imports are written out (not names in strings) so that
# PyInstaller's analysis of build.spec sees them.


def _dvae(section: Any) -> nn.Module:
    from model.networks.dvae import DVAE

    return DVAE(section)


def _vq(section: Any) -> nn.Module:
    from model.networks.vq import VQVAE

    return VQVAE(section)


def _vqgan(section: Any) -> nn.Module:
    from model.networks.vqgan import VQGAN

    return VQGAN(section)


def _transformer(section: Any) -> nn.Module:
    from model.networks.transformer import Transformer

    return Transformer(section)


def _bart(section: Any) -> nn.Module:
    from model.networks.bart import BartDalle

    return BartDalle(section)


VAE_BUILDERS: dict[str, ModelKind] = {
    "dvae": ModelKind(_dvae),
    "vq": ModelKind(_vq),
    "vqgan": ModelKind(_vqgan, assigned=lambda section: True),
}
TRANSFORMER_BUILDERS: dict[str, ModelKind] = {
    # ruDALL-E's transformer (layout "rudalle") is imported, so loaded by assignment
    "dalle": ModelKind(
        _transformer, assigned=lambda section: section.layout == "rudalle", tables=True
    ),
    "bart": ModelKind(_bart, assigned=lambda section: True),
}
TEXT_READERS: dict[str, TextKind] = {
    "bpe": TextKind(
        CaptionTokenizer,
        lambda text, config: CaptionTokenizer.from_json(text, config.text.text_len),
    ),
    "bart": TextKind(BartTokenizer, _parse_bart),
    "yttm": TextKind(RudallePrompt, lambda text, config: RudallePrompt.from_json(text)),
}


def _model_kind(config: BundleConfig, prefix: str) -> ModelKind:
    if prefix == "vae":
        return VAE_BUILDERS[config.vae_kind]
    return TRANSFORMER_BUILDERS[config.transformer_kind]


def _kind_of_section(section: Any, kinds: Mapping[str, type]) -> str:
    for name, cls in kinds.items():
        if isinstance(section, cls):
            return name
    raise ValueError(f"not a config of a known kind: {type(section).__name__}")


# -- building ------------------------------------------------------------------------------------


def build_models(
    config: BundleConfig, device: str | torch.device | None = None
) -> dict[str, nn.Module]:
    """Fresh models for ``config``, keyed by tensor prefix (the reranker only when configured).

    ``device="meta"`` builds them without allocating their weights: their shapes, for checking a
    file's tensors before anything of its size is allocated.
    """
    prefixes = ["vae", "transformer"] + (["reranker"] if config.reranker is not None else [])
    return {prefix: build_model(config, prefix, device) for prefix in prefixes}


def build_model(
    config: BundleConfig, prefix: str, device: str | torch.device | None = None
) -> nn.Module:
    """The model a bundle holds under ``prefix`` ("vae", "transformer", "reranker"), fresh."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if prefix in ("vae", "transformer"):
            return _model_kind(config, prefix).build(getattr(config, prefix))
        if config.reranker is None:
            raise ValueError("the config has no reranker")
        try:
            from model.networks.rerank import Reranker
        except ModuleNotFoundError as error:
            if error.name != "model.networks.rerank":
                raise
            raise ValueError("this installation has no reranker (model.networks.rerank)") from error
        return Reranker(config.reranker)


def build_transformer(config: Any) -> nn.Module:
    """Our ``Transformer``, or DALL·E Mega / Mini's ``BartDalle`` for a ``BartConfig``. Both
    offer the sampler's stream interface (``model.inference.sampling.sample_tokens``)."""
    return TRANSFORMER_BUILDERS[_kind_of_section(config, TRANSFORMER_KINDS)].build(config)


def build_vae(config: Any) -> nn.Module:
    """A fresh image tokenizer of ``config``'s kind: a ``DVAE``, a ``VQVAE`` or a ``VQGAN``. All
    offer ``encode(images) -> codes``, ``decode(codes) -> images``, ``grid``, ``vocab_size``,
    ``image_size`` and ``factor``, which is all that sampling, the studio and evaluation use."""
    return VAE_BUILDERS[vae_kind(config)].build(config)


# -- loading -------------------------------------------------------------------------------------


def assigned_prefixes(config: BundleConfig) -> set[str]:
    """The models loaded by assignment (built on the meta device, taking the file's tensors and
    their dtype): the imported kinds, whose size makes a second copy unaffordable."""
    return {
        prefix
        for prefix in ("vae", "transformer")
        if _model_kind(config, prefix).assigned(getattr(config, prefix))
    }


def memory_to_load(header: Header, config: BundleConfig, shapes: Mapping[str, nn.Module]) -> int:
    """Bytes of CPU memory ``load`` needs, from the header and the meta-built models alone.

    The stored tensors are read once (a model loaded by assignment keeps them as its weights);
    a model built for real (ours) adds its own fp32 weights, and our transformer its attention
    tables; the non-finite check briefly needs one byte per value of the largest tensor. The
    file's pages in the OS cache are not counted: they can be dropped.
    """
    stored = sum(entry.end - entry.begin for entry in header.tensors.values())
    largest = max((entry.end - entry.begin for entry in header.tensors.values()), default=0)
    assigned = assigned_prefixes(config)
    built = sum(
        4 * tensor.numel()
        for prefix, module in shapes.items()
        if prefix not in assigned
        for tensor in module.state_dict().values()
    )
    tables = _model_kind(config, "transformer").table_bytes(config.transformer)
    return stored + built + tables + largest


def has_attention_tables(config: BundleConfig) -> bool:
    """Whether the transformer builds attention tables (ours does; the file does not pay)."""
    return _model_kind(config, "transformer").tables


def tokenizer_class(config: BundleConfig) -> type:
    """The caption tokenizer class ``config.text_kind`` needs."""
    return TEXT_READERS[config.text_kind].cls


def parse_tokenizer(
    path: Path, config: BundleConfig, metadata: Mapping[str, str]
) -> CaptionTokenizer | BartTokenizer:
    """The caption tokenizer stored in the metadata, read as ``config.text_kind`` says."""
    try:
        return TEXT_READERS[config.text_kind].parse(metadata["tokenizer"], config)
    except (ValueError, TypeError) as error:
        raise BundleError(path, f"invalid tokenizer metadata: {error}") from None
