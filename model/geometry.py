"""Where a user's image lies on the model's grid of token cells: the one pixel <-> cell mapping.

The rule (docs/DESIGN.md): the image is scaled so that its longer side is the model's ``size``,
anchored at the top-left of the size x size square and padded right or below by repeating its
edge pixels. The square is a ``grid`` x ``grid`` raster of cells of ``factor`` pixels. A region
is named by its top-left cell and its bottom-right one (exclusive; by default the bottom-right
corner, DALL·E's own rectangle); its cells that hold only padding are neither sampled nor shown.

Standard library only: the studio's document, the CLI, the sampler and ``paste_back`` all read
the same ``Geometry`` and ``Plan`` without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Cell = tuple[int, int]  # (row, col)
PAPER_SIZE, PAPER_FACTOR = 256, 8  # the paper's geometry, used until a model says its own


@dataclass(frozen=True)
class Plan:
    """Which cells of a grid x grid raster are sampled: the region from (row, col) to ``end``
    (its bottom-right cell, exclusive), less the padding.

    A non-square image fills only the top-left ``visible_rows`` x ``visible_cols`` cells of the
    grid (``Geometry.visible_grid``); the rest is edge padding that the result drops. Cells of
    the region outside the visible rows and columns keep the input's own (padding) tokens and
    cost no model call. None: the whole grid is visible. ``end`` None: the region reaches the
    visible bottom-right corner (DALL·E's own rectangle); else every kept cell after the
    region's first one in raster order is forced to the picture's own token all the same.
    """

    grid: int
    row: int
    col: int
    visible_rows: int | None = None
    visible_cols: int | None = None
    end: Cell | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.row < self.grid and 0 <= self.col < self.grid):
            raise ValueError(
                f"cell ({self.row}, {self.col}) is outside the {self.grid}x{self.grid} token grid"
            )
        rows = self.grid if self.visible_rows is None else self.visible_rows
        cols = self.grid if self.visible_cols is None else self.visible_cols
        object.__setattr__(self, "visible_rows", rows)
        object.__setattr__(self, "visible_cols", cols)
        if not (1 <= rows <= self.grid and 1 <= cols <= self.grid):
            raise ValueError(
                f"the visible {rows}x{cols} cells must lie within the "
                f"{self.grid}x{self.grid} token grid"
            )
        if self.row >= rows or self.col >= cols:
            raise ValueError(
                f"the rectangle from cell ({self.row}, {self.col}) lies in the padding beside "
                f"the image (its {rows}x{cols} visible cells)"
            )
        if self.end is not None:
            bottom, right = self.end
            if not (self.row < bottom and self.col < right):
                raise ValueError(
                    f"the region's end cell ({bottom}, {right}) must lie below and right of its "
                    f"start ({self.row}, {self.col})"
                )
            if bottom > rows or right > cols:
                raise ValueError(
                    f"the region's end cell ({bottom}, {right}) is past the image's "
                    f"{rows}x{cols} visible cells"
                )
            if (bottom, right) == (rows, cols):  # the corner: one plan, however named
                object.__setattr__(self, "end", None)

    @property
    def _visible(self) -> tuple[int, int]:
        """The visible rows and columns (``__post_init__`` has replaced None with the grid)."""
        rows, cols = self.visible_rows, self.visible_cols
        return (self.grid if rows is None else rows, self.grid if cols is None else cols)

    @property
    def bottom(self) -> int:
        """The row below the region (exclusive)."""
        return self._visible[0] if self.end is None else self.end[0]

    @property
    def right(self) -> int:
        """The column right of the region (exclusive)."""
        return self._visible[1] if self.end is None else self.end[1]

    @property
    def to_corner(self) -> bool:
        """True when the region reaches the visible bottom-right corner."""
        return (self.bottom, self.right) == self._visible

    @property
    def masked_cells(self) -> list[int]:
        """Raster indices of the sampled cells, in sampling order."""
        g = self.grid
        return [
            r * g + c for r in range(self.row, self.bottom) for c in range(self.col, self.right)
        ]

    @property
    def rows(self) -> int:
        return self.bottom - self.row

    @property
    def cells(self) -> int:
        return self.rows * (self.right - self.col)

    @property
    def last_col(self) -> int:
        """The column whose sampling finishes a region row."""
        return self.right - 1

    @property
    def following_cells(self) -> list[int]:
        """Raster indices of the visible kept cells after the region's first cell in raster
        order: right of it in its rows, left of it in its lower rows, every visible row below
        it. The lookahead scores them (``model.inference.lookahead``)."""
        g, (rows, cols) = self.grid, self._visible
        found = []
        for r in range(self.row, rows):
            inside = r < self.bottom
            for c in range(cols):
                if inside and (self.col <= c < self.right or (r == self.row and c < self.col)):
                    continue
                found.append(r * g + c)
        return found


@dataclass(frozen=True)
class Geometry:
    """The user's image (width x height pixels) as the model sees it: a size x size square of
    grid x grid cells of factor pixels."""

    width: int
    height: int
    size: int
    factor: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"an image must be at least 1x1 pixel, got {self.width}x{self.height}")
        if self.factor < 1 or self.size < self.factor or self.size % self.factor:
            raise ValueError(
                f"a {self.size} px model cannot have cells of {self.factor} px: the size must "
                "be a positive multiple of the cell"
            )

    @property
    def grid(self) -> int:
        return self.size // self.factor

    @property
    def scale(self) -> float:
        """Model pixels per user pixel."""
        return self.size / max(self.width, self.height)

    @property
    def content(self) -> tuple[int, int]:
        """(w, h) of the scaled image inside the square, at least one pixel each."""
        return (
            max(1, round(self.width * self.scale)),
            max(1, round(self.height * self.scale)),
        )

    @property
    def visible_grid(self) -> tuple[int, int]:
        """(rows, cols) of cells that hold some of the image; the rest is padding."""
        w, h = self.content
        return min(self.grid, math.ceil(h / self.factor)), min(
            self.grid, math.ceil(w / self.factor)
        )

    def cell_at(self, x: float, y: float, clamp: bool = True) -> Cell:
        """The cell that holds user pixel (x, y). ``clamp``: a point outside the image is moved
        onto its nearest edge (a drag past the border); else it is a ValueError."""
        if clamp:
            x = min(max(x, 0), self.width - 1)
            y = min(max(y, 0), self.height - 1)
        elif not (0 <= x < self.width and 0 <= y < self.height):
            raise ValueError(f"pixel ({x}, {y}) is outside the {self.width}x{self.height} image")
        last = self.grid - 1
        # the same tolerance as pixel_of: the pixel where a cell starts is in that cell
        # (x * scale / factor may land a hair below the cell's integer edge)
        return min(last, math.floor(y * self.scale / self.factor + 1e-6)), min(
            last, math.floor(x * self.scale / self.factor + 1e-6)
        )

    def pixel_of(self, cell: Cell) -> tuple[int, int]:
        """The user pixel (x, y) where the rectangle from ``cell`` starts (clamped to the image)."""
        row, col = cell
        x = min(self.width, math.ceil(col * self.factor / self.scale - 1e-6))
        y = min(self.height, math.ceil(row * self.factor / self.scale - 1e-6))
        return x, y

    def cell_rect(self, cell: Cell) -> tuple[float, float, float, float]:
        """(x, y, w, h) in user pixels of one cell (for drawing the grid overlay)."""
        row, col = cell
        step = self.factor / self.scale
        return col * step, row * step, step, step

    def covers_image(self, cell: Cell) -> bool:
        """True when the rectangle from ``cell`` holds some of the image, not only padding."""
        x, y = self.pixel_of(cell)
        rows, cols = self.visible_grid
        return x < self.width and y < self.height and 0 <= cell[0] < rows and 0 <= cell[1] < cols

    def masked_count(self, cell: Cell) -> int:
        """Cells the rectangle from ``cell`` samples: those that hold image, not padding."""
        row, col = cell
        rows, cols = self.visible_grid
        return max(0, rows - row) * max(0, cols - col)

    def plan(self, cell: Cell, end: Cell | None = None) -> Plan:
        """The sampler's plan for the region from ``cell`` to ``end`` (its bottom-right cell,
        exclusive; None: the visible corner). ValueError when it lies outside the grid or only
        in the padding, or ends before it starts or past the visible cells."""
        return Plan(self.grid, *cell, *self.visible_grid, end=end)

    def end_cell(self, x: int, y: int) -> Cell:
        """The exclusive bottom-right cell of a region that ends at user pixel (x, y),
        exclusive: the cell holding pixel (x - 1, y - 1), plus one each way; at the image's
        right or bottom edge, the visible grid's."""
        if not (0 < x <= self.width and 0 < y <= self.height):
            raise ValueError(
                f"a region ending at pixel ({x}, {y}) is outside the {self.width}x{self.height} "
                "image"
            )
        row, col = self.cell_at(x - 1, y - 1, clamp=False)
        rows, cols = self.visible_grid  # the image's edge: its last visible cell, rounding aside
        return (rows if y == self.height else min(rows, row + 1)), (
            cols if x == self.width else min(cols, col + 1)
        )


