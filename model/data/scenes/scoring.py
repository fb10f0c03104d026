"""Scoring: every fact a caption states checked against what :func:`detect` reads from an image,
and the caption fidelity table over many images (docs/DESIGN.md §4)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from model.data.scenes.captions import parse_caption
from model.data.scenes.detection import Detection, detect
from model.data.scenes.spec import BackgroundRef, CaptionSpec, ObjectRef, SceneSpec
from model.data.scenes.vocabulary import PLACE_CELLS


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
