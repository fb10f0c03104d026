"""Autosave, its journal and crash recovery: nothing a user decided is lost to a kill -9.

Two files in the app-data folder, no widgets (the window only calls :class:`Autosaver`):

- ``autosave.dstudio``, the whole project (``studio.project``), rewritten by the window's timer
  once a minute while the document is modified. It carries the pixels.
- ``autosave.journal/``: ``journal.log``, one line per change of the document's history (a
  generation's new entries, accept, star and unstar, delete, restore, undo and redo of those),
  appended and fsynced before the change's slot returns; and a PNG per new entry (and per image
  that is no entry's), written and fsynced *before* the line that names it. An accepted
  candidate's pixels are therefore on disk before its acceptance is: the journal never names
  pixels that are not durable, and each image is written once, not with the whole project.

The journal always has a base: the first journaled change of a document that has no autosave
yet writes the whole autosave (once), which then holds that change. Each full autosave empties
the journal. A line is ``CRC32 LENGTH JSON``; recovery replays the lines over the autosave and
stops at the first that does not check (the line a kill cut short). A line records the state it
left (an entry's fields, the entries dropped, the current entry and image), not the action, so
replaying it over a state that already holds it changes nothing: a kill between a full
autosave's rename and the journal's reset recovers the same work.

The window only wires its moments to :class:`Autosaver`: its timer calls ``save``, saving the
project ``saved``, closing or replacing the document ``let_go``, the app ending without the user
(SIGTERM) ``keep``, and the start ``leftover`` and then ``answered`` with the user's choice.

Changes are found by comparing the history with the state last made durable, on every
``history_changed``: any path that changes the history (the undo stack included) is journaled
without the document knowing about the journal.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.files import ImageError, fsync_folder, open_image, save_png
from studio import project
from studio.document import Document, HistoryEntry

log = logging.getLogger(__name__)

JOURNAL_FOLDER = "autosave.journal"
JOURNAL_NAME = "journal.log"
MAX_JOURNAL_BYTES = 256 * 2**20  # a 10,000-entry history with long captions is a few MB
MAX_LINE_BYTES = 4 * 2**20
# a HistoryEntry's fields but its id and image
FIELDS = (
    "parent",
    "caption",
    "cell",
    "area",
    "end",
    "seed",
    "options",
    "seconds",
    "candidate",
    "time",
    "model",
    "starred",
    "accepted",
)


def _entry_state(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "parent": entry.parent,
        "caption": entry.caption,
        "cell": list(entry.cell) if entry.cell else None,
        "area": list(entry.area) if entry.area else None,
        "end": list(entry.end) if entry.end else None,
        "seed": entry.seed,
        "options": entry.options_dict(),  # as a project writes them
        "time": entry.time,
        "model": entry.model,
        "starred": entry.starred,
        "accepted": entry.accepted,
    }


def encode_line(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"%08x %d " % (zlib.crc32(body), len(body)) + body + b"\n"


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's whole lines, up to the first that does not check (a torn last line)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_JOURNAL_BYTES + 1)
    except FileNotFoundError:
        return []
    records = []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is never whole
        try:
            crc, length, body = line.split(b" ", 2)
            if len(body) != int(length) or len(body) > MAX_LINE_BYTES:
                break
            if zlib.crc32(body) != int(crc, 16):
                break
            record = json.loads(body)
        except ValueError:
            break
        if not isinstance(record, dict):
            break
        records.append(record)
    return records


@dataclass(frozen=True)
class RecoveryInfo:
    """What a recovery brings back, for the dialog."""

    name: str
    entries: int  # generated entries (the original not counted)
    stars: int
    accepted: int
    autosaved: float  # when the whole autosave was written
    journaled: float | None  # the last journal line's time
    changes: int  # journal lines replayed

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.autosaved))
        text = (
            f"“{self.name}”: {self.entries} history entries, {self.stars} starred, "
            f"{self.accepted} accepted; autosaved at {when}"
        )
        if self.journaled is not None:
            last = time.strftime("%H:%M:%S", time.localtime(self.journaled))
            changes = "1 later change" if self.changes == 1 else f"{self.changes} later changes"
            text += f", with {changes} up to {last}"
        return text


class Autosaver:
    """The window's autosave: the timer's whole saves, the journal in between, recovery."""

    def __init__(self, folder: Path | None = None):
        self._folder = folder
        # an autosave left by a crash is never overwritten before the user answered about it
        self.pending = project.pending_recovery(folder) is not None
        self._document: Document | None = None
        self._saved: tuple[int, int] | None = None  # (id of the document, its revision)
        self._based = False  # the autosave holds this document, the journal what came after
        self._entries: dict[int, dict[str, Any]] = {}  # the durable state of each entry
        self._pixels: dict[int, np.ndarray] = {}  # entry id -> the image whose pixels are
        self._current: tuple[int | None, np.ndarray | None] = (None, None)
        self._sequence = 0
        self._keep = False  # set when the app ends without the user (``keep``)

    # -- where ------------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return self._folder or project.data_dir()

    @property
    def journal_folder(self) -> Path:
        return self.folder / JOURNAL_FOLDER

    @property
    def journal_path(self) -> Path:
        return self.journal_folder / JOURNAL_NAME

    # -- following a document ---------------------------------------------------------------

    def watch(self, document: Document) -> None:
        """Journal ``document``'s history changes from now on (the window's document)."""
        if self._document is not None:
            try:
                self._document.history_changed.disconnect(self.record)
            except (RuntimeError, TypeError):
                pass
        self._document = document
        self._saved = None
        self._based = False
        self._remember(document)
        document.history_changed.connect(self.record)

    def _remember(self, document: Document) -> None:
        self._entries = {i: _entry_state(e) for i, e in document.history.items()}
        self._pixels = {i: e.image for i, e in document.history.items()}
        self._current = (document.current_entry, document.image)

    def save(self, document: Document | None = None) -> None:
        """The whole autosave (the timer; also safe to call): when the document is modified,
        not generating, not already saved at this revision and no recovery is pending."""
        document = document or self._document
        if document is None or self.pending or not document.modified or document.generating:
            return
        if (id(document), document.revision) == self._saved:
            return
        self._write_base(document)

    def _write_base(self, document: Document) -> bool:
        try:
            project.autosave(document, self._folder)
        except OSError as error:
            log.warning("autosave failed: %s", error)
            return False
        self._saved = (id(document), document.revision)
        emptied = self._reset_journal()
        if document is self._document:
            # a journal that could not be emptied must not get lines of this base: its old
            # lines would be replayed over it; the next change writes the whole autosave again
            self._based = emptied
            self._remember(document)
        return True

    def record(self) -> None:
        """The history changed: make the change durable now (a journal line, or the first
        whole autosave of this document)."""
        document = self._document
        if document is None or self.pending:
            return
        changes = self._changes(document)
        if changes is None:
            return
        if not self._based:
            self._write_base(document)
            return
        try:
            self._append(document, changes)
        except (OSError, ValueError) as error:  # the state stays unrecorded: the next try has it
            log.warning("autosave journal failed: %s", error)

    def _changes(self, document: Document) -> dict[str, Any] | None:
        states = {i: _entry_state(e) for i, e in document.history.items()}
        changed = [s for i, s in states.items() if self._entries.get(i) != s]
        dropped = [i for i in self._entries if i not in states]
        current = (document.current_entry, document.image)
        moved = current[0] != self._current[0] or current[1] is not self._current[1]
        if not changed and not dropped and not moved:
            return None
        return {"entries": changed, "dropped": dropped, "current": current if moved else None}

    def _append(self, document: Document, changes: dict[str, Any]) -> None:
        folder = self.journal_folder
        folder.mkdir(parents=True, exist_ok=True)
        durable = dict(self._pixels)  # entry id -> the image whose pixels are on disk
        entries = []
        for state in changes["entries"]:
            entry = document.history[state["id"]]
            state = dict(state)
            if durable.get(entry.id) is not entry.image:
                state["file"] = self._write_pixels(f"entry-{entry.id}", entry.image)
                durable[entry.id] = entry.image
            entries.append(state)
        record: dict[str, Any] = {"time": time.time(), "entries": entries}
        record["dropped"] = changes["dropped"]
        if changes["current"] is not None:
            entry_id, image = changes["current"]
            record["current"] = entry_id
            record["image"] = self._image_source(document, image, durable)
        line = encode_line(record)
        new = not self.journal_path.exists()
        with open(self.journal_path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        if new:
            fsync_folder(folder)
        for state in entries:
            self._entries[state["id"]] = {k: v for k, v in state.items() if k != "file"}
        for entry_id in changes["dropped"]:
            self._entries.pop(entry_id, None)
        self._pixels = durable
        if changes["current"] is not None:
            self._current = changes["current"]

    def _image_source(
        self, document: Document, image: np.ndarray, durable: dict[int, np.ndarray]
    ) -> dict[str, Any]:
        """Where the current image's pixels are: an entry's (durable already), or a file."""
        for entry_id, pixels in durable.items():
            if pixels is image and entry_id in document.history:
                return {"entry": entry_id}
        self._sequence += 1
        return {"file": self._write_pixels(f"image-{self._sequence}", image)}

    def _write_pixels(self, stem: str, image: np.ndarray) -> str:
        name = f"{stem}.png"
        save_png(Image.fromarray(image, "RGB"), self.journal_folder / name, compress_level=1)
        return name

    def _reset_journal(self) -> bool:
        """Empty the journal (its lines first: images no line names are only litter)."""
        try:
            self.journal_path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not empty the autosave journal: %s", error)
            return False
        try:
            for path in self.journal_folder.glob("*.png"):
                path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not remove the autosave journal's images: %s", error)
        return True

    def clear(self) -> None:
        """The work is saved or discarded: nothing to recover (autosave and journal go)."""
        project.clear_autosave(self._folder)
        self._reset_journal()
        self._based = False
        self._saved = None

    # -- the window's moments ---------------------------------------------------------------

    def saved(self) -> None:
        """The work is in its project now: the autosave goes (one awaiting the recovery answer
        stays)."""
        if not self.pending:
            self.clear()

    def let_go(self) -> None:
        """The document is closed or replaced, saved or discarded by the user: its autosave goes,
        unless it awaits the recovery answer or the app ends without the user (``keep``)."""
        if not self.pending and not self._keep:
            self.clear()

    def keep(self, document: Document) -> None:
        """The app ends without the user (SIGTERM: a logout, a shutdown, a `kill`): modified
        work goes to the autosave, which the next start offers back; an autosave still awaiting
        the recovery answer is kept as it is."""
        self._keep = document.modified or self.pending
        self.save(document)

    def leftover(self) -> tuple[Document, RecoveryInfo] | None:
        """At start: the work the last session left to offer back (it did not end cleanly), or
        None. An unreadable autosave is set aside (kept, renamed) and a ProjectError says so in
        one line; the app goes on."""
        try:
            recovered = self.recover()
        except project.ProjectError as error:
            self.pending = False
            try:
                aside = self.set_aside()
            except OSError as move_error:
                raise project.ProjectError(
                    f"{error} (and it could not be moved aside: {move_error})"
                ) from error
            raise project.ProjectError(
                f"{error}; it was kept as {aside.name} and the app goes on"
            ) from error
        if recovered is None:
            self.pending = False
        return recovered

    def answered(self, recover: bool) -> None:
        """The user's answer to ``leftover``: recover it (the window then works on the
        recovered document, autosaved until saved) or discard it."""
        self.pending = False
        if not recover:
            self.clear()

    # -- recovery ---------------------------------------------------------------------------

    def recover(self) -> tuple[Document, RecoveryInfo] | None:
        """The autosaved work with the journal replayed over it, as an unsaved document, and
        what it holds; None when there is nothing to recover. Raises ProjectError for an
        autosave that cannot be read (the journal alone cannot be replayed on nothing)."""
        return recover(self._folder)

    def set_aside(self) -> Path:
        """An unreadable autosave renamed aside (kept for the user); its journal goes."""
        aside = project.set_aside_autosave(self._folder)
        self._reset_journal()
        return aside


def recover(folder: Path | None = None) -> tuple[Document, RecoveryInfo] | None:
    path = project.pending_recovery(folder)
    if path is None:
        return None
    autosaved = path.stat().st_mtime
    document = project.recover(folder)
    journal = (folder or project.data_dir()) / JOURNAL_FOLDER
    records = read_journal(journal / JOURNAL_NAME)
    replayed = 0
    for record in records:
        try:
            apply_record(document, record, journal)
        except (ImageError, KeyError, TypeError, ValueError) as error:
            log.warning("autosave journal: change %d of %d not replayed: %s",
                        replayed + 1, len(records), error)  # fmt: skip
            break
        replayed += 1
    document.mark_modified()
    history = [e for e in document.history.values() if not e.is_original]
    info = RecoveryInfo(
        name=Path(document.path or document.source_path or "untitled picture").name,
        entries=len(history),
        stars=sum(e.starred for e in document.history.values()),
        accepted=sum(e.accepted for e in history),
        autosaved=autosaved,
        journaled=float(records[replayed - 1]["time"]) if replayed else None,
        changes=replayed,
    )
    return document, info


def _pixels(folder: Path, name: Any) -> np.ndarray:
    if not isinstance(name, str) or "/" in name or "\\" in name or not name.endswith(".png"):
        raise ValueError(f"not a journal image name: {name!r}")
    return np.array(open_image(folder / name), dtype=np.uint8)


def _state(item: Any) -> dict[str, Any]:
    """A journaled entry's fields, checked for their types (the project's own rules)."""
    if not isinstance(item, dict) or isinstance(item.get("id"), bool):
        raise TypeError("an entry that is not an object with an id")
    entry_id, parent = int(item["id"]), item.get("parent")
    if parent is not None and (isinstance(parent, bool) or not isinstance(parent, int)):
        raise TypeError(f"entry {entry_id}: parent {parent!r}")
    cell, area, end = item.get("cell"), item.get("area"), item.get("end")
    if area and len(area) not in (2, 4):
        raise TypeError(f"entry {entry_id}: area {area!r:.40}")
    time_ = float(item.get("time", 0.0))
    if not np.isfinite(time_) or not 0 <= time_ < 1e11:
        raise ValueError(f"entry {entry_id}: time {time_!r}")
    options = item.get("options", {})
    if not isinstance(options, dict):
        raise TypeError(f"entry {entry_id}: options {options!r}")
    try:
        typed = HistoryEntry.typed_options(options)
    except ValueError as error:
        raise ValueError(f"entry {entry_id}: {error}") from None
    return {
        "id": entry_id,
        "parent": parent,
        "caption": str(item.get("caption", ""))[: project.MAX_TEXT],
        "cell": (int(cell[0]), int(cell[1])) if cell else None,
        "area": tuple(int(value) for value in area) if area else None,
        "end": (int(end[0]), int(end[1])) if end else None,
        "seed": None if item.get("seed") is None else int(item["seed"]),
        **typed,
        "time": time_,
        "model": str(item.get("model", ""))[: project.MAX_TEXT],
        "starred": bool(item.get("starred", False)),
        "accepted": bool(item.get("accepted", False)),
    }


def apply_record(document: Document, record: dict[str, Any], folder: Path) -> None:
    """One journal line over ``document``: read and check everything first, then change it
    (a line is applied whole or not at all)."""
    updates = []
    for item in record.get("entries", []):
        state = _state(item)
        image = _pixels(folder, item["file"]) if "file" in item else None
        updates.append((state, image))
    dropped = [int(i) for i in record.get("dropped", [])]
    image = None
    if "current" in record:
        source = record["image"]
        if "file" in source:
            image = _pixels(folder, source["file"])
        elif int(source["entry"]) in document.history:
            image = document.history[int(source["entry"])].image
        # else an entry a later line drops (replayed over a newer autosave): that line, or one
        # after it, names the image again
    if len(document.history) + len(updates) > project.MAX_ENTRIES:
        raise ValueError(f"more than {project.MAX_ENTRIES} history entries")
    root = next(i for i, e in document.history.items() if e.is_original)
    for state, pixels in updates:
        entry = document.history.get(state["id"])
        if entry is None:
            if pixels is None:
                continue  # dropped later in this journal: the newer autosave no longer has it
            if state["parent"] is None:
                state["parent"] = root  # one original only
            document.add_entry(HistoryEntry(image=pixels, **state))
            continue
        for key in FIELDS:
            if key == "parent" and entry.is_original:
                continue
            setattr(entry, key, state[key])
        if pixels is not None:
            entry.image = pixels
    for entry_id in dropped:
        document.drop_entry(entry_id)
    for entry in document.history.values():  # a parent a later line drops or an older base lacks
        if entry.parent is not None and entry.parent not in document.history:
            entry.parent = root
    if "current" in record:
        current = record["current"]
        document.current_entry = current if current in document.history else root
        if image is not None:
            document.image = image
    elif document.current_entry not in document.history:
        document.current_entry = root
