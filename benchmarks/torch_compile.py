"""Does ``torch.compile`` pay for batch-1 decoding? Eager against compiled, side by side in one run.

Batch-1 decoding is bound by per-step overhead (benchmarks/README.md), which is what compiled
kernels remove. But the decode step indexes its gathered key windows with the stream position (a
Python int), so dynamo specialises on it and compiles again at every position. This script
measures what that costs. It compiles each block (``--whole`` compiles the transformer's forward)
with ``dynamic=True``, then prints ms per step and whether the sampled tokens match eager's.

    python benchmarks/torch_compile.py [--threads 1] [--whole]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.bench import random_transformer, time_sampling  # noqa: E402
from model.config import SamplingOptions  # noqa: E402
from model.sampling import Plan, run, sample_tokens  # noqa: E402


def tokens(transformer, plan: Plan) -> torch.Tensor:
    cfg = transformer.config
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, cfg.text_vocab, (cfg.text_len,), generator=generator)
    empty = torch.arange(cfg.text_vocab, cfg.text_vocab + cfg.text_len)
    image = torch.zeros(cfg.grid, cfg.grid, dtype=torch.long)
    options = SamplingOptions(n=1, seed=0)
    return run(sample_tokens(transformer, text, image, plan, options, empty)).tokens


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--whole", action="store_true", help="compile forward, not each block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = random_transformer(args.dim, args.depth, args.heads, 16, 32, 1024, "cpu")
    plan = Plan(16, 0, 0)

    eager = time_sampling(model, plan, batch=1, repeats=2)
    reference = tokens(model, plan)
    started = time.perf_counter()
    if args.whole:
        model.forward = torch.compile(model.forward, dynamic=True)
    else:
        for i, block in enumerate(model.blocks):
            model.blocks[i] = torch.compile(block, dynamic=True)
    compiled = time_sampling(model, plan, batch=1, repeats=2)  # its warm-up run compiles
    wall = time.perf_counter() - started
    same = torch.equal(tokens(model, plan), reference)
    print(f"eager     {eager['ms_per_step']:6.2f} ms/step  {eager['seconds']:.3f} s/image")
    print(
        f"compiled  {compiled['ms_per_step']:6.2f} ms/step  {compiled['seconds']:.3f} s/image"
        f"  ({wall:.0f} s including compilation; tokens equal to eager: {same})"
    )
    print(f"compiled / eager time: {compiled['seconds'] / eager['seconds']:.2f}x")


if __name__ == "__main__":
    main()
