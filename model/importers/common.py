"""What every importer does the same way: hash its inputs for the card, refuse a conversion the
machine has no room for before a weight is read, write the result so that a refusal is one
ValueError naming the file (and a failed write leaves nothing), and stop when asked to.

Stopping: an importer's ``progress`` is called with a line at each step; ``tick(progress)`` is
called between the smaller ones too (each 8 MB hashed, each tensor converted). A progress object
whose ``tick`` method raises ``Cancelled`` (the studio's File › Import model… does when the user
presses Cancel) stops the import there; nothing is written, since every write comes after the
last step and is atomic. The command line's progress is a plain function: nothing to tick."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

if TYPE_CHECKING:  # for the annotation; write_bundle imports model.bundle where it uses it
    from model.bundle import Bundle

Progress = Callable[[str], None]


class Cancelled(Exception):
    """The user stopped an import (see the module): nothing was written."""


def tick(say: Progress) -> None:
    """A point where an import may stop: ``say.tick()`` when ``say`` has one (it raises
    ``Cancelled``)."""
    check = getattr(say, "tick", None)
    if check is not None:
        check()


def sha256(path: Path, chunk: int = 8 * 2**20, say: Progress | None = None) -> str:
    """The file's SHA-256, ticking ``say`` (``tick``) between chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
            if say is not None:
                tick(say)
    return digest.hexdigest()


def hash_files(paths: Iterable[Path | None], say: Progress) -> dict[str, str]:
    """Each file's SHA-256 by its name, for the card (``None``: an optional file not given)."""
    hashes = {}
    for path in paths:
        if path is not None:
            say(f"hashing {path.name} ({gb(path.stat().st_size)})")
            hashes[path.name] = sha256(path, say=say)
    return hashes


def gb(count: float) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    return f"{count / 1e6:.0f} MB" if count >= 1e6 else f"{count / 1e3:.0f} KB"


def refuse_without_room(
    needed: int, written: int, out: Path, dtype: torch.dtype | None = None
) -> None:
    """ValueError in one line when converting needs more than ``needed`` bytes of memory than
    are available, or ``out``'s disk has less than ``written`` bytes free (every importer)."""
    from model.device import available_memory

    free = available_memory(torch.device("cpu"))
    if free is not None and needed > free:
        raise ValueError(
            f"converting needs about {gb(needed)} of memory, {gb(free)} available: close other "
            f"programs{' or use --dtype bf16' if dtype == torch.float32 else ''}"
        )
    room = shutil.disk_usage(out.parent).free
    if written > room:
        raise ValueError(f"{out.parent} has {gb(room)} free; the bundle needs about {gb(written)}")


def write_file(out: Path, say: Progress, save: Callable[[Path], object]) -> Path:
    """``save(out)`` (an atomic writer: a failed write leaves nothing), any refusal one
    ValueError naming ``out``."""
    from model.bundle import BundleError

    say(f"writing {out}")
    try:
        save(out)
    except BundleError as error:  # already names the file
        raise ValueError(str(error)) from None
    except (OSError, SafetensorError) as error:  # safetensors' own error for a full disk
        raise ValueError(
            f"{out}: cannot save: {getattr(error, 'strerror', None) or error}"
        ) from None
    return out


def write_bundle(bundle: Bundle, out: Path, say: Progress) -> Path:
    """Save an imported ``bundle`` to ``out`` (atomically); a refusal is one ValueError."""
    from model import bundle as bundle_io

    return write_file(out, say, lambda path: bundle_io.save(bundle, path))
