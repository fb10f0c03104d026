"""Project files (.dstudio) and autosave with crash recovery.

A project is a zip: ``manifest.json`` (``format: "dalle-studio-project/1"``, the history tree, the
rectangle and the model geometry it was made in, caption history) plus one PNG per history entry
and the current image. PNG keeps the uint8 pixels bit for bit. Every write goes through
``model.files.atomic_write``: a crash mid-save never leaves a half-written project.

A project file is untrusted input. Before anything is decoded, ``load`` checks the archive's
declared sizes (zip bombs), reads each member with a size cap, parses the manifest under a size
bound and validates its whole schema (types, ranges, a history tree with one root and no cycles,
every referenced file present), and checks every PNG's pixel count from its header. Any failure is
one ``ProjectError`` with one line naming the file, the value and what was expected.

Autosave writes the same format, private to the user, into the app-data folder, never inside the
package, and records the project path the work belongs to. It stays until the work is saved or
the user discards it, so finding one at start means the last session did not end cleanly.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image, UnidentifiedImageError
from PySide6.QtCore import QStandardPaths

from model.files import MAX_PIXELS, ImageError, atomic_write, check_pixels, open_image
from studio.document import MAX_CAPTION_HISTORY, Document, HistoryEntry

log = logging.getLogger(__name__)

FORMAT = "dalle-studio-project/1"
SUFFIX = ".dstudio"
AUTOSAVE_NAME = "autosave" + SUFFIX
APP_FOLDER = "DALL-E Studio"  # the per-user data folder's name (one level, not org/app)

# Limits on what a project may declare, all checked before the data is read or decoded.
MAX_MANIFEST_BYTES = 16 * 2**20  # a 10,000-entry history is about 5 MB of JSON
MAX_ENTRIES = 10_000
MAX_MEMBERS = MAX_ENTRIES + 16
# The largest image the studio opens, as a PNG: 3 bytes a pixel plus filter bytes and zlib's
# framing even when nothing compresses.
MAX_MEMBER_BYTES = 4 * MAX_PIXELS
HEADER_BYTES = 64 * 2**10  # enough of an image file for Pillow to read its size
# Decoded pixels of all entries together (3 bytes each in memory): 1 Gpx is 3 GB.
MAX_PROJECT_PIXELS = 20 * MAX_PIXELS
# Deflate shrinks JSON about 10x and PNGs are stored; a member that claims more than this
# ratio is a zip bomb. Small members are exempt (a tiny manifest of zeros compresses well).
MAX_RATIO = 100
RATIO_EXEMPT_BYTES = 2**20
MAX_TEXT = 10_000  # characters in a caption, a model name, an option value
MAX_PATH = 4096
MAX_GRID = 4096  # token cells along a side
MAX_ID = 2**53  # ids stay exact in any JSON reader
MAX_SEED = 2**64
# Seconds since 1970 of an entry's time or the save's: up to the year 3000, the latest any
# platform's time.localtime reads (Windows' limit), so every clock the history shows can be told
MAX_TIME = 32_503_680_000


class ProjectError(ValueError):
    """A project file that cannot be read or written; the message names the file."""


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _unpng(data: bytes, name: str) -> np.ndarray:
    """A PNG member's pixels; its size is checked from the header before decoding."""
    return np.array(open_image(data, name), dtype=np.uint8)


def save(
    document: Document,
    path: str | os.PathLike,
    *,
    private: bool = False,
    autosave_of: str | None = None,
) -> Path:
    """Write ``document`` to ``path`` atomically. ``private``: owner-only permissions (the
    autosave); otherwise a normal file's. ``autosave_of``: the project the work belongs to."""
    path = Path(path)
    entries = []
    files: dict[str, bytes] = {"image.png": _png(document.image)}
    for entry in document.history.values():
        name = f"history/{entry.id}.png"
        files[name] = _png(entry.image)
        entries.append(
            {
                "id": entry.id,
                "parent": entry.parent,
                "file": name,
                "caption": entry.caption,
                "cell": list(entry.cell) if entry.cell else None,
                "area": list(entry.area) if entry.area else None,
                "end": list(entry.end) if entry.end else None,
                "seed": entry.seed,
                "options": entry.options_dict(),
                "time": entry.time,
                "model": entry.model,
                "starred": entry.starred,
                "accepted": entry.accepted,
            }
        )
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "saved": time.time(),
        "image": "image.png",
        "size": [document.width, document.height],
        "current_entry": document.current_entry,
        "cell": list(document.cell) if document.cell else None,
        "area": list(document.area_record or ())
        if document.cell and document.area_record
        else None,
        "end": list(document.end) if document.cell and document.end else None,
        "geometry": {"size": document.model_size, "factor": document.model_factor},
        "caption_history": document.caption_history,
        "source_path": document.source_path,
        "history": entries,
    }
    if autosave_of is not None:
        manifest["autosave_of"] = autosave_of
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, private=private) as raw, zipfile.ZipFile(raw, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest, indent=1, allow_nan=False))
        for name, data in files.items():
            archive.writestr(name, data)  # PNGs are compressed already: stored
    return path


