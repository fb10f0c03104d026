"""Project files (.dstudio) and autosave with crash recovery.

A project is a zip: ``manifest.json`` (``format: "dalle-studio-project/1"``, the history tree, the
rectangle, caption history) plus one PNG per history entry and the current image. PNG keeps the
uint8 pixels bit for bit. Saving writes a temporary file next to the target and renames it over,
so a crash mid-save never leaves a half-written project.

Autosave writes the same format into the user's app-data folder (QStandardPaths), never inside
the package; a clean exit removes it, so finding one at start means the last session crashed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PySide6.QtCore import QStandardPaths

from studio.document import Document, HistoryEntry

log = logging.getLogger(__name__)

FORMAT = "dalle-studio-project/1"
SUFFIX = ".dstudio"
AUTOSAVE_NAME = "autosave" + SUFFIX


class ProjectError(ValueError):
    """A project file that cannot be read or written; the message names the file."""


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def save(document: Document, path: str | os.PathLike) -> Path:
    """Write ``document`` to ``path`` atomically (temp file + rename)."""
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
                "seed": entry.seed,
                "options": entry.options,
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
        "caption_history": document.caption_history,
        "source_path": document.source_path,
        "history": entries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            archive.writestr("manifest.json", json.dumps(manifest, indent=1))
            for name, data in files.items():
                archive.writestr(name, data)  # PNGs are compressed already: stored
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike) -> Document:
    """Read a project; raises ProjectError naming the file and the problem."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                found = manifest.get("format") if isinstance(manifest, dict) else None
                raise ProjectError(f"{path}: not a {FORMAT} project (format {found!r})")
            document = Document(_unpng(archive.read(manifest["image"])))
            document.history.clear()
            for item in manifest["history"]:
                document.add_entry(
                    HistoryEntry(
                        id=int(item["id"]),
                        parent=item["parent"],
                        image=_unpng(archive.read(item["file"])),
                        caption=item.get("caption", ""),
                        cell=tuple(item["cell"]) if item.get("cell") else None,
                        seed=item.get("seed"),
                        options=item.get("options", {}),
                        time=item.get("time", 0.0),
                        model=item.get("model", ""),
                        starred=item.get("starred", False),
                        accepted=item.get("accepted", False),
                    )
                )
    except ProjectError:
        raise
    except FileNotFoundError:
        raise ProjectError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as error:
        raise ProjectError(f"{path}: not a readable project ({error})") from None
    document.current_entry = manifest.get("current_entry")
    document.caption_history = list(manifest.get("caption_history", []))
    document.source_path = manifest.get("source_path")
    if manifest.get("cell"):
        try:
            document.set_cell(tuple(manifest["cell"]))
        except ValueError:
            document.cell = None
    document.path = str(path)
    return document


def export_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """The image at its original resolution, lossless, written atomically."""
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as raw:
            Image.fromarray(image, "RGB").save(raw, format="PNG")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


# -- autosave -------------------------------------------------------------------------------


def data_dir() -> Path:
    """The app's per-user data folder (QStandardPaths AppDataLocation), created on demand."""
    folder = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    if not folder:
        folder = str(Path.home() / ".dalle-studio")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def autosave_path(folder: Path | None = None) -> Path:
    return (folder or data_dir()) / AUTOSAVE_NAME


def autosave(document: Document, folder: Path | None = None) -> Path:
    return save(document, autosave_path(folder))


def pending_recovery(folder: Path | None = None) -> Path | None:
    """The autosave left by a session that did not exit cleanly, if any."""
    path = autosave_path(folder)
    return path if path.exists() else None


def recover(folder: Path | None = None) -> Document | None:
    path = pending_recovery(folder)
    if path is None:
        return None
    document = load(path)
    document.path = None  # a recovered project is not the autosave file: save asks for a name
    return document


def clear_autosave(folder: Path | None = None) -> None:
    """Called on a clean exit (and after recovery was declined)."""
    autosave_path(folder).unlink(missing_ok=True)
