"""ruDALL-E v3's transformer (``rudalle.dalle.model.DalleModel``: Malevich v3, Surrealist XL) as a
``layout="rudalle"`` ``model.networks.transformer.Transformer`` (research/importers.md 2.2-2.4).

``transformer_from_rudalle`` is pure: a flat state dict under ruDALL-E's names in, our config and
state dict out; reading files is ``model.importers.rudalle_import``'s. The sizes are read off the
shapes, except the head count, which no shape holds (Malevich: 16). ruDALL-E's conv window is
11x11 whatever the model (``get_conv_mask``'s default, which ``DalleTransformer`` never
overrides).

The weight map, with ruDALL-E's ``text_seq_length`` = T (128) text positions and V text rows
(16384 BPE ids + T padding ids; padding id ``V - T + t`` at position t):

    text_embed       text_embeddings[:V-1]          our text_len is T - 1: its last position,
    text_pos         text_pos_embeddings[:T-1]      T - 1, is our image slot 0
    image_embed      image_embeddings, then one row: the start, text_embeddings[V-1] +
                     text_pos_embeddings[T-1] (position T - 1's padding id, which it holds for
                     any caption of at most T - 3 BPE ids, and its position)
    row/col_embed    image_row/col_embeddings
    blocks.i         input_layernorm -> ln_1, attention.query_key_value -> attn.qkv,
                     attention.dense -> attn.proj, before_first_addition_layernorm ->
                     ln_attn_out, post_attention_layernorm -> ln_2, mlp.dense_h_to_4h -> mlp.fc,
                     mlp.dense_4h_to_h -> mlp.proj, before_second_addition_layernorm -> ln_mlp_out
    ln_f, ln_head    transformer.final_layernorm, to_logits.0
    to_text          to_logits.1 rows [0, V-1)      (with biases)
    to_image         to_logits.1 rows [V, V + image codes)

``text_pos_embeddings`` has T + 1 rows in v2 and v3 alike: v2 (Malevich v2, Emojich) puts BOS at
an extra first position and wraps the conv window around the grid, so the shapes cannot tell
them apart. ``transformer.conv_mask``, where the file has it, can: v3's window is clamped at the
grid's edges. The three mask buffers are otherwise ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from model.config import TransformerConfig
from model.networks.transformer import CONV, image_mask

HEADS = 16  # Malevich, Surrealist XL: hidden 2048 in heads of 128
CONV_KERNEL = 11  # rudalle/dalle/image_attention.py get_conv_mask(kernel=11)
MASK_BUFFERS = ("transformer.row_mask", "transformer.col_mask", "transformer.conv_mask")
_LAYER = re.compile(r"transformer\.layers\.(\d+)\.")
_BLOCK = {  # ruDALL-E's name in transformer.layers.{i} -> ours in blocks.{i}
    "input_layernorm": "ln_1",
    "attention.query_key_value": "attn.qkv",
    "attention.dense": "attn.proj",
    "post_attention_layernorm": "ln_2",
    "mlp.dense_h_to_4h": "mlp.fc",
    "mlp.dense_4h_to_h": "mlp.proj",
}
_SANDWICH = {
    "before_first_addition_layernorm": "ln_attn_out",
    "before_second_addition_layernorm": "ln_mlp_out",
}


def _matrix(state: Mapping[str, torch.Tensor], name: str) -> tuple[int, int]:
    if name not in state:
        raise ValueError(f"no {name!r}: not a ruDALL-E transformer state dict")
    shape = tuple(state[name].shape)
    if len(shape) != 2:
        raise ValueError(f"{name} has shape {shape}, expected a matrix")
    return shape


def expected_shapes(
    hidden: int, depth: int, text_ids: int, text_positions: int, image_codes: int, grid: int,
    sandwich: bool = True,
) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """ruDALL-E's parameter names and shapes (``DalleModel.state_dict()`` without the masks)."""
    shapes: dict[str, tuple[int, ...]] = {
        "text_embeddings.weight": (text_ids, hidden),
        "image_embeddings.weight": (image_codes, hidden),
        "text_pos_embeddings.weight": (text_positions, hidden),
        "image_row_embeddings.weight": (grid, hidden),
        "image_col_embeddings.weight": (grid, hidden),
    }
    linears = {
        "attention.query_key_value": (3 * hidden, hidden),
        "attention.dense": (hidden, hidden),
        "mlp.dense_h_to_4h": (4 * hidden, hidden),
        "mlp.dense_4h_to_h": (hidden, 4 * hidden),
    }
    norms = ["input_layernorm", "post_attention_layernorm"]
    if sandwich:
        norms += list(_SANDWICH)
    for i in range(depth):
        layer = f"transformer.layers.{i}"
        for name, (rows, cols) in linears.items():
            shapes[f"{layer}.{name}.weight"] = (rows, cols)
            shapes[f"{layer}.{name}.bias"] = (rows,)
        for name in norms:
            shapes[f"{layer}.{name}.weight"] = shapes[f"{layer}.{name}.bias"] = (hidden,)
    for name in ("transformer.final_layernorm", "to_logits.0"):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (hidden,)
    shapes["to_logits.1.weight"] = (text_ids + image_codes, hidden)
    shapes["to_logits.1.bias"] = (text_ids + image_codes,)
    return shapes


