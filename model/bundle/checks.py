"""A bundle's checks beyond its format: the config's parts agreeing with each other and with the
tokenizer, the stored tensors against the models the config builds, the stored dtypes of a model
loaded by assignment, the attention tables a config may ask for, and the memory a load needs
against what the machine has. Each refusal is one ``BundleError`` naming the file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from model.bundle.format import (
    ASSIGNED_DTYPES,
    FLOAT_DTYPES,
    MIN_TABLE_BUDGET,
    BundleError,
    Header,
    check_tensors,
)
from model.bundle.kinds import tokenizer_class
from model.config import DEFAULT_TEXT_KIND, BundleConfig
from model.device import available_memory
from model.tokenizers.bart_text import BartTokenizer
from model.tokenizers.text import CaptionTokenizer


def config_problems(
    config: BundleConfig, tokenizer: CaptionTokenizer | BartTokenizer | None = None
) -> list[str]:
    """Ways in which the config's parts (and the tokenizer) disagree; empty when they agree."""
    problems = []
    text, tf, vae = config.text, config.transformer, config.vae
    if text.text_len != tf.text_len:
        problems.append(f"text.text_len {text.text_len} != transformer.text_len {tf.text_len}")
    if vae.vocab_size != tf.image_vocab:
        problems.append(
            f"vae.vocab_size {vae.vocab_size} != transformer.image_vocab {tf.image_vocab}"
        )
    if vae.grid != tf.grid:
        problems.append(f"the vae's grid {vae.grid} != transformer.grid {tf.grid}")
    bart_text = config.text_kind == "bart"
    if (config.transformer_kind == "bart") != bart_text:
        problems.append(
            f"a transformer of kind {config.transformer_kind!r} cannot read captions of "
            f"text.kind {config.text_kind!r}"
        )
    yttm_text = config.text_kind == "yttm"
    rudalle = config.transformer_kind == "dalle" and tf.layout == "rudalle"
    if yttm_text != rudalle and config.transformer_kind != "bart":  # bart: said above
        problems.append(
            "ruDALL-E's captions (text.kind 'yttm') go with a transformer of layout 'rudalle' "
            f"and only with it; this bundle has text.kind {config.text_kind!r} and a "
            f"transformer of layout {tf.layout!r}"
        )
    if yttm_text and text.vocab_size != tf.text_vocab:
        problems.append(
            f"text.vocab_size {text.vocab_size} != transformer.text_vocab {tf.text_vocab}"
        )
    if config.reranker is not None and config.text_kind != DEFAULT_TEXT_KIND:
        # the reranker scores our BPE's ids; never feed it another tokenizer's
        problems.append(
            f"a reranker reads {DEFAULT_TEXT_KIND!r} caption ids, not {config.text_kind!r} ones"
        )
    if bart_text and text.vocab_size > tf.text_vocab + 1:
        # DALL·E Mini's vocab_mini.json has one id (50264, "<mask>") past its encoder's 50264
        # rows; BPE never produces it, and BartTokenizer reads any such id as <unk>
        problems.append(
            f"text.vocab_size {text.vocab_size} is more than one past the encoder's "
            f"{tf.text_vocab} rows"
        )
    if tokenizer is not None:
        expected = tokenizer_class(config)
        if not isinstance(tokenizer, expected):
            problems.append(
                f"text.kind {config.text_kind!r} needs a {expected.__name__}, "
                f"not a {type(tokenizer).__name__}"
            )
        elif (bart_text or yttm_text) and tokenizer.vocab_size != text.vocab_size:
            problems.append(
                f"the tokenizer has {tokenizer.vocab_size} ids but text.vocab_size is "
                f"{text.vocab_size}"
            )
        elif not bart_text and tokenizer.vocab_size != tf.text_vocab:
            problems.append(
                f"the tokenizer has {tokenizer.vocab_size} BPE ids but "
                f"transformer.text_vocab is {tf.text_vocab}"
            )
        if tokenizer.text_len != text.text_len:
            problems.append(
                f"the tokenizer pads to {tokenizer.text_len} but text.text_len is {text.text_len}"
            )
    return problems


def check_table_budget(path: Path, config: BundleConfig) -> None:
    """Refuse a config whose attention tables (not weights: the file does not pay for them) are
    more than the file's size justifies."""
    from model.networks.transformer import attention_table_bytes

    tables = attention_table_bytes(config.transformer)
    allowed = max(MIN_TABLE_BUDGET, 4 * path.stat().st_size)
    if tables > allowed:
        tf = config.transformer
        raise BundleError(
            path,
            f"its {tf.grid}x{tf.grid} grid after {tf.text_len} text positions needs "
            f"{tables / 2**20:.0f} MB of attention tables; a bundle of this size may ask for "
            f"at most {allowed / 2**20:.0f} MB",
        )


def check_model_tensors(path: Path, header: Header, models: Mapping[str, nn.Module]) -> None:
    """The stored tensors against the models built from the config (on the meta device)."""
    expected = {
        f"{prefix}.{name}": tensor
        for prefix, module in models.items()
        for name, tensor in module.state_dict().items()
    }
    check_tensors(path, header, expected)


def check_assigned_dtypes(path: Path, header: Header, assigned: set[str]) -> None:
    """A model loaded by assignment keeps its stored dtype: one of fp32, bf16, fp16, the same
    for all its weights (a model of mixed dtypes would fail in its first matmul)."""
    for prefix in sorted(assigned):
        dtypes = {
            entry.dtype
            for name, entry in header.tensors.items()
            if name.startswith(prefix + ".") and entry.dtype in FLOAT_DTYPES
        }
        if not dtypes <= ASSIGNED_DTYPES.keys():
            odd = ", ".join(sorted(dtypes - ASSIGNED_DTYPES.keys()))
            raise BundleError(path, f"the {prefix}'s weights are {odd}; expected F32, BF16 or F16")
        if len(dtypes) > 1:
            raise BundleError(
                path,
                f"the {prefix}'s weights mix {', '.join(sorted(dtypes))}; a model is stored in "
                "one dtype",
            )


def _size(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def check_memory(path: Path, needed: int, weights: int, device: torch.device) -> None:
    """Refuse a load that cannot fit, before it starts, rather than swap the machine to death."""
    free = available_memory(torch.device("cpu"))
    if free is not None and needed > free:
        raise BundleError(
            path,
            f"needs about {_size(needed)} of memory to load, {_size(free)} available: close "
            "other programs or use a smaller model",
        )
    if device.type != "cpu":
        free = available_memory(device)
        if free is not None and weights > free:
            raise BundleError(
                path,
                f"needs about {_size(weights)} of {device} memory for its weights, "
                f"{_size(free)} free: close other programs or use a smaller model",
            )
