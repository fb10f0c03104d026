"""The structured form of a scene: what is drawn (:class:`SceneSpec`) and what its caption states
(:class:`CaptionSpec`), as kept in each scene's JSON and checked by the scorer."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from model.data.scenes.vocabulary import HELDOUT_PAIRS, PLACES


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