# -- the working area: the part of the picture the model sees -----------------------------------

AREA_CHOICES = ("whole", "auto")
# auto: the rectangle's longer side takes at most this share of the area's side, so the model
# sees at least as much context above and to the left as it regenerates
AUTO_CONTEXT = 2.0
# a region that ends inside the picture: the area shows at least this share of its longer side
# of kept pixels right of and below it (the cells its lookahead scores)
MARGIN_SHARE = 0.25


@dataclass(frozen=True)
class Area:
    """The part of a ``picture`` (width, height) the model sees: the box from (left, top) to
    (right, bottom), exclusive; None: the picture's own right and bottom (every rectangle to the
    corner reaches them). Whole: the whole picture."""

    picture: tuple[int, int]
    left: int = 0
    top: int = 0
    right: int | None = None
    bottom: int | None = None

    def __post_init__(self) -> None:
        width, height = self.picture
        if not (0 <= self.left < width and 0 <= self.top < height):
            raise ValueError(
                f"the working area from pixel ({self.left}, {self.top}) is outside the "
                f"{width}x{height} picture"
            )
        right = width if self.right is None else self.right
        bottom = height if self.bottom is None else self.bottom
        if not (self.left < right <= width and self.top < bottom <= height):
            raise ValueError(
                f"the working area from pixel ({self.left}, {self.top}) to ({right}, {bottom}) "
                f"does not lie within the {width}x{height} picture"
            )
        object.__setattr__(self, "right", right)
        object.__setattr__(self, "bottom", bottom)

    @property
    def _end(self) -> tuple[int, int]:
        """(right, bottom) (``__post_init__`` has replaced None with the picture's)."""
        right, bottom = self.right, self.bottom
        return (
            self.picture[0] if right is None else right,
            self.picture[1] if bottom is None else bottom,
        )

    @property
    def width(self) -> int:
        return self._end[0] - self.left

    @property
    def height(self) -> int:
        return self._end[1] - self.top

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in picture pixels, as Pillow's ``crop`` takes it."""
        return self.left, self.top, *self._end

    @property
    def is_whole(self) -> bool:
        return self.left == 0 and self.top == 0 and self._end == self.picture

    def geometry(self, size: int, factor: int) -> Geometry:
        """The area as the model sees it."""
        return Geometry(self.width, self.height, size, factor)

    def pixels_per_model_pixel(self, size: int) -> float:
        """Picture pixels per model pixel: 1 / Geometry.scale."""
        return max(self.width, self.height) / size