def load(path: str | os.PathLike) -> Document:
    """Read a project; raises ProjectError (one line naming the file and the problem)."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[Document, dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, path)
            raw = _member(archive, members, "manifest.json", MAX_MANIFEST_BYTES, path)
            manifest = _parse(raw, path)
            _Schema(path, members).project(manifest)
            images = _decode_images(archive, members, manifest, path)
    except ProjectError:
        raise
    except FileNotFoundError:
        raise ProjectError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProjectError(f"{path}: is a folder, not a project") from None
    except ImageError as error:
        raise ProjectError(str(error)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ProjectError(f"{path}: not a readable project ({detail})") from None
    except (MemoryError, RecursionError) as error:
        raise ProjectError(f"{path}: not a readable project ({type(error).__name__})") from None
    except (TypeError, KeyError, IndexError, AttributeError) as error:
        # the schema should have caught it: still one line for the user, the trace for us
        log.exception("unexpected error reading %s", path)
        raise ProjectError(f"{path}: not a readable project ({error!r})") from None
    return _document(manifest, images, path), manifest


def _members(archive: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, refused on declared sizes before any is read."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ProjectError(
            f"{path}: {len(infos)} files in the archive; expected at most {MAX_MEMBERS}"
        )
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        if info.filename in members:
            raise ProjectError(f"{path}: {info.filename!r} is in the archive twice")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_EXEMPT_BYTES and ratio > MAX_RATIO:
            raise ProjectError(
                f"{path}: {info.filename!r} inflates {ratio:.0f}x to {info.file_size} bytes; "
                f"expected at most {MAX_RATIO}x (a zip bomb?)"
            )
        total += info.file_size
        members[info.filename] = info
    limit = MAX_PROJECT_PIXELS * 4 + MAX_MANIFEST_BYTES
    if total > limit:
        raise ProjectError(
            f"{path}: its files inflate to {total} bytes; expected at most {limit} in all"
        )
    return members


def _member(
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    name: str,
    limit: int,
    path: Path,
) -> bytes:
    """A member's bytes, refused above ``limit`` by its declared size and by what it really
    inflates to (at most ``limit + 1`` bytes are ever read)."""
    info = members.get(name)
    if info is None:
        raise ProjectError(f"{path}: {name!r} is missing from the archive")
    if info.file_size > limit:
        raise ProjectError(
            f"{path}: {name!r} declares {info.file_size} bytes; expected at most {limit}"
        )
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise ProjectError(f"{path}: {name!r} inflates past {limit} bytes; expected at most that")
    return data


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse(raw: bytes, path: Path) -> Any:
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ProjectError(f"{path}: manifest.json is nested too deeply to be a project") from None
    except ValueError as error:  # JSON syntax, bad UTF-8, NaN, an integer of 5,000 digits
        detail = str(error).splitlines()[0]
        raise ProjectError(f"{path}: manifest.json is not valid JSON ({detail})") from None


def _show(value: Any) -> str:
    """A value for an error message: one line, short."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


