"""Write a full-size random-weight DALL·E Mega or Mini bundle, to measure with ``dalle bench``.

    python benchmarks/random_bart_bundle.py --model mini --dtype bf16 \
        --out /tmp/mini-bf16.dalle.safetensors
    OMP_NUM_THREADS=1 dalle bench --bundle /tmp/mini-bf16.dalle.safetensors --precision bf16 \\
        --batch 2 --repeats 1 --threads 1

The bundle has the layout ``dalle import mega|mini`` writes (model/bench.py,
``random_bart_bundle``): the transformer in ``--dtype``, dalle-mini's VQGAN f16-16384 shape in
fp32, a stand-in BART vocabulary. Its weights are random: for timing and memory only. Mega is
5.2 GB in bf16 and 10.4 GB in fp32; write it outside the repository (/tmp).
"""

from __future__ import annotations

import argparse
import time

import torch

from model.bart import MEGA, MINI
from model.bench import random_bart_bundle

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mega", "mini"], required=True)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--out", required=True, help="a .dalle.safetensors path, e.g. in /tmp")
    args = parser.parse_args()
    started = time.perf_counter()
    config = MEGA if args.model == "mega" else MINI
    path = random_bart_bundle(config, args.out, DTYPES[args.dtype])
    size = path.stat().st_size / 1e9
    print(f"{path}: {size:.2f} GB in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
