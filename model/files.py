"""User files, read and written safely: one atomic writer, and limits checked before decoding.

Every file the product writes (images, projects, bundles, checkpoints, reports) goes through
:func:`atomic_write` or :func:`atomic_path`: a temporary file made with ``mkstemp`` (``O_EXCL``,
an unpredictable name) in the target's own folder, flushed and fsynced, given the permissions a
normal file gets under the user's umask, then renamed over the target. A crash, an exception, a
full disk or a signal turned into an exception leaves the target as it was and no temporary file
behind; a symlink planted at the temporary name cannot redirect the write. The one exception is
a log that grows a line at a time (a training run's metrics): :func:`open_append` opens it once,
refusing a symlink at its name.

Every image the product reads (command line, batch files, the studio, images inside projects)
goes through :func:`open_image`, which reads the header only, refuses more than ``MAX_PIXELS``
before a single pixel is decoded, and brings the pixels to 8-bit RGB (:func:`to_rgb`).

A process killed outright (SIGKILL, power loss) mid-write leaves its temporary file
(``.NAME.xxxxxxxx.tmp``) behind. The next write into that folder removes such leftovers of our
own naming, and only those no live writer holds: every writer keeps an exclusive ``flock`` on its
temporary file until it is renamed, and the kernel drops it when its process dies.

Stdlib, numpy and Pillow only: the studio's document and project code use it without torch.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The product's own image limit: 50 megapixels (8660 x 5773, a 50 MP camera) is what an artist
# opens; the scaled-down model input and the full-size paste-back of such an image stay under
# about 1.5 GB. Pillow's own guard (89 MP warning, 179 MP error) comes too late and too high.
MAX_PIXELS = 50_000_000
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "MPO"})  # MPO: many phones' JPEGs
# the file names the product offers and looks for: the formats above (an MPO is a .jpg)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageError(ValueError):
    """An image that cannot or must not be read; the message names the file and the problem."""


class FileTooLarge(ValueError):
    """Input whose declared size is beyond the product's limits (refused before reading it)."""


# -- writing -----------------------------------------------------------------------------------

