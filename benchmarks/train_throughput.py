"""Training throughput of the dVAE and the transformer, against a matmul peak measured in-run.

Times forward + backward + AdamW steps on random data and reports samples/s, tokens/s and
achieved FLOP/s (forward+backward FLOPs counted by torch.utils.flop_counter) as a fraction of the
best large fp32 matmul rate measured on the same device in the same run.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--threads N] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import DVAEConfig, TransformerConfig  # noqa: E402
from model.networks.dvae import DVAE  # noqa: E402
from model.networks.transformer import Transformer  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype=torch.float32, n=2048, repeats=5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def time_training(model, loss_fn, steps, device) -> tuple[float, float]:
    """(best seconds per step, FLOPs per step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with FlopCounterMode(display=False) as counter:
        loss_fn()["loss"].backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)
    best = float("inf")
    for _ in range(steps):
        sync(device)
        started = time.perf_counter()
        loss_fn()["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        best = min(best, time.perf_counter() - started)
    return best, flops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    peak = matmul_peak(device)
    results = {"device": str(device), "threads": torch.get_num_threads(), "matmul_peak": peak}

    vae_cfg = DVAEConfig()
    vae = DVAE(vae_cfg).to(device).train()
    images = torch.rand(args.batch, 3, vae_cfg.image_size, vae_cfg.image_size, device=device)
    seconds, flops = time_training(
        vae, lambda: vae.loss(images, tau=1.0, beta=1.0), args.steps, device
    )
    results["dvae"] = {
        "images_per_s": args.batch / seconds,
        "flop_per_s": flops / seconds,
        "fraction_of_peak": flops / seconds / peak,
    }

    cfg = TransformerConfig(dim=320, depth=8, heads=8)
    transformer = Transformer(cfg).to(device).train()
    text = torch.randint(0, cfg.text_vocab, (args.batch, cfg.text_len), device=device)
    image = torch.randint(0, cfg.image_vocab, (args.batch, cfg.image_len), device=device)
    seconds, flops = time_training(
        transformer, lambda: transformer.loss(text, image), args.steps, device
    )
    results["transformer"] = {
        "tokens_per_s": args.batch * cfg.seq_len / seconds,
        "flop_per_s": flops / seconds,
        "fraction_of_peak": flops / seconds / peak,
    }
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
