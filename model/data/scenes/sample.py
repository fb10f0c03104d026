"""Sampling a scene: how many objects of which kinds, where in the 3×3 grid, how large, on which
background, and the caption that states it. Sample ``index`` of a dataset is drawn from its own
Generator (:func:`scene_rng`), so it is the same scene whatever the worker count."""

from __future__ import annotations

import numpy as np

from model.data.scenes.captions import write_caption
from model.data.scenes.shapes import box_size, require_emoji_font
from model.data.scenes.spec import Background, SceneObject, SceneSpec
from model.data.scenes.vocabulary import (
    COLOURS,
    EMOJI_NAMES,
    HELDOUT_PAIRS,
    LAYOUTS,
    SHAPES,
    SIZE_EXTENT,
    SIZES,
    SPLITS,
    choice,
)

# Lengths are fractions of a grid cell.
MAX_OBJECTS = 4
CELL_MARGIN = 0.06  # objects keep this far from their cell's border, so they never touch
REPEAT_PROB = 0.4  # chance that a multi-object scene repeats one kind ("three blue stars")
EMOJI_PROB = 0.3  # chance that an object is an emoji when emoji are enabled
LAYOUT_PROBS = (0.6, 0.2, 0.2)  # plain, top-bottom, left-right
SHARED_SIZE_PROB = 0.7  # objects of one kind share a size, so "two small stars" can be said


def _sample_kind(rng: np.random.Generator, split: str, emoji: bool, allow_emoji: bool = True):
    if emoji and allow_emoji and rng.random() < EMOJI_PROB:
        return (None, choice(rng, EMOJI_NAMES), True)
    while True:
        colour, shape = choice(rng, COLOURS), choice(rng, SHAPES)
        if split == "heldout" or (colour, shape) not in HELDOUT_PAIRS:
            return (colour, shape, False)


def _sample_kinds(rng: np.random.Generator, n: int, split: str, emoji: bool) -> list[tuple]:
    """n (colour, shape, is_emoji) triples: maybe one kind repeated, the others all distinct."""
    kinds: list[tuple] = []
    if split == "heldout":  # guarantee the held-out pair; the rest of the scene is free
        colour, shape = choice(rng, HELDOUT_PAIRS)
        kinds.append((colour, shape, False))
    if n >= 2 and rng.random() < REPEAT_PROB:
        repeated = kinds[0] if kinds else _sample_kind(rng, split, emoji, allow_emoji=False)
        kinds = [repeated] * int(rng.integers(2, n + 1))
    while len(kinds) < n:
        kind = _sample_kind(rng, split, emoji)
        if kind not in kinds:
            kinds.append(kind)
    return [kinds[i] for i in rng.permutation(n)]


def _sample_objects(rng: np.random.Generator, kinds: list[tuple]) -> list[SceneObject]:
    group_size = {}
    for kind in dict.fromkeys(kinds):
        group_size[kind] = choice(rng, SIZES) if rng.random() < SHARED_SIZE_PROB else None
    cells = rng.permutation(9)[: len(kinds)]
    objects = []
    for (colour, shape, is_emoji), cell in zip(kinds, cells, strict=True):
        size = group_size[(colour, shape, is_emoji)] or choice(rng, SIZES)
        lo, hi = SIZE_EXTENT[size]
        extent = float(rng.uniform(lo, hi))
        w, h = box_size(shape, extent)
        row, col = divmod(int(cell), 3)
        # Jitter the object's box anywhere inside its cell, keeping the margin.
        cx = col + CELL_MARGIN + w / 2 + float(rng.uniform(0, 1 - 2 * CELL_MARGIN - w))
        cy = row + CELL_MARGIN + h / 2 + float(rng.uniform(0, 1 - 2 * CELL_MARGIN - h))
        objects.append(
            SceneObject(shape, colour, size, (row, col), (cx / 3, cy / 3), extent / 3, is_emoji)
        )
    return objects


def _sample_background(rng: np.random.Generator, objects: list[SceneObject]) -> Background:
    # Objects are never the colour of any part of the background, so the scorer can tell them apart.
    free = [c for c in COLOURS if c not in {o.colour for o in objects}]
    layout = LAYOUTS[int(rng.choice(len(LAYOUTS), p=LAYOUT_PROBS))]
    n = 1 if layout == "plain" else 2
    colours = tuple(free[i] for i in rng.choice(len(free), size=n, replace=False))
    return Background(colours, layout)


def sample_spec(rng: np.random.Generator, split: str = "train", emoji: bool = False) -> SceneSpec:
    """Draw one scene and its caption. ``"train"`` never contains a :data:`HELDOUT_PAIRS` pair;
    ``"heldout"`` always contains at least one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if emoji:
        require_emoji_font()
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = _sample_objects(rng, _sample_kinds(rng, n, split, emoji))
    background = _sample_background(rng, objects)
    style, caption, stated = write_caption(rng, objects, background)
    return SceneSpec(tuple(objects), background, caption, stated, style, split)


def scene_rng(seed: int, index: int, split: str = "train", emoji: bool = False):
    """The Generator for sample ``index``, independent of which worker draws it and when."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, index, SPLITS.index(split), int(emoji)])
    )