# mkstemp's names: prefix, 8 characters of its alphabet, suffix (tempfile._RandomNameSequence)
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
# A leftover of another target is removed only when older than this (a writer on a system
# without flock is told apart from a dead one by age alone); one of the same target at any age.
STALE_TEMP_S = 300.0
FRESH_TEMP_S = 1.0  # never touched: mkstemp has made it, its writer may not hold the lock yet
_swept: dict[str, float] = {}  # folder -> when this process last swept it

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted there, which protects a writer
    fcntl = None  # type: ignore[assignment]


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back.
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextmanager
def atomic_path(
    path: str | os.PathLike, private: bool = False, durable: bool = True
) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on a clean exit it replaces ``path``.

    For writers that need a file name (``safetensors.save_file``). The temporary file exists
    (empty, private) when the block starts. ``private`` keeps the result 0600; otherwise it gets
    the permissions of a normal new file (0666 less the umask). ``durable=False`` skips the two
    fsyncs (about a millisecond per file): for the many small files of a generated dataset, which
    a crash can only cut short, never leave half-written.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    sweep_stale_temps(folder, path.name)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)  # held until the rename: "a live writer's file"
        except OSError:  # a file system without locks: the sweep cannot lock it either
            pass
    else:
        os.close(handle)  # Windows could not rename a file still open
        handle = None
    temp = Path(name)
    try:
        yield temp
        if durable:
            with open(temp, "rb+") as written:  # on disk before the rename
                os.fsync(written.fileno())
        os.chmod(temp, 0o600 if private else 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        if handle is not None:
            os.close(handle)
    if durable:
        fsync_folder(folder)


def sweep_stale_temps(folder: Path, target: str | None = None, force: bool = False) -> list[str]:
    """Remove temporary files our writer left in ``folder`` when its process was killed: the
    names of ``TEMP_NAME`` only, regular files only, never one a live writer holds locked or one
    made in the last second; of ``target``'s own at any age, of other targets when older than
    ``STALE_TEMP_S``. A process looks at a folder at its first write there, then at most every
    ``STALE_TEMP_S`` (``force``: now), so that writing many files into one folder stays linear.
    Returns the names removed; never raises."""
    now = time.time()
    key = os.path.abspath(folder)
    if not force and now - _swept.get(key, -STALE_TEMP_S) < STALE_TEMP_S:
        return []
    _swept[key] = now
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = TEMP_NAME.match(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
            age = now - info.st_mtime
            if not stat.S_ISREG(info.st_mode) or age < FRESH_TEMP_S:
                continue
            if match["target"] != target and age < STALE_TEMP_S:
                continue
            if _held(path):
                continue
            os.unlink(path)
            removed.append(name)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def _held(path: str) -> bool:
    """True when a live writer holds ``path``'s lock (or the lock cannot be asked)."""
    if fcntl is None:
        return False  # Windows refuses to delete an open file: unlink fails for a live writer
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)  # closing drops the lock taken just now
    return False


@contextmanager
def atomic_write(
    path: str | os.PathLike, private: bool = False, durable: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace ``path`` when the block ends without error."""
    with atomic_path(path, private, durable) as temp, open(temp, "wb") as handle:
        yield handle


def write_bytes(
    path: str | os.PathLike, data: bytes, private: bool = False, durable: bool = True
) -> Path:
    with atomic_write(path, private, durable) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, private: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), private)


def symlink_refused(path: str | os.PathLike) -> ValueError:
    """The one-line refusal of a symbolic link found where the product writes a file."""
    return ValueError(f"{path}: a symbolic link; refusing to write through it")


def open_append(path: str | os.PathLike) -> TextIO:
    """``path`` opened once for appending lines of text (made if missing), for a log that grows a
    line at a time (a training run's metrics): rewriting it whole through the atomic writer for
    every line would cost its whole length and an fsync each time. A line is written by one
    ``write`` on an ``O_APPEND`` file, so a crash can cut only the last one short. A symbolic link
    at ``path`` is refused, never followed (``O_NOFOLLOW``), and so is anything but a regular
    file (a FIFO would block the writer): one ValueError naming ``path``."""
    path = Path(path)
    refusal = symlink_refused(path)
    no_follow = getattr(os, "O_NOFOLLOW", 0)
    if not no_follow and path.is_symlink():  # Windows: no O_NOFOLLOW; links need privileges
        raise refusal
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | no_follow | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: the BSDs' O_NOFOLLOW answer
            raise refusal from None
        if error.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO nobody reads, a folder
            raise ValueError(f"{path}: not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ValueError(f"{path}: not a regular file")
    return os.fdopen(descriptor, "a", encoding="utf-8")


def save_png(image: Image.Image, path: str | os.PathLike, **options: Any) -> Path:
    """``image`` as a PNG at ``path``, atomically."""
    with atomic_write(path) as handle:
        image.save(handle, format="PNG", **options)
    return Path(path)


def fsync_folder(folder: Path) -> None:
    # the rename itself is durable only once the folder is; not possible everywhere (Windows)
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# -- reading images ----------------------------------------------------------------------------


def check_pixels(width: int, height: int, name: str, limit: int = MAX_PIXELS) -> None:
    """Raise ImageError when a ``width`` x ``height`` image is beyond ``limit`` pixels (the
    product's own limit unless a caller such as ``dalle serve`` sets a lower one)."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: has no pixels ({width}x{height})")
    if width * height > limit:
        raise ImageError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels; "
            f"DALL·E Studio opens images up to {limit / 1e6:.0f} megapixels"
        )


def _existing(source: str | os.PathLike, label: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise ImageError(f"{label}: no such file")
    if path.is_dir():
        raise ImageError(f"{label}: is a folder, not an image")
    return path


@contextmanager
def _checked(opened: Path | BinaryIO, label: str, limit: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """The image with only its header read, its format and size checked; any failure of the
    block (decoding included) becomes one ImageError naming ``label``."""
    try:
        with warnings.catch_warnings():
            # our own limit is lower; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(opened) as image:  # reads the header only
                if image.format not in IMAGE_FORMATS:
                    raise ImageError(
                        f"{label}: a {image.format or 'unknown'} image; "
                        "DALL·E Studio reads PNG, JPEG, WebP and BMP"
                    )
                check_pixels(image.width, image.height, label, limit)
                yield image
    except Image.DecompressionBombError as error:
        # Pillow's own guard fired before ours could (far beyond MAX_PIXELS); it names the count
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(claimed[1]) / 1e6:.0f} megapixels" if claimed else "far more than that"
        raise ImageError(
            f"{label}: declares {size} (a decompression bomb?); "
            f"DALL·E Studio opens images up to {limit / 1e6:.0f} megapixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageError):
            raise
        if isinstance(error, UnidentifiedImageError):  # its text names the file object
            detail = "not a PNG, JPEG, WebP or BMP file"
        else:
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageError(f"{label}: not a readable image ({detail})") from None


def open_image(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    keep_alpha: bool = False,
) -> Image.Image:
    """An image file (a path, or the bytes of one) as 8-bit RGB, checked before decoding.

    Raises ImageError naming ``name`` (default: the path) for a missing file, a folder, a
    format the product does not read, more than ``max_pixels`` pixels, or a corrupt file.
    ``keep_alpha``: an image with transparency comes back RGBA, its alpha as the file has it
    (an API's mask), instead of composited on white.
    """
    opened: Path | BinaryIO
    if isinstance(source, bytes):
        label = name or "image"
        opened = io.BytesIO(source)
    else:
        label = name or str(source)
        opened = _existing(source, label)
    with _checked(opened, label, max_pixels) as image:
        image.load()
        if keep_alpha and has_alpha(image):
            return ImageOps.exif_transpose(image).convert("RGBA")
        return to_rgb(image)


def has_alpha(image: Image.Image) -> bool:
    """True when ``image`` carries transparency (an alpha band or a transparent palette entry)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


# EXIF orientations that turn the image a quarter (to_rgb's exif_transpose swaps its sides)
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def probe_image(source: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """(width, height) of the image :func:`open_image` would return, from the header alone.

    The same refusals as ``open_image`` (missing file, folder, format, ``MAX_PIXELS``, a header
    that cannot be read) without decoding a pixel: for checking many files before any is decoded.
    """
    label = name or str(source)
    with _checked(_existing(source, label), label) as image:
        turned = image.getexif().get(0x0112) in _QUARTER_TURNS  # 0x0112: Orientation
        return (image.height, image.width) if turned else (image.width, image.height)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL image: EXIF orientation applied, transparency composited on white,
    16-bit and float greyscale scaled into 8 bits (not clipped)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        # A palette image may carry transparency; go through RGBA so it is not lost.
        image = image.convert("RGBA")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0)
        if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
            top = 65535.0
        else:  # 8-bit values in a 32-bit mode, or floats in 0–1 (or already 0–255)
            top = 1.0 if image.mode == "F" and peak <= 1.0 else 255.0
        grey = np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    if has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# -- small text and JSON files (configs, vocabularies, merges) -----------------------------

# min-dalle's vocab.json is about 1 MB, merges.txt 0.5 MB, dalle-mini's config.json 1 KB. A
# vocab or merges file of short unique entries becomes about 16 times its size in Python objects
# (measured: 8 MB of each, 270 MB), so the cap is what keeps a hostile one small.
MAX_TEXT_BYTES = 4 * 2**20
# dalle-mini's config.json and min-dalle's vocabularies are flat: one or two levels
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 30  # a size or an id; 10**30 is already far past anything real


def megabytes(count: int) -> str:
    return f"{count / 2**20:,.{0 if count >= 100 * 2**20 else 1}f} MB"


def read_text(path: Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """``path`` as UTF-8 text, refused before reading when it is over ``max_bytes``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(
                f"{path}: {megabytes(size)} is more than the {megabytes(max_bytes)} a {what} may be"
            )
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)  # the file may have grown since stat
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path}: more than the {megabytes(max_bytes)} a {what} may be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text {what} ({error.reason}: not UTF-8)") from None


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _TooLong(f"an integer of {digits:,} digits (at most {MAX_INT_DIGITS})")
    return int(text)


class _TooLong(ValueError):
    pass


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of parsed JSON, walked without recursion; stops past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        stack.extend(
            (child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
        )
    return deepest


def read_json(
    path: Path,
    what: str,
    max_bytes: int = MAX_TEXT_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """``path``'s JSON under a size cap (checked before reading), a nesting limit and an
    integer-digit limit; any failure is one ValueError naming the file."""
    text = read_text(path, what, max_bytes)
    try:
        value = json.loads(text, parse_int=_integer)
    except _TooLong as error:
        raise ValueError(f"{path}: the {what} holds {error}") from None
    except RecursionError:
        raise ValueError(
            f"{path}: the {what} is nested too deeply (more than {max_depth} levels)"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON {what} ({error})") from None
    except ValueError as error:  # Python's own integer-digit limit, on a float's exponent...
        raise ValueError(f"{path}: not a JSON {what} ({str(error)[:120]})") from None
    if _depth(value, max_depth) > max_depth:
        raise ValueError(f"{path}: the {what} is nested too deeply (more than {max_depth} levels)")
    return value
