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
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from model.config import SamplingOptions
from model.geometry import AREA_CHOICES, PAPER_FACTOR, PAPER_SIZE, Area, Geometry, working_area
from studio.entry import SAMPLING_KEYS as SAMPLING_KEYS
from studio.entry import HistoryEntry as HistoryEntry

MAX_CAPTION_HISTORY = 100


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
        # the area's (right, bottom) when it ends inside the picture (a region that does)
        self.area_far: tuple[int, int] | None = None
        # the region's bottom-right cell on the area's grid, exclusive; None: to the corner
        self.end: tuple[int, int] | None = None
        self._asked: tuple[float, float] | None = None  # the corner the user put, unsnapped
        self._asked_end: tuple[float, float] | None = None  # the end the user put, unsnapped
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
        right, bottom = self.area_far or (None, None)
        try:
            return Area((self.width, self.height), left, top, right, bottom)
        except ValueError:  # not reached: areas follow the image
            return Area((self.width, self.height))

    @property
    def area_record(self) -> tuple[int, ...] | None:
        """The area as a history entry and a project record it: None for the whole picture,
        (left, top) when it reaches the picture's corner, else (left, top, right, bottom)."""
        area = self.area
        if area.is_whole:
            return None
        if (area.right, area.bottom) == (self.width, self.height):
            return area.left, area.top
        return area.box

    @property
    def area_geometry(self) -> Geometry:
        """The working area as the model sees it: the grid the rectangle's cell is on."""
        return self.area.geometry(self.model_size, self.model_factor)

    def working_area_at(self, x: int, y: int, end: tuple[int, int] | None = None) -> Area:
        """The area ``area_choice`` gives a region from picture pixel (x, y) to ``end``
        (exclusive; None: the corner); a side too short to hold that region grows to hold it
        (the choice stays)."""
        choice = self.area_choice
        right, bottom = (self.width, self.height) if end is None else end
        if isinstance(choice, int):
            choice = max(choice, right - x, bottom - y)
        return working_area(
            (self.width, self.height), (x, y), self.model_size, choice, end, self.model_factor
        )

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
            self._remember_asked()
        x, y = self._asked or (0.0, 0.0)
        self.set_rectangle_from_pixel(x, y, end=self._asked_end)

    def _remember_asked(self) -> None:
        """Take the rectangle as it is for what the user put (a region read from a file)."""
        box = self.rectangle_pixels()
        if box is None:
            return
        x, y, w, h = box
        self._asked = (x, y)
        self._asked_end = None if self.end is None else (x + w, y + h)

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
        box = self.rectangle_pixels()
        self.model_size, self.model_factor = size, factor
        if box is not None:
            x, y, w, h = box
            end = None if self.end is None else (x + w, y + h)
            self.set_rectangle_from_pixel(x, y, end=end)
        else:
            self.rectangle_changed.emit()

    def _set_image(self, image: np.ndarray, entry_id: int | None) -> None:
        self.image = image
        self.current_entry = entry_id
        self.image_changed.emit()
        self.history_changed.emit()

    # -- rectangle ----------------------------------------------------------------------

    def set_rectangle_from_pixel(
        self, x: float, y: float, end: tuple[float, float] | None = None
    ) -> tuple[int, int]:
        """Put the rectangle's top-left corner at user pixel (x, y), snapped to its token cell
        on the grid of the working area that ``area_choice`` gives it.

        ``end``: the user pixel where the region ends (exclusive), snapped to the cell that holds
        its last pixel (``Geometry.end_cell``); None: the region reaches the bottom-right
        corner, DALL·E's own rectangle. Points outside the image are clamped onto it, and an end
        is at least one pixel past the corner.
        """
        x = min(max(x, 0), self.width - 1)
        y = min(max(y, 0), self.height - 1)
        far = None
        if end is not None:
            far = (
                int(min(max(round(end[0]), int(x) + 1), self.width)),
                int(min(max(round(end[1]), int(y) + 1), self.height)),
            )
            if far == (self.width, self.height):
                far = None  # to the corner: one region, however it was put
        area = self.working_area_at(int(x), int(y), far)
        geometry = area.geometry(self.model_size, self.model_factor)
        cell = geometry.cell_at(x - area.left, y - area.top)
        last = None if far is None else geometry.end_cell(far[0] - area.left, far[1] - area.top)
        self.set_cell(cell, area.box, last)
        self._asked = (x, y)
        self._asked_end = None if far is None else (float(far[0]), float(far[1]))
        return cell

    def set_end_from_pixel(self, x: float | None, y: float | None = None) -> None:
        """Move the region's bottom-right corner to user pixel (x, y) (exclusive), its top-left
        staying where the user put it; None: the region reaches the bottom-right corner again.
        Nothing without a rectangle."""
        if self.cell is None:
            return
        if self._asked is None:
            self._remember_asked()
        corner = self._asked or (0.0, 0.0)
        end = None if x is None or y is None else (x, y)
        self.set_rectangle_from_pixel(corner[0], corner[1], end=end)

    def set_cell(
        self,
        cell: tuple[int, int] | None,
        area: tuple[int, ...] | None = None,
        end: tuple[int, int] | None = None,
    ) -> None:
        """Put the rectangle at ``cell`` of the working area ``area`` ((left, top) or (left,
        top, right, bottom); None: the whole picture), ending at ``end`` (its bottom-right cell,
        exclusive; None: the corner). ValueError for an area outside the picture or a region
        outside the area's visible cells."""
        left, top, *far = area or (0, 0)
        right, bottom = far if far else (None, None)
        chosen = Area((self.width, self.height), left, top, right, bottom)
        if cell is not None:
            grid = chosen.geometry(self.model_size, self.model_factor).grid
            row, col = cell
            if not (0 <= row < grid and 0 <= col < grid):
                raise ValueError(f"cell {cell} is outside the {grid}x{grid} token grid")
            cell = (int(row), int(col))
            if end is not None:
                geometry = chosen.geometry(self.model_size, self.model_factor)
                plan = geometry.plan(cell, (int(end[0]), int(end[1])))
                end = None if plan.to_corner else (plan.bottom, plan.right)
        else:
            end = None
        self.area_offset = (int(left), int(top))
        self.area_far = None if chosen.box[2:] == (self.width, self.height) else chosen.box[2:]
        self._asked = self._asked_end = None
        self.cell, self.end = cell, end
        self.cell_geometry_known = True
        self.revision += 1
        self.rectangle_changed.emit()

    def rectangle_pixels(self) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of the region in user pixels: to the bottom-right corner, or to its
        end."""
        if self.cell is None:
            return None
        geometry, (left, top) = self.area_geometry, self.area_offset
        x, y = geometry.pixel_of(self.cell)
        x, y = x + left, y + top
        if self.end is None:  # the area's corner: the picture's, but for a region inside it
            _, _, right, bottom = self.area.box
            return x, y, right - x, bottom - y
        right, bottom = geometry.pixel_of(self.end)
        return x, y, right + left - x, bottom + top - y

    @property
    def masked_cells(self) -> int:
        """The cells the region samples, on the working area's grid."""
        if self.cell is None:
            return 0
        if self.end is None:
            return self.area_geometry.masked_count(self.cell)
        return self.area_geometry.plan(self.cell, self.end).cells

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
        area: tuple[int, ...] | None = None,
        end: tuple[int, int] | None = None,
    ) -> None:
        """Record the results as history entries (children of the source) and stage them,
        selecting ``previewed``: the candidate the live preview showed, so the view does not
        jump when a reranker put another one first. ``options``: the run's sampling options (their
        seed is each entry's ``seed``); ``seconds``: how long the run took; ``area``: the
        working area (``area_record``; None or (0, 0): the whole picture); ``end``: the region's
        bottom-right cell (None: to the corner)."""
        if options is not None:
            options = dataclasses.replace(options, seed=None)
        parent = self.source_entry if self.source_entry in self.history else self.current_entry
        entries = [
            self._add_entry(
                parent,
                _checked(candidate),
                caption=caption,
                cell=cell,
                area=None if not area or area == (0, 0) else tuple(int(v) for v in area),
                end=None if end is None else (int(end[0]), int(end[1])),
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
