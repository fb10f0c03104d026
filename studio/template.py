"""Canvas templates: a new document laid out for a prompting pattern.

Image-to-image translation by prompting (OpenAI's DALL·E article, 2021): the top half of a square
canvas holds a picture, the caption asks for "the exact same cat on the top as a sketch on the
bottom", and completing the bottom half draws it. ``image_to_image`` builds that canvas:

- Side: ``max(width, 2 * height)`` of the picture, made even, so the picture fits the top half
  at its own size and its pixels are the file's, bit for bit. Only a picture whose canvas would
  pass the product's pixel limit (``model.files.MAX_PIXELS``, the limit every opened image has)
  is scaled down, to a side of ``MAX_SIDE``.
- The rectangle: column 0, from the cell row nearest the middle (the middle itself for an even
  grid; for an odd grid the row just below it, so the kept rows hold at least half the canvas and
  the picture keeps its size). It is set as a cell of the model's ``Geometry``, so it snaps to the
  loaded model's grid, and the picture lies wholly in the rows above it: no picture pixel is
  regenerated, and the engine keeps every pixel there bit for bit.
- The picture is centred in the kept rows; the rest is white (``FILL``), as a new blank document
  is and as transparent pixels are composited, so the margins read as paper, not as content.

Torch-free, like the document: Pillow only scales a picture past the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.files import MAX_PIXELS
from model.geometry import Cell, Geometry
from studio.document import Document

CAPTION = "the exact same thing on the top as a sketch on the bottom"
SUBJECT = "thing"  # the word a user names first: the caption box selects it, typing replaces it
FILL = 255  # white: a new blank document's colour and what transparency is composited on
# the longest canvas side: its square stays within MAX_PIXELS (7071² px)
MAX_SIDE = math.isqrt(MAX_PIXELS) // 1000 * 1000


@dataclass(frozen=True)
class Layout:
    """Where things go on a top -> bottom canvas (user pixels)."""

    side: int  # the square canvas's side
    cell: Cell  # the rectangle's top-left cell: (row nearest the middle, 0)
    kept_rows: int  # pixel rows above the rectangle: never regenerated
    picture: tuple[int, int, int, int]  # (x, y, width, height) of the picture on the canvas


def subject_span(caption: str = CAPTION) -> tuple[int, int]:
    """(start, end) of ``SUBJECT`` in ``caption``: what the caption box selects."""
    start = caption.index(SUBJECT)
    return start, start + len(SUBJECT)


def layout(width: int, height: int, size: int, factor: int) -> Layout:
    """The canvas for a ``width`` x ``height`` picture and a model of ``size`` px in cells of
    ``factor`` px (see the module's docstring)."""
    if width < 1 or height < 1:
        raise ValueError(f"a picture must be at least 1x1 pixel, got {width}x{height}")
    shrink = min(1.0, MAX_SIDE / max(width, 2 * height))
    picture_w = max(1, math.floor(width * shrink))
    picture_h = max(1, math.floor(height * shrink))
    side = max(picture_w, 2 * picture_h)
    side += side % 2
    # a later model switch re-snaps the rectangle through its first pixel row
    # (Document.set_model_geometry): Geometry.cell_at maps a cell's first pixel back to that cell
    cell, kept_rows = _middle(side, size, factor)
    x = (side - picture_w) // 2
    y = (kept_rows - picture_h) // 2
    return Layout(side, cell, kept_rows, (x, y, picture_w, picture_h))


def _middle(side: int, size: int, factor: int) -> tuple[Cell, int]:
    """The rectangle's cell on a ``side`` px square (the row nearest the middle; for an odd grid
    the one below it) and the pixel rows above it."""
    geometry = Geometry(side, side, size, factor)
    cell = ((geometry.grid + 1) // 2, 0)
    return cell, geometry.pixel_of(cell)[1]


def canvas(picture: np.ndarray, plan: Layout) -> np.ndarray:
    """The (side, side, 3) uint8 canvas: white, with ``picture`` placed as ``plan`` says."""
    x, y, width, height = plan.picture
    if picture.shape[:2] != (height, width):  # past the pixel limit only
        resized = Image.fromarray(picture, "RGB").resize((width, height), Image.Resampling.LANCZOS)
        picture = np.asarray(resized, dtype=np.uint8)
    image = np.full((plan.side, plan.side, 3), FILL, np.uint8)
    image[y : y + height, x : x + width] = picture
    return image


def image_to_image(picture: np.ndarray, size: int, factor: int) -> Document:
    """A new untitled document for image-to-image translation: ``picture`` in the top half, the
    rectangle on the bottom half of a ``size`` px model's grid of ``factor`` px cells.

    It counts as unsaved work (a save asks for a name) and its history starts at this canvas."""
    picture = np.asarray(picture)
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) uint8 picture, got {picture.dtype} {picture.shape}"
        )
    plan = layout(picture.shape[1], picture.shape[0], size, factor)
    document = Document(canvas(picture, plan))
    document.set_model_geometry(size, factor)
    document.set_cell(plan.cell)
    document.mark_modified()
    return document
