"""Does ``torch.compile`` pay for decoding? Eager against compiled, side by side in one run.

The one-cell decode step is shape-static (``Transformer.decode_step``: padded key windows with a
mask, the position as a tensor), so ``--compile`` builds one graph per batch size. This script
times the same model eagerly and with that compiled step, for each precision, batch size and task
(a full image and the bottom-right quarter), checks that the compiled run samples the eager
tokens (and how far its logits are from eager's), and prints the ratios.

    python benchmarks/torch_compile.py [--threads 1] [--random] [--precision fp32 int8]

Without ``--random`` it times the embedded model; ``--random`` a random 11M model (dim 320, depth
8, heads 8), the size of the DALLE-pytorch comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import bundle as bundle_io  # noqa: E402
from model.config import SamplingOptions  # noqa: E402
from model.evaluation.bench import random_transformer, time_sampling  # noqa: E402
from model.geometry import Plan  # noqa: E402
from model.inference.sampling import prepared, run, sample_tokens  # noqa: E402


def tokens(transformer, plan: Plan, batch: int) -> torch.Tensor:
    cfg = transformer.config
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, cfg.text_vocab, (cfg.text_len,), generator=generator)
    image = torch.randint(0, cfg.image_vocab, (cfg.grid, cfg.grid), generator=generator)
    options = SamplingOptions(n=batch, seed=0)
    return run(sample_tokens(transformer, text, image, plan, options)).tokens


def logit_gap(eager, compiled, batch: int) -> float:
    """Largest |compiled - eager| logit over every decode step of one random stream (teacher
    forced, so both see the same context), relative to the largest eager logit."""
    cfg = eager.config
    generator = torch.Generator().manual_seed(1)
    stream = torch.randint(0, cfg.image_vocab, (batch, cfg.seq_len), generator=generator)
    stream[:, : cfg.text_len] = torch.randint(0, cfg.text_vocab, (batch, cfg.text_len))
    gap = scale = 0.0
    caches = eager.new_cache(batch), compiled.new_cache(batch)
    first = cfg.text_len + 1
    eager(stream[:, :first], 0, caches[0])
    compiled(stream[:, :first], 0, caches[1])
    for p in range(first, cfg.seq_len):
        a = eager(stream[:, p : p + 1], p, caches[0]).image.float()
        b = compiled(stream[:, p : p + 1], p, caches[1]).image.float()
        gap, scale = max(gap, (a - b).abs().max().item()), max(scale, a.abs().max().item())
    return gap / scale


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--random", action="store_true", help="random 11M model, not the bundle")
    parser.add_argument("--precision", nargs="*", default=["fp32", "int8"])
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.random:
        reference = random_transformer(320, 8, 8, 16, 32, 1024, "cpu")
    else:
        reference = bundle_io.load(None, "cpu").transformer.eval()
    cfg = reference.config
    print(
        f"{reference.num_parameters() / 1e6:.2f}M parameters, dim {cfg.dim} depth {cfg.depth}, "
        f"{torch.get_num_threads()} thread(s); seconds are the best of {args.repeats}"
    )
    print(
        f"{'precision':9s} {'task':8s} {'batch':>5s} {'eager s':>8s} {'compiled s':>10s} "
        f"{'speed-up':>8s} {'compile s':>9s}  same tokens  logit gap"
    )
    grid = cfg.grid
    for precision in args.precision:
        eager = prepared(reference, precision)
        compiled = prepared(reference, precision, compile=True)
        for batch in args.batch:
            half = grid // 2
            for task, plan in (("full", Plan(grid, 0, 0)), ("quarter", Plan(grid, half, half))):
                before = time_sampling(eager, plan, batch, args.repeats)["seconds"]
                started = time.perf_counter()
                same = torch.equal(tokens(compiled, plan, batch), tokens(eager, plan, batch))
                first = time.perf_counter() - started  # includes compiling a new batch size
                after = time_sampling(compiled, plan, batch, args.repeats)["seconds"]
                if compiled.decode_step.failure:
                    raise SystemExit(f"compiling failed: {compiled.decode_step.failure}")
                print(
                    f"{precision:9s} {task:8s} {batch:5d} {before:8.3f} {after:10.3f} "
                    f"{before / after:7.2f}x {first:9.1f}  {str(same):11s}  "
                    f"{logit_gap(eager, compiled, batch):.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
