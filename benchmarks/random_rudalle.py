"""Write the files ``dalle import rudalle`` reads, at full size with random weights, to measure the
import and a ruDALL-E Malevich bundle (``dalle bench``) without the released files.

    python benchmarks/random_rudalle.py --out /tmp/src-rudalle
    OMP_NUM_THREADS=1 dalle import rudalle --from /tmp/src-rudalle \\
        --out /tmp/malevich-bf16.dalle.safetensors
    OMP_NUM_THREADS=1 dalle bench --bundle /tmp/malevich-bf16.dalle.safetensors --precision bf16 \\
        --batch 1 --repeats 1 --threads 1

The files, in the released formats (research/importers.md 2.1-2.2):
- ``pytorch_model_v3.bin``: a flat ``torch.save`` state dict of fp16 tensors under ruDALL-E's names
  (24 layers, hidden 2048, 16,512 text ids, 8,192 image codes; 1.31B parameters, 2.6 GB), the
  three mask buffers included, as a file saved from ``DalleModel.state_dict()`` would hold them.
- ``vqgan.gumbelf8-sber.model.ckpt``: a Lightning-style checkpoint (``epoch``, ``global_step``,
  ``pytorch-lightning_version``, ``state_dict``) of taming's Encoder/Decoder at the Sber config,
  the gumbel quantiser's ``proj`` and ``embed``, ``quant_conv``, ``post_quant_conv``, and a
  stand-in ``loss.*`` discriminator, which the import drops.
- ``bpe.model``: a youtokentome model file of 16,384 ids (Cyrillic and Latin letters, digits, and
  made-up merges), so that captions in Russian tokenize.

The weights are random: for timing and memory only. Write them outside the repository (/tmp).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

HIDDEN, LAYERS, TEXT_IDS, TEXT_POSITIONS, IMAGE_CODES, GRID = 2048, 24, 16512, 129, 8192, 32
SBER = dict(
    double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
    ch_mult=[1, 1, 2, 4], num_res_blocks=2, attn_resolutions=[32], dropout=0.0,
)  # fmt: skip


def transformer_shapes(hidden: int = HIDDEN, layers: int = LAYERS) -> dict[str, tuple]:
    """ruDALL-E v3's parameter names and shapes (importers.md 2.2, as DalleModel registers them)."""
    shapes = {
        "text_embeddings.weight": (TEXT_IDS, hidden),
        "image_embeddings.weight": (IMAGE_CODES, hidden),
        "text_pos_embeddings.weight": (TEXT_POSITIONS, hidden),
        "image_row_embeddings.weight": (GRID, hidden),
        "image_col_embeddings.weight": (GRID, hidden),
    }
    norms = (
        "input_layernorm",
        "before_first_addition_layernorm",
        "post_attention_layernorm",
        "before_second_addition_layernorm",
    )
    for i in range(layers):
        layer = f"transformer.layers.{i}"
        for norm in norms:
            shapes[f"{layer}.{norm}.weight"] = shapes[f"{layer}.{norm}.bias"] = (hidden,)
        for name, (rows, cols) in {
            "attention.query_key_value": (3 * hidden, hidden),
            "attention.dense": (hidden, hidden),
            "mlp.dense_h_to_4h": (4 * hidden, hidden),
            "mlp.dense_4h_to_h": (hidden, 4 * hidden),
        }.items():
            shapes[f"{layer}.{name}.weight"] = (rows, cols)
            shapes[f"{layer}.{name}.bias"] = (rows,)
    for norm in ("transformer.final_layernorm", "to_logits.0"):
        shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (hidden,)
    shapes["to_logits.1.weight"] = (TEXT_IDS + IMAGE_CODES, hidden)
    shapes["to_logits.1.bias"] = (TEXT_IDS + IMAGE_CODES,)
    return shapes


