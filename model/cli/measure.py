"""``dalle eval`` and ``dalle bench``: how good a bundle is, and how fast it samples.

The measuring is ``model/evaluation/evaluate.py``'s and ``model/evaluation/bench.py``'s; this module
checks the flags, loads the model, shows progress and prints (and writes) what they return.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

from model.cli.common import (
    CLIError,
    ProgressBar,
    check_can_create,
    load_bundle,
    output_folder,
    save_result,
)

# -- eval --------------------------------------------------------------------------------------


def cmd_eval(args) -> int:
    from model.config import SamplingOptions
    from model.evaluation import evaluate

    # --samples is the candidates per caption; each run's seed follows from --seed
    sampling = SamplingOptions.from_args(args, validate=False, n=args.samples, seed=None)
    config = evaluate.EvalConfig(
        count=args.count,
        recon_count=args.recon_count,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
        sampling=sampling,
    )
    try:
        config.validate()
    except ValueError as error:
        raise CLIError(str(error)) from None
    if args.data is not None and args.sheets:
        raise CLIError("--sheets draws scenes; it cannot be used with --data")
    folders = [Path(args.json).resolve().parent] if args.json else []
    folders += [Path(args.sheets)] if args.sheets else []
    for folder in folders:
        check_can_create(folder)  # nothing is created before the bundle has loaded
    bundle = load_bundle(args.bundle, args.device)
    with ExitStack() as made:
        for folder in folders:
            made.enter_context(output_folder(folder))
        if args.data is not None:
            return eval_folder(args, bundle)
        return eval_scenes(args, config, bundle)


def eval_folder(args, bundle) -> int:
    """``dalle eval --data``: the figures a user's own caption folder allows."""
    from model.evaluation import eval_report, evaluate

    try:
        report = evaluate.evaluate_folder(bundle, args.data, args.recon_count)
    except (OSError, ValueError) as error:
        raise CLIError(str(error)) from None
    print(eval_report.format_folder_report(report))
    if args.json:
        eval_report.write_json(report, Path(args.json))
        print(args.json)
    return 0


def eval_scenes(args, config, bundle) -> int:
    """``dalle eval``: every section on fresh scenes, a progress bar per split."""
    from model.evaluation import eval_report, evaluate

    def progress(split: str, total: int):
        if args.quiet:
            return None
        bar = ProgressBar(total, f"eval {split}", "runs")
        done = [0]

        def tick():
            done[0] += 1
            bar.update(done[0])
            if done[0] == total:
                bar.close()

        return tick

    sheets = {} if args.sheets else None
    report = evaluate.evaluate(bundle, config, progress, sheets)
    print(eval_report.format_report(report))
    if args.json:
        eval_report.write_json(report, Path(args.json))
        print(args.json)
    for name, sheet in (sheets or {}).items():
        path = Path(args.sheets) / f"{name}.png"
        save_result(sheet, path)
        print(path)
    return 0


# -- bench -------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    try:
        summary = bench(args)
    except ValueError as error:
        raise CLIError(str(error)) from None
    if args.json:
        print(json.dumps(summary))
    else:
        print_bench(summary)
    return 0


def bench(args) -> dict:
    """The model ``dalle bench`` times (a bundle's transformer, or random weights of the flags'
    size) and its figures (``model.evaluation.bench.measure``)."""
    import torch

    from model.device import pick_device
    from model.evaluation import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.random:
        for name in ("dim", "depth", "heads", "grid", "text_len", "vocab"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        transformer = bench.random_transformer(
            args.dim, args.depth, args.heads, args.grid, args.text_len, args.vocab, device
        )
        source = "random weights"
    loading = {}
    if args.repeats <= 0:
        raise ValueError("--repeats must be positive")
    batches = args.batch or [1, 8]
    if any(b <= 0 for b in batches):
        raise ValueError("--batch sizes must be positive")
    if not args.random:
        started = time.perf_counter()
        bundle = load_bundle(args.bundle, args.device)
        loading = {
            "load_seconds": time.perf_counter() - started,
            "peak_memory_after_load_mb": bench.peak_memory_mb(device),
        }
        transformer = bundle.transformer
        source = str(bundle.path)
    summary = bench.measure(
        transformer, source, device, batches, args.repeats, args.precision, args.compile
    )
    return {**summary, **loading}


def print_bench(summary: dict) -> None:
    """``bench.measure``'s figures as a table."""
    compiled = ", compiled" if summary["compiled"] else ""
    print(
        f"model {summary['model']}: {summary['parameters'] / 1e6:.2f}M parameters, "
        f"{summary['config']}"
    )
    print(
        f"device {summary['device']}, {summary['threads']} threads, precision "
        f"{summary['precision']}{compiled}"
    )
    if "load_seconds" in summary:
        print(
            f"loaded in {summary['load_seconds']:.1f} s (peak memory "
            f"{summary['peak_memory_after_load_mb']:,.0f} MiB); converted to "
            f"{summary['precision']} in {summary['convert_seconds']:.1f} s"
        )
    print(
        f"{'task':8s} {'batch':>5s} {'cells':>5s} {'seconds':>8s} {'s/image':>8s} "
        f"{'tokens/s':>9s} {'ms/step':>8s} {'GB/s':>6s} {'of copy':>7s}"
    )
    for r in summary["runs"]:
        print(
            f"{r['task']:8s} {r['batch']:5d} {r['cells']:5d} {r['seconds']:8.3f} "
            f"{r['seconds_per_image']:8.3f} {r['tokens_per_s']:9.0f} {r['ms_per_step']:8.2f} "
            f"{r['step_gb_per_s']:6.1f} {r['fraction_of_copy_bandwidth']:7.0%}"
        )
    print(
        f"peak memory {summary['peak_memory_mb']:.0f} MiB; GB/s: the weights and key/value "
        f"windows one step reads, per step time; copy bandwidth "
        f"{summary['copy_bandwidth_gb_per_s']:.1f} GB/s"
    )
