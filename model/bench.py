"""``dalle bench``: sampling speed of a bundle's transformer or of a random model of any size.

Measures tokens/s and latency for a full image and for a quarter-image completion (the
bottom-right quarter) at each batch size, the memory bandwidth each step reaches against what a
large copy reaches on the same device, and peak memory; the command line prints them. Figures
only: nothing here asserts a time.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch

from model.config import SamplingOptions, TransformerConfig, conv_kernel_for
from model.geometry import Plan
from model.sampling import prepared, run, sample_tokens


def random_transformer(dim, depth, heads, grid, text_len, vocab, device):
    from model.transformer import Transformer

    config = TransformerConfig(
        text_vocab=vocab,
        text_len=text_len,
        image_vocab=vocab,
        grid=grid,
        dim=dim,
        depth=depth,
        heads=heads,
        conv_kernel=conv_kernel_for(grid),
    )
    torch.manual_seed(0)
    return Transformer(config).to(device).eval()


def time_sampling(
    transformer, plan: Plan, batch: int, repeats: int, guidance: float = 1.0, use_cache: bool = True
) -> dict:
    cfg = transformer.config
    text = torch.randint(0, cfg.text_vocab, (cfg.text_len,))
    empty = torch.arange(cfg.text_vocab, cfg.text_vocab + cfg.text_len)
    image = torch.randint(0, cfg.image_vocab, (cfg.grid, cfg.grid))
    options = SamplingOptions(n=batch, seed=0, guidance=guidance)
    device = transformer.ln_f.weight.device

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run(sample_tokens(transformer, text, image, plan, options, empty, use_cache=use_cache))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    once()  # warm-up: allocator, kernels, caches
    seconds = [once() for _ in range(repeats)]
    best = min(seconds)
    return {
        "cells": plan.cells,
        "batch": batch,
        "seconds": best,
        "seconds_median": statistics.median(seconds),
        "seconds_per_image": best / batch,
        "tokens_per_s": plan.cells * batch / best,
        "ms_per_step": 1000 * best / plan.cells,
    }


def step_bytes(transformer, batch: int) -> int:
    """Bytes one one-cell decode step must read from memory: every weight on the image path
    once (int8 weights and scales up to ``Int8Linear.int8_rows_max`` rows, their bf16 copy
    above), plus each layer's gathered key/value window. Embedding rows and activations are
    left out (under 0.1%). Divided by the step's time this is the bandwidth the step reaches."""
    from model.transformer import Int8Linear

    total = 0
    for name, module in transformer.named_modules():
        if name == "to_text":  # image steps never run the text head
            continue
        if isinstance(module, Int8Linear):
            if batch <= module.int8_rows_max:
                total += module.weight.numel() + 2 * module.scale.numel()
            else:
                total += module.dense.numel() * module.dense.element_size()
            if module.bias is not None:
                total += module.bias.numel() * module.bias.element_size()
        elif isinstance(module, torch.nn.Linear | torch.nn.LayerNorm):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    cfg = transformer.config
    cache = transformer.new_cache(1).layers[0]
    for kind in transformer.kinds:
        window = getattr(transformer, f"keys_{kind}").shape[1]
        total += 2 * batch * cfg.dim * window * cache.element_size()  # keys and values
    return total


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s that a large tensor copy reaches on ``device`` with the
    current thread count: bytes read plus bytes written, best of ``repeats``."""
    source = torch.ones(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass faults the pages in
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        target.copy_(source)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * 4 / best


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def measure(
    transformer,
    source: str,
    device: torch.device,
    batches: list[int],
    repeats: int,
    precision: str = "auto",
    compile: bool = False,
) -> dict:
    """Every figure of ``dalle bench`` for ``transformer`` (``source`` names it; it is on
    ``device``), as one JSON-ready dict: a full image and a quarter-image completion at each
    batch size, best of ``repeats``, with the memory bandwidth each step reaches against a large
    copy's."""
    parameters = transformer.num_parameters()  # counted before int8 turns weights into buffers
    transformer = prepared(transformer, precision, compile)
    grid = transformer.config.grid
    runs = []
    for batch in batches:
        for name, plan in (
            ("full", Plan(grid, 0, 0)),
            ("quarter", Plan(grid, grid // 2, grid // 2)),
        ):
            result = time_sampling(transformer, plan, batch, repeats)
            moved = step_bytes(transformer, batch) / (result["ms_per_step"] / 1000)
            runs.append({"task": name, **result, "step_gb_per_s": moved / 1e9})
    peak_memory = peak_memory_mb(device)  # before the copy below allocates its buffers
    bandwidth = copy_bandwidth(device)
    for r in runs:
        r["fraction_of_copy_bandwidth"] = r["step_gb_per_s"] * 1e9 / bandwidth
    full = [r for r in runs if r["task"] == "full"]
    return {
        "model": source,
        "parameters": parameters,
        "config": {
            k: getattr(transformer.config, k) for k in ("dim", "depth", "heads", "grid", "text_len")
        },
        "device": str(device),
        "precision": transformer.precision,
        "compiled": compile and getattr(transformer.decode_step, "failure", True) is None,
        "threads": torch.get_num_threads(),
        "tokens_per_s": full[0]["tokens_per_s"],
        "seconds_per_image": full[0]["seconds_per_image"],
        "peak_memory_mb": peak_memory,
        "copy_bandwidth_gb_per_s": bandwidth / 1e9,
        "runs": runs,
    }
