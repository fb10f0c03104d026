"""How one object looks: the shapes' geometry (shared by the renderer and the scorer's templates)
and the emoji glyphs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.data.scenes.vocabulary import EMOJI

SUPERSAMPLE = 4  # draw at 4x, then box-filter: anti-aliasing that blends only touching colours
RING_HOLE = 0.5  # inner diameter of a ring over its outer diameter
CROSS_ARM = 0.34  # arm thickness of a cross over its side
STAR_INNER = 0.45  # inner over outer radius; fatter than a pentagram so small stars survive

# Where Debian's fonts-noto-color-emoji puts it; emoji scenes need it, nothing else does.
EMOJI_FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_EMOJI_FONT_SIZE = 109  # Noto Color Emoji is a bitmap font with strikes at this size only


def _normalise(points: Sequence[tuple[float, float]]) -> tuple[list[tuple[float, float]], float]:
    """Fit a polygon into the unit square; returns it and its natural aspect (width / height)."""
    xs, ys = zip(*points, strict=True)
    w, h = max(xs) - min(xs), max(ys) - min(ys)
    return [((x - min(xs)) / w, (y - min(ys)) / h) for x, y in points], w / h


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else STAR_INNER
        a = math.pi * k / 5
        pts.append((r * math.sin(a), -r * math.cos(a)))  # first point straight up
    return pts


def _heart() -> list[tuple[float, float]]:
    # The classic parametric heart; y grows downwards in image coordinates.
    ts = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    xs = 16 * np.sin(ts) ** 3
    ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _cross() -> list[tuple[float, float]]:
    a, b = (1 - CROSS_ARM) / 2, (1 + CROSS_ARM) / 2
    return [
        (a, 0),
        (b, 0),
        (b, a),
        (1, a),
        (1, b),
        (b, b),
        (b, 1),
        (a, 1),
        (a, b),
        (0, b),
        (0, a),
        (a, a),
    ]


_POLYGONS: dict[str, tuple[list[tuple[float, float]], float]] = {
    "square": _normalise([(0, 0), (1, 0), (1, 1), (0, 1)]),
    "triangle": _normalise([(0.5, 0), (1, math.sqrt(3) / 2), (0, math.sqrt(3) / 2)]),
    "diamond": _normalise([(0.36, 0), (0.72, 0.5), (0.36, 1), (0, 0.5)]),
    "star": _normalise(_star()),
    "heart": _normalise(_heart()),
    "cross": _normalise(_cross()),
}
ASPECT: dict[str, float] = {"circle": 1.0, "ring": 1.0} | {s: a for s, (_, a) in _POLYGONS.items()}


def box_size(shape: str, extent: float) -> tuple[float, float]:
    """Width and height of a shape whose longest side is ``extent``."""
    aspect = ASPECT.get(shape, 1.0)
    return extent * min(1.0, aspect), extent * min(1.0, 1 / aspect)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: float, y0: float, w: float, h: float):
    """Draw ``shape`` filling the box (x0, y0, w, h) on an "L" mask: 255 inside, 0 in holes."""
    if shape in ("circle", "ring"):
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=255)
        if shape == "ring":
            dx, dy = w * (1 - RING_HOLE) / 2, h * (1 - RING_HOLE) / 2
            draw.ellipse((x0 + dx, y0 + dy, x0 + w - dx, y0 + h - dy), fill=0)
        return
    points, _ = _POLYGONS[shape]
    draw.polygon([(x0 + px * w, y0 + py * h) for px, py in points], fill=255)


def coverage(shape: str, x0: float, y0: float, w: float, h: float, size: tuple[int, int]):
    """(h, w) coverage in [0, 1] of ``shape`` in box (x0, y0, w, h), rendered as scenes are."""
    width, height = size
    mask = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    s = SUPERSAMPLE
    draw_shape(ImageDraw.Draw(mask), shape, x0 * s, y0 * s, w * s, h * s)
    return np.asarray(mask.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255


@cache
def unit_moments(shape: str) -> tuple[float, float, float]:
    """Area over box area, and the centroid within the box (fractions), from a fine rendering."""
    side = 256
    w, h = box_size(shape, side)
    cover = coverage(shape, 0, 0, w, h, (math.ceil(w), math.ceil(h)))
    ys, xs = np.mgrid[: cover.shape[0], : cover.shape[1]] + 0.5
    area = float(cover.sum())
    return (
        area / (w * h),
        float((cover * xs).sum()) / area / w,
        float((cover * ys).sum()) / area / h,
    )


def emoji_available() -> bool:
    """Whether the colour emoji font is installed (Debian package ``fonts-noto-color-emoji``)."""
    return EMOJI_FONT_PATH.is_file()


def require_emoji_font() -> None:
    if not emoji_available():
        raise FileNotFoundError(
            f"emoji scenes need the Noto Color Emoji font at {EMOJI_FONT_PATH} "
            "(Debian/Ubuntu: apt install fonts-noto-color-emoji)"
        )


@lru_cache(maxsize=256)
def emoji_glyph(name: str) -> Image.Image:
    """The emoji's colour bitmap (RGBA), cropped to its ink."""
    font = ImageFont.truetype(str(EMOJI_FONT_PATH), _EMOJI_FONT_SIZE)
    canvas = Image.new("RGBA", (_EMOJI_FONT_SIZE * 3 // 2, _EMOJI_FONT_SIZE * 3 // 2))
    ImageDraw.Draw(canvas).text((4, 4), EMOJI[name], font=font, embedded_color=True)
    return canvas.crop(canvas.getbbox())
