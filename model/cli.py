"""The ``dalle`` command line: generation, completion, data, training, bundles and bench.

Every command checks its input before doing any work, exits non-zero with a one-line reason on
bad input, and writes each output file through a temporary name, so nothing is left half-written.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dalle")


class CLIError(Exception):
    """Bad input: printed as one line, exit status 2."""


# -- small helpers -----------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per 10% else)."""

    def __init__(self, total: int, label: str, unit: str = "it", stream=None):
        self.total = max(1, total)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()
        self.last_decile = -1

    def update(self, done: int, extra: str = "") -> None:
        fraction = min(1.0, done / self.total)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / fraction - elapsed if fraction > 0 else float("nan")
        filled = int(fraction * 24)
        text = (
            f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total} {self.unit}"
            f" {elapsed:.1f}s eta {eta:.1f}s {extra}"
        )
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
            self.stream.flush()
        elif int(fraction * 10) > self.last_decile:
            self.last_decile = int(fraction * 10)
            self.stream.write(text + "\n")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def parse_pair(text: str, what: str) -> tuple[int, int]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2:
        raise CLIError(f"{what} must be two integers 'A,B', got {text!r}")
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        raise CLIError(f"{what} must be two integers 'A,B', got {text!r}") from None
    if a < 0 or b < 0:
        raise CLIError(f"{what} must not be negative, got {text!r}")
    return a, b


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written there, leaving nothing behind."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dalle-check-"):
            pass
    except OSError as error:
        raise CLIError(f"cannot write to output folder {path}: {error.strerror or error}") from None


def save_png_atomic(image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_bundle(path: str | None, device: str = "auto"):
    from model.bundle import BundleError, default_bundle_path, load
    from model.train import pick_device

    bundle_path = Path(path) if path else default_bundle_path()
    try:
        return load(bundle_path, device=pick_device(device))
    except BundleError as error:
        hint = "" if path else " (pass --bundle PATH to use another model)"
        raise CLIError(f"{error}{hint}") from None
    except ValueError as error:
        raise CLIError(str(error)) from None


def sampling_options(args):
    from model.config import SamplingOptions

    options = SamplingOptions(
        n=args.n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance=args.guidance,
        seed=args.seed,
    )
    try:
        options.validate()
    except ValueError as error:
        raise CLIError(str(error)) from None
    return options


def check_caption(caption: str, bundle=None) -> str:
    if not caption or not caption.strip():
        raise CLIError("the caption is empty: describe what the region should show")
    return caption.strip()


def run_with_progress(messages, label: str, quiet: bool):
    from model.sampling import Cancelled, Done, Progress

    bar = None
    for message in messages:
        if isinstance(message, Progress):
            if bar is None and not quiet:
                bar = ProgressBar(message.rows_total, label, "rows")
            if bar is not None:
                bar.update(message.rows_done, f"{message.tokens_per_s:.0f} tok/s")
        elif isinstance(message, Done):
            if bar is not None:
                bar.close()
            return message
        elif isinstance(message, Cancelled):
            raise CLIError("sampling was cancelled")
    raise CLIError("sampling ended without a result")


# -- generate / complete -----------------------------------------------------------------------


def numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix or '.png'}")


