"""Rendering: a scene drawn at 4× with ImageDraw and box-filtered down, and the completion cases
(a source image and the target scene that differ only in one square region: by default the
bottom-right rectangle)."""

from __future__ import annotations

import math
from dataclasses import replace

from PIL import Image, ImageDraw

from model.data.scenes.sample import sample_spec, scene_rng
from model.data.scenes.shapes import SUPERSAMPLE, box_size, draw_shape, emoji_glyph
from model.data.scenes.spec import SceneObject, SceneSpec
from model.data.scenes.vocabulary import COLOURS, HELDOUT_PAIRS, PALETTE, SHAPES, choice


def render(spec: SceneSpec, size: int = 128) -> Image.Image:
    """Draw ``spec`` as a size×size RGB image: at 4× with ImageDraw, then a box filter down."""
    big = size * SUPERSAMPLE
    bg = spec.background
    canvas = Image.new("RGB", (big, big), PALETTE[bg.colours[0]])
    half = (size // 2) * SUPERSAMPLE  # on a whole output pixel, so the halves never blend
    if bg.layout == "top-bottom":
        canvas.paste(PALETTE[bg.colours[1]], (0, half, big, big))
    elif bg.layout == "left-right":
        canvas.paste(PALETTE[bg.colours[1]], (half, 0, big, big))
    for obj in spec.objects:
        w, h = box_size(obj.shape, obj.extent * big)
        x0, y0 = obj.center[0] * big - w / 2, obj.center[1] * big - h / 2
        bx, by = math.floor(x0), math.floor(y0)
        box = (bx, by, math.ceil(x0 + w) + 1, math.ceil(y0 + h) + 1)
        if obj.emoji:
            glyph = emoji_glyph(obj.shape)
            scale = min(w / glyph.width, h / glyph.height)
            gw, gh = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
            glyph = glyph.resize((gw, gh), Image.Resampling.LANCZOS)
            at = (round(x0 + (w - gw) / 2), round(y0 + (h - gh) / 2))
            canvas.paste(glyph, at, glyph)
            continue
        mask = Image.new("L", (box[2] - bx, box[3] - by), 0)
        draw_shape(ImageDraw.Draw(mask), obj.shape, x0 - bx, y0 - by, w, h)
        canvas.paste(PALETTE[obj.colour], box, mask)
    return canvas.resize((size, size), Image.Resampling.BOX)


def render_scene(
    seed: int, index: int, size: int = 128, split: str = "train", emoji: bool = False
) -> tuple[Image.Image, SceneSpec]:
    """Sample ``index`` of the dataset ``seed``: its image and its structured form."""
    spec = sample_spec(scene_rng(seed, index, split, emoji), split, emoji)
    return render(spec, size), spec


COMPLETION_CELL = (2, 2)  # completion cases regenerate the bottom-right place


def _box(obj: SceneObject, size: int) -> tuple[float, float, float, float]:
    """The pixel box (x0, y0, x1, y1) that ``obj`` may touch at ``size``, anti-aliasing included."""
    w, h = box_size(obj.shape, obj.extent)
    (x, y), pad = obj.center, 1  # fractions of the side; a pixel more for the box filter
    return (
        (x - w / 2) * size - pad,
        (y - h / 2) * size - pad,
        (x + w / 2) * size + pad,
        (y + h / 2) * size + pad,
    )


def completion_case(
    seed: int,
    index: int,
    size: int,
    start: int,
    split: str = "train",
    place: tuple[int, int] = COMPLETION_CELL,
    end: int | None = None,
) -> tuple[Image.Image, SceneSpec]:
    """A completion test: (source image, target scene) that differ only in the square region
    from pixel (``start``, ``start``) to (``end``, ``end``) (exclusive; None: the bottom-right
    corner).

    The target is the first scene drawn for ``index`` (of the dataset ``seed``) whose
    ``place`` of the 3x3 layout ((row, col); by default the bottom-right one) holds an object
    lying wholly inside that region, with every other object wholly outside it; the source
    draws that object in another colour and shape. Regenerating the region of the source under
    the target's caption should give an image the scorer finds right for the target.
    """
    end = size if end is None else end
    if not (0 <= start < end <= size and (start > 0 or end < size)):
        raise ValueError(
            f"the region must lie inside the image and not be all of it, got pixels {start} to "
            f"{end} of {size}"
        )
    within = end < size  # a region that ends inside the picture: objects may lie past it

    def inside(obj: SceneObject) -> bool:
        x0, y0, x1, y1 = _box(obj, size)
        return x0 >= start and y0 >= start and (not within or (x1 <= end and y1 <= end))

    def outside(obj: SceneObject) -> bool:
        x0, y0, x1, y1 = _box(obj, size)
        return x1 <= start or y1 <= start or (within and (x0 >= end or y0 >= end))

    def swaps(obj: SceneObject, forbidden: set[str]) -> list[SceneObject]:
        out = []
        for colour in COLOURS:
            for shape in SHAPES:
                new = replace(obj, colour=colour, shape=shape)
                if (
                    colour != obj.colour
                    and shape != obj.shape
                    and colour not in forbidden
                    and new.kind not in HELDOUT_PAIRS
                    and inside(new)
                ):
                    out.append(new)
        return out

    for attempt in range(1000):
        rng = scene_rng(seed, index + attempt * 1_000_003, split)
        target = sample_spec(rng, split)
        chosen = [obj for obj in target.objects if obj.cell == place]
        others = [obj for obj in target.objects if obj.cell != place]
        if not (chosen and all(map(inside, chosen)) and all(map(outside, others))):
            continue
        forbidden = set(target.background.colours)
        options = swaps(chosen[0], forbidden)  # one object per place
        if options:
            break
    else:
        raise ValueError(f"no scene fits a region from pixel {start} to {end} at size {size}")
    swapped = choice(rng, options)
    objects = [swapped if obj.cell == place else obj for obj in target.objects]
    source = replace(target, objects=tuple(objects))
    return render(source, size), target
