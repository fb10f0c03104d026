"""``dalle generate`` and ``dalle complete``: images from a caption, and a rectangle of an image
regenerated (one image, or a batch CSV of ``image,caption,row,col`` lines).

A batch is checked whole before anything is sampled: every image from its header (format, pixel
limit, cell, padding), every caption, the memory the largest needs. Each image is decoded only
just before its own job, so a batch holds one image at a time.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from model.cli.common import (
    CLIError,
    Output,
    announce_numbering,
    check_can_create,
    check_caption,
    check_device,
    check_memory,
    load_bundle,
    load_upscaler_choice,
    output_folder,
    parse_pair,
    run_with_progress,
    sampling_options,
    save_result,
    shown,
    slug,
    with_progress,
)
from model.cli.overwrite import given, refuse_overwrite
from model.files import ImageError, open_image, probe_image
from model.geometry import AREA_CHOICES, Area, working_area

log = logging.getLogger("dalle")

MAX_BATCH_BYTES = 64 * 2**20  # a batch CSV is read whole: about a million jobs
CELLS = "ROW,COL (cells)"  # how --from and --from-px name their numbers in an error
PIXELS = "X,Y (pixels)"


def cmd_generate(args) -> int:
    from model.inference.images import to_pil
    from model.inference.sampling import generate

    caption = check_caption(args.caption)
    options = sampling_options(args)
    output = Output.parse(args.out)
    files = output.files(slug(caption), options.n)
    refuse_overwrite(files, bundle_input(args), args.overwrite)
    check_device(args.device)
    check_can_create(output.folder)
    bundle = load_bundle(args.bundle, args.device)
    check_memory(bundle, options)
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
    # the region's last cell (--to) or pixel (--to-px), inclusive; None: the bottom-right corner
    last_cell: tuple[int, int] | None = None
    last_pixel: tuple[int, int] | None = None
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
    cell: tuple[int, int]  # on the working area's grid
    area: Area | None = None  # None: the whole picture
    end: tuple[int, int] | None = None  # the region's end cell on the area's grid, exclusive


def check_job(job: Job, bundle, area: str | int = "whole") -> CheckedJob:
    """Validate a job from its image's header alone (format, pixel limit, cell, padding, the
    region's end) and find its working ``area`` (``model.geometry.working_area``)."""
    from model.inference.completion import geometry_for

    where = job.where
    caption = check_caption(job.caption, where)
    try:
        width, height = probe_image(job.image)
    except ImageError as error:
        raise CLIError(f"{where}{error}") from None
    grid = bundle.config.transformer.grid
    geometry = geometry_for(bundle, width, height)
    if job.pixel is not None:
        x, y = job.pixel
        if x >= width or y >= height:
            raise CLIError(
                f"{where}pixel ({x}, {y}) is outside the {width}x{height} image {job.image}"
            )
        cell = geometry.cell_at(x, y, clamp=False)
    else:
        cell = job.cell
        if not (cell[0] < grid and cell[1] < grid):
            raise CLIError(
                f"{where}cell {cell[0]},{cell[1]} is outside the {grid}x{grid} token grid"
            )
    if not geometry.covers_image(cell):
        raise CLIError(
            f"{where}the rectangle from cell {cell[0]},{cell[1]} lies in the padding beside"
            f" {job.image}, not on the image"
        )
    corner = job.pixel if job.pixel is not None else geometry.pixel_of(cell)
    end = region_end(job, geometry, cell)  # the end pixel, exclusive; None: the corner
    if area == "whole":
        last = None if end is None else geometry.end_cell(*end)
        return CheckedJob(job, caption, (width, height), cell, None, last)
    vae = bundle.config.vae
    try:
        chosen = working_area((width, height), corner, vae.image_size, area, end, vae.factor)
    except ValueError as error:
        raise CLIError(f"{where}--area: {error}") from None
    in_area = geometry_for(bundle, chosen.width, chosen.height)
    cell = in_area.cell_at(corner[0] - chosen.left, corner[1] - chosen.top, clamp=False)
    last = None if end is None else in_area.end_cell(end[0] - chosen.left, end[1] - chosen.top)
    return CheckedJob(job, caption, (width, height), cell, chosen, last)


def region_end(job: Job, geometry, cell: tuple[int, int]) -> tuple[int, int] | None:
    """The picture pixel where the job's region ends (exclusive) from its inclusive ``--to``
    cell or ``--to-px`` pixel; None: the bottom-right corner. One-line CLIErrors for an end
    before the start or outside the picture."""
    where, width, height = job.where, geometry.width, geometry.height
    if job.last_pixel is not None:
        (x, y), (x1, y1) = job.pixel or geometry.pixel_of(cell), job.last_pixel
        if x1 >= width or y1 >= height:
            raise CLIError(
                f"{where}--to-px {x1},{y1} is outside the {width}x{height} image {job.image}"
            )
        if x1 < x or y1 < y:
            raise CLIError(f"{where}--to-px {x1},{y1} is above or left of --from-px {x},{y}")
        return x1 + 1, y1 + 1
    if job.last_cell is not None:
        (row, col), (r1, c1) = cell, job.last_cell
        rows, cols = geometry.visible_grid
        if r1 >= rows or c1 >= cols:
            raise CLIError(
                f"{where}--to {r1},{c1} is outside the image's {rows}x{cols} visible cells"
            )
        if r1 < row or c1 < col:
            raise CLIError(f"{where}--to {r1},{c1} is above or left of --from {row},{col}")
        return geometry.pixel_of((r1 + 1, c1 + 1))
    return None


