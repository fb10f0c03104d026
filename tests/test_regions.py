"""Regions anywhere (issue 31): a region that ends inside the picture, its forced cells, the
lookahead that scores the kept cells after it, and its paste."""

from __future__ import annotations

import pytest

from model.geometry import Area, Geometry, Plan, working_area


def test_a_region_in_the_middle_names_its_cells_and_the_kept_ones_after_it():
    plan = Plan(6, 1, 2, end=(3, 4))
    assert (plan.bottom, plan.right, plan.rows, plan.cells, plan.last_col) == (3, 4, 2, 4, 3)
    assert plan.masked_cells == [8, 9, 14, 15]
    assert not plan.to_corner
    # row 1 right of it, row 2 left and right of it, rows 3-5 whole
    assert plan.following_cells == [10, 11, 12, 13, 16, 17] + list(range(18, 36))
    assert set(plan.following_cells).isdisjoint(plan.masked_cells)


def test_a_region_to_the_corner_is_todays_plan():
    old, new = Plan(8, 2, 3, 6, 7), Plan(8, 2, 3, 6, 7, end=(6, 7))
    assert old.masked_cells == new.masked_cells and old.cells == new.cells == 16
    assert old.last_col == 6 and old.to_corner and new.to_corner
    # kept cells after the first one: only those left of the region in its lower rows
    assert old.following_cells == [r * 8 + c for r in (3, 4, 5) for c in (0, 1, 2)]
    assert Geometry(100, 60, 64, 8).plan((1, 1)) == Plan(
        8, 1, 1, *Geometry(100, 60, 64, 8).visible_grid
    )


@pytest.mark.parametrize(
    "end, message",
    [
        ((1, 5), "must lie below and right of its start"),
        ((3, 2), "must lie below and right of its start"),
        ((7, 4), "past the image's 6x8 visible cells"),
        ((3, 9), "past the image's 6x8 visible cells"),
    ],
)
def test_a_bad_end_is_a_one_line_error(end, message):
    with pytest.raises(ValueError, match=message) as caught:
        Plan(8, 1, 2, 6, 8, end=end)
    assert "\n" not in str(caught.value)


def test_the_end_pixel_snaps_to_the_cell_that_holds_the_last_pixel():
    geometry = Geometry(100, 60, 64, 8)  # 0.64 model px per pixel, 5x8 visible cells
    assert geometry.end_cell(100, 60) == geometry.visible_grid
    assert geometry.end_cell(13, 13) == (1, 1)  # pixel 12 is in cell 0 (12 * 0.64 = 7.7)
    assert geometry.end_cell(14, 14) == (2, 2)
    with pytest.raises(ValueError, match="outside the 100x60 image"):
        geometry.end_cell(101, 10)
    # a picture far larger than the model: the last pixel is still in the last visible cell
    huge = Geometry(10003, 7001, 64, 8)
    assert huge.end_cell(10003, 7001) == huge.visible_grid


def test_an_area_ends_where_told_and_keeps_todays_default():
    assert Area((300, 200)).box == (0, 0, 300, 200) and Area((300, 200)).is_whole
    area = Area((300, 200), 10, 20, 250, 180)
    assert (area.width, area.height, area.is_whole) == (240, 160, False)
    with pytest.raises(ValueError, match="does not lie within the 300x200 picture"):
        Area((300, 200), 10, 20, 301, 180)
    with pytest.raises(ValueError, match="does not lie within"):
        Area((300, 200), 10, 20, 10, 180)


def test_auto_shows_a_margin_of_kept_pixels_past_a_region_inside_the_picture():
    picture = (2400, 1600)
    # to the corner: exactly today's area
    assert working_area(picture, (1400, 900), 256, "auto") == working_area(
        picture, (1400, 900), 256, "auto", end=picture
    )
    area = working_area(picture, (1000, 600), 256, "auto", end=(1400, 900), factor=8)
    left, top, right, bottom = area.box
    # a quarter of the 400 px side (at least a cell: 900 px / 32 cells = 29 px) past the region
    assert (right, bottom) == (1500, 1000)
    assert right - left == bottom - top == 900  # twice the side plus the margin
    assert left < 1000 and top < 600
    # near the picture's edge the margin is what the picture has
    area = working_area(picture, (2000, 1300), 256, "auto", end=(2380, 1590))
    assert area.box[2:] == (2400, 1600)
    # a small region: the margin is at least one model cell of the area
    area = working_area(picture, (1000, 600), 256, "auto", end=(1020, 610), factor=8)
    assert area.box[2] - 1020 >= area.width * 8 / 256
    assert working_area(picture, (1000, 600), 256, "whole", end=(1020, 610)).is_whole


def test_an_area_in_pixels_keeps_what_margin_it_can():
    area = working_area((2400, 1600), (1000, 600), 256, 450, end=(1400, 900))
    assert area.box == (1000, 500, 1450, 950)  # 50 px of margin: all the side leaves
    with pytest.raises(ValueError, match="must end below and right of its start"):
        working_area((2400, 1600), (1000, 600), 256, "auto", end=(900, 900))
    with pytest.raises(ValueError, match="inside the 2400x1600 picture"):
        working_area((2400, 1600), (1000, 600), 256, "auto", end=(2401, 900))
