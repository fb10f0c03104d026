"""model.inference.images.paste_back on a large picture (issue 28): the same pixels as before, bit
for bit, without float copies of the whole picture (a 48 MP paste took 19 s and gigabytes)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from model.geometry import Geometry
from model.inference.images import paste_back, to_pil


def reference(original, decoded, geometry, cell, feather=0) -> np.ndarray:
    """The whole-picture float blend paste_back was before: the pixels it must keep giving."""
    zoom = decoded.shape[-1] / geometry.size
    w, h = (max(1, round(side * zoom)) for side in geometry.content)
    view = to_pil(decoded).crop((0, 0, w, h))
    regenerated = np.asarray(
        view.resize((geometry.width, geometry.height), Image.Resampling.LANCZOS)
    ).astype(np.float32)
    result = np.asarray(original.convert("RGB")).astype(np.float32)
    x0, y0 = geometry.pixel_of(cell)
    weight = np.zeros((geometry.height, geometry.width), dtype=np.float32)
    weight[y0:, x0:] = 1.0
    if feather > 0:
        ramp_x = np.clip((np.arange(geometry.width) - x0 + 1) / (feather + 1), 0, 1)
        ramp_y = np.clip((np.arange(geometry.height) - y0 + 1) / (feather + 1), 0, 1)
        weight *= np.minimum(ramp_y[:, None], ramp_x[None, :])
        weight[:y0, :] = 0
        weight[:, :x0] = 0
    blended = result * (1 - weight[..., None]) + regenerated * weight[..., None]
    return np.where(weight[..., None] > 0, np.round(blended), result).astype(np.uint8)


SIZES = [(60, 45), (97, 49), (33, 200), (301, 200), (5, 3), (129, 1), (1, 1)]
MODELS = [(32, 8, 32), (64, 4, 64), (128, 8, 256)]  # size, factor, decoded side


@pytest.mark.parametrize("width, height", SIZES)
def test_the_pixels_are_the_whole_picture_blends_bit_for_bit(width, height):
    rng = np.random.default_rng(width * height)
    original = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    for size, factor, side in MODELS:
        geometry = Geometry(width, height, size, factor)
        rows, cols = geometry.visible_grid
        decoded = torch.rand(3, side, side, generator=torch.Generator().manual_seed(side))
        for cell in [(0, 0), (rows - 1, cols - 1), (rows // 2, cols // 3)]:
            for feather in (0, 1, 3, 50):
                pasted = np.asarray(paste_back(original, decoded, geometry, cell, feather))
                expected = reference(original, decoded, geometry, cell, feather)
                assert np.array_equal(pasted, expected), (size, factor, cell, feather)


def test_pasting_into_a_large_picture_makes_no_float_copy_of_it():
    width, height = 4000, 3000  # 12 MP: 36 MB of pixels, 144 MB as float32
    original = Image.new("RGB", (width, height), (10, 20, 30))
    geometry = Geometry(width, height, 128, 8)
    decoded = torch.rand(3, 128, 128)
    picture_bytes = width * height * 3
    tracemalloc.start()
    try:
        paste_back(original, decoded, geometry, (geometry.visible_grid[0] - 1, 0), feather=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the copy it returns, the resized view and Pillow's bytes on the way to numpy (about 3.5
    # pictures); the whole-picture float blend took 780 MB, 21 pictures
    assert peak < 5 * picture_bytes, f"{peak / 1e6:.0f} MB"
