"""The file name Export suggests: what the picture is (its caption as a slug) and the seed that
makes it again, e.g. ``a-red-circle-on-grass-seed-1234.png``; the opened file's name for an
unchanged original."""

from __future__ import annotations

import re
from pathlib import Path

from studio.document import Document

MAX_SLUG = 48  # characters of the caption kept: a name a file dialog shows whole


def slug(text: str) -> str:
    """``text`` as a file name part: lower case, words joined by "-", at most ``MAX_SLUG``
    characters (letters of any script are kept; anything else a file system might refuse
    goes)."""
    words = re.sub(r"[^\w]+", "-", text.lower(), flags=re.UNICODE).strip("-_")
    return words[:MAX_SLUG].rstrip("-_")


def export_name(document: Document, entry_id: int | None = None) -> str:
    """The suggested name for exporting history entry ``entry_id`` (None: the image shown now,
    which is the current entry's)."""
    entry = document.history.get(document.current_entry if entry_id is None else entry_id)
    if entry is None or entry.is_original:
        source = document.source_path or document.path
        return f"{slug(Path(source).stem) or 'untitled'}.png" if source else "untitled.png"
    name = slug(entry.caption) or "untitled"
    return f"{name}-seed-{entry.seed}.png" if entry.seed is not None else f"{name}.png"
