"""The words scenes are made of: colours and their RGB, shapes, sizes, places, relations,
background layouts, emoji names and the held-out colour–shape pairs.

The caption writer, the caption parser, the renderer and the scorer all read these, and so does
the reranker, whose hard negatives swap one of these words for another of its group.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

# Saturated, pairwise at least ~110 apart in RGB, so that nearest-palette classification of a
# generated pixel is unambiguous and anti-aliased blends rarely land on a third colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 170),
    "pink": (255, 130, 200),
    "brown": (120, 70, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "cyan": (0, 210, 230),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "diamond",
    "cross",
    "ring",
)
SIZES: tuple[str, ...] = ("small", "large")
# What the size words mean, in fractions of a grid cell
SIZE_EXTENT = {"small": (0.36, 0.44), "large": (0.66, 0.78)}  # longest side of an object
LARGE_THRESHOLD = 0.55  # the scorer's small/large cut, midway between the two ranges
PLACES: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
PLACE_CELLS: dict[str, tuple[int, int]] = {
    name: (row, col) for row, names in enumerate(PLACES) for col, name in enumerate(names)
}
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
# The words of places and relations that name opposite sides: swapping one for its opposite
# states another scene.
OPPOSITES: tuple[tuple[str, str], ...] = (("top", "bottom"), ("left", "right"), ("above", "below"))
LAYOUTS: tuple[str, ...] = ("plain", "top-bottom", "left-right")
SPLITS: tuple[str, ...] = ("train", "heldout")
NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}

# Colour–shape pairs the training split never renders (zero-shot composition, docs/DESIGN.md §4).
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"),
    ("green", "heart"),
    ("orange", "ring"),
    ("white", "star"),
    ("cyan", "cross"),
)

# Single code points with emoji presentation, named by their Unicode names. Left out: names with
# a shape, place or relation word, "and", or a plural noun, so captions stay unambiguous.
_EMOJI_CHARS = (
    "🐶🐱🐭🐹🐰🦊🐻🐼🐨🐯🦁🐮🐷🐸🐵🐔🐧🐦🐤🦆🦅🦉🦇🐺🐗🐴🦄🐝🐛🦋🐌🐞🐜🐢🐍🦎🐙🦑🦀🐡"
    "🐠🐟🐬🐳🦈🐊🐘🦒🐪🐫🦘🐄🐎🐖🐑🐐🦌🐕🐈🐓🦃🦚🦜🦢🐇🦔🐉🌵🎄🌲🌳🌴🌱🌿🍀🍁🍄🌷"
    "🌹🌻🌼🌸🌞🌝🔥🌈⛄🍏🍎🍐🍊🍋🍌🍉🍓🍑🍍🥥🥝🍅🍆🥑🥦🥕🌽🥐🍞🧀🥚🍔🍕🌭🥪🌮🍩🍪🎂"
    "🍰🧁🍫🍬🍭🍯🍼☕⚽🏈⚾🏐🏉🎸🎺🎻🎲🎯🚗🚕🚌🚓🚑🚒🚜🚲🛵🚂✈🚀🛸🚁⛵🚤⚓⏰📷💡🔑🔨🎈"
    "🎁🏠🏰⛺🗽🌋🗻👑👟🧣🌂💎🔔🎃🤖👻👽💀"
)
EMOJI: dict[str, str] = {unicodedata.name(ch).lower(): ch for ch in _EMOJI_CHARS}
EMOJI_NAMES = tuple(sorted(EMOJI))


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def article(words: str) -> str:
    first = words.split()[0]
    vowel_sound = first[0] in "aeiou" and not first.startswith(("uni", "eu", "one"))
    return "an" if vowel_sound else "a"


def choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One of ``options``. Every word a scene draws goes through here: the order of the draws on
    ``rng`` is what makes sample ``index`` the same scene every time."""
    return options[int(rng.integers(len(options)))]
