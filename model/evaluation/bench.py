"""``dalle bench``: sampling speed of a bundle's transformer or of a random model of any size.

Measures tokens/s and latency for a full image and for a quarter-image completion (the
bottom-right quarter: an 8x8-cell rectangle on a 16x16 grid) at each batch size, the memory
bandwidth each step reaches against what a large copy reaches on the same device, and peak memory;
the command line prints them, with the bundle's load time. Figures only: nothing here asserts a
time.

Any model with the sampler's interface is measured: our ``Transformer`` or an imported
``BartDalle`` (DALL·E Mega / Mini). A model of more than ``LARGE_MODEL`` parameters warms up on
one grid row instead of a whole run, so that a measurement of Mega costs one run, not two.
``random_bart_bundle`` writes a full-size random-weight Mega or Mini bundle to measure without
the released files (benchmarks/README.md, "DALL·E Mega and Mini on this CPU").
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch

from model.config import SamplingOptions, TransformerConfig, conv_kernel_for
from model.geometry import Plan
from model.inference.sampling import prepared, run, sample_tokens
from model.networks.precision import model_device

# a model this large warms up on one row, not a whole run (DALL·E Mini has 0.44B parameters)
LARGE_MODEL = 10**8


def random_transformer(dim, depth, heads, grid, text_len, vocab, device):
    from model.networks.transformer import Transformer

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


def captions(config) -> tuple[torch.Tensor, torch.Tensor]:
    """A random full-length caption and the unconditional one, as the model's tokenizer would
    give them: our per-position padding ids, or BART's ``<s></s>`` padded with ``pad_id``."""
    generator = torch.Generator().manual_seed(0)
    if hasattr(config, "pad_id"):  # a BartConfig: <s> 0, </s> 2, BPE ids from 4
        text = torch.randint(4, config.text_vocab, (config.text_len,), generator=generator)
        empty = torch.full((config.text_len,), config.pad_id)
        empty[0], empty[1] = 0, 2
        return text, empty
    text = torch.randint(0, config.text_vocab, (config.text_len,), generator=generator)
    return text, torch.arange(config.text_vocab, config.text_vocab + config.text_len)