class _Schema:
    """The manifest's whole schema, checked by hand (stdlib only). Unknown keys are ignored, so
    a later version may add fields; every known one must have its type and range."""

    def __init__(self, path: Path, members: dict[str, zipfile.ZipInfo]):
        self.path = path
        self.members = members

    def fail(self, where: str, value: Any, expected: str) -> NoReturn:
        raise ProjectError(f"{self.path}: {where} is {_show(value)}; expected {expected}")

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(where, value, f"an integer from {low} to {high}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, value, "a number")
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(where, value, "a finite number")
        return value

    def seconds(self, value: Any, where: str) -> float:
        """A time in seconds since 1970 that a clock can show (0 to ``MAX_TIME``)."""
        if not 0 <= self.number(value, where) <= MAX_TIME:
            self.fail(where, value, f"a time from 0 to {MAX_TIME} (the year 3000)")
        return value

    def text(self, value: Any, where: str, limit: int = MAX_TEXT, optional: bool = False) -> Any:
        if value is None and optional:
            return value
        if not isinstance(value, str) or len(value) > limit:
            self.fail(where, value, f"text of at most {limit} characters")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, value, "true or false")
        return value

    def mapping(self, value: Any, where: str, required: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            self.fail(where, value, "an object")
        for key in required:
            if key not in value:
                raise ProjectError(f"{self.path}: {where} has no {key!r}; expected one")
        return value

    def cell(self, value: Any, where: str, grid: int) -> Any:
        if value is None:
            return value
        if not isinstance(value, list) or len(value) != 2:
            self.fail(where, value, "null or a [row, col] pair")
        for axis, number in zip(("row", "col"), value, strict=True):
            self.integer(number, f"{where} {axis}", 0, grid - 1)
        return value

    def area(self, value: Any, where: str) -> Any:
        """A working area: null (the whole picture, and every project written before areas),
        its top-left [left, top] (it reaches the picture's corner) or [left, top, right,
        bottom] in pixels."""
        if value is None:
            return value
        if not isinstance(value, list) or len(value) not in (2, 4):
            self.fail(where, value, "null, a [left, top] pair or [left, top, right, bottom]")
        for axis, number in zip(("left", "top", "right", "bottom"), value, strict=False):
            self.integer(number, f"{where} {axis}", 0, MAX_PIXELS)
        return value

    def member(self, value: Any, where: str) -> str:
        self.text(value, where, MAX_PATH)
        if value not in self.members:
            self.fail(where, value, "a file in the archive")
        return value

    def sampling(self, options: dict, where: str) -> None:
        """The sampling options among an entry's options, in their types and ranges (a project
        saved before top-p was recorded has none: the default)."""
        try:
            HistoryEntry.typed_options(options)
        except ValueError as error:
            raise ProjectError(f"{self.path}: {where}: {error}") from None

    def project(self, manifest: Any) -> None:
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else manifest
            raise ProjectError(f"{self.path}: not a {FORMAT} project (format {_show(found)})")
        self.mapping(manifest, "the manifest", ("image", "history", "current_entry"))
        self.member(manifest["image"], "image")
        if "saved" in manifest:
            self.seconds(manifest["saved"], "saved")
        if manifest.get("size") is not None:
            size = manifest["size"]
            if not isinstance(size, list) or len(size) != 2:
                self.fail("size", size, "a [width, height] pair")
            for axis, number in zip(("width", "height"), size, strict=True):
                self.integer(number, f"size {axis}", 1, MAX_PIXELS)
        grid = MAX_GRID
        if manifest.get("geometry") is not None:
            geometry = self.mapping(manifest["geometry"], "geometry", ("size", "factor"))
            size = self.integer(geometry["size"], "geometry size", 1, 2**16)
            factor = self.integer(geometry["factor"], "geometry factor", 1, size)
            if size % factor:
                self.fail("geometry factor", factor, f"a divisor of the size {size}")
            grid = size // factor
        self.cell(manifest.get("cell"), "cell", grid)
        self.area(manifest.get("area"), "area")
        self.cell(manifest.get("end"), "end", grid + 1)  # exclusive: up to the grid
        captions = manifest.get("caption_history", [])
        if not isinstance(captions, list) or len(captions) > MAX_CAPTION_HISTORY:
            self.fail("caption_history", captions, f"a list of at most {MAX_CAPTION_HISTORY}")
        for index, caption in enumerate(captions):
            self.text(caption, f"caption_history[{index}]")
        for key in ("source_path", "autosave_of"):
            self.text(manifest.get(key), key, MAX_PATH, optional=True)
        self.history(manifest["history"], manifest["current_entry"])

    def history(self, history: Any, current: Any) -> None:
        if not isinstance(history, list) or not 1 <= len(history) <= MAX_ENTRIES:
            self.fail("history", history, f"a list of 1 to {MAX_ENTRIES} entries")
        parents: dict[int, int | None] = {}
        for index, item in enumerate(history):
            where = f"history[{index}]"
            self.mapping(item, where, ("id", "parent", "file"))
            entry_id = self.integer(item["id"], f"{where} id", 0, MAX_ID)
            if entry_id in parents:
                self.fail(f"{where} id", entry_id, "an id no other entry has")
            parent = item["parent"]
            if parent is not None:
                self.integer(parent, f"{where} parent", 0, MAX_ID)
            parents[entry_id] = parent
            self.member(item["file"], f"{where} file")
            self.text(item.get("caption", ""), f"{where} caption")
            self.cell(item.get("cell"), f"{where} cell", MAX_GRID)
            self.area(item.get("area"), f"{where} area")
            self.cell(item.get("end"), f"{where} end", MAX_GRID + 1)
            if item.get("seed") is not None:
                self.integer(item["seed"], f"{where} seed", 0, MAX_SEED)
            self.seconds(item.get("time", 0.0), f"{where} time")
            self.text(item.get("model", ""), f"{where} model")
            self.boolean(item.get("starred", False), f"{where} starred")
            self.boolean(item.get("accepted", False), f"{where} accepted")
            options = item.get("options", {})
            if not isinstance(options, dict) or len(options) > 64:
                self.fail(f"{where} options", options, "an object of at most 64 options")
            for key, value in options.items():
                self.text(key, f"{where} option name", 64)
                if isinstance(value, str):
                    self.text(value, f"{where} option {key!r}")
                elif value is not None and not isinstance(value, bool):
                    self.number(value, f"{where} option {key!r}")
            self.sampling(options, f"{where} options")
        roots = [entry_id for entry_id, parent in parents.items() if parent is None]
        if len(roots) != 1:
            self.fail("history", f"{len(roots)} entries without a parent", "exactly one original")
        for entry_id, parent in parents.items():
            if parent is not None and parent not in parents:
                self.fail(f"the parent of entry {entry_id}", parent, "the id of another entry")
        rooted: set[int] = set()  # entries whose line of parents ends at the original
        for entry_id in parents:
            line: set[int] = set()
            step: int | None = entry_id
            while step is not None and step not in rooted:
                if step in line:
                    self.fail(f"the parents of entry {entry_id}", "a cycle", "a tree")
                line.add(step)
                step = parents[step]
            rooted.update(line)
        if isinstance(current, bool) or not isinstance(current, int) or current not in parents:
            self.fail("current_entry", current, "the id of a history entry")


def _decode_images(
    archive: zipfile.ZipFile,
    members: dict[str, zipfile.ZipInfo],
    manifest: dict[str, Any],
    path: Path,
) -> dict[str, np.ndarray]:
    """Every referenced PNG decoded. First every header is checked (each image against the
    pixel limit, all of them together against the project's, all of one size), reading only
    the start of each member; then they are read and decoded one at a time."""
    names = list(dict.fromkeys([manifest["image"], *(i["file"] for i in manifest["history"])]))
    size = None
    total = 0
    for name in names:
        label = f"{path}: {name}"
        with archive.open(members[name]) as member:
            width, height = _header_size(member.read(HEADER_BYTES), label)
        check_pixels(width, height, label)
        total += width * height
        if total > MAX_PROJECT_PIXELS:
            raise ProjectError(
                f"{path}: its images hold more than {MAX_PROJECT_PIXELS / 1e6:.0f} megapixels "
                "in all; expected at most that"
            )
        size = size or (width, height)
        if (width, height) != size:
            raise ProjectError(
                f"{label}: is {width}x{height}; expected the project's {size[0]}x{size[1]}"
            )
    declared = manifest.get("size")
    if declared is not None and size is not None and tuple(declared) != size:
        raise ProjectError(f"{path}: size is {declared}; the image is {size[0]}x{size[1]}")
    images = {}
    for name in names:
        data = _member(archive, members, name, MAX_MEMBER_BYTES, path)
        images[name] = _unpng(data, f"{path}: {name}")  # open_image checks the pixels again
        del data
    return images


def _header_size(data: bytes, label: str) -> tuple[int, int]:
    """(width, height) from an image's header, without decoding it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                return header.size
    except Image.DecompressionBombError:
        raise ProjectError(
            f"{label}: declares far more than {MAX_PIXELS / 1e6:.0f} megapixels; "
            "expected at most that (a decompression bomb?)"
        ) from None
    except UnidentifiedImageError:
        raise ProjectError(f"{label}: not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ProjectError(f"{label}: not a readable image ({detail})") from None


def _document(manifest: dict[str, Any], images: dict[str, np.ndarray], path: Path) -> Document:
    """A Document from a validated manifest and its decoded images (nothing here can fail)."""
    document = Document(images[manifest["image"]])
    document.history.clear()
    for item in manifest["history"]:
        document.add_entry(
            HistoryEntry(
                id=item["id"],
                parent=item["parent"],
                image=images[item["file"]],
                caption=item.get("caption", ""),
                cell=tuple(item["cell"]) if item.get("cell") else None,
                area=tuple(item["area"]) if item.get("area") else None,
                end=tuple(item["end"]) if item.get("end") else None,
                seed=item.get("seed"),
                **HistoryEntry.typed_options(item.get("options", {})),
                time=float(item.get("time", 0.0)),
                model=item.get("model", ""),
                starred=item.get("starred", False),
                accepted=item.get("accepted", False),
            )
        )
    document.current_entry = manifest["current_entry"]
    document.caption_history = list(manifest.get("caption_history", []))
    document.source_path = manifest.get("source_path")
    cell = manifest.get("cell")
    geometry = manifest.get("geometry")
    if geometry is not None:
        document.model_size, document.model_factor = geometry["size"], geometry["factor"]
        area, end = manifest.get("area"), manifest.get("end")
        try:
            document.set_cell(
                tuple(cell) if cell else None,
                tuple(area) if area else None,
                tuple(end) if end else None,
            )
        except ValueError:  # an area or end outside the picture: the cell is taken as the whole's
            document.set_cell(tuple(cell) if cell else None)
    elif cell:  # an older project: the cell is kept as it is for the model loaded next
        document.cell = (cell[0], cell[1])
        document.cell_geometry_known = False
    document.path = str(path)
    document.mark_saved()
    return document


def export_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """The image at its original resolution, lossless, written atomically."""
    path = Path(path)
    with atomic_write(path) as raw:
        Image.fromarray(image, "RGB").save(raw, format="PNG")
    return path


# -- autosave -------------------------------------------------------------------------------


def data_dir() -> Path:
    """The app's per-user data folder, created on demand: ``<generic data>/DALL-E Studio``
    (``~/.local/share/DALL-E Studio`` on Linux). Versions that nested it twice
    (``DALL-E Studio/DALL-E Studio``) left their autosave there; it is moved up."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
    path = Path(base) / APP_FOLDER if base else Path.home() / ".dalle-studio"
    path.mkdir(parents=True, exist_ok=True)
    nested = path / APP_FOLDER / AUTOSAVE_NAME
    if nested.is_file() and not (path / AUTOSAVE_NAME).exists():
        try:
            os.replace(nested, path / AUTOSAVE_NAME)
        except OSError as error:
            log.warning("could not move the old autosave %s up: %s", nested, error)
    return path


def autosave_path(folder: Path | None = None) -> Path:
    return (folder or data_dir()) / AUTOSAVE_NAME


def autosave(document: Document, folder: Path | None = None) -> Path:
    """The document's unsaved work, private to the user, with the project it belongs to."""
    return save(document, autosave_path(folder), private=True, autosave_of=document.path)


def pending_recovery(folder: Path | None = None) -> Path | None:
    """The autosave left by a session that did not exit cleanly, if any."""
    path = autosave_path(folder)
    return path if path.exists() else None


def recover(folder: Path | None = None) -> Document | None:
    """The autosaved work as an unsaved document belonging to its project (if it had one).
    The autosave stays until the work is saved or discarded."""
    path = pending_recovery(folder)
    if path is None:
        return None
    document, manifest = _read(path)
    document.path = manifest.get("autosave_of")  # None: never saved, Save asks for a name
    document.mark_modified()
    return document


def set_aside_autosave(folder: Path | None = None) -> Path:
    """Rename an unreadable autosave to ``autosave-corrupt-<time>.dstudio`` beside it (kept for
    the user, no longer offered) and return the new path."""
    path = autosave_path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"autosave-corrupt-{stamp}{SUFFIX}")
    counter = 1
    while target.exists():
        target = path.with_name(f"autosave-corrupt-{stamp}-{counter}{SUFFIX}")
        counter += 1
    os.replace(path, target)
    return target


def clear_autosave(folder: Path | None = None) -> None:
    """The work is saved or discarded: nothing to recover."""
    autosave_path(folder).unlink(missing_ok=True)