def region_margin(longer: int, side: int, size: int, factor: int) -> int:
    """The kept pixels an area shows right of and below a region that ends inside the picture:
    ``MARGIN_SHARE`` of the region's longer side, at least one model cell of an area of
    ``side`` pixels (``factor`` model pixels of a ``size`` px model)."""
    return max(math.ceil(MARGIN_SHARE * longer), math.ceil(side * factor / size))


def working_area(
    picture: tuple[int, int],
    corner: tuple[int, int],
    size: int,
    choice: str | int = "whole",
    end: tuple[int, int] | None = None,
    factor: int = PAPER_FACTOR,
) -> Area:
    """The area the model sees to regenerate the region from picture pixel ``corner`` to
    ``end`` (exclusive; None: the bottom-right corner). ``choice``: "whole" (the whole
    picture), "auto" (a square whose side is ``AUTO_CONTEXT`` times the region's longer side,
    never smaller than the model's ``size`` so the picture is never scaled up into the model)
    or a side in pixels. A square side longer than the picture is clipped to it (that side is
    whole). A region that ends inside the picture: the square ends a margin past it where the
    picture has room (``region_margin``, on the model's cells of ``factor`` pixels), so the
    model sees kept pixels right of and below it. Raises ValueError for a side that does not
    hold the region, a region outside the picture, or an unknown choice."""
    width, height = picture
    x, y = corner
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"pixel ({x}, {y}) is outside the {width}x{height} picture")
    right, bottom = picture if end is None else end
    if not (x < right <= width and y < bottom <= height):
        raise ValueError(
            f"the region from pixel ({x}, {y}) to ({right}, {bottom}) must end below and right "
            f"of its start, inside the {width}x{height} picture"
        )
    longer = max(right - x, bottom - y)  # the region's longer side
    inside = (right, bottom) != picture
    if choice == "whole":
        return Area(picture)
    if choice == "auto":
        side = max(math.ceil(AUTO_CONTEXT * longer), size)
        margin = 0
        for _ in range(3):  # the margin's one cell grows with the side it is added to
            margin = region_margin(longer, side, size, factor) if inside else 0
            side = max(math.ceil(AUTO_CONTEXT * longer) + margin, size)
    elif isinstance(choice, int) and not isinstance(choice, bool):
        side = choice
        if side < longer:
            raise ValueError(
                f"a working area of {side} px does not hold the {right - x}x{bottom - y} px "
                f"rectangle: give at least {longer} px, auto or whole"
            )
        margin = min(region_margin(longer, side, size, factor), side - longer) if inside else 0
    else:
        raise ValueError(f"the working area is auto, whole or a side in pixels, got {choice!r}")
    # near the picture's top or left edge the area reaches further right or down rather than
    # shrink: at least the model's size for auto (never scaled up into the model), the side asked
    least = side if choice != "auto" else size
    area_right = min(width, max(right + margin, least))
    area_bottom = min(height, max(bottom + margin, least))
    return Area(
        picture, max(0, area_right - side), max(0, area_bottom - side), area_right, area_bottom
    )