def time_sampling(
    transformer,
    plan: Plan,
    batch: int,
    repeats: int,
    guidance: float = 1.0,
    use_cache: bool = True,
    warmup: Plan | None = None,
) -> dict:
    """Best and median of ``repeats`` runs of ``plan`` at ``batch`` rows, after one warm-up run
    of ``warmup`` (default: ``plan`` itself)."""
    cfg = transformer.config
    text, empty = captions(cfg)
    image = torch.randint(0, cfg.image_vocab, (cfg.grid, cfg.grid))
    options = SamplingOptions(n=batch, seed=0, guidance=guidance)
    device = model_device(transformer)

    def once(plan: Plan) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run(sample_tokens(transformer, text, image, plan, options, empty, use_cache=use_cache))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    once(warmup or plan)  # warm-up: allocator, kernels, caches
    seconds = [once(plan) for _ in range(repeats)]
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
    from model.networks.precision import Int8Linear

    bart = hasattr(transformer.config, "pad_id")  # BartDalle: a step runs the decoder only
    total = 0
    for name, module in transformer.named_modules():
        if name == "to_text" or (bart and not name.startswith("decoder")):
            continue  # image steps never run our text head, nor BART's encoder
        if isinstance(module, Int8Linear):
            if batch <= module.int8_rows_max:
                total += module.weight.numel() + 2 * module.scale.numel()
            elif module.dense is not None:
                total += module.dense.numel() * module.dense.element_size()
            else:  # the int8 weights read, widened to bf16 (written, then read by the matmul)
                total += 5 * module.weight.numel()
            if module.bias is not None:
                total += module.bias.numel() * module.bias.element_size()
        elif isinstance(module, torch.nn.Linear | torch.nn.LayerNorm):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    cfg = transformer.config
    cache = transformer.new_cache(1).layers[0]
    if bart:  # every cached slot (masked) and the caption's cross keys and values, per layer
        window = cfg.image_len + cfg.text_len
        return total + cfg.depth * 2 * batch * cfg.dim * window * cache.element_size()
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
    started = time.perf_counter()
    transformer = prepared(transformer, precision, compile)
    convert_seconds = time.perf_counter() - started
    grid = transformer.config.grid
    warmup = Plan(grid, grid - 1, 0) if parameters > LARGE_MODEL else None  # one row
    runs = []
    for batch in batches:
        for name, plan in (
            ("full", Plan(grid, 0, 0)),
            ("quarter", Plan(grid, grid // 2, grid // 2)),
        ):
            result = time_sampling(transformer, plan, batch, repeats, warmup=warmup)
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
        "kind": type(transformer).__name__,
        "device": str(device),
        "precision": transformer.precision,
        "convert_seconds": convert_seconds,
        "compiled": compile and getattr(transformer.decode_step, "failure", True) is None,
        "threads": torch.get_num_threads(),
        "tokens_per_s": full[0]["tokens_per_s"],
        "seconds_per_image": full[0]["seconds_per_image"],
        "peak_memory_mb": peak_memory,
        "copy_bandwidth_gb_per_s": bandwidth / 1e9,
        "runs": runs,
    }


def random_bart_bundle(
    config,
    path,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    vocab_size: int = 50265,
    vqgan=None,
):
    """Write a random-weight bundle of ``config`` (a ``BartConfig``: ``model.networks.bart.MEGA`` or
    ``MINI``) to ``path``: the layout ``dalle import`` writes, at full size, without the released
    files. The transformer is built on the meta device and filled in ``dtype`` tensor by tensor
    (Mega: 5.2 GB in bf16, never twice); the VQGAN is dalle-mini's f16-16384 shape, fp32; the
    caption tokenizer a stand-in BART vocabulary of ``vocab_size`` ids (BART's has 50265).
    ``vqgan``: another ``VQGANConfig`` (tests). The weights are N(0, 0.02) (LayerNorms 1 and 0):
    only for timing and memory."""
    from model.bundle import Bundle, save
    from model.config import BartTextConfig, BundleConfig, VQGANConfig
    from model.networks.bart import BartDalle
    from model.networks.precision import precision_of
    from model.networks.vqgan import VQGAN
    from model.tokenizers.bart_text import BartTokenizer

    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        transformer = BartDalle(config)
    state = {}
    for name, shaped in transformer.state_dict().items():
        if shaped.dim() == 1:  # LayerNorms: no projection has a bias
            fill = 1.0 if name.endswith("weight") else 0.0
            state[name] = torch.full(shaped.shape, fill, dtype=dtype)
        else:
            weight = torch.empty(shaped.shape, dtype=dtype)
            state[name] = weight.normal_(0, 0.02, generator=generator)
    transformer.load_state_dict(state, assign=True)
    del state
    transformer.precision = precision_of(transformer)
    vqgan = VQGAN(vqgan or VQGANConfig()).eval()  # torch's default init (80M parameters), fp32

    vocab_size = min(vocab_size, config.text_vocab + 1)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Ġ": 4}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for letter in letters:
        vocab[letter], vocab["Ġ" + letter] = len(vocab), len(vocab) + 1
    while len(vocab) < vocab_size:
        vocab[f"Ġw{len(vocab)}"] = len(vocab)
    tokenizer = BartTokenizer(vocab, [("Ġ", letter) for letter in letters], config.text_len)
    bundle_config = BundleConfig(
        vae=vqgan.config,
        text=BartTextConfig(vocab_size=tokenizer.vocab_size, text_len=config.text_len),
        transformer=config,
    )
    card = {
        "name": f"random-weight BART ({transformer.num_parameters() / 1e9:.2f}B, benchmarks only)",
        "parameters": transformer.num_parameters(),
    }
    return save(Bundle(bundle_config, vqgan, transformer.eval(), tokenizer, card=card), path)
