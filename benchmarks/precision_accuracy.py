"""Accuracy of the bf16 and int8 inference copies against fp32, on one model.

For a bundle (``--bundle``) or a random model of a given size, teacher-forces the same streams
through each precision and reports the largest logit difference (absolute, and relative to the
largest fp32 logit), top-1 agreement, the mean KL divergence of the next-token distributions from
fp32's, and, sampling with a fixed seed, how many tokens match fp32's before the first difference
(after one, the contexts differ and so do the rest).

    python benchmarks/precision_accuracy.py [--bundle B] [--spread 0.15]

Random weights at the init's 0.02 spread give near-uniform logits; ``--spread`` redraws the
matrices wider so that the distributions are peaked, as a trained model's are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import SamplingOptions  # noqa: E402
from model.evaluation.bench import random_transformer  # noqa: E402
from model.geometry import Plan  # noqa: E402
from model.inference.sampling import prepared, run, sample_tokens  # noqa: E402


@torch.inference_mode()
def compare(reference, precision: str, streams: torch.Tensor, seed: int) -> dict:
    model = prepared(reference, precision)
    exact = reference(streams).image.float()
    approx = model(streams).image.float()
    diff = (approx - exact).abs()
    kl = torch.nn.functional.kl_div(
        approx.log_softmax(-1), exact.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    cfg = reference.config
    text = streams[0, : cfg.text_len]
    grid = torch.zeros(cfg.grid, cfg.grid, dtype=torch.long)
    options = SamplingOptions(n=4, seed=seed)
    a = run(sample_tokens(reference, text, grid, Plan(cfg.grid, 0, 0), options)).tokens
    b = run(sample_tokens(model, text, grid, Plan(cfg.grid, 0, 0), options)).tokens
    same = (a.flatten(1) == b.flatten(1)).int()
    prefix = [int(s.cumprod(0).sum()) for s in same]
    return {
        "precision": precision,
        "max_abs_logit_diff": float(diff.max()),
        "max_rel_logit_diff": float(diff.max() / exact.abs().max()),
        "top1_agreement": float((approx.argmax(-1) == exact.argmax(-1)).float().mean()),
        "mean_kl": float(kl.mean()),
        "sampled_prefix_equal": prefix,
        "sampled_cells": cfg.image_len,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a trained bundle (default: random weights)")
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--spread", type=float, default=None, help="redraw matrices N(0, s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.bundle:
        from model import bundle as bundles

        reference = bundles.load(args.bundle, "cpu").transformer.eval()
    else:
        reference = random_transformer(
            args.dim, args.depth, args.heads, args.grid, args.text_len, 1024, torch.device("cpu")
        )
        if args.spread:
            with torch.no_grad():
                for p in reference.parameters():
                    if p.dim() > 1:
                        p.normal_(0, args.spread)
    cfg = reference.config
    g = torch.Generator().manual_seed(args.seed)
    text = torch.randint(0, cfg.text_vocab, (8, cfg.text_len), generator=g)
    image = torch.randint(0, cfg.image_vocab, (8, cfg.image_len), generator=g)
    streams = reference.stream(text, image)
    for precision in ("bf16", "int8"):
        print(json.dumps(compare(reference, precision, streams, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
