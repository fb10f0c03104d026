"""The range of every field a file may set, and ``config_from_dict``: a config of any family from
values read from a file, each checked before a model is built from it."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from model.config.imported import (
    VALUE_RANGES,
    VQGAN_QUANTIZERS,
    BartConfig,
    BartTextConfig,
    VQGANConfig,
    YttmTextConfig,
)
from model.config.limits import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_DIM,
    MAX_GRID,
    MAX_GROUPS,
    MAX_IMAGE_SIZE,
    MAX_PATCH,
    MAX_TEXT_LEN,
    MAX_VOCAB,
)
from model.config.ours import (
    TRANSFORMER_LAYOUTS,
    DVAEConfig,
    RerankerConfig,
    TextConfig,
    TransformerConfig,
    VQConfig,
)

# (lowest, highest) of every field a file may set; ints must be JSON integers, floats numbers
FIELD_RANGES: dict[type, dict[str, tuple]] = {
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
        "kl_weight": (0.0, 1000.0),
        "kl_warmup": (0.0, 1.0),
        "tau_start": (0.001, 100.0),
        "tau_end": (0.001, 100.0),
        "code_usage": (0.0, 1000.0),
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
        "pool": (1, 8),
    },
    TextConfig: {
        "vocab_size": (1, MAX_VOCAB),
        "text_len": (1, MAX_TEXT_LEN),
        "bpe_dropout": (0.0, 1.0),
        "caption_dropout": (0.0, 1.0),
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
        "layout": TRANSFORMER_LAYOUTS,
        "sandwich_norm": (),
        "head_norm": (),
        "head_bias": (),
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
    # a tuple field's range is each item's; a str field lists its choices; a bool has none
    VQGANConfig: {
        "resolution": (1, MAX_IMAGE_SIZE),
        "in_channels": (1, MAX_CHANNELS),
        "ch": (1, MAX_DIM),
        "ch_mult": (1, MAX_DIM),
        "num_res_blocks": (1, MAX_BLOCKS),
        "attn_resolutions": (1, MAX_IMAGE_SIZE),
        "z_channels": (1, MAX_DIM),
        "embed_dim": (1, MAX_DIM),
        "n_embed": (1, MAX_VOCAB),
        "norm_eps": (0.0, 0.1),
        "double_z": (),
        "value_range": VALUE_RANGES,
        "quantize": VQGAN_QUANTIZERS,
    },
    BartConfig: {
        "text_vocab": (1, MAX_VOCAB),
        "image_vocab": (1, MAX_VOCAB),
        "image_rows": (1, MAX_VOCAB),
        "embed_dim": (1, MAX_DIM),
        "heads": (1, MAX_DIM),
        "glu_dim": (1, 4 * MAX_DIM),
        "encoder_layers": (1, MAX_DEPTH),
        "decoder_layers": (1, MAX_DEPTH),
        "text_len": (1, MAX_TEXT_LEN),
        "grid": (1, MAX_GRID),
        "start_token": (0, MAX_VOCAB - 1),
        "pad_id": (0, MAX_VOCAB - 1),
    },
    YttmTextConfig: {
        "vocab_size": (5, MAX_VOCAB),  # four special ids and the word-start token
        "text_len": (3, MAX_TEXT_LEN),  # BOS, one id, EOS
    },
    BartTextConfig: {
        # Mini's vocab_mini.json holds one id more than its encoder has rows (see bundle.py)
        "vocab_size": (4, MAX_VOCAB + 1),
        "text_len": (2, MAX_TEXT_LEN),
    },
}
MAX_ITEMS = 16  # items of a tuple field (VQGAN levels, attention resolutions)


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
        rule, annotation = ranges[name], fields[name].type
        where = f"{section}.{name} is {value!r:.40}"
        if annotation == "bool":
            if type(value) is not bool:
                raise ValueError(f"{where}; expected true or false")
        elif annotation == "str":
            if type(value) is not str or value not in rule:
                raise ValueError(f"{where}; expected one of {list(rule)}")
        elif annotation.startswith("tuple["):  # tuple[int, ...]: a JSON list of integers
            if type(value) not in (list, tuple) or len(value) > MAX_ITEMS:
                raise ValueError(f"{where}; expected a list of at most {MAX_ITEMS} integers")
            for item in value:
                _check_number(item, "int", rule, f"{section}.{name} holds {item!r:.40}")
        else:
            _check_number(value, annotation, rule, where)
    try:
        config = kind(**values)
    except ValueError as error:  # the class's own checks across fields (VQGAN, BART)
        raise ValueError(f"{section}: {error}") from None
    heads = getattr(config, "heads", None)
    if heads is not None and config.dim % heads:
        raise ValueError(
            f"{section}.heads is {heads}; expected a number that divides dim {config.dim}"
        )
    return config


def _check_number(value: Any, annotation: str, rule: tuple[float, float], where: str) -> None:
    low, high = rule
    if annotation == "int":
        if type(value) is not int:  # not a bool, a float or a string
            raise ValueError(f"{where}; expected an integer from {low} to {high}")
    elif type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{where}; expected a number from {low} to {high}")
    if value < low:
        raise ValueError(f"{where}; expected at least {low}")
    if value > high:
        raise ValueError(f"{where}; expected at most {high}")
