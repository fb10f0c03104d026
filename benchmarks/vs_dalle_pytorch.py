"""Side by side: DALLE-pytorch 1.6.6's ``generate_images`` against our sampler, matching sizes.

Both models get random weights and the same dim, depth, heads, head size, 16x16 grid, text length
and vocabularies; both sample every token at temperature 1. Timed tasks: a full image (256 sampled
tokens) and a quarter (64 sampled tokens: ours the bottom-right 8x8 rectangle, theirs the last four
rows after priming with ``num_init_img_tokens`` = 192, which is the completion DALLE-pytorch
offers), at batch 1 and 8. Their VAE decode is left out of the timing (ours is not timed either).

    pip install -e '.[bench]'   # dalle-pytorch 1.6.6 without its heavy dependencies
    python benchmarks/vs_dalle_pytorch.py --threads 1 [--json out.json]

Their ``import`` pulls in taming-transformers, omegaconf, requests, youtokentome, webdataset, ftfy
and transformers for VAE and tokenizer classes this benchmark never uses; they are stubbed below.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.evaluation.bench import random_transformer, time_sampling  # noqa: E402
from model.files import write_text  # noqa: E402
from model.geometry import Plan  # noqa: E402
from model.inference.sampling import prepared  # noqa: E402
from model.networks.transformer import layer_kinds  # noqa: E402


def stub_unused_imports() -> None:
    """Empty modules for the imports dalle_pytorch makes but the DALLE class never uses."""
    names = {
        "taming": {},
        "taming.models": {},
        "taming.models.vqgan": {"VQModel": object, "GumbelVQ": object},
        "omegaconf": {"OmegaConf": object},
        "requests": {},
        "youtokentome": {},
        "webdataset": {},
        "ftfy": {"fix_text": lambda s: s},
        "transformers": {"BertTokenizer": object},
        "torchvision": {},
        "torchvision.transforms": {},
    }
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        names["pkg_resources"] = {"get_distribution": lambda name: types.SimpleNamespace()}
    for name, attrs in names.items():
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
    if "torchvision" in sys.modules and not hasattr(sys.modules["torchvision"], "transforms"):
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]


def their_model(dim, depth, heads, grid, text_len, vocab):
    stub_unused_imports()
    from dalle_pytorch import DALLE, DiscreteVAE

    layers = 0
    while 2**layers * grid < 128:
        layers += 1
    vae = DiscreteVAE(
        image_size=grid * 2**layers,
        num_layers=layers,
        num_tokens=vocab,
        codebook_dim=64,
        hidden_dim=16,
    )
    # our schedule in their names; 'optimize_for_inference' makes the axial layers cacheable
    names = {"row": "axial_row", "column": "axial_col", "conv": "conv_like"}
    torch.manual_seed(0)
    dalle = DALLE(
        dim=dim,
        vae=vae,
        num_text_tokens=vocab,
        text_seq_len=text_len,
        depth=depth,
        heads=heads,
        dim_head=dim // heads,
        attn_types=tuple(names[k] for k in layer_kinds(depth)),
        optimize_for_inference=True,
    ).eval()
    return dalle


def time_theirs(dalle, grid, text_len, vocab, batch, cells, use_cache) -> dict:
    device = next(dalle.parameters()).device
    text = torch.randint(1, vocab, (batch, text_len), device=device)
    size = dalle.vae.image_size
    image = torch.zeros(batch, 3, size, size, device=device) if cells < grid * grid else None
    primed = torch.randint(0, vocab, (batch, grid * grid), device=device)
    dalle.vae.get_codebook_indices = lambda img: primed[: img.shape[0]]
    dalle.vae.decode = lambda seq: seq  # leave their VAE decoder out of the timing
    # on a GPU both sides sample in bf16: ours as bf16 weights (`--precision auto`), theirs under
    # autocast, which is how DALLE-pytorch's own generate script runs fp16/bf16
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode(), autocast:
        dalle.generate_images(
            text,
            img=image,
            num_init_img_tokens=grid * grid - cells,
            filter_thres=0.0,
            use_cache=use_cache,
        )
    sync(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens_per_s": batch * cells / seconds}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (there: bf16 for both)")
    parser.add_argument("--repeats", type=int, default=3, help="ours; theirs runs once (slow)")
    parser.add_argument(
        "--tasks", nargs="*", default=["full", "quarter"], choices=["full", "quarter"]
    )
    parser.add_argument("--skip-uncached", action="store_true", help="skip their use_cache=False")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    a = args
    device = torch.device(a.device)
    dalle = their_model(a.dim, a.depth, a.heads, a.grid, a.text_len, a.vocab).to(device)
    reference = random_transformer(a.dim, a.depth, a.heads, a.grid, a.text_len, a.vocab, device)
    # CPU: fp32 and int8 weights; CUDA: fp32 and bf16 (int8 weights are a CPU kernel)
    reduced = "bf16" if device.type == "cuda" else "int8"
    ours = {p: prepared(reference, p) for p in ("fp32", reduced)}
    theirs_params = sum(p.numel() for n, p in dalle.named_parameters() if not n.startswith("vae."))
    print(
        f"DALLE-pytorch {theirs_params / 1e6:.2f}M vs ours {reference.num_parameters() / 1e6:.2f}M"
        f" parameters; dim {a.dim} depth {a.depth} heads {a.heads} grid {a.grid} text {a.text_len}"
        f"; {device}, {torch.get_num_threads()} threads",
        flush=True,
    )
    rows = []
    for batch in a.batch:
        for task, plan in (
            ("full", Plan(a.grid, 0, 0)),
            ("quarter", Plan(a.grid, a.grid // 2, a.grid // 2)),
        ):
            if task not in a.tasks:
                continue
            row = {"task": task, "batch": batch, "cells": plan.cells}
            for precision, model in ours.items():
                row[f"ours_{precision}"] = time_sampling(model, plan, batch, a.repeats)[
                    "tokens_per_s"
                ]
            row["theirs_cache"] = time_theirs(
                dalle, a.grid, a.text_len, a.vocab, batch, plan.cells, True
            )["tokens_per_s"]
            if not a.skip_uncached:
                row["theirs_no_cache"] = time_theirs(
                    dalle, a.grid, a.text_len, a.vocab, batch, plan.cells, False
                )["tokens_per_s"]
            row["ratio_fp32"] = row["ours_fp32"] / row["theirs_cache"]
            row[f"ratio_{reduced}"] = row[f"ours_{reduced}"] / row["theirs_cache"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\n{'task':8s} {'batch':>5s} {'theirs':>8s} {'theirs':>8s} {'ours':>8s} {'ours':>8s}"
        f" {'fp32/':>7s} {reduced + '/':>7s}\n{'':14s} {'no cache':>8s} {'cache':>8s}"
        f" {'fp32':>8s} {reduced:>8s} {'cache':>7s} {'cache':>7s}   (tokens/s)"
    )
    for r in rows:
        print(
            f"{r['task']:8s} {r['batch']:5d} {r.get('theirs_no_cache', float('nan')):8.1f}"
            f" {r['theirs_cache']:8.1f} {r['ours_fp32']:8.0f} {r[f'ours_{reduced}']:8.0f}"
            f" {r['ratio_fp32']:6.1f}x {r[f'ratio_{reduced}']:6.1f}x"
        )
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
