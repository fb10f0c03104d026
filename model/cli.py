"""The ``dalle`` command line: generation, completion, data, training, bundles and bench.

Every command checks its input before doing any work (images from their headers, bundles from
theirs, every option's range, the memory a run will need), exits 2 with a one-line reason on bad
input, and creates its output folder only once everything has been checked. Every file goes
through ``model.files``' atomic writer, so nothing is left half-written, even on SIGTERM. Anything
unexpected is one line on stderr and a traceback in a log file, not a traceback on the terminal.

``--out``: a path with an image suffix (``.png``) is a file, numbered ``-0``, ``-1``, ... when
``--n`` asks for several (and said so on stderr); anything else is a folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from model.files import ImageError, open_image, probe_image, save_png, write_text

log = logging.getLogger("dalle")

MAX_CANDIDATES = 64  # --n: sampled in one batch (the studio offers 1-16)
MAX_BATCH_BYTES = 64 * 2**20  # a batch CSV is read whole: about a million jobs
OUTPUT_SUFFIX = ".png"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# options whose values may start with '-' (argparse takes "-1,3" for an option, not a value)
NEGATIVE_VALUE_OPTIONS = ("--from", "--from-px")


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


def shown(path: Path | str) -> str:
    """A path for the terminal: bytes that are not UTF-8 (argv's surrogates) shown as U+FFFD."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written there, leaving nothing behind."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dalle-check-"):
            pass
    except OSError as error:
        raise CLIError(f"cannot write to output folder {path}: {error.strerror or error}") from None


def check_can_create(folder: Path) -> None:
    """Refuse early (before a bundle loads) an output folder that could not be made or written,
    without creating anything: its nearest existing ancestor must be a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"cannot write to output folder {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write to output folder {folder}: {existing} is not writable")


@contextmanager
def output_folder(folder: Path) -> Iterator[None]:
    """Create ``folder`` for the results; when the run fails, remove every folder this made that
    is still empty, so that bad input or a failed save leaves nothing behind."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    check_writable_dir(folder)
    try:
        yield
    except BaseException:
        for path in made:
            try:
                path.rmdir()  # only while empty: results already written stay
            except OSError:
                break
        raise


def save_result(image, path: Path) -> None:
    try:
        save_png(image, path)
    except OSError as error:
        raise CLIError(f"cannot write {shown(path)}: {error.strerror or error}") from None


def load_bundle(path: str | None, device: str = "auto"):
    from model.bundle import BundleError, default_bundle_path, load
    from model.device import pick_device

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

    if args.n > MAX_CANDIDATES:
        raise CLIError(f"--n is {args.n}; at most {MAX_CANDIDATES} candidates at once")
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


def check_device(name: str) -> None:
    from model.device import pick_device

    try:
        pick_device(name)
    except ValueError as error:
        raise CLIError(str(error)) from None


def check_memory(bundle, options, pixels: int = 0) -> None:
    """Refuse a run whose keys, values and images would not fit, before allocating them."""
    from model.device import available_memory
    from model.sampling import memory_needed

    needed = memory_needed(bundle.config, options, bundle.device.type) + 40 * pixels
    free = available_memory(bundle.device)
    if free is not None and needed > free:
        raise CLIError(
            f"--n {options.n} needs about {needed / 2**20:,.0f} MB for its keys, values and "
            f"images, but {bundle.device} has {free / 2**20:,.0f} MB free: ask for fewer"
        )


def check_caption(caption: str, where: str = "") -> str:
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError as error:
        raise CLIError(
            f"{where}the caption is not valid UTF-8 text (a byte that is not UTF-8 at "
            f"position {error.start})"
        ) from None
    if not caption or not caption.strip():
        raise CLIError(f"{where}the caption is empty: describe what the region should show")
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


# -- where results go --------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """``--out``: a file when it has an image suffix, else a folder."""

    path: Path
    is_file: bool

    @classmethod
    def parse(cls, text: str) -> Output:
        path = Path(text)
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES and suffix != OUTPUT_SUFFIX:
            raise CLIError(
                f"--out {shown(path)}: results are PNG files; name a .png file or a folder"
            )
        output = cls(path, suffix == OUTPUT_SUFFIX)
        if output.is_file and path.is_dir():
            raise CLIError(f"--out {shown(path)} is a folder; a .png name is a file")
        if not output.is_file and path.exists() and not path.is_dir():
            raise CLIError(f"cannot write to output folder {shown(path)}: it is a file")
        return output

    @property
    def folder(self) -> Path:
        return (
            (self.path.parent if str(self.path.parent) else Path("."))
            if self.is_file
            else self.path
        )

    def files(self, stem: str, count: int) -> list[Path]:
        """Where ``count`` results go: the file itself, numbered files, or ``stem-i.png``."""
        if not self.is_file:
            return [self.path / f"{stem}-{i}{OUTPUT_SUFFIX}" for i in range(count)]
        if count == 1:
            return [self.path]
        return [self.path.with_name(f"{self.path.stem}-{i}{OUTPUT_SUFFIX}") for i in range(count)]


def announce_numbering(command: str, output: Output, files: list[Path]) -> None:
    if output.is_file and len(files) > 1:
        print(
            f"dalle {command}: {len(files)} candidates: writing {shown(files[0].name)} to "
            f"{shown(files[-1].name)} (not {shown(output.path.name)})",
            file=sys.stderr,
        )


def slug(caption: str, limit: int = 40) -> str:
    """A file-name stem from a caption: 'A red heart!' -> 'a-red-heart'."""
    words = re.findall(r"[a-z0-9]+", caption.lower())
    stem = ""
    for word in words:
        if len(stem) + len(word) + 1 > limit:
            break
        stem = f"{stem}-{word}" if stem else word
    return stem or "image"


# -- generate / complete -----------------------------------------------------------------------


def cmd_generate(args) -> int:
    from model.images import to_pil
    from model.sampling import generate

    caption = check_caption(args.caption)
    options = sampling_options(args)
    output = Output.parse(args.out)
    check_device(args.device)
    check_can_create(output.folder)
    bundle = load_bundle(args.bundle, args.device)
    check_memory(bundle, options)
    files = output.files(slug(caption), options.n)
    announce_numbering("generate", output, files)
    with output_folder(output.folder):
        done = run_with_progress(
            generate(bundle, caption, options, precision=args.precision, compile=args.compile),
            "generate",
            args.quiet,
        )
        for image, path in zip(done.images, files, strict=True):
            save_result(to_pil(image), path)
            print(shown(path))
    log.info("seed %d, %.2fs, %.0f tokens/s", done.seed, done.seconds, done.tokens_per_s)
    return 0


@dataclass
class Job:
    image: Path
    caption: str
    cell: tuple[int, int] | None = None
    pixel: tuple[int, int] | None = None
    line: int | None = None  # the CSV line, for messages
    batch: Path | None = None  # the CSV

    @property
    def where(self) -> str:
        return f"{self.batch} line {self.line}: " if self.line is not None else ""


@dataclass
class CheckedJob:
    """A job checked from its image's header: nothing decoded yet."""

    job: Job
    caption: str
    size: tuple[int, int]  # (width, height) as open_image will return it
    cell: tuple[int, int]


def check_job(job: Job, bundle) -> CheckedJob:
    """Validate a job from its image's header alone (format, pixel limit, cell, padding)."""
    from model.images import Placement

    where = job.where
    caption = check_caption(job.caption, where)
    try:
        width, height = probe_image(job.image)
    except ImageError as error:
        raise CLIError(f"{where}{error}") from None
    size = bundle.config.vae.image_size
    factor = bundle.config.vae.factor
    grid = bundle.config.transformer.grid
    placement = Placement(width, height, size)
    if job.pixel is not None:
        x, y = job.pixel
        if x >= width or y >= height:
            raise CLIError(
                f"{where}pixel ({x}, {y}) is outside the {width}x{height} image {job.image}"
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
    return CheckedJob(job, caption, (width, height), cell)


def run_job(
    checked: CheckedJob,
    bundle,
    options,
    files: list[Path],
    feather: int,
    quiet: bool,
    precision: str = "auto",
    compile: bool = False,
):
    """Decode the job's image (only now: a batch holds one image at a time), sample, save."""
    from model import sampling
    from model.images import paste_back, to_model

    job = checked.job
    try:
        original = open_image(job.image)
    except ImageError as error:
        raise CLIError(f"{job.where}{error}") from None
    if original.size != checked.size:
        raise CLIError(
            f"{job.where}{job.image} changed while the batch ran: it was "
            f"{checked.size[0]}x{checked.size[1]}, now {original.width}x{original.height}"
        )
    tensor, placement = to_model(original, bundle.config.vae.image_size)
    factor = bundle.config.vae.factor
    visible = placement.visible_grid(factor)  # padding cells of the rectangle are not sampled
    done = run_with_progress(
        sampling.complete(
            bundle,
            tensor,
            checked.cell,
            checked.caption,
            options,
            precision=precision,
            compile=compile,
            visible=visible,
        ),
        job.image.name,
        quiet,
    )
    for image, path in zip(done.images, files, strict=True):
        result = paste_back(original, image, placement, checked.cell, factor, feather)
        save_result(result, path)
        print(shown(path))
    return done


def read_jobs(path: Path) -> list[Job]:
    """The batch CSV (image,caption,row,col per line, an optional header, UTF-8 with or without
    a BOM); every problem names the file and its line."""
    if not path.is_file():
        raise CLIError(f"{path}: no such batch file")
    try:
        size = path.stat().st_size
        if size > MAX_BATCH_BYTES:
            raise CLIError(
                f"{path}: {size / 2**20:.0f} MB; a batch file is at most "
                f"{MAX_BATCH_BYTES // 2**20} MB"
            )
        data = path.read_bytes()
    except OSError as error:
        raise CLIError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CLIError(
            f"{path} line {line}: not UTF-8 text (byte 0x{data[error.start]:02x})"
        ) from None
    jobs = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            number = reader.line_num
            if not row or (number == 1 and row[0].strip().lower() == "image"):
                continue  # blank line or header
            jobs.append(_job_from_row(path, number, row))
    except csv.Error as error:
        raise CLIError(f"{path} line {reader.line_num}: {error}") from None
    if not jobs:
        raise CLIError(f"{path}: no jobs in the batch file")
    return jobs


def _job_from_row(path: Path, number: int, row: list[str]) -> Job:
    where = f"{path} line {number}: "
    if len(row) != 4:
        raise CLIError(f"{where}expected image,caption,row,col, got {len(row)} fields")
    image, caption, r, c = (x.strip() for x in row)
    if "\x00" in image or "\x00" in caption:
        raise CLIError(f"{where}a NUL byte in the image name or caption")
    try:
        cell = (int(r), int(c))
    except ValueError:
        raise CLIError(f"{where}row and col must be integers, got {r!r:.20}, {c!r:.20}") from None
    if cell[0] < 0 or cell[1] < 0:
        raise CLIError(f"{where}row and col must not be negative")
    check_caption(caption, where)
    image_path = Path(image) if Path(image).is_absolute() else path.parent / image
    return Job(image_path, caption, cell=cell, line=number, batch=path)


def cmd_complete(args) -> int:
    if args.batch:
        if args.image or args.caption:
            raise CLIError(
                "--batch takes its images and captions from the CSV; drop --image/--caption"
            )
    else:
        if not args.image:
            raise CLIError("complete needs --image (or --batch jobs.csv)")
        if args.caption is None:
            raise CLIError("complete needs --caption")
        if (args.from_cell is None) == (args.from_px is None):
            raise CLIError("give exactly one of --from ROW,COL (cells) or --from-px X,Y")
    output = Output.parse(args.out)
    if args.batch and output.is_file:
        raise CLIError(f"--out {shown(output.path)}: a batch writes several files; name a folder")
    if args.batch:
        jobs = read_jobs(Path(args.batch))
    else:
        cell = parse_pair(args.from_cell, "--from") if args.from_cell else None
        pixel = parse_pair(args.from_px, "--from-px") if args.from_px else None
        check_caption(args.caption)
        jobs = [Job(Path(args.image), args.caption, cell=cell, pixel=pixel)]
    if args.feather < 0:
        raise CLIError(f"--feather must not be negative, got {args.feather}")
    options = sampling_options(args)
    check_device(args.device)
    check_can_create(output.folder)
    bundle = load_bundle(args.bundle, args.device)
    checked = [check_job(job, bundle) for job in jobs]  # every header before any decoding
    largest = max(width * height for width, height in (c.size for c in checked))
    check_memory(bundle, options, largest)
    plans = []
    for item in checked:
        job = item.job
        prefix = f"{job.line:04d}-" if job.line is not None else ""  # batch: one name per job
        plans.append((item, output.files(f"{prefix}{job.image.stem}", options.n)))
    if not args.batch:
        announce_numbering("complete", output, plans[0][1])
    with output_folder(output.folder):
        for item, files in plans:
            done = run_job(
                item,
                bundle,
                options,
                files,
                args.feather,
                args.quiet,
                args.precision,
                args.compile,
            )
            log.info("%s: seed %d, %.2fs", item.job.image, done.seed, done.seconds)
    return 0


# -- data / train / bundle / bench -------------------------------------------------------------


def cmd_data(args) -> int:
    from model.data.scenes import write_scenes

    if args.count <= 0:
        raise CLIError(f"--count must be positive, got {args.count}")
    out = Path(args.out)
    check_can_create(out)
    bar = None if args.quiet else ProgressBar(args.count, "scenes", "images")
    with output_folder(out):
        try:
            written = write_scenes(
                out,
                args.count,
                seed=args.seed,
                size=args.size,
                split=args.split,
                workers=args.workers,
                progress=(lambda done, total: bar.update(done)) if bar else None,
            )
        except ValueError as error:  # a size the generator cannot draw, say
            raise CLIError(str(error)) from None
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
    folders = [Path(args.json).resolve().parent] if args.json else []
    folders += [Path(args.sheets)] if args.sheets else []
    for folder in folders:
        check_can_create(folder)  # nothing is created before the bundle has loaded
    bundle = load_bundle(args.bundle, args.device)
    with ExitStack() as made:
        for folder in folders:
            made.enter_context(output_folder(folder))
        return run_eval(args, config, bundle)


def run_eval(args, config, bundle) -> int:
    from model import evaluate

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
        save_result(sheet, path)
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


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): ``dalle generate: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dalle", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate images from a caption")
    p.add_argument("--caption", required=True)
    p.add_argument(
        "--out",
        default="out.png",
        help="a .png file (numbered -0, -1, ... when --n > 1) or a folder (named from the caption)",
    )
    add_sampling_args(p)
    add_common_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("complete", help="regenerate a bottom-right rectangle of an image")
    p.add_argument("--image")
    p.add_argument("--from", dest="from_cell", help="top-left cell of the rectangle: ROW,COL")
    p.add_argument("--from-px", help="top-left pixel of the rectangle: X,Y (snapped to its cell)")
    p.add_argument("--caption")
    p.add_argument("--batch", help="CSV with image,caption,row,col per line")
    p.add_argument(
        "--out",
        default="completions",
        help="a folder, or for one image a .png file (numbered -0, -1, ... when --n > 1)",
    )
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

    p = sub.add_parser(
        "train", help="train the dVAE or the VQ tokenizer, the transformer or the reranker"
    )
    p.add_argument("stage", choices=["vae", "vq", "transformer", "reranker"])
    p.add_argument("--data", required=True, help="folder of images with same-name .txt captions")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, result)")
    p.add_argument(
        "--vae", help="transformer: the trained image tokenizer (vae.safetensors or vq.safetensors)"
    )
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


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--from -1,3`` as ``--from=-1,3``: argparse takes a value starting with '-' for an
    option and says "expected one argument"; this way the command says what is wrong with it."""
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg in NEGATIVE_VALUE_OPTIONS:
            value = next(values, None)
            if value is not None and value.startswith("-") and value[1:2].isdigit():
                joined.append(f"{arg}={value}")
                continue
            joined.append(arg)
            if value is not None:
                joined.append(value)
            continue
        joined.append(arg)
    return joined


def log_folder() -> Path:
    """The per-user folder for the command line's crash logs."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Logs"
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or home / ".local" / "state")
    return base / "dalle-studio" / "logs"


def write_crash_log(command: str, argv: list[str], details: str) -> Path | None:
    """The traceback of an unexpected error, in the log folder (or the temp folder)."""
    name = f"dalle-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = f"dalle {command}\nargs: {[shown(a) for a in argv]}\n\n{details}"
    for folder in (log_folder(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return write_text(folder / name, text, private=True)
        except OSError:
            continue
    return None


def _terminated(signum, frame):
    # an exception, so that every atomic writer removes its temporary file on the way out
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(attach_negative_values(argv))
    except SystemExit as stop:  # --help, or a usage error already printed on one line
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    command = args.command
    try:
        with sigterm_raises():
            return args.func(args)
    except CLIError as error:
        print(f"dalle {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dalle {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:
            print(f"dalle {command}: terminated", file=sys.stderr)
        raise
    except Exception as error:  # noqa: BLE001 - the last resort: one line and a log file
        lines = str(error).strip().splitlines()
        what = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        if isinstance(error, MemoryError):
            what = "out of memory"
        log_path = write_crash_log(command, argv, traceback.format_exc())
        where = f"; details in {log_path}" if log_path else ""
        print(f"dalle {command}: unexpected error: {shown(what)}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