def write_transformer(path: Path) -> int:
    state, count = {}, 0
    for name, shape in transformer_shapes().items():
        if len(shape) == 1:  # norms near 1, biases near 0
            fill = torch.ones(shape) if name.endswith("layernorm.weight") else torch.zeros(shape)
            state[name] = (fill + 0.02 * torch.randn(shape)).half()
        else:
            state[name] = torch.empty(shape, dtype=torch.float16).normal_(0, 0.02)
        count += state[name].numel()
    from model.importers.rudalle import v3_conv_mask

    # DalleTransformer's mask buffers, as a saved state dict holds them: the import checks that
    # conv_mask is v3's (a v2 file's window wraps) and ignores the other two
    seq = TEXT_POSITIONS - 1 + GRID * GRID
    state["transformer.conv_mask"] = v3_conv_mask(TEXT_POSITIONS - 1, GRID).half()
    for mask in ("row_mask", "col_mask"):
        state[f"transformer.{mask}"] = torch.tril(torch.ones(seq, seq, dtype=torch.float16))
    torch.save(state, path)
    return count


def write_vqgan(path: Path) -> int:
    from taming.modules.diffusionmodules.model import Decoder, Encoder

    state = {}
    for prefix, module in (("encoder", Encoder(**SBER)), ("decoder", Decoder(**SBER))):
        state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    z, embed = SBER["z_channels"], 256
    state["quant_conv.weight"], state["quant_conv.bias"] = (
        torch.randn(embed, z, 1, 1) * 0.05,
        torch.zeros(embed),
    )
    state["post_quant_conv.weight"] = torch.randn(z, embed, 1, 1) * 0.05
    state["post_quant_conv.bias"] = torch.zeros(z)
    state["quantize.proj.weight"] = torch.randn(IMAGE_CODES, z, 1, 1) * 0.05
    state["quantize.proj.bias"] = torch.zeros(IMAGE_CODES)
    state["quantize.embed.weight"] = torch.randn(IMAGE_CODES, embed)
    count = sum(v.numel() for v in state.values())
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)  # dropped by the import
    state["loss.logvar"] = torch.zeros(())
    torch.save(
        {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.4.9", "state_dict": state},
        path,
    )
    return count


def write_bpe(path: Path, size: int = 16384) -> None:
    """A youtokentome model file: ``n_chars n_rules``, ``codepoint id`` pairs, ``x y z`` rules,
    then ``unk pad bos eos``."""
    letters = (
        "\u2581" + "абвгдеёжзийклмнопрстуфхцчшщъыьэюя" + "abcdefghijklmnopqrstuvwxyz0123456789"
    )
    text = {4 + i: ch for i, ch in enumerate(letters)}
    seen = set(text.values())
    rules = []
    starts = [i for i, t in text.items() if t == "\u2581"] + list(text)[1:12]
    queue = list(starts)
    while 4 + len(text) < size:
        left = queue.pop(0)
        for right in list(text)[1 : len(letters)]:  # letters (not the word start) extend a token
            joined = text[left] + text[right]
            if joined in seen or 4 + len(text) >= size:
                continue
            new = 4 + len(text)
            text[new], rules = joined, [*rules, (left, right, new)]
            seen.add(joined)
            queue.append(new)
    lines = [f"{len(letters)} {len(rules)}"]
    lines += [f"{ord(ch)} {4 + i}" for i, ch in enumerate(letters)]
    lines += [f"{x} {y} {z}" for x, y, z in rules]
    lines.append("1 0 2 3")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a folder for the three files, e.g. in /tmp")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, write in (
        ("bpe.model", write_bpe),
        ("vqgan.gumbelf8-sber.model.ckpt", write_vqgan),
        ("pytorch_model_v3.bin", write_transformer),
    ):
        started = time.perf_counter()
        count = write(out / name)
        size = (out / name).stat().st_size / 1e9
        what = f"{count / 1e6:.1f}M parameters, " if count else ""
        print(f"{name}: {what}{size:.2f} GB in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
