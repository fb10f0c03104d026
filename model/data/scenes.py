"""Procedural caption–image scenes: the default training data and its exact fidelity check.

Every scene is drawn from a numpy Generator seeded by ``(seed, index, split)``, so sample ``index``
is the same image and caption whatever the worker count. A scene is 1–4 objects (palette shapes,
optionally emoji) in distinct cells of a 3×3 grid over a plain or two-tone background, rendered at
4× and box-filtered down. Its caption states counts, places, relations and the background in one
of several phrasings; the structured form of what it states (:class:`CaptionSpec`) is kept in the
scene's JSON, and :func:`parse_caption` recovers it from the caption text alone.

:func:`score` reads an image back (nearest palette colour per pixel, connected blobs, shape by
template overlap, 3×3 place, small/large) and checks each stated fact, which is how the caption
fidelity of a trained model is measured (DESIGN.md §4). Colour–shape pairs in
:data:`HELDOUT_PAIRS` are never rendered in the training split, so zero-shot composition can be
measured on the ``"heldout"`` split.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.files import write_bytes

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

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
PLACES: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
PLACE_CELLS: dict[str, tuple[int, int]] = {
    name: (row, col) for row, names in enumerate(PLACES) for col, name in enumerate(names)
}
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
LAYOUTS: tuple[str, ...] = ("plain", "top-bottom", "left-right")
SPLITS: tuple[str, ...] = ("train", "heldout")

# Colour–shape pairs the training split never renders (zero-shot composition, DESIGN.md §4).
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("purple", "triangle"),
    ("green", "heart"),
    ("orange", "ring"),
    ("white", "star"),
    ("cyan", "cross"),
)

# Where Debian's fonts-noto-color-emoji puts it; emoji scenes need it, nothing else does.
EMOJI_FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_EMOJI_FONT_SIZE = 109  # Noto Color Emoji is a bitmap font with strikes at this size only
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
_EMOJI_NAMES = tuple(sorted(EMOJI))

# ---------------------------------------------------------------------------------------------
# Layout and rendering constants (lengths are fractions of a grid cell unless stated)
# ---------------------------------------------------------------------------------------------

MAX_OBJECTS = 4
SIZE_EXTENT = {"small": (0.36, 0.44), "large": (0.66, 0.78)}  # longest side of an object
LARGE_THRESHOLD = 0.55  # the scorer's small/large cut, midway between the two ranges
CELL_MARGIN = 0.06  # objects keep this far from their cell's border, so they never touch
SUPERSAMPLE = 4  # draw at 4x, then box-filter: anti-aliasing that blends only touching colours
REPEAT_PROB = 0.4  # chance that a multi-object scene repeats one kind ("three blue stars")
EMOJI_PROB = 0.3  # chance that an object is an emoji when emoji are enabled
LAYOUT_PROBS = (0.6, 0.2, 0.2)  # plain, top-bottom, left-right
STYLE_PROBS = {"count": 0.35, "place": 0.35, "relation": 0.3}
SHARED_SIZE_PROB = 0.7  # objects of one kind share a size, so "two small stars" can be said
BACKGROUND_MENTION_PROB = 0.85
SIZE_MENTION_PROB = 0.4
# Variety of wording: layout named ("a red top and blue bottom background"), "…, and …", "big"
# for large, "one" for "a".
PHRASING_PROBS = {"layout": 0.5, "oxford_comma": 0.3, "big": 0.3, "one": 0.1}
MAX_CAPTION_WORDS = 28  # the transformer reads 32 text tokens; leave room for commas
RING_HOLE = 0.5  # inner diameter of a ring over its outer diameter
CROSS_ARM = 0.34  # arm thickness of a cross over its side
STAR_INNER = 0.45  # inner over outer radius; fatter than a pentagram so small stars survive

_PREFIXES = (
    "",
    "",
    "",
    "a photo of ",
    "an image of ",
    "a picture of ",
    "a drawing of ",
    "an image with ",
    "a rendering of ",
)
_NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four"}


# ---------------------------------------------------------------------------------------------
# Structured form
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One rendered object. Geometry is in fractions of the image side, so it fits any size."""

    shape: str  # a SHAPES name, or the emoji's Unicode name when ``emoji`` is set
    colour: str | None  # a PALETTE name; None for emoji, which bring their own colours
    size: str  # "small" | "large"
    cell: tuple[int, int]  # (row, col) on the 3x3 grid
    center: tuple[float, float]  # (x, y)
    extent: float  # longest side
    emoji: bool = False

    @property
    def place(self) -> str:
        return PLACES[self.cell[0]][self.cell[1]]

    @property
    def kind(self) -> tuple[str | None, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Background:
    colours: tuple[str, ...]  # one colour, or (top, bottom) / (left, right)
    layout: str = "plain"  # a LAYOUTS name


@dataclass(frozen=True)
class ObjectRef:
    """An object as a caption names it; None means the caption does not say."""

    shape: str
    colour: str | None = None
    size: str | None = None
    emoji: bool = False

    @property
    def kind(self) -> tuple[str | None, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Clause:
    """One stated fact. Captions name every object, so the clauses are the scene's inventory."""

    kind: str  # "count" ("three blue stars") | "place" ("… in the top left") | "relation"
    subject: ObjectRef
    count: int = 1
    place: str | None = None
    relation: str | None = None  # a RELATIONS name
    other: ObjectRef | None = None


@dataclass(frozen=True)
class BackgroundRef:
    colours: tuple[str, ...]
    layout: str | None = None  # None: two colours stated without saying which half is which


@dataclass(frozen=True)
class CaptionSpec:
    """What a caption states: the structured form the scorer checks an image against."""

    clauses: tuple[Clause, ...]
    background: BackgroundRef | None = None

    def inventory(self) -> Counter:
        """How many objects of each (colour, shape) the caption says there are."""
        counts: Counter = Counter()
        for clause in self.clauses:
            counts[clause.subject.kind] += clause.count
            if clause.other is not None:
                counts[clause.other.kind] += 1
        return counts

    def refs(self) -> list[ObjectRef]:
        out = []
        for clause in self.clauses:
            out.append(clause.subject)
            if clause.other is not None:
                out.append(clause.other)
        return out

    @property
    def n_objects(self) -> int:
        return sum(self.inventory().values())

    @property
    def heldout(self) -> bool:
        return any(kind in HELDOUT_PAIRS for kind in self.inventory())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptionSpec:
        def ref(d: dict | None) -> ObjectRef | None:
            return None if d is None else ObjectRef(**d)

        clauses = tuple(
            Clause(**{**c, "subject": ref(c["subject"]), "other": ref(c.get("other"))})
            for c in data["clauses"]
        )
        bg = data.get("background")
        background = None if bg is None else BackgroundRef(tuple(bg["colours"]), bg.get("layout"))
        return cls(clauses, background)


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene: what is drawn, the caption, and what the caption states."""

    objects: tuple[SceneObject, ...]
    background: Background
    caption: str
    stated: CaptionSpec
    style: str  # "count" | "place" | "relation": the caption template family
    split: str = "train"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        objects = tuple(
            SceneObject(**{**o, "cell": tuple(o["cell"]), "center": tuple(o["center"])})
            for o in data["objects"]
        )
        bg = data["background"]
        return cls(
            objects=objects,
            background=Background(tuple(bg["colours"]), bg["layout"]),
            caption=data["caption"],
            stated=CaptionSpec.from_dict(data["stated"]),
            style=data["style"],
            split=data.get("split", "train"),
        )

    @classmethod
    def from_json(cls, text: str) -> SceneSpec:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Shape geometry, shared by the renderer and the scorer's templates
# ---------------------------------------------------------------------------------------------


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


def _box_size(shape: str, extent: float) -> tuple[float, float]:
    """Width and height of a shape whose longest side is ``extent``."""
    aspect = ASPECT.get(shape, 1.0)
    return extent * min(1.0, aspect), extent * min(1.0, 1 / aspect)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: float, y0: float, w: float, h: float):
    """Draw ``shape`` filling the box (x0, y0, w, h) on an "L" mask: 255 inside, 0 in holes."""
    if shape in ("circle", "ring"):
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=255)
        if shape == "ring":
            dx, dy = w * (1 - RING_HOLE) / 2, h * (1 - RING_HOLE) / 2
            draw.ellipse((x0 + dx, y0 + dy, x0 + w - dx, y0 + h - dy), fill=0)
        return
    points, _ = _POLYGONS[shape]
    draw.polygon([(x0 + px * w, y0 + py * h) for px, py in points], fill=255)


def _coverage(shape: str, x0: float, y0: float, w: float, h: float, size: tuple[int, int]):
    """(h, w) coverage in [0, 1] of ``shape`` in box (x0, y0, w, h), rendered as scenes are."""
    width, height = size
    mask = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    s = SUPERSAMPLE
    _draw_shape(ImageDraw.Draw(mask), shape, x0 * s, y0 * s, w * s, h * s)
    return np.asarray(mask.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255


@cache
def _unit_moments(shape: str) -> tuple[float, float, float]:
    """Area over box area, and the centroid within the box (fractions), from a fine rendering."""
    side = 256
    w, h = _box_size(shape, side)
    cover = _coverage(shape, 0, 0, w, h, (math.ceil(w), math.ceil(h)))
    ys, xs = np.mgrid[: cover.shape[0], : cover.shape[1]] + 0.5
    area = float(cover.sum())
    return (
        area / (w * h),
        float((cover * xs).sum()) / area / w,
        float((cover * ys).sum()) / area / h,
    )


# ---------------------------------------------------------------------------------------------
# Emoji
# ---------------------------------------------------------------------------------------------


def emoji_available() -> bool:
    """Whether the colour emoji font is installed (Debian package ``fonts-noto-color-emoji``)."""
    return EMOJI_FONT_PATH.is_file()


def _require_emoji_font() -> None:
    if not emoji_available():
        raise FileNotFoundError(
            f"emoji scenes need the Noto Color Emoji font at {EMOJI_FONT_PATH} "
            "(Debian/Ubuntu: apt install fonts-noto-color-emoji)"
        )


@lru_cache(maxsize=256)
def _emoji_glyph(name: str) -> Image.Image:
    """The emoji's colour bitmap (RGBA), cropped to its ink."""
    font = ImageFont.truetype(str(EMOJI_FONT_PATH), _EMOJI_FONT_SIZE)
    canvas = Image.new("RGBA", (_EMOJI_FONT_SIZE * 3 // 2, _EMOJI_FONT_SIZE * 3 // 2))
    ImageDraw.Draw(canvas).text((4, 4), EMOJI[name], font=font, embedded_color=True)
    return canvas.crop(canvas.getbbox())


# ---------------------------------------------------------------------------------------------
# Sampling a scene and writing its caption
# ---------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _article(words: str) -> str:
    first = words.split()[0]
    vowel_sound = first[0] in "aeiou" and not first.startswith(("uni", "eu", "one"))
    return "an" if vowel_sound else "a"


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _sample_kind(rng: np.random.Generator, split: str, emoji: bool, allow_emoji: bool = True):
    if emoji and allow_emoji and rng.random() < EMOJI_PROB:
        return (None, _choice(rng, _EMOJI_NAMES), True)
    while True:
        colour, shape = _choice(rng, COLOURS), _choice(rng, SHAPES)
        if split == "heldout" or (colour, shape) not in HELDOUT_PAIRS:
            return (colour, shape, False)


def _sample_kinds(rng: np.random.Generator, n: int, split: str, emoji: bool) -> list[tuple]:
    """n (colour, shape, is_emoji) triples: maybe one kind repeated, the others all distinct."""
    kinds: list[tuple] = []
    if split == "heldout":  # guarantee the held-out pair; the rest of the scene is free
        colour, shape = _choice(rng, HELDOUT_PAIRS)
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
        group_size[kind] = _choice(rng, SIZES) if rng.random() < SHARED_SIZE_PROB else None
    cells = rng.permutation(9)[: len(kinds)]
    objects = []
    for (colour, shape, is_emoji), cell in zip(kinds, cells, strict=True):
        size = group_size[(colour, shape, is_emoji)] or _choice(rng, SIZES)
        lo, hi = SIZE_EXTENT[size]
        extent = float(rng.uniform(lo, hi))
        w, h = _box_size(shape, extent)
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


def _relation(a: SceneObject, b: SceneObject, rng: np.random.Generator) -> str:
    """A relation that holds between the cells of a and b (there is always one: cells differ)."""
    (ra, ca), (rb, cb) = a.cell, b.cell
    holds = (ra < rb, ra > rb, ca < cb, ca > cb)
    return _choice(rng, [r for r, ok in zip(RELATIONS, holds, strict=True) if ok])


@dataclass
class _Phrasing:
    """Every optional or variant part of a caption, drawn up front so they can be dropped."""

    prefix: str = ""
    background: bool = True
    background_layout: bool = True
    background_form: int = 0
    oxford_comma: bool = False
    size_words: dict[int, str] = field(default_factory=dict)  # clause slot -> "small"/"large"/"big"
    place_forms: dict[int, int] = field(default_factory=dict)
    one_word: dict[int, bool] = field(default_factory=dict)


def _ref_text(ref: ObjectRef, count: int, size_word: str | None, number_one: bool) -> str:
    words = " ".join(w for w in (size_word, ref.colour, ref.shape if count == 1 else None) if w)
    if count == 1:
        return f"{'one' if number_one else _article(words)} {words}"
    words = " ".join(w for w in (size_word, ref.colour, _plural(ref.shape)) if w)
    return f"{_NUMBER_WORDS[count]} {words}"


def _place_text(place: str, form: int) -> str:
    if " " in place:  # corners
        return ("in the {}", "in the {} corner", "at the {}")[form % 3].format(place)
    if place == "center":
        return ("in the center", "in the middle")[form % 2]
    return {
        "top": "at the top",
        "bottom": "at the bottom",
        "left": "on the left",
        "right": "on the right",
    }[place]


def _background_text(bg: Background, phrasing: _Phrasing) -> str:
    if bg.layout == "plain":
        form = (
            "on {a} {c} background",
            "against {a} {c} background",
            "with {a} {c} background",
            ", {c} background",
        )[phrasing.background_form % 4]
        return form.format(a=_article(bg.colours[0]), c=bg.colours[0])
    a, b = bg.colours
    if not phrasing.background_layout:
        return f"on {_article(a)} {a} and {b} background"
    if bg.layout == "top-bottom":
        return f"on {_article(a)} {a} top and {b} bottom background"
    return f"on {_article(a)} {a} left and {b} right background"


def _compose(
    clauses: list[Clause], bg: Background, phrasing: _Phrasing
) -> tuple[str, tuple[Clause, ...], BackgroundRef | None]:
    """Caption text and the structured form of exactly what that text states."""
    texts, stated = [], []
    for slot, clause in enumerate(clauses):
        size_a = phrasing.size_words.get(2 * slot)
        size_b = phrasing.size_words.get(2 * slot + 1)
        subject = ObjectRef(
            clause.subject.shape, clause.subject.colour, _size_of(size_a), clause.subject.emoji
        )
        text = _ref_text(subject, clause.count, size_a, phrasing.one_word.get(slot, False))
        other = None
        if clause.kind == "place":
            text += " " + _place_text(clause.place, phrasing.place_forms.get(slot, 0))
        elif clause.kind == "relation":
            o = clause.other
            other = ObjectRef(o.shape, o.colour, _size_of(size_b), o.emoji)
            text += f" {clause.relation} {_ref_text(other, 1, size_b, False)}"
        texts.append(text)
        stated.append(
            Clause(clause.kind, subject, clause.count, clause.place, clause.relation, other)
        )
    if len(texts) == 1:
        body = texts[0]
    else:
        body = ", ".join(texts[:-1]) + (", and " if phrasing.oxford_comma else " and ") + texts[-1]
    caption = phrasing.prefix + body
    background = None
    if phrasing.background:
        bg_text = _background_text(bg, phrasing)
        caption += bg_text if bg_text.startswith(",") else " " + bg_text
        layout = bg.layout if (bg.layout == "plain" or phrasing.background_layout) else None
        background = BackgroundRef(bg.colours, layout)
    return caption, tuple(stated), background


def _size_of(word: str | None) -> str | None:
    return None if word is None else ("large" if word in ("large", "big") else "small")


def _caption_clauses(rng: np.random.Generator, objects: list[SceneObject]) -> tuple[str, list]:
    """Choose a template family and build its clauses (no size words yet)."""
    by_kind: dict[tuple, list[SceneObject]] = {}
    for obj in objects:
        by_kind.setdefault((obj.colour, obj.shape, obj.emoji), []).append(obj)
    singles = [objs[0] for objs in by_kind.values() if len(objs) == 1]
    styles = [s for s in STYLE_PROBS if s != "relation" or len(singles) >= 2]
    p = np.array([STYLE_PROBS[s] for s in styles])
    style = styles[int(rng.choice(len(styles), p=p / p.sum()))]

    def ref(obj: SceneObject) -> ObjectRef:
        return ObjectRef(obj.shape, obj.colour, obj.size, obj.emoji)

    def group_clause(objs: list[SceneObject]) -> Clause:
        same_size = len({o.size for o in objs}) == 1
        subject = (
            ref(objs[0])
            if same_size
            else ObjectRef(objs[0].shape, objs[0].colour, None, objs[0].emoji)
        )
        return Clause("count", subject, count=len(objs))

    clauses: list[Clause] = []
    if style == "place":
        clauses = [Clause("place", ref(o), place=o.place) for o in objects]
    elif style == "count":
        clauses = [group_clause(objs) for objs in by_kind.values()]
    else:
        i, j = rng.choice(len(singles), size=2, replace=False)
        a, b = singles[int(i)], singles[int(j)]
        clauses.append(Clause("relation", ref(a), relation=_relation(a, b, rng), other=ref(b)))
        rest = [objs for objs in by_kind.values() if objs[0] is not a and objs[0] is not b]
        clauses += [group_clause(objs) for objs in rest]
    order = rng.permutation(len(clauses))
    if style == "relation":  # the relation leads; it reads best first
        order = [0] + [k for k in order if k != 0]
    return style, [clauses[int(k)] for k in order]


def _caption(
    rng: np.random.Generator, objects: list[SceneObject], bg: Background
) -> tuple[str, str, CaptionSpec]:
    style, clauses = _caption_clauses(rng, objects)
    phrasing = _Phrasing(
        prefix=_choice(rng, _PREFIXES),
        background=bool(rng.random() < BACKGROUND_MENTION_PROB),
        background_layout=bool(rng.random() < PHRASING_PROBS["layout"]),
        background_form=int(rng.integers(4)),
        oxford_comma=bool(rng.random() < PHRASING_PROBS["oxford_comma"]),
    )
    for slot, clause in enumerate(clauses):
        refs = [clause.subject] + ([clause.other] if clause.other else [])
        for k, r in enumerate(refs):
            if r.size is not None and rng.random() < SIZE_MENTION_PROB:
                big = r.size == "large" and rng.random() < PHRASING_PROBS["big"]
                phrasing.size_words[2 * slot + k] = "big" if big else r.size
        phrasing.place_forms[slot] = int(rng.integers(6))
        phrasing.one_word[slot] = bool(clause.count == 1 and rng.random() < PHRASING_PROBS["one"])

    # Keep the caption within the text length: drop optional parts, least informative first, then
    # turn places into plain mentions from the last one back ("…, a red star at the top" → "…,
    # a red star"). Commas count as words: the tokenizer gives them a token each.
    def too_long(text: str) -> bool:
        return len(text.replace(",", " ,").split()) > MAX_CAPTION_WORDS

    caption, stated, bg_ref = _compose(clauses, bg, phrasing)
    for drop in ("prefix", "sizes", "place forms", "background"):
        if not too_long(caption):
            break
        if drop == "prefix":
            phrasing.prefix = ""
        elif drop == "sizes":
            phrasing.size_words.clear()
        elif drop == "place forms":
            phrasing.place_forms.clear()
        else:
            phrasing.background = False
        caption, stated, bg_ref = _compose(clauses, bg, phrasing)
    for slot in reversed(range(len(clauses))):
        if not too_long(caption):
            break
        if clauses[slot].kind == "place":
            clauses[slot] = Clause("count", clauses[slot].subject)
            caption, stated, bg_ref = _compose(clauses, bg, phrasing)
    return style, caption, CaptionSpec(stated, bg_ref)


def sample_spec(rng: np.random.Generator, split: str = "train", emoji: bool = False) -> SceneSpec:
    """Draw one scene and its caption. ``"train"`` never contains a :data:`HELDOUT_PAIRS` pair;
    ``"heldout"`` always contains at least one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if emoji:
        _require_emoji_font()
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    objects = _sample_objects(rng, _sample_kinds(rng, n, split, emoji))
    background = _sample_background(rng, objects)
    style, caption, stated = _caption(rng, objects, background)
    return SceneSpec(tuple(objects), background, caption, stated, style, split)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


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
        w, h = _box_size(obj.shape, obj.extent * big)
        x0, y0 = obj.center[0] * big - w / 2, obj.center[1] * big - h / 2
        bx, by = math.floor(x0), math.floor(y0)
        box = (bx, by, math.ceil(x0 + w) + 1, math.ceil(y0 + h) + 1)
        if obj.emoji:
            glyph = _emoji_glyph(obj.shape)
            scale = min(w / glyph.width, h / glyph.height)
            gw, gh = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
            glyph = glyph.resize((gw, gh), Image.Resampling.LANCZOS)
            at = (round(x0 + (w - gw) / 2), round(y0 + (h - gh) / 2))
            canvas.paste(glyph, at, glyph)
            continue
        mask = Image.new("L", (box[2] - bx, box[3] - by), 0)
        _draw_shape(ImageDraw.Draw(mask), obj.shape, x0 - bx, y0 - by, w, h)
        canvas.paste(PALETTE[obj.colour], box, mask)
    return canvas.resize((size, size), Image.Resampling.BOX)


def scene_rng(seed: int, index: int, split: str = "train", emoji: bool = False):
    """The Generator for sample ``index``, independent of which worker draws it and when."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, index, SPLITS.index(split), int(emoji)])
    )


def render_scene(
    seed: int, index: int, size: int = 128, split: str = "train", emoji: bool = False
) -> tuple[Image.Image, SceneSpec]:
    """Sample ``index`` of the dataset ``seed``: its image and its structured form."""
    spec = sample_spec(scene_rng(seed, index, split, emoji), split, emoji)
    return render(spec, size), spec


COMPLETION_CELL = (2, 2)  # completion cases regenerate the bottom-right place


def _box(obj: SceneObject, size: int) -> tuple[float, float, float, float]:
    """The pixel box (x0, y0, x1, y1) that ``obj`` may touch at ``size``, anti-aliasing included."""
    w, h = _box_size(obj.shape, obj.extent)
    (x, y), pad = obj.center, 1  # fractions of the side; a pixel more for the box filter
    return (
        (x - w / 2) * size - pad,
        (y - h / 2) * size - pad,
        (x + w / 2) * size + pad,
        (y + h / 2) * size + pad,
    )


def completion_case(
    seed: int, index: int, size: int, start: int, split: str = "train"
) -> tuple[Image.Image, SceneSpec]:
    """A completion test: (source image, target scene) that differ only in the rectangle from
    pixel (``start``, ``start``) to the bottom-right corner.

    The target is the first scene drawn for ``index`` (of the dataset ``seed``) whose
    bottom-right place holds an object lying wholly inside that rectangle, with every other
    object wholly outside it; the source draws that object in another colour and shape.
    Regenerating the rectangle of the source under the target's caption should give an image
    the scorer finds right for the target.
    """
    if not 0 < start < size:
        raise ValueError(f"the rectangle must start inside the image, got {start} of {size}")

    def inside(obj: SceneObject) -> bool:
        x0, y0, _, _ = _box(obj, size)
        return x0 >= start and y0 >= start

    def outside(obj: SceneObject) -> bool:
        _, _, x1, y1 = _box(obj, size)
        return x1 <= start or y1 <= start

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
        chosen = [obj for obj in target.objects if obj.cell == COMPLETION_CELL]
        others = [obj for obj in target.objects if obj.cell != COMPLETION_CELL]
        if not (chosen and all(map(inside, chosen)) and all(map(outside, others))):
            continue
        forbidden = set(target.background.colours)
        options = swaps(chosen[0], forbidden)  # one object per place
        if options:
            break
    else:
        raise ValueError(f"no scene fits a rectangle from pixel {start} at size {size}")
    swapped = _choice(rng, options)
    objects = [swapped if obj.cell == COMPLETION_CELL else obj for obj in target.objects]
    source = replace(target, objects=tuple(objects))
    return render(source, size), target


# ---------------------------------------------------------------------------------------------
# Writing a dataset
# ---------------------------------------------------------------------------------------------


def _write_range(
    out_dir: str, start: int, stop: int, seed: int, size: int, split: str, emoji: bool
) -> int:
    out = Path(out_dir)
    for index in range(start, stop):
        image, spec = render_scene(seed, index, size, split, emoji)
        png = io.BytesIO()
        image.save(png, format="PNG")
        stem = f"{index:06d}"
        # The caption goes last: a reader sees a pair only once its image is complete.
        # atomic, not fsynced: a crash cuts a dataset short but leaves no half-written file
        write_bytes(out / f"{stem}.json", spec.to_json().encode(), durable=False)
        write_bytes(out / f"{stem}.png", png.getvalue(), durable=False)
        write_bytes(out / f"{stem}.txt", (spec.caption + "\n").encode(), durable=False)
    return stop - start


def write_scenes(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    size: int = 128,
    split: str = "train",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    emoji: bool = False,
) -> int:
    """Write scenes ``0 … count-1`` as ``NNNNNN.png`` + ``.txt`` (caption) + ``.json`` (spec).

    Uses ``workers`` processes (default: every core) on chunks of indices; the files do not depend
    on the worker count. Each file is written to a temporary name and renamed. ``progress(done,
    total)`` is called from this process as chunks finish. Returns ``count``.
    """
    if count < 0:
        raise ValueError(f"scene count must be >= 0, got {count}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if size < 8:
        raise ValueError(f"scene size must be at least 8 pixels, got {size}")
    if emoji:
        _require_emoji_font()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or os.cpu_count() or 1)
    chunk = max(1, min(64, math.ceil(count / (workers * 4))))
    ranges = [(s, min(s + chunk, count)) for s in range(0, count, chunk)]
    done = 0
    if workers == 1 or len(ranges) <= 1:
        for start, stop in ranges:
            done += _write_range(str(out), start, stop, seed, size, split, emoji)
            if progress:
                progress(done, count)
        return count
    # spawn, not fork: the caller may hold torch/OpenMP threads, which do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(ranges)), mp_context=context) as pool:
        futures = [
            pool.submit(_write_range, str(out), start, stop, seed, size, split, emoji)
            for start, stop in ranges
        ]
        for future in as_completed(futures):
            done += future.result()
            if progress:
                progress(done, count)
    return count


# ---------------------------------------------------------------------------------------------
# Parsing a caption back into its structured form
# ---------------------------------------------------------------------------------------------

_COLOUR_WORDS = {c: c for c in COLOURS} | {"grey": "gray"}
_SIZE_WORDS = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
_COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_SHAPE_WORDS = {s: s for s in SHAPES} | {_plural(s): s for s in SHAPES}
_RELATION_WORDS = {
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
    "to the left of": "to the left of",
    "left of": "to the left of",
    "to the right of": "to the right of",
    "right of": "to the right of",
}
_PLACE_WORDS = {p: p for p in PLACE_CELLS} | {"middle": "center", "centre": "center"}


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_C = _alternation(_COLOUR_WORDS)
_NP_RE = re.compile(
    rf"(?P<num>{_alternation(_COUNT_WORDS)}|\d+)\s+(?:(?P<size>{_alternation(_SIZE_WORDS)})\s+)?"
    rf"(?:(?P<emoji>{_alternation(EMOJI)})|(?:(?P<colour>{_C})\s+)?(?P<shape>"
    rf"{_alternation(_SHAPE_WORDS)}))"
)
_RELATION_RE = re.compile(rf"\s+({_alternation(_RELATION_WORDS)})\s+")
_PLACE_RE = re.compile(
    rf"^(?P<np>.+?)\s+(?:in|at|on|near)\s+the\s+(?P<place>{_alternation(_PLACE_WORDS)})"
    r"(?:\s+corner)?$"
)
_PREFIX_RE = re.compile(
    r"^(?:(?:a|an)\s+(?:photo|image|picture|drawing|rendering|painting)\s+(?:of|with|showing)"
    r"|there\s+(?:is|are))\s+"
)
_LEAD = r"(?:\s*,\s*|\s+)"  # the background phrase follows a space or a comma
_BACKGROUND_RES = (
    (
        re.compile(
            rf"{_LEAD}(?:on|against|with)\s+an?\s+({_C})\s+top\s+and\s+({_C})\s+bottom\s+"
            r"background$"
        ),
        "top-bottom",
    ),
    (
        re.compile(
            rf"{_LEAD}(?:on|against|with)\s+an?\s+({_C})\s+left\s+and\s+({_C})\s+right\s+"
            r"background$"
        ),
        "left-right",
    ),
    (re.compile(rf"{_LEAD}(?:on|against|with)\s+an?\s+({_C})\s+and\s+({_C})\s+background$"), None),
    (
        re.compile(
            rf"(?:\s*,\s*(?:(?:on|against|with)\s+an?\s+)?|\s+(?:on|against|with)\s+an?\s+)"
            rf"({_C})\s+background$"
        ),
        "plain",
    ),
)


def _parse_ref(text: str, caption: str) -> tuple[ObjectRef, int]:
    m = _NP_RE.fullmatch(text)
    if not m:
        raise ValueError(
            f"cannot parse {text!r} in caption {caption!r}: expected e.g. "
            "'three small blue stars' or 'a rocket'"
        )
    num = m["num"]
    count = int(num) if num.isdigit() else _COUNT_WORDS[num]
    size = _SIZE_WORDS[m["size"]] if m["size"] else None
    if m["emoji"]:
        return ObjectRef(m["emoji"], None, size, emoji=True), count
    colour = _COLOUR_WORDS[m["colour"]] if m["colour"] else None
    return ObjectRef(_SHAPE_WORDS[m["shape"]], colour, size), count


def parse_caption(caption: str) -> CaptionSpec:
    """The structured form of a caption written in the generator's templates.

    Accepts the generator's phrasings and a few synonyms (grey, big, middle, under, …) in any
    case. Raises ``ValueError`` naming the part it cannot read.
    """
    text = unicodedata.normalize("NFKC", caption).lower().strip().rstrip(".").strip()
    text = re.sub(r"\s+", " ", text)
    text = _PREFIX_RE.sub("", text)
    background = None
    for pattern, layout in _BACKGROUND_RES:
        m = pattern.search(text)
        if m:
            colours = tuple(_COLOUR_WORDS[c] for c in m.groups())
            background = BackgroundRef(colours, layout)
            text = text[: m.start()]
            break
    if not text:
        raise ValueError(f"caption {caption!r} names no object")
    clauses = []
    for part in re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", text):
        if not part:
            continue
        rel = _RELATION_RE.search(part)
        place = _PLACE_RE.match(part)
        if rel:
            subject, count = _parse_ref(part[: rel.start()], caption)
            other, other_count = _parse_ref(part[rel.end() :], caption)
            if count != 1 or other_count != 1:
                raise ValueError(f"relations need single objects: {part!r} in {caption!r}")
            clauses.append(
                Clause("relation", subject, relation=_RELATION_WORDS[rel[1]], other=other)
            )
        elif place:
            subject, count = _parse_ref(place["np"], caption)
            if count != 1:
                raise ValueError(f"places need single objects: {part!r} in {caption!r}")
            clauses.append(Clause("place", subject, place=_PLACE_WORDS[place["place"]]))
        else:
            subject, count = _parse_ref(part, caption)
            clauses.append(Clause("count", subject, count=count))
    return CaptionSpec(tuple(clauses), background)


# ---------------------------------------------------------------------------------------------
# Reading an image back
# ---------------------------------------------------------------------------------------------

_PALETTE_ARRAY = np.array(list(PALETTE.values()), dtype=np.int32)  # (12, 3)
PURE_DISTANCE = 60  # a pixel this close to a palette colour votes for the blob's colour
MIN_PURE_PIXELS, MIN_PURE_FRACTION = 4, 0.2  # fewer pure pixels: unmix the colour instead
SEAM_TOLERANCE = 30  # RGB distance within which a pixel is a mix of the two background halves
SEAM_BAND = 0.04  # of the image side: how far from the seam blurred mixes are expected
MIN_BLOB_AREA = 0.02  # of a cell's area; the smallest star covers ~0.05
MIN_BLOB_SIDE = 0.12  # of a cell's side; drops one-pixel seams and blends between halves
BLOB_PAD = 2  # pixels of context around a blob for its coverage map; objects are >= 2.5 px apart


@dataclass(frozen=True)
class Detection:
    """One object found in an image."""

    colour: str
    shape: str
    size: str
    cell: tuple[int, int]
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int
    shape_iou: float  # overlap with the winning shape template; low values mean "unsure"

    @property
    def place(self) -> str:
        return PLACES[self.cell[0]][self.cell[1]]


@dataclass(frozen=True)
class FactCheck:
    category: str  # "present" | "count" | "size" | "place" | "relation" | "background"
    fact: str  # human-readable
    ok: bool | None  # None: not checkable from pixels (emoji)


@dataclass(frozen=True)
class ScoreResult:
    correct: bool  # every checkable fact holds
    checks: tuple[FactCheck, ...]
    detections: tuple[Detection, ...]
    background: BackgroundRef
    n_objects: int  # as stated by the caption
    heldout: bool  # the caption names a held-out colour–shape pair

    def category(self, name: str) -> bool | None:
        """All facts of one category hold (None when the caption states none that can be read)."""
        oks = [c.ok for c in self.checks if c.category == name and c.ok is not None]
        return all(oks) if oks else None

    @property
    def present(self) -> bool | None:
        return self.category("present")

    @property
    def count(self) -> bool | None:
        return self.category("count")

    @property
    def place(self) -> bool | None:
        return self.category("place")

    @property
    def relation(self) -> bool | None:
        return self.category("relation")

    @property
    def size(self) -> bool | None:
        return self.category("size")

    @property
    def background_ok(self) -> bool | None:
        return self.category("background")


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image or an (H, W, 3) / (3, H, W) array (uint8 or 0–1 float)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3) or (3, H, W), got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, as flat pixel-index arrays.

    Union–find over horizontal runs: a few hundred runs per image, so plain Python is quick.
    """
    h, w = mask.shape
    runs: list[tuple[int, int, int]] = []  # (row, start, stop)
    row_runs: list[range] = []
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    for y in range(h):
        starts = np.flatnonzero(edges[y] == 1)
        stops = np.flatnonzero(edges[y] == -1)
        first = len(runs)
        runs += [(y, int(s), int(e)) for s, e in zip(starts, stops, strict=True)]
        row_runs.append(range(first, len(runs)))
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, h):
        above, here = row_runs[y - 1], row_runs[y]
        i, j = above.start, here.start
        while i < above.stop and j < here.stop:
            _, s1, e1 = runs[i]
            _, s2, e2 = runs[j]
            if s1 <= e2 and s2 <= e1:  # overlapping or diagonally touching
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[rj] = ri
            if e1 < e2:
                i += 1
            else:
                j += 1
    groups: dict[int, list[np.ndarray]] = {}
    for k, (y, s, e) in enumerate(runs):
        groups.setdefault(find(k), []).append(np.arange(y * w + s, y * w + e))
    return [np.concatenate(parts) for parts in groups.values()]


def _detect_background(labels: np.ndarray) -> BackgroundRef:
    """The background from the image frame: the mode of each quadrant's stretch of the border."""
    h, w = labels.shape
    fw = max(1, round(min(h, w) / 64))
    frame = np.zeros_like(labels, dtype=bool)
    frame[:fw], frame[-fw:], frame[:, :fw], frame[:, -fw:] = True, True, True, True
    modes = {}
    for name, (ys, xs) in {
        "tl": (slice(0, h // 2), slice(0, w // 2)),
        "tr": (slice(0, h // 2), slice(w // 2, w)),
        "bl": (slice(h // 2, h), slice(0, w // 2)),
        "br": (slice(h // 2, h), slice(w // 2, w)),
    }.items():
        values = labels[ys, xs][frame[ys, xs]]
        modes[name] = int(np.bincount(values, minlength=len(COLOURS)).argmax())
    tl, tr, bl, br = modes["tl"], modes["tr"], modes["bl"], modes["br"]
    if tl == tr and bl == br and tl != bl:
        return BackgroundRef((COLOURS[tl], COLOURS[bl]), "top-bottom")
    if tl == bl and tr == br and tl != tr:
        return BackgroundRef((COLOURS[tl], COLOURS[tr]), "left-right")
    overall = int(np.bincount(labels[frame], minlength=len(COLOURS)).argmax())
    return BackgroundRef((COLOURS[overall],), "plain")


def _background_image(background: BackgroundRef, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float: the background colour behind every pixel."""
    behind = np.empty((h, w, 3), dtype=np.float32)
    behind[:] = PALETTE[background.colours[0]]
    if background.layout == "top-bottom":
        behind[h // 2 :] = PALETTE[background.colours[1]]
    elif background.layout == "left-right":
        behind[:, w // 2 :] = PALETTE[background.colours[1]]
    return behind


def _mix_residual(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from colours ``p`` (..., 3) to the nearest mix of ``a`` and ``b`` (broadcast)."""
    d = b - a
    t = np.clip(((p - a) * d).sum(-1) / np.maximum(1.0, (d * d).sum(-1)), 0, 1)
    return np.sqrt(((p - a - t[..., None] * d) ** 2).sum(-1))


def _blob_colour(
    pixels: np.ndarray,
    labels: np.ndarray,
    pure: np.ndarray,
    rgb: np.ndarray,
    behind: np.ndarray,
    candidates: list[int],
) -> int:
    """A blob's palette index: the vote of its pure pixels, or when too few are left (a thin or
    blurred object), the colour whose mixes with the background explain its pixels best."""
    solid = pixels[pure[pixels]]
    if len(solid) >= max(MIN_PURE_PIXELS, MIN_PURE_FRACTION * len(pixels)):
        return int(np.bincount(labels[solid], minlength=len(COLOURS)).argmax())
    p, b = rgb[pixels], behind[pixels]
    residuals = [
        _mix_residual(p, b, _PALETTE_ARRAY[i].astype(np.float32)).sum() for i in candidates
    ]
    return candidates[int(np.argmin(residuals))]


def _classify_shape(alpha: np.ndarray) -> tuple[str, float, float]:
    """The shape that best explains a blob's coverage map, its soft IoU, and its extent (px).

    Each shape's template is placed by moments: scaled so its area equals the blob's coverage sum
    and moved so the centroids coincide, then rendered the way scenes are. Matching soft coverage
    at sub-pixel placement is what keeps 8-pixel objects in 64-pixel images apart.
    """
    area = float(alpha.sum())
    if area < 1.0:  # nothing of the blob's colour over the background: no shape to read
        return ("unknown", 0.0, 0.0)
    ys, xs = np.mgrid[: alpha.shape[0], : alpha.shape[1]] + 0.5
    cx, cy = float((alpha * xs).sum()) / area, float((alpha * ys).sum()) / area
    best = (SHAPES[0], -1.0, 0.0)
    for shape in SHAPES:
        fill, ux, uy = _unit_moments(shape)
        w1, h1 = _box_size(shape, 1.0)
        extent = math.sqrt(area / (fill * w1 * h1))
        w, h = w1 * extent, h1 * extent
        template = _coverage(shape, cx - ux * w, cy - uy * h, w, h, alpha.shape[::-1])
        iou = np.minimum(alpha, template).sum() / max(1e-6, np.maximum(alpha, template).sum())
        if iou > best[1]:
            best = (shape, float(iou), extent)
    return best


def detect(image: Image.Image | np.ndarray) -> tuple[BackgroundRef, list[Detection]]:
    """Find the background and every palette object in an image (any size, ideally ≥ 64 px)."""
    rgb = _as_rgb(image)
    h, w, _ = rgb.shape
    dist = ((rgb[:, :, None, :].astype(np.int32) - _PALETTE_ARRAY) ** 2).sum(-1)  # (H, W, 12)
    labels = dist.argmin(-1)
    pure = np.take_along_axis(dist, labels[..., None], -1)[..., 0] <= PURE_DISTANCE**2
    background = _detect_background(labels)
    behind = _background_image(background, h, w)
    foreground = ~np.isin(labels, [COLOURS.index(c) for c in background.colours])
    rgb = rgb.astype(np.float32)
    if background.layout != "plain":
        # A soft seam between the two halves mixes their colours into a third one (white and red
        # make pink); pixels near the seam that are such a mix are background, not an object.
        first, second = (np.asarray(PALETTE[c], dtype=np.float32) for c in background.colours)
        residual = _mix_residual(rgb, first, second)
        nearest = np.sqrt(np.take_along_axis(dist, labels[..., None], -1)[..., 0])
        seam = (residual <= SEAM_TOLERANCE) & (residual < nearest)
        band = max(1, round(min(h, w) * SEAM_BAND))
        near = np.zeros((h, w), dtype=bool)
        if background.layout == "top-bottom":
            near[max(0, h // 2 - band) : h // 2 + band] = True
        else:
            near[:, max(0, w // 2 - band) : w // 2 + band] = True
        foreground &= ~(seam & near)
    cell_w, cell_h = w / 3, h / 3
    flat_rgb, flat_behind = rgb.reshape(-1, 3), behind.reshape(-1, 3)
    flat_labels, flat_pure = labels.ravel(), pure.ravel()
    candidates = [i for i, c in enumerate(COLOURS) if c not in background.colours]

    blobs: dict[tuple[int, tuple[int, int]], list[np.ndarray]] = {}
    for pixels in _components(foreground):
        ys, xs = np.divmod(pixels, w)
        bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        if len(pixels) < MIN_BLOB_AREA * cell_w * cell_h:
            continue
        if min(bw / cell_w, bh / cell_h) < MIN_BLOB_SIDE:
            continue
        colour = _blob_colour(pixels, flat_labels, flat_pure, flat_rgb, flat_behind, candidates)
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        cell = (min(2, int(cy / cell_h)), min(2, int(cx / cell_w)))
        # Two objects never share a cell, so same-coloured pieces in one cell are one object
        # broken up (a generated image's noise), not two.
        blobs.setdefault((colour, cell), []).append(pixels)

    # Coverage of each blob's colour over the background behind it, pixel by pixel: a box-filtered
    # edge pixel is exactly that mix, so the blob's shape is read to a fraction of a pixel.
    owner = np.full(h * w, -1)
    for k, parts in enumerate(blobs.values()):
        owner[np.concatenate(parts)] = k
    owner = owner.reshape(h, w)
    detections = []
    for k, ((colour, cell), parts) in enumerate(blobs.items()):
        pixels = np.concatenate(parts)
        ys, xs = np.divmod(pixels, w)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        crop = (
            slice(max(0, y0 - BLOB_PAD), y1 + BLOB_PAD),
            slice(max(0, x0 - BLOB_PAD), x1 + BLOB_PAD),
        )
        base = behind[crop]
        direction = np.asarray(PALETTE[COLOURS[colour]], dtype=np.float32) - base
        alpha = ((rgb[crop] - base) * direction).sum(-1) / np.maximum(1.0, (direction**2).sum(-1))
        alpha = np.clip(alpha, 0, 1)
        alpha[(owner[crop] != k) & foreground[crop]] = 0  # other objects and stray specks
        shape, iou, extent = _classify_shape(alpha)
        size = "large" if extent / ((cell_w + cell_h) / 2) >= LARGE_THRESHOLD else "small"
        detections.append(
            Detection(COLOURS[colour], shape, size, cell, (x0, y0, x1, y1), len(pixels), iou)
        )
    detections.sort(key=lambda d: (d.cell, d.colour, d.shape))
    return background, detections


def _matches(det: Detection, ref: ObjectRef, with_size: bool = True) -> bool:
    return (
        det.shape == ref.shape
        and (ref.colour is None or det.colour == ref.colour)
        and (not with_size or ref.size is None or det.size == ref.size)
    )


def _describe(ref: ObjectRef) -> str:
    return " ".join(w for w in (ref.size, ref.colour, ref.shape) if w)


def _holds(relation: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    return {
        "above": a[0] < b[0],
        "below": a[0] > b[0],
        "to the left of": a[1] < b[1],
        "to the right of": a[1] > b[1],
    }[relation]


def _check_background(stated: BackgroundRef, found: BackgroundRef) -> bool:
    if stated.layout is None:
        return found.layout != "plain" and set(stated.colours) == set(found.colours)
    return stated.layout == found.layout and tuple(stated.colours) == tuple(found.colours)


def score(
    image: Image.Image | np.ndarray, spec_or_caption: SceneSpec | CaptionSpec | str
) -> ScoreResult:
    """Check every fact a caption states against an image; returns a :class:`ScoreResult`.

    Facts: each named colour–shape is present, each kind's count is right and nothing else is
    there, stated sizes, places and relations hold, the background is right. Facts about emoji
    cannot be read from palette colours and come back as ``None``.
    """
    if isinstance(spec_or_caption, SceneSpec):
        stated = spec_or_caption.stated
    elif isinstance(spec_or_caption, CaptionSpec):
        stated = spec_or_caption
    else:
        stated = parse_caption(spec_or_caption)
    background, detections = detect(image)
    checks: list[FactCheck] = []
    inventory = stated.inventory()
    has_emoji = any(ref.emoji for ref in stated.refs())
    kinds = {ref.kind: ref for ref in stated.refs()}
    for kind, n in inventory.items():
        ref = kinds[kind]
        found = sum(_matches(d, ref, with_size=False) for d in detections)
        name = " ".join(w for w in kind if w)
        checks.append(FactCheck("present", f"a {name}", None if ref.emoji else found >= 1))
        checks.append(FactCheck("count", f"{n} × {name}", None if ref.emoji else found == n))
    extra = [d for d in detections if not any(_matches(d, r, False) for r in kinds.values())]
    checks.append(FactCheck("count", "nothing else", None if has_emoji else not extra))
    for clause in stated.clauses:
        refs = [clause.subject] + ([clause.other] if clause.other else [])
        emoji = any(r.emoji for r in refs)
        if clause.kind == "count" and clause.subject.size is not None:
            n = sum(_matches(d, clause.subject) for d in detections)
            checks.append(
                FactCheck(
                    "size",
                    f"{clause.count} × {_describe(clause.subject)}",
                    None if emoji else n >= clause.count,
                )
            )
        elif clause.kind == "place":
            cell = PLACE_CELLS[clause.place]
            at = [d for d in detections if d.cell == cell]
            text = f"{_describe(clause.subject)} in the {clause.place}"
            ok = any(_matches(d, clause.subject, with_size=False) for d in at)
            checks.append(FactCheck("place", text, None if emoji else ok))
            if clause.subject.size is not None:
                ok = any(_matches(d, clause.subject) for d in at)
                checks.append(FactCheck("size", text, None if emoji else ok))
        elif clause.kind == "relation":
            text = f"{_describe(clause.subject)} {clause.relation} {_describe(clause.other)}"
            ok = any(
                _holds(clause.relation, a.cell, b.cell)
                for a in detections
                if _matches(a, clause.subject)
                for b in detections
                if b is not a and _matches(b, clause.other)
            )
            checks.append(FactCheck("relation", text, None if emoji else ok))
    if stated.background is not None:
        text = f"{' and '.join(stated.background.colours)} background"
        checks.append(
            FactCheck("background", text, _check_background(stated.background, background))
        )
    correct = all(c.ok for c in checks if c.ok is not None)
    return ScoreResult(
        correct, tuple(checks), tuple(detections), background, stated.n_objects, stated.heldout
    )


def fidelity_table(results: Iterable[ScoreResult]) -> dict[str, Any]:
    """Caption fidelity overall, by number of objects, by held-out status and by fact category."""
    results = list(results)

    def summary(rs: list[ScoreResult]) -> dict[str, Any]:
        return {"n": len(rs), "accuracy": sum(r.correct for r in rs) / len(rs) if rs else None}

    by_objects = {}
    for n in sorted({r.n_objects for r in results}):
        by_objects[n] = summary([r for r in results if r.n_objects == n])
    by_fact = {}
    for name in ("present", "count", "size", "place", "relation", "background"):
        values = [r.category(name) for r in results]
        values = [v for v in values if v is not None]
        by_fact[name] = {
            "n": len(values),
            "accuracy": sum(values) / len(values) if values else None,
        }
    return {
        **summary(results),
        "by_objects": by_objects,
        "by_heldout": {
            "seen": summary([r for r in results if not r.heldout]),
            "heldout": summary([r for r in results if r.heldout]),
        },
        "by_fact": by_fact,
    }
