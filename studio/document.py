"""The studio's state: image, rectangle, live preview, candidates, history tree and undo stack.

QObjects with ``*_changed`` signals and no widgets (krita-ai-diffusion's model/ui split): widgets
only bind to these signals. Images are (H, W, 3) uint8 numpy arrays, kept bit-exact; nothing here
resamples the user's pixels. Where the rectangle's cell lies in the user's pixels is asked of
``model.geometry.Geometry``, the one owner of that mapping; it is pure Python, so this module
imports neither torch nor the engine.

What counts as unsaved work: everything a project keeps except the rectangle. Image changes go
through the undo stack; every other kept change (a new history entry, a star, a deletion, a
remembered caption) goes through ``_changed``, so none can be missed by the title's ``*``, the
close dialog or the autosave. The rectangle only says where the next run goes; moving it is not
work to lose, like a selection in a paint program.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from model.config import SamplingOptions
from model.geometry import AREA_CHOICES, PAPER_FACTOR, PAPER_SIZE, Area, Geometry, working_area

MAX_CAPTION_HISTORY = 100
# the keys of an entry's options in a file that are sampling options (the others: seconds,
# candidate)
SAMPLING_KEYS = frozenset(field.name for field in dataclasses.fields(SamplingOptions))


@dataclass
class HistoryEntry:
    """One image in the history tree: the opened original (parent None) or a generated one."""

    id: int
    parent: int | None
    image: np.ndarray
    caption: str = ""
    cell: tuple[int, int] | None = None  # on the working area's grid
    # the working area's top-left (left, top) in picture pixels; None: the whole picture (and
    # every entry of a project written before areas)
    area: tuple[int, int] | None = None
    seed: int | None = None
    # how it was sampled: its run's options but the seed (the entry's own field); None for the
    # original and for an entry whose project recorded none
    options: SamplingOptions | None = None
    seconds: float | None = None  # how long its run took
    candidate: int | None = None  # its place among its run's candidates (0: the first)
    time: float = field(default_factory=time.time)
    model: str = ""
    starred: bool = False
    accepted: bool = False

    @property
    def is_original(self) -> bool:
        return self.parent is None

    def options_dict(self) -> dict[str, Any]:
        """Its "options" as a project and the autosave's journal write them: the sampling
        options but the seed (the entry's own "seed"), then ``seconds`` and ``candidate``,
        each where the entry has it."""
        values: dict[str, Any] = {}
        if self.options is not None:
            values = self.options.to_dict()
            del values["seed"]
        if self.seconds is not None:
            values["seconds"] = self.seconds
        if self.candidate is not None:
            values["candidate"] = self.candidate
        return values

    @staticmethod
    def typed_options(values: dict[str, Any]) -> dict[str, Any]:
        """The fields ``options``, ``seconds`` and ``candidate`` from what ``options_dict`` wrote
        (one saved before top-p was recorded has the default top-p). Invalid sampling options
        raise ValueError naming the field; none at all (the original's ``{}``) give None; other
        keys, and a seconds or candidate of another type, are not kept."""
        sampling = {key: value for key, value in values.items() if key in SAMPLING_KEYS}
        seconds, candidate = values.get("seconds"), values.get("candidate")
        typed: dict[str, Any] = {"options": None, "seconds": None, "candidate": None}
        if sampling:
            typed["options"] = SamplingOptions.from_dict(sampling)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            typed["seconds"] = float(seconds)
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            typed["candidate"] = candidate
        return typed


class SetImageCommand(QUndoCommand):
    """Replace the document's image (accepting a candidate or restoring a history entry)."""

    def __init__(self, document: Document, image: np.ndarray, entry_id: int | None, text: str):
        super().__init__(text)
        self._document = document
        self._new = (image, entry_id)
        self._old = (document.image, document.current_entry)

    def redo(self) -> None:
        self._document._set_image(*self._new)

    def undo(self) -> None:
        self._document._set_image(*self._old)


class Document(QObject):
    image_changed = Signal()
    rectangle_changed = Signal()
    preview_changed = Signal()
    candidates_changed = Signal()
    candidate_index_changed = Signal(int)
    history_changed = Signal()
    generating_changed = Signal(bool)
    progress_changed = Signal(int, int, float, float)  # rows done, rows total, tokens/s, eta s
    modified_changed = Signal(bool)  # True: there is work a save would keep

    def __init__(self, image: np.ndarray | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._clean_changed)
        self.undo_stack.indexChanged.connect(self._touched)
        self.revision = 0  # grows with every change (autosave writes when it moved)
        self._unsaved = False  # kept changes outside the undo stack since the last save
        self._ids = itertools.count(1)
        self.image: np.ndarray = (
            np.full((256, 256, 3), 255, np.uint8) if image is None else _checked(image)
        )
        # the geometry the rectangle's cell was made in; False only for a cell read from a
        # project that did not record it (then the next model's geometry is taken as its own)
        self.model_size, self.model_factor = PAPER_SIZE, PAPER_FACTOR
        self.cell_geometry_known = True
        self.cell: tuple[int, int] | None = None  # on the working area's grid
        # the working area: how it is chosen (whole, auto or a side in pixels: the session sets
        # it) and the one the rectangle is in, by its top-left (it reaches the bottom-right)
        self.area_choice: str | int = "whole"
        self.area_offset: tuple[int, int] = (0, 0)
        self._asked: tuple[float, float] | None = None  # the corner the user put, unsnapped
        self.preview: np.ndarray | None = None
        self.peek: np.ndarray | None = None  # a history entry shown without restoring it
        self.candidates: list[np.ndarray] = []
        self.candidate_entries: list[int] = []
        self.candidate_index = 0
        self.history: dict[int, HistoryEntry] = {}
        self.current_entry: int | None = None
        self.generating = False
        self.source_entry: int | None = None  # the entry the running generation started from
        self.caption_history: list[str] = []
        self.path: str | None = None  # the .dstudio file, when saved
        self.source_path: str | None = None  # the image file it was opened from
        original = self._add_entry(None, self.image)
        self.current_entry = original.id

    # -- saved state ----------------------------------------------------------------------

    @property
    def modified(self) -> bool:
        """True when the document holds work that its project file (if any) does not."""
        return self._unsaved or not self.undo_stack.isClean()

    def mark_modified(self) -> None:
        """Count the document as unsaved (recovered work, or a kept change outside undo)."""
        self._changed()

    def mark_saved(self) -> None:
        """Everything is in the project file now (after a save or a load)."""
        was = self.modified
        self._unsaved = False
        self.undo_stack.setClean()
        if was:
            self.modified_changed.emit(False)

    def _changed(self) -> None:
        was = self.modified
        self.revision += 1
        self._unsaved = True
        if not was:
            self.modified_changed.emit(True)

    def _touched(self, *_: object) -> None:
        self.revision += 1

    def _clean_changed(self, clean: bool) -> None:
        self.modified_changed.emit(self.modified)

    # -- image and geometry -------------------------------------------------------------

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.width, self.height, self.model_size, self.model_factor)

    @property
    def area(self) -> Area:
        """The working area the rectangle is in (the whole picture until one is chosen)."""
        left, top = self.area_offset
        if left >= self.width or top >= self.height:  # not reached: areas follow the image
            return Area((self.width, self.height))
        return Area((self.width, self.height), left, top)

    @property
    def area_geometry(self) -> Geometry:
        """The working area as the model sees it: the grid the rectangle's cell is on."""
        return self.area.geometry(self.model_size, self.model_factor)

    def working_area_at(self, x: int, y: int) -> Area:
        """The area ``area_choice`` gives a rectangle from picture pixel (x, y); a side too
        short to hold that rectangle grows to hold it (the choice stays)."""
        choice = self.area_choice
        if isinstance(choice, int):
            choice = max(choice, self.width - x, self.height - y)
        return working_area((self.width, self.height), (x, y), self.model_size, choice)

    def set_area_choice(self, choice: str | int) -> None:
        """Choose how the working area follows the rectangle (whole, auto or a side in
        pixels; ValueError for another): the rectangle is placed again from the corner the user
        put, on the new area's grid."""
        choice = area_choice(choice)
        if choice == self.area_choice and (self.cell is None or self._asked is not None):
            return  # a rectangle placed by the user is in its choice's area already
        self.area_choice = choice
        if self.cell is None:
            self.rectangle_changed.emit()
            return
        if self._asked is None:
            corner = self.rectangle_pixels()
            self._asked = (corner[0], corner[1]) if corner else (0, 0)
        self.set_rectangle_from_pixel(*self._asked)

    def set_model_geometry(self, size: int, factor: int) -> None:
        """The loaded model's resolution. A rectangle made in another geometry is re-snapped
        through the geometry it was made in (never through one it was not made in); in the same
        geometry it stays exactly as it is."""
        if not self.cell_geometry_known:
            self.cell_geometry_known = True
            self.model_size, self.model_factor = size, factor
            if self.cell is not None:  # taken as made in this model: kept, clamped to its grid
                last = self.geometry.grid - 1
                self.cell = (min(self.cell[0], last), min(self.cell[1], last))
            self.rectangle_changed.emit()
            return
        if (size, factor) == (self.model_size, self.model_factor):
            return
        corner = self.rectangle_pixels()
        self.model_size, self.model_factor = size, factor
        if corner is not None:
            self.set_rectangle_from_pixel(corner[0], corner[1])
        else:
            self.rectangle_changed.emit()

    def _set_image(self, image: np.ndarray, entry_id: int | None) -> None:
        self.image = image
        self.current_entry = entry_id
        self.image_changed.emit()
        self.history_changed.emit()

    # -- rectangle ----------------------------------------------------------------------

    def set_rectangle_from_pixel(self, x: float, y: float) -> tuple[int, int]:
        """Put the rectangle's top-left corner at user pixel (x, y), snapped to its token cell
        on the grid of the working area that ``area_choice`` gives it.

        The rectangle always extends to the bottom-right corner; points outside the image are
        clamped onto it.
        """
        x = min(max(x, 0), self.width - 1)
        y = min(max(y, 0), self.height - 1)
        area = self.working_area_at(int(x), int(y))
        cell = area.geometry(self.model_size, self.model_factor).cell_at(
            x - area.left, y - area.top
        )
        self.set_cell(cell, (area.left, area.top))
        self._asked = (x, y)
        return cell

    def set_cell(self, cell: tuple[int, int] | None, area: tuple[int, int] | None = None) -> None:
        """Put the rectangle at ``cell`` of the working area from ``area`` (left, top; None:
        the whole picture)."""
        left, top = area or (0, 0)
        Area((self.width, self.height), left, top)  # ValueError outside the picture
        self.area_offset = (int(left), int(top))
        self._asked = None
        if cell is not None:
            grid = self.area_geometry.grid
            row, col = cell
            if not (0 <= row < grid and 0 <= col < grid):
                raise ValueError(f"cell {cell} is outside the {grid}x{grid} token grid")
            cell = (int(row), int(col))
        self.cell = cell
        self.cell_geometry_known = True
        self.revision += 1
        self.rectangle_changed.emit()

    def rectangle_pixels(self) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of the rectangle in user pixels, reaching the bottom-right corner."""
        if self.cell is None:
            return None
        x, y = self.area_geometry.pixel_of(self.cell)
        x, y = x + self.area_offset[0], y + self.area_offset[1]
        return x, y, self.width - x, self.height - y

    @property
    def masked_cells(self) -> int:
        """The cells the rectangle samples, on the working area's grid."""
        return 0 if self.cell is None else self.area_geometry.masked_count(self.cell)

    # -- generation ---------------------------------------------------------------------

    def start_generation(self) -> None:
        self.source_entry = self.current_entry
        self.generating = True
        self.preview = None
        self.peek = None
        self.generating_changed.emit(True)

    def show_row(
        self, preview: np.ndarray | None, rows_done: int, rows_total: int, speed: float, eta: float
    ) -> None:
        """A finished rectangle row: its live preview (None: the row was not decoded, the last
        preview stays) and the progress."""
        if not self.generating:
            return
        if preview is not None:
            self.preview = preview
            self.preview_changed.emit()
        self.progress_changed.emit(rows_done, rows_total, speed, eta)

    def end_generation(self) -> None:
        """Cancelled or failed: the image is untouched; the live preview goes away."""
        self.generating = False
        self.preview = None
        self.preview_changed.emit()
        self.generating_changed.emit(False)

    def finish_generation(
        self,
        candidates: list[np.ndarray],
        caption: str,
        cell: tuple[int, int],
        seed: int | None,
        options: SamplingOptions | None,
        model: str = "",
        previewed: int = 0,
        seconds: float | None = None,
        area: tuple[int, int] | None = None,
    ) -> None:
        """Record the results as history entries (children of the source) and stage them,
        selecting ``previewed``: the candidate the live preview showed, so the view does not
        jump when a reranker put another one first. ``options``: the run's sampling options (their
        seed is each entry's ``seed``); ``seconds``: how long the run took; ``area``: the
        working area's top-left (None or (0, 0): the whole picture)."""
        if options is not None:
            options = dataclasses.replace(options, seed=None)
        parent = self.source_entry if self.source_entry in self.history else self.current_entry
        entries = [
            self._add_entry(
                parent,
                _checked(candidate),
                caption=caption,
                cell=cell,
                area=None if not area or area == (0, 0) else (int(area[0]), int(area[1])),
                seed=seed,
                options=options,
                seconds=seconds,
                candidate=index,
                model=model,
            )
            for index, candidate in enumerate(candidates)
        ]
        self._changed()
        self.remember_caption(caption)
        self.end_generation()
        self.set_candidates(candidates, [entry.id for entry in entries], previewed)
        self.history_changed.emit()

    # -- candidates ---------------------------------------------------------------------

    def set_candidates(
        self, candidates: list[np.ndarray], entries: list[int] | None = None, selected: int = 0
    ) -> None:
        self.candidates = list(candidates)
        self.candidate_entries = list(entries or [])
        self.candidate_index = max(0, min(selected, len(self.candidates) - 1))
        self.candidates_changed.emit()
        self.candidate_index_changed.emit(self.candidate_index)

    def select_candidate(self, index: int) -> None:
        if not self.candidates:
            return
        index = max(0, min(index, len(self.candidates) - 1))
        if index != self.candidate_index:
            self.candidate_index = index
            self.candidate_index_changed.emit(index)

    def next_candidate(self) -> None:
        self.select_candidate(self.candidate_index + 1)

    def previous_candidate(self) -> None:
        self.select_candidate(self.candidate_index - 1)

    @property
    def shown_image(self) -> np.ndarray:
        """What the canvas shows: the live preview, else the selected candidate, else the image."""
        if self.preview is not None:
            return self.preview
        if self.peek is not None:
            return self.peek
        if self.candidates:
            return self.candidates[self.candidate_index]
        return self.image

    def accept_candidate(self) -> bool:
        """The selected candidate becomes the image: one undoable step."""
        if not self.candidates:
            return False
        index = self.candidate_index
        image = self.candidates[index]
        entry = self.candidate_entries[index] if index < len(self.candidate_entries) else None
        if entry is None:
            entry = self._add_entry(self.current_entry, image).id
            self._changed()
        self.history[entry].accepted = True
        self.candidates, self.candidate_entries = [], []
        self.undo_stack.push(SetImageCommand(self, image, entry, "Accept candidate"))
        self.candidates_changed.emit()
        return True

    def discard_candidates(self) -> None:
        if self.candidates:
            self.candidates, self.candidate_entries = [], []
            self.candidates_changed.emit()
            self.image_changed.emit()

    # -- history ------------------------------------------------------------------------

    def _add_entry(self, parent: int | None, image: np.ndarray, **fields: Any) -> HistoryEntry:
        entry = HistoryEntry(id=next(self._ids), parent=parent, image=image, **fields)
        self.history[entry.id] = entry
        return entry

    def add_entry(self, entry: HistoryEntry) -> None:
        """Insert a loaded entry (projects), keeping new ids above it."""
        self.history[entry.id] = entry
        self._ids = itertools.count(max(self.history) + 1)

    def peek_entry(self, entry_id: int | None) -> None:
        """Show a history entry on the canvas without changing the image (None: stop)."""
        entry = self.history.get(entry_id) if entry_id is not None else None
        self.peek = None if entry is None or entry_id == self.current_entry else entry.image
        self.preview_changed.emit()

    def restore(self, entry_id: int) -> None:
        """Make a history entry the image again (undoable); new generations branch from it."""
        entry = self.history[entry_id]
        self.peek = None
        if entry_id == self.current_entry:
            self.preview_changed.emit()
            return
        self.discard_candidates()
        self.undo_stack.push(SetImageCommand(self, entry.image, entry_id, "Restore from history"))

    def delete_entry(self, entry_id: int) -> None:
        """Remove an entry; its children are re-attached to its parent. The original stays."""
        entry = self.drop_entry(entry_id)
        if entry is None:
            return
        if self.current_entry == entry_id:
            self.current_entry = entry.parent
        self._changed()
        self.history_changed.emit()

    def drop_entry(self, entry_id: int) -> HistoryEntry | None:
        """Take an entry out of the history, its children re-attached to its parent; no signal
        (``delete_entry`` for the user's delete, the autosave's replay as it is). None for the
        original or an entry that is not there."""
        entry = self.history.get(entry_id)
        if entry is None or entry.is_original:
            return None
        for child in self.history.values():
            if child.parent == entry_id:
                child.parent = entry.parent
        del self.history[entry_id]
        return entry

    def set_starred(self, entry_id: int, starred: bool) -> None:
        if self.history[entry_id].starred == starred:
            return
        self.history[entry_id].starred = starred
        self._changed()
        self.history_changed.emit()

    def children(self, entry_id: int | None) -> list[HistoryEntry]:  # type: ignore[override]
        return [entry for entry in self.history.values() if entry.parent == entry_id]

    def lineage(self, entry_id: int) -> list[int]:
        """Ids from the original down to ``entry_id``."""
        line = []
        current: int | None = entry_id
        while current is not None:
            line.append(current)
            current = self.history[current].parent
        return line[::-1]

    # -- captions -----------------------------------------------------------------------

    def remember_caption(self, caption: str) -> None:
        caption = caption.strip()
        if not caption:
            return
        if self.caption_history and self.caption_history[-1] == caption:
            return
        if caption in self.caption_history:
            self.caption_history.remove(caption)
        self.caption_history.append(caption)
        del self.caption_history[:-MAX_CAPTION_HISTORY]
        self._changed()


def area_choice(choice: Any) -> str | int:
    """A working area choice checked: "whole", "auto" or a side of at least one pixel."""
    if isinstance(choice, str) and choice in AREA_CHOICES:
        return choice
    if isinstance(choice, int) and not isinstance(choice, bool) and choice >= 1:
        return choice
    raise ValueError(f"the working area is whole, auto or a side in pixels, got {choice!r:.40}")


def _checked(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return image
