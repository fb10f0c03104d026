"""Write a full-size random-weight DALL·E Mega or Mini bundle, to measure with ``dalle bench``;
or, with ``--sources``, the files ``dalle import`` reads, to measure the import itself.

    python benchmarks/random_bart_bundle.py --model mini --dtype bf16 \\
        --out /tmp/mini-bf16.dalle.safetensors
    OMP_NUM_THREADS=1 dalle bench --bundle /tmp/mini-bf16.dalle.safetensors --precision bf16 \\
        --batch 2 --repeats 1 --threads 1

    python benchmarks/random_bart_bundle.py --model mega --sources /tmp/src-mega
    dalle import mega --from /tmp/src-mega --out /tmp/imported-mega.dalle.safetensors

The bundle has the layout ``dalle import mega|mini`` writes (model/evaluation/bench.py,
``random_bart_bundle``): the transformer in ``--dtype``, dalle-mini's VQGAN f16-16384 shape in
fp32, a stand-in BART vocabulary. ``--sources`` writes min-dalle's files (``torch.save`` of fp32
state dicts under min-dalle's names, ``vocab*.json`` with BART's 50,265 ids, ``merges*.txt``,
``detoker.pt``) and dalle-mini's VQGAN (``flax_model.msgpack`` in Flax's format, by the test
suite's writer, and ``config.json``). The weights are random: for timing and memory only. Mega
is 5.2 GB in bf16 and 10.4 GB in fp32; write it outside the repository (/tmp).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from model.evaluation.bench import random_bart_bundle
from model.networks.bart import MEGA, MINI, BartDalle

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def write_sources(which: str, folder: Path) -> None:
    """min-dalle's and dalle-mini's files for a random full-size ``which`` ("mega", "mini")."""
    from model.config import VQGANConfig
    from model.importers.dalle_mega import MODELS
    from model.networks.vqgan import VQGAN

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's tests/
    from tests.test_vqgan import DALLE_MINI_CONFIG_JSON, _flax_tree, _to_bytes

    folder.mkdir(parents=True, exist_ok=True)
    names = MODELS[which]
    with torch.device("meta"):
        model = BartDalle(MEGA if which == "mega" else MINI)
    for part, name in ((model.encoder, names.encoder), (model.decoder, names.decoder)):
        state = {
            key: torch.empty(shaped.shape).normal_(0, 0.02)
            if shaped.dim() > 1
            else torch.ones(shaped.shape)
            for key, shaped in part.state_dict().items()
        }
        torch.save(state, folder / name)  # one half at a time: Mega's decoder is 5.9 GB
        del state
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Ġ": 4}
    for letter in letters:
        vocab[letter], vocab["Ġ" + letter] = len(vocab), len(vocab) + 1
    while len(vocab) < 50264:
        vocab[f"Ġw{len(vocab)}"] = len(vocab)
    vocab["<mask>"] = 50264  # BART's last id: one past DALL·E Mini's 50,264 encoder rows
    (folder / names.vocab).write_text(json.dumps(vocab), encoding="utf-8")
    merges = "".join(f"Ġ {letter}\n" for letter in letters)
    (folder / names.merges).write_text("#version: 0.2\n" + merges, encoding="utf-8")
    state = VQGAN(VQGANConfig()).state_dict()
    (folder / "flax_model.msgpack").write_bytes(_to_bytes(_flax_tree(state)))
    (folder / "config.json").write_text(json.dumps(DALLE_MINI_CONFIG_JSON))
    half = {k: v for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}
    half["embedding.weight"] = state["quantize.embedding.weight"]  # min-dalle's name
    torch.save(half, folder / "detoker.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mega", "mini"], required=True)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="the bundle: a .dalle.safetensors path, e.g. in /tmp")
    target.add_argument("--sources", help="a folder for the files dalle import reads")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.sources:
        write_sources(args.model, Path(args.sources))
        size = sum(p.stat().st_size for p in Path(args.sources).iterdir()) / 1e9
        print(f"{args.sources}: {size:.2f} GB in {time.perf_counter() - started:.0f} s")
        return
    config = MEGA if args.model == "mega" else MINI
    path = random_bart_bundle(config, args.out, DTYPES[args.dtype])
    size = path.stat().st_size / 1e9
    print(f"{path}: {size:.2f} GB in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