def cmd_generate(args) -> int:
    from model.images import to_pil
    from model.sampling import generate

    caption = check_caption(args.caption)
    options = sampling_options(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CLIError(f"--out must name a .png file, got {out}")
    check_writable_dir(out.parent if str(out.parent) else Path("."))
    bundle = load_bundle(args.bundle, args.device)
    done = run_with_progress(
        generate(bundle, caption, options, precision=args.precision, compile=args.compile),
        "generate",
        args.quiet,
    )
    for i, image in enumerate(done.images):
        path = numbered(out, i, options.n)
        save_png_atomic(to_pil(image), path)
        print(path)
    log.info("seed %d, %.2fs, %.0f tokens/s", done.seed, done.seconds, done.tokens_per_s)
    return 0


@dataclass
class Job:
    image: Path
    caption: str
    cell: tuple[int, int] | None = None
    pixel: tuple[int, int] | None = None
    line: int | None = None  # the CSV line, for messages


def prepare_job(job: Job, bundle):
    """Validate a job before any sampling: returns (original, tensor, placement, cell)."""
    from model.images import ImageError, load_image, to_model

    where = f"line {job.line}: " if job.line is not None else ""
    try:
        original = load_image(job.image)
    except ImageError as error:
        raise CLIError(f"{where}{error}") from None
    caption = check_caption(job.caption)
    size = bundle.config.vae.image_size
    factor = bundle.config.vae.factor
    grid = bundle.config.transformer.grid
    tensor, placement = to_model(original, size)
    if job.pixel is not None:
        x, y = job.pixel
        if x >= original.width or y >= original.height:
            raise CLIError(
                f"{where}pixel ({x}, {y}) is outside the {original.width}x{original.height} image"
                f" {job.image}"
            )
        cell = placement.cell_at(x, y, factor)
    else:
        cell = job.cell
        if not (cell[0] < grid and cell[1] < grid):
            raise CLIError(
                f"{where}cell {cell[0]},{cell[1]} is outside the {grid}x{grid} token grid"
            )
    rows, cols = placement.visible_grid(factor)
    if not placement.grid_covers_image(cell, factor) or cell[0] >= rows or cell[1] >= cols:
        raise CLIError(
            f"{where}the rectangle from cell {cell[0]},{cell[1]} lies in the padding beside"
            f" {job.image}, not on the image"
        )
    return original, tensor, placement, cell, caption


def run_job(
    job: Job,
    prepared,
    bundle,
    options,
    out_dir: Path,
    feather: int,
    quiet: bool,
    precision: str = "auto",
    compile: bool = False,
):
    from model.images import paste_back
    from model.sampling import complete

    original, tensor, placement, cell, caption = prepared
    factor = bundle.config.vae.factor
    visible = placement.visible_grid(factor)  # padding cells of the rectangle are not sampled
    done = run_with_progress(
        complete(
            bundle,
            tensor,
            cell,
            caption,
            options,
            precision=precision,
            compile=compile,
            visible=visible,
        ),
        job.image.name,
        quiet,
    )
    paths = []
    for i, image in enumerate(done.images):
        result = paste_back(original, image, placement, cell, factor, feather)
        prefix = f"{job.line:04d}-" if job.line is not None else ""  # batch: one name per job
        path = out_dir / f"{prefix}{job.image.stem}-{i}.png"
        save_png_atomic(result, path)
        paths.append(path)
    return paths, done


def read_jobs(path: Path) -> list[Job]:
    if not path.is_file():
        raise CLIError(f"{path}: no such batch file")
    jobs = []
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row or (number == 1 and row[0].strip().lower() == "image"):
                continue  # blank line or header
            if len(row) != 4:
                raise CLIError(f"{path} line {number}: expected image,caption,row,col")
            image, caption, r, c = (x.strip() for x in row)
            try:
                cell = (int(r), int(c))
            except ValueError:
                raise CLIError(f"{path} line {number}: row and col must be integers") from None
            if cell[0] < 0 or cell[1] < 0:
                raise CLIError(f"{path} line {number}: row and col must not be negative")
            image_path = Path(image) if Path(image).is_absolute() else path.parent / image
            jobs.append(Job(image_path, caption, cell=cell, line=number))
    if not jobs:
        raise CLIError(f"{path}: no jobs in the batch file")
    return jobs


def cmd_complete(args) -> int:
    if args.batch:
        if args.image or args.caption:
            raise CLIError(
                "--batch takes its images and captions from the CSV; drop --image/--caption"
            )
        jobs = read_jobs(Path(args.batch))
    else:
        if not args.image:
            raise CLIError("complete needs --image (or --batch jobs.csv)")
        if args.caption is None:
            raise CLIError("complete needs --caption")
        if (args.from_cell is None) == (args.from_px is None):
            raise CLIError("give exactly one of --from ROW,COL (cells) or --from-px X,Y")
        cell = parse_pair(args.from_cell, "--from") if args.from_cell else None
        pixel = parse_pair(args.from_px, "--from-px") if args.from_px else None
        jobs = [Job(Path(args.image), args.caption, cell=cell, pixel=pixel)]
    if args.feather < 0:
        raise CLIError(f"--feather must not be negative, got {args.feather}")
    options = sampling_options(args)
    out_dir = Path(args.out)
    check_writable_dir(out_dir)
    bundle = load_bundle(args.bundle, args.device)
    prepared = [prepare_job(job, bundle) for job in jobs]  # every job checked before any runs
    for job, prep in zip(jobs, prepared, strict=True):
        paths, done = run_job(
            job,
            prep,
            bundle,
            options,
            out_dir,
            args.feather,
            args.quiet,
            args.precision,
            args.compile,
        )
        for path in paths:
            print(path)
        log.info("%s: seed %d, %.2fs", job.image, done.seed, done.seconds)
    return 0


# -- data / train / bundle / bench -------------------------------------------------------------


def cmd_data(args) -> int:
    from model.data.scenes import write_scenes

    if args.count <= 0:
        raise CLIError(f"--count must be positive, got {args.count}")
    out = Path(args.out)
    check_writable_dir(out)
    bar = None if args.quiet else ProgressBar(args.count, "scenes", "images")
    written = write_scenes(
        out,
        args.count,
        seed=args.seed,
        size=args.size,
        split=args.split,
        workers=args.workers,
        progress=(lambda done, total: bar.update(done)) if bar else None,
    )
    if bar:
        bar.close()
    print(f"wrote {written} scenes to {out}")
    return 0


def cmd_train(args) -> int:
    from model import train

    try:
        return train.train_command(args, ProgressBar)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from None


def cmd_bundle(args) -> int:
    from model import train

    try:
        path = train.assemble_bundle(
            args.transformer,
            args.out,
            reranker=args.reranker,
            evaluation=args.eval,
            name=args.name,
            vae=args.vae,
        )
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from None
    print(path)
    return 0


def cmd_eval(args) -> int:
    from model import evaluate

    config = evaluate.EvalConfig(
        count=args.count,
        samples=args.samples,
        recon_count=args.recon_count,
        seed=args.seed,
        precision=args.precision,
        compile=args.compile,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance=args.guidance,
    )
    try:
        config.validate()
    except ValueError as error:
        raise CLIError(str(error)) from None
    if args.data is not None and args.sheets:
        raise CLIError("--sheets draws scenes; it cannot be used with --data")
    if args.json:
        check_writable_dir(Path(args.json).resolve().parent)
    if args.sheets:
        check_writable_dir(Path(args.sheets))
    bundle = load_bundle(args.bundle, args.device)
    if args.data is not None:
        try:
            report = evaluate.evaluate_folder(bundle, args.data, args.recon_count)
        except (OSError, ValueError) as error:
            raise CLIError(str(error)) from None
        print(evaluate.format_folder_report(report))
        if args.json:
            evaluate.write_json(report, Path(args.json))
            print(args.json)
        return 0
    bars = {}

    def progress(split: str, total: int):
        if args.quiet:
            return None
        bar = bars[split] = ProgressBar(total, f"eval {split}", "runs")
        done = [0]

        def tick():
            done[0] += 1
            bar.update(done[0])
            if done[0] == total:
                bar.close()

        return tick

    sheets = {} if args.sheets else None
    report = evaluate.evaluate(bundle, config, progress, sheets)
    print(evaluate.format_report(report))
    if args.json:
        evaluate.write_json(report, Path(args.json))
        print(args.json)
    for name, sheet in (sheets or {}).items():
        path = Path(args.sheets) / f"{name}.png"
        save_png_atomic(sheet, path)
        print(path)
    return 0


def cmd_bench(args) -> int:
    from model import bench

    try:
        return bench.bench_command(args, load_bundle)
    except ValueError as error:
        raise CLIError(str(error)) from None


# -- parser ------------------------------------------------------------------------------------


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1, help="candidates, sampled in one batch")
    p.add_argument("--seed", type=int, default=None, help="fixed seed (default: random)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    add_precision_arg(p)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "int8"],
        default="auto",
        help="auto: bf16 on CUDA, int8 weights on x86 CPUs, else fp32",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the one-cell step: faster after ~15 s of compiling per batch size "
        "(needs a C++ compiler on CPU; falls back to eager with a warning)",
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dalle", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate images from a caption")
    p.add_argument("--caption", required=True)
    p.add_argument("--out", default="out.png", help="PNG path; numbered when --n > 1")
    add_sampling_args(p)
    add_common_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("complete", help="regenerate a bottom-right rectangle of an image")
    p.add_argument("--image")
    p.add_argument("--from", dest="from_cell", help="top-left cell of the rectangle: ROW,COL")
    p.add_argument("--from-px", help="top-left pixel of the rectangle: X,Y (snapped to its cell)")
    p.add_argument("--caption")
    p.add_argument("--batch", help="CSV with image,caption,row,col per line")
    p.add_argument("--out", default="completions", help="output folder")
    p.add_argument("--feather", type=int, default=0, help="blend pixels at the seam")
    add_sampling_args(p)
    add_common_args(p)
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("data", help="make datasets")
    data = p.add_subparsers(dest="dataset", required=True)
    s = data.add_parser("scenes", help="procedural caption-image scenes")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--split", choices=["train", "heldout"], default="train")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train the dVAE, the transformer or the reranker")
    p.add_argument("stage", choices=["vae", "transformer", "reranker"])
    p.add_argument("--data", required=True, help="folder of images with same-name .txt captions")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, result)")
    p.add_argument("--vae", help="transformer: the trained dVAE (vae.safetensors)")
    p.add_argument("--bundle", help="reranker: the bundle it will join")
    p.add_argument(
        "--tokenizer",
        help="transformer: reuse this tokenizer.json instead of training one on the captions",
    )
    p.add_argument(
        "--init",
        help="vae: start from this trained vae.safetensors; transformer: start from this "
        "bundle's transformer and tokenizer (fine-tuning); reranker: from this bundle's reranker",
    )
    p.add_argument(
        "--reconstructed",
        action="store_true",
        help="reranker: train on --bundle's dVAE reconstructions of the images (how samples look)",
    )
    p.add_argument(
        "--decoder-only",
        action="store_true",
        help="vae: freeze --init's encoder (tokens unchanged), fine-tune its decoder on hard codes",
    )
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--preset", default="default", help="model size preset: tiny, small, default")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field: --set dim=384, --set text.text_len=48, "
        "--set train.code_usage=1",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bundle", help="assemble a single-file model bundle")
    p.add_argument("--transformer", required=True, help="a transformer run's bundle")
    p.add_argument("--reranker", help="a bundle carrying a trained reranker, to take it from")
    p.add_argument("--eval", help="a `dalle eval --json` report to summarise into the card")
    p.add_argument("--name", help="the name the studio shows for this model")
    p.add_argument(
        "--vae", help="a `train vae --decoder-only` dVAE to replace the bundle's (same encoder)"
    )
    p.add_argument("--out", required=True, help="X.dalle.safetensors")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser(
        "eval", help="measure a bundle on held-out scenes or your own folder (table + JSON)"
    )
    p.add_argument("--count", type=int, default=100, help="captions (and completions) per split")
    p.add_argument("--samples", type=int, default=8, help="candidates per caption")
    p.add_argument("--recon-count", type=int, default=500, help="images per split for the dVAE")
    p.add_argument("--seed", type=int, default=20_261_124, help="which scenes are drawn")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--json", help="also write the full report here")
    p.add_argument(
        "--sheets",
        help="also draw contact sheets into this folder: the first 16 captions and completions "
        "per split, every candidate framed by the scorer's verdict",
    )
    p.add_argument(
        "--data",
        help="your own caption folder, held out from training: dVAE PSNR, codes, bits per "
        "image token and reranker retrieval on its first --recon-count pairs (no scenes)",
    )
    add_precision_arg(p)
    add_common_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="time sampling (tokens/s, latency, peak memory)")
    add_common_args(p)
    p.add_argument("--random", action="store_true", help="a random-weight model of the given size")
    p.add_argument("--dim", type=int, default=320)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1024, help="image and text vocabulary")
    p.add_argument("--batch", type=int, nargs="*", default=None, help="batch sizes (default 1 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_precision_arg(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except CLIError as error:
        print(f"dalle {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dalle {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
