"""What every ``dalle`` command shares: the one-line error, the progress bar, input checks that
run before any work, output folders that vanish when a run fails, and ``--out``'s rule (a path with
an image suffix is a file, anything else a folder).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model.files import IMAGE_SUFFIXES, save_png

MAX_CANDIDATES = 64  # --n: sampled in one batch (the studio offers 1-16)
OUTPUT_SUFFIX = ".png"


class CLIError(Exception):
    """Bad input: printed as one line, exit status 2."""


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


def parse_pair(text: str, what: str, shape: str = "A,B") -> tuple[int, int]:
    """Two integers "A,B"; ``shape`` names them in the error ("ROW,COL (cells)")."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2:
        raise CLIError(f"{what} must be two integers {shape}, got {text!r}")
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        raise CLIError(f"{what} must be two integers {shape}, got {text!r}") from None
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


def load_upscaler_choice(choice: str, device):
    """``--upscaler``: None for off, the shipped upscaler for auto, else the file named."""
    from model.bundle.upscaler_files import load_upscaler

    if choice == "off":
        return None
    try:
        upscaler, _ = load_upscaler(None if choice == "auto" else choice, device)
    except (ValueError, OSError) as error:
        raise CLIError(f"--upscaler: {error}") from None
    return upscaler


def sampling_options(args):
    """``SamplingOptions.add_arguments``' flags as options, at most ``MAX_CANDIDATES`` of them."""
    from model.config import SamplingOptions

    if args.n > MAX_CANDIDATES:
        raise CLIError(f"--n is {args.n}; at most {MAX_CANDIDATES} candidates at once")
    try:
        return SamplingOptions.from_args(args)
    except ValueError as error:
        raise CLIError(str(error)) from None


def check_device(name: str) -> None:
    from model.device import pick_device

    try:
        pick_device(name)
    except ValueError as error:
        raise CLIError(str(error)) from None


def check_memory(bundle, options, pixels: int = 0, lookahead: int = 1) -> None:
    """Refuse a run whose keys, values and images would not fit, before allocating them
    (``model.inference.completion``'s one rule; ``pixels``: the largest picture of the run;
    ``lookahead``: K candidates sampled per one kept)."""
    from model.inference.completion import NotEnoughMemory
    from model.inference.completion import check_memory as check

    try:
        check(bundle, options, pixels, lookahead)
    except NotEnoughMemory as error:
        asked = f"--n {options.n}" + (f" with --lookahead {lookahead}" if lookahead > 1 else "")
        raise CLIError(
            f"{asked} needs about {error.needed / 2**20:,.0f} MB for its keys, values "
            f"and images, but {error.device} has {error.free / 2**20:,.0f} MB free: ask for fewer"
        ) from None


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


def with_progress(messages, label: str, quiet: bool):
    """Pass ``messages`` (a sampler's or a completion's) on, drawing a bar of their rows on
    stderr until the last row; a cancel is a CLIError."""
    from model.inference.sampling import Cancelled, Progress

    bar = None
    try:
        for message in messages:
            if isinstance(message, Progress):
                if bar is None and not quiet:
                    bar = ProgressBar(message.rows_total, label, "rows")
                if bar is not None:
                    bar.update(message.rows_done, f"{message.tokens_per_s:.0f} tok/s")
                    if message.rows_done >= message.rows_total:  # decoding and saving follow
                        bar.close()
                        bar = None
            elif isinstance(message, Cancelled):
                raise CLIError("sampling was cancelled")
            yield message
    finally:
        if bar is not None:
            bar.close()


def run_with_progress(messages, label: str, quiet: bool):
    """Drain a sampler's ``messages`` under a progress bar; its ``Done``."""
    from model.inference.sampling import Done

    for message in with_progress(messages, label, quiet):
        if isinstance(message, Done):
            return message
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
