"""model/geometry.py: the one pixel <-> cell mapping, and the sampler's plan, without torch."""

import subprocess
import sys

import pytest

from model.geometry import Geometry, Plan


def test_cells_and_pixels_of_a_wide_image():
    geometry = Geometry(100, 50, 32, 8)  # scale 0.32: 32x16 in the square
    assert geometry.grid == 4 and geometry.content == (32, 16)
    assert geometry.visible_grid == (2, 4)  # rows 2 and 3 are padding
    assert geometry.cell_at(99, 49) == (1, 3)
    x, y = geometry.pixel_of((1, 3))
    assert geometry.cell_at(x, y) == (1, 3) and geometry.cell_at(x - 1, y) == (1, 2)
    assert geometry.masked_count((1, 3)) == 1
    assert geometry.masked_count((0, 0)) == 8
    assert geometry.masked_count((2, 0)) == 0  # only padding
    assert geometry.covers_image((1, 3)) and not geometry.covers_image((2, 0))


@pytest.mark.parametrize("size", [(100, 50), (50, 100), (257, 256), (31, 999), (1, 1), (640, 480)])
def test_every_cell_start_maps_back_to_its_cell(size):
    geometry = Geometry(*size, 256, 8)
    rows, cols = geometry.visible_grid
    for row in range(rows):
        for col in range(cols):
            x, y = geometry.pixel_of((row, col))
            if geometry.covers_image((row, col)):
                assert geometry.cell_at(x, y) == (row, col)
                if x > 0:
                    assert geometry.cell_at(x - 1, y)[1] == col - 1  # the pixel before is left
            assert 0 <= x <= geometry.width and 0 <= y <= geometry.height


def test_points_outside_are_clamped_or_refused():
    geometry = Geometry(64, 64, 64, 8)
    assert geometry.cell_at(-5, 1000) == (7, 0)
    with pytest.raises(ValueError, match=r"pixel \(64, 0\) is outside the 64x64 image"):
        geometry.cell_at(64, 0, clamp=False)


def test_the_plan_counts_only_visible_cells():
    geometry = Geometry(100, 50, 32, 8)
    plan = geometry.plan((1, 2))
    assert (plan.visible_rows, plan.visible_cols) == (2, 4)
    assert plan.masked_cells == [6, 7] and plan.cells == geometry.masked_count((1, 2)) == 2
    with pytest.raises(ValueError, match="lies in the padding"):
        geometry.plan((2, 0))
    with pytest.raises(ValueError, match="outside the 4x4 token grid"):
        Plan(4, 4, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 5, 64, 8), "at least 1x1"),
        ((5, 5, 60, 8), "multiple of the cell"),
        ((5, 5, 4, 8), "multiple of the cell"),
    ],
)
def test_a_geometry_that_cannot_exist_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        Geometry(*args)


def test_geometry_imports_only_the_standard_library():
    code = (
        "import sys; import model.geometry; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'numpy', 'PIL', 'PySide6')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_paste_back_keeps_every_pixel_outside_the_rectangle_at_any_decoded_size():
    import numpy as np
    import torch
    from PIL import Image

    from model.inference.images import paste_back, to_model

    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (50, 100, 3), dtype=np.uint8), "RGB")
    geometry = Geometry(100, 50, 32, 8)
    assert tuple(to_model(original, geometry).shape) == (3, 32, 32)
    x0, y0 = geometry.pixel_of((1, 2))
    for side in (32, 64):  # the model's size, and a decoder that draws twice as fine
        decoded = torch.ones(3, side, side)  # white
        result = np.asarray(paste_back(original, decoded, geometry, (1, 2)))
        kept = np.ones((50, 100), dtype=bool)
        kept[y0:, x0:] = False
        assert np.array_equal(result[kept], np.asarray(original)[kept])
        assert (result[y0:, x0:] == 255).all()


def test_the_pixel_where_a_cell_starts_is_in_that_cell_at_every_size():
    """``cell_at(pixel_of(cell)) == cell`` wherever a pixel holds at most one cell: with
    ``x * scale / factor`` landing a hair below the cell's edge (98 px on 64 px / 4 px cells put
    cell row 8 at pixel 49, and 49 * 64 / 98 / 4 = 7.99999...), a rectangle re-placed from its
    pixel would move up a row."""
    assert Geometry(98, 98, 64, 4).cell_at(0, 49) == (8, 0)
    wrong = []
    for width in range(64, 400, 3):
        for height in (width, width // 2 + 1, 2 * width):
            for size, factor in ((64, 4), (256, 16), (256, 8), (32, 4)):
                geometry = Geometry(width, height, size, factor)
                if geometry.scale > 1:
                    continue
                rows, cols = geometry.visible_grid
                for cell in ((r, c) for r in range(rows) for c in range(cols)):
                    if geometry.cell_at(*geometry.pixel_of(cell)) != cell:
                        wrong.append((width, height, size, factor, cell))
    assert wrong == []


# -- the working area -----------------------------------------------------------------------------


def test_the_whole_area_is_the_picture():
    from model.geometry import working_area

    area = working_area((2400, 1600), (1400, 900), 256, "whole")
    assert area.box == (0, 0, 2400, 1600) and area.is_whole
    assert area.pixels_per_model_pixel(256) == 2400 / 256


def test_auto_takes_twice_the_rectangle_and_never_less_than_the_model():
    from model.geometry import AUTO_CONTEXT, working_area

    area = working_area((2400, 1600), (1400, 900), 256, "auto")  # a 1000x700 rectangle
    assert AUTO_CONTEXT == 2.0
    assert area.box == (400, 0, 2400, 1600)  # a 2000 px square, clipped at the top
    assert (area.width, area.height) == (2000, 1600)
    small = working_area((2400, 1600), (2350, 1580), 256, "auto")  # 50x20: the model's 256
    assert small.box == (2144, 1344, 2400, 1600)
    assert small.pixels_per_model_pixel(256) == 1.0  # never scaled up into the model
    tiny = working_area((100, 60), (90, 50), 256, "auto")  # smaller than the model: whole
    assert tiny.is_whole


def test_an_area_in_pixels_must_hold_the_rectangle():
    from model.geometry import working_area

    area = working_area((2400, 1600), (1400, 900), 256, 1200)
    assert area.box == (1200, 400, 2400, 1600)
    with pytest.raises(ValueError, match="does not hold the 1000x700 px rectangle"):
        working_area((2400, 1600), (1400, 900), 256, 900)
    with pytest.raises(ValueError, match="auto, whole or a side in pixels"):
        working_area((2400, 1600), (1400, 900), 256, "half")
    with pytest.raises(ValueError, match=r"pixel \(2400, 0\) is outside the 2400x1600 picture"):
        working_area((2400, 1600), (2400, 0), 256, "auto")