def run_job(
    checked: CheckedJob,
    bundle,
    options,
    files: list[Path],
    feather: int,
    quiet: bool,
    precision: str = "auto",
    compile: bool = False,
    upscaler=None,
    lookahead: int = 1,
):
    """Decode the job's image (only now: a batch holds one image at a time), complete it
    (``model.inference.completion``, the upscaler drawing a scaled-down result) and save each
    candidate as it is pasted."""
    from model.inference.completion import Completion, Finished, Pasted

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
    completion = Completion(
        bundle,
        original,
        checked.cell,
        checked.caption,
        options,
        feather=feather,
        precision=precision,
        compile=compile,
        area=checked.area,
        upscaler=upscaler,
        end=checked.end,
        lookahead=lookahead,
    )
    done = None
    for event in with_progress(completion.run(), job.image.name, quiet):
        if isinstance(event, Pasted):
            save_result(event.image, files[event.index])
            print(shown(files[event.index]))
        elif isinstance(event, Finished):
            done = event.done
    if done is None:
        raise CLIError("sampling ended without a result")
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
        quote = ' (a caption with commas goes in double quotes: "a, b")' if len(row) > 4 else ""
        raise CLIError(f"{where}expected image,caption,row,col, got {len(row)} fields{quote}")
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


def job_stem(job: Job) -> str:
    """The name a job's results are numbered from: a batch's carry its line (one per job)."""
    prefix = f"{job.line:04d}-" if job.line is not None else ""
    return f"{prefix}{job.image.stem}"


def parse_area(text: str) -> str | int:
    """``--area``: whole, auto or a side in pixels (not given: the model's default)."""
    if text in AREA_CHOICES:
        return text
    try:
        side = int(text)
    except ValueError:
        side = 0
    if side < 1:
        raise CLIError(f"--area is whole, auto or a side in pixels, got {text!r:.40}")
    return side


def bundle_input(args) -> list[tuple[str, Path]]:
    """The bundle a sampling run reads, as an input no output may replace."""
    if args.bundle:
        return given(("--bundle", args.bundle))
    from model.bundle import default_bundle_path

    return [("the embedded model", default_bundle_path())]


def cmd_complete(args) -> int:
    from model.inference.completion import default_area

    if args.batch:
        if args.image or args.caption:
            raise CLIError(
                "--batch takes its images and captions from the CSV; drop --image/--caption"
            )
        if args.to or args.to_px:
            raise CLIError("--to and --to-px name one image's region; a batch's reach the corner")
    else:
        if not args.image:
            raise CLIError("complete needs --image (or --batch jobs.csv)")
        if args.caption is None:
            raise CLIError("complete needs --caption")
        if (args.from_cell is None) == (args.from_px is None):
            raise CLIError(f"give exactly one of --from {CELLS} or --from-px {PIXELS}")
        if args.to is not None and args.from_cell is None:
            raise CLIError(f"--to {CELLS} goes with --from; give --to-px {PIXELS} with --from-px")
        if args.to_px is not None and args.from_px is None:
            raise CLIError(f"--to-px {PIXELS} goes with --from-px; give --to {CELLS} with --from")
    output = Output.parse(args.out)
    if args.batch and output.is_file:
        raise CLIError(f"--out {shown(output.path)}: a batch writes several files; name a folder")
    if args.batch:
        jobs = read_jobs(Path(args.batch))
    else:
        cell = parse_pair(args.from_cell, "--from", CELLS) if args.from_cell else None
        pixel = parse_pair(args.from_px, "--from-px", PIXELS) if args.from_px else None
        last_cell = parse_pair(args.to, "--to", CELLS) if args.to else None
        last_pixel = parse_pair(args.to_px, "--to-px", PIXELS) if args.to_px else None
        check_caption(args.caption)
        image = Path(args.image)
        jobs = [Job(image, args.caption, cell, pixel, last_cell=last_cell, last_pixel=last_pixel)]
    if args.lookahead < 1:
        raise CLIError(f"--lookahead must be at least 1, got {args.lookahead}")
    if args.feather < 0:
        raise CLIError(f"--feather must not be negative, got {args.feather}")
    options = sampling_options(args)
    # every output against every input (the CSV, each image it names, the bundle) before any
    # work: one job's result must not replace another job's picture either
    outputs = {id(job): output.files(job_stem(job), options.n) for job in jobs}
    inputs = bundle_input(args) + given(("--batch", args.batch))
    if args.upscaler not in ("off", "auto"):
        inputs += given(("--upscaler", args.upscaler))
    inputs += [
        (f"the image of {shown(job.batch)} line {job.line}" if job.batch else "--image", job.image)
        for job in jobs
    ]
    refuse_overwrite([p for files in outputs.values() for p in files], inputs, args.overwrite)
    check_device(args.device)
    check_can_create(output.folder)
    bundle = load_bundle(args.bundle, args.device)
    upscaler = load_upscaler_choice(args.upscaler, bundle.device)
    area = parse_area(args.area) if args.area else default_area(bundle)
    checked = [check_job(job, bundle, area) for job in jobs]  # every header before decoding
    largest = max(width * height for width, height in (c.size for c in checked))
    check_memory(bundle, options, largest, args.lookahead)
    plans = [(item, outputs[id(item.job)]) for item in checked]
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
                upscaler,
                args.lookahead,
            )
            log.info("%s: seed %d, %.2fs", item.job.image, done.seed, done.seconds)
    return 0