def v3_conv_mask(text_positions: int, grid: int) -> torch.Tensor:
    """(L, L) bool: ruDALL-E v3's ``get_conv_mask(text_positions, grid)`` (key columns, query
    rows), built from ``model.networks.transformer.image_mask``: causal text, every image position
    sees all text, the image part the paper's clamped 11x11 window on the cells the positions
    hold."""
    length = text_positions + grid * grid
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    mask[text_positions:, text_positions:] = image_mask(CONV, grid, CONV_KERNEL)
    return mask


def transformer_from_rudalle(
    state_dict: Mapping[str, torch.Tensor],
    heads: int = HEADS,
    version: str = "v3",
    check_config: Callable[[TransformerConfig], None] | None = None,
) -> tuple[TransformerConfig, dict[str, torch.Tensor]]:
    """ruDALL-E v3's flat state dict -> (our ``layout="rudalle"`` config, our state dict).

    ``heads``: the attention head count (not in any shape; 16 for Malevich and Surrealist XL).
    The tensors keep their dtype; most are the input's own tensors or views of them. Raises
    ValueError with one line naming the first problem: a v2 checkpoint, a missing or unexpected
    name, a shape that disagrees with the sizes read off the embeddings. ``check_config`` sees
    the config read off the shapes before anything is built from it (the conv mask compared,
    a tensor sliced): the importer's budget for the attention tables it asks for.
    """
    if version != "v3":
        raise ValueError(
            f"version {version!r}: only ruDALL-E v3 checkpoints can be imported (v2 reads BOS at "
            "a 129th text position and wraps the conv window around the grid)"
        )
    text_ids, hidden = _matrix(state_dict, "text_embeddings.weight")
    text_positions = _matrix(state_dict, "text_pos_embeddings.weight")[0] - 1  # T + 1 rows
    image_codes = _matrix(state_dict, "image_embeddings.weight")[0]
    grid = _matrix(state_dict, "image_row_embeddings.weight")[0]
    if not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise ValueError(f"heads {heads!r} does not divide the hidden size {hidden}")
    if text_positions < 2 or text_ids <= text_positions:
        raise ValueError(
            f"text_embeddings has {text_ids} rows for {text_positions} text positions: expected "
            "BPE ids and one padding id per position"
        )
    layers = {int(m.group(1)) for name in state_dict if (m := _LAYER.match(name))}
    depth = len(layers)
    if depth == 0 or layers != set(range(depth)):
        raise ValueError(f"transformer layers {sorted(layers)[:8]} are not 0 .. N-1")
    sandwich = "transformer.layers.0.before_first_addition_layernorm.weight" in state_dict
    expected = expected_shapes(
        hidden, depth, text_ids, text_positions + 1, image_codes, grid, sandwich
    )
    names = set(state_dict) - set(MASK_BUFFERS)
    missing = [name for name in expected if name not in names]
    if missing:
        raise ValueError(f"no {missing[0]!r} ({len(missing)} names missing)")
    unexpected = sorted(names - set(expected))
    if unexpected:
        raise ValueError(f"unexpected {unexpected[0]!r} ({len(unexpected)} unexpected names)")
    for name, shape in expected.items():
        tensor = state_dict[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {shape} (hidden {hidden}, "
                f"{depth} layers, {text_ids} text ids, {image_codes} image codes, grid {grid})"
            )
        if not tensor.is_floating_point():
            raise ValueError(f"{name} holds {tensor.dtype}, expected floating-point weights")
    config = TransformerConfig(
        text_vocab=text_ids - text_positions,
        text_len=text_positions - 1,  # ruDALL-E's last text position is our slot 0
        image_vocab=image_codes,
        grid=grid,
        dim=hidden,
        depth=depth,
        heads=heads,
        conv_kernel=CONV_KERNEL,
        dropout=0.0,
        layout="rudalle",
        sandwich_norm=sandwich,
        head_norm=True,
        head_bias=True,
    )
    if check_config is not None:
        check_config(config)
    _check_conv_mask(state_dict, text_positions, grid)
    return config, _convert(state_dict, config, text_positions, sandwich)


def _check_conv_mask(
    state_dict: Mapping[str, torch.Tensor], text_positions: int, grid: int
) -> None:
    if "transformer.conv_mask" not in state_dict:
        return
    mask = state_dict["transformer.conv_mask"]
    length = text_positions + grid * grid
    if tuple(mask.shape) != (length, length):
        raise ValueError(
            f"transformer.conv_mask has shape {tuple(mask.shape)}, expected {(length, length)} "
            f"for {text_positions} text positions and a {grid}x{grid} grid"
        )
    if not torch.equal(mask != 0, v3_conv_mask(text_positions, grid)):
        raise ValueError(
            "transformer.conv_mask is not ruDALL-E v3's 11x11 window clamped at the grid's edges: "
            "a v2 checkpoint (Malevich v2, Emojich), whose window wraps, cannot be imported"
        )


def _convert(
    state: Mapping[str, torch.Tensor],
    config: TransformerConfig,
    text_positions: int,
    sandwich: bool,
) -> dict[str, torch.Tensor]:
    padded = config.text_vocab_padded  # BPE ids + our text_len padding ids = ruDALL-E's rows - 1
    text = state["text_embeddings.weight"]
    positions = state["text_pos_embeddings.weight"]
    images = state["image_embeddings.weight"]
    # slot 0: what ruDALL-E reads at its last text position, its padding id at its position,
    # summed once in fp32 and rounded to the file's dtype
    start = (text[padded].float() + positions[text_positions - 1].float()).to(images.dtype)
    head_weight, head_bias = state["to_logits.1.weight"], state["to_logits.1.bias"]
    image_rows = slice(padded + 1, padded + 1 + config.image_vocab)  # after all V text rows
    ours = {
        "text_embed.weight": text[:padded],
        "text_pos.weight": positions[: config.text_len],
        "image_embed.weight": torch.cat([images, start[None]]),
        "row_embed.weight": state["image_row_embeddings.weight"],
        "col_embed.weight": state["image_col_embeddings.weight"],
        "ln_f.weight": state["transformer.final_layernorm.weight"],
        "ln_f.bias": state["transformer.final_layernorm.bias"],
        "ln_head.weight": state["to_logits.0.weight"],
        "ln_head.bias": state["to_logits.0.bias"],
        "to_text.weight": head_weight[:padded],
        "to_text.bias": head_bias[:padded],
        "to_image.weight": head_weight[image_rows],
        "to_image.bias": head_bias[image_rows],
    }
    block_names = {**_BLOCK, **(_SANDWICH if sandwich else {})}
    for i in range(config.depth):
        for theirs, mine in block_names.items():
            for part in ("weight", "bias"):
                ours[f"blocks.{i}.{mine}.{part}"] = state[f"transformer.layers.{i}.{theirs}.{part}"]
    return ours
