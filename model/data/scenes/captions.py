"""Captions: writing one for a scene's objects and background, in one of several phrasings, with
the structured form of exactly what it states; and parsing a caption back into that form."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from model.data.scenes.spec import (
    Background,
    BackgroundRef,
    CaptionSpec,
    Clause,
    ObjectRef,
    SceneObject,
)
from model.data.scenes.vocabulary import (
    COLOURS,
    EMOJI,
    NUMBER_WORDS,
    PLACE_CELLS,
    RELATIONS,
    SHAPES,
    article,
    choice,
    plural,
)

STYLE_PROBS = {"count": 0.35, "place": 0.35, "relation": 0.3}
BACKGROUND_MENTION_PROB = 0.85
SIZE_MENTION_PROB = 0.4
# Variety of wording: layout named ("a red top and blue bottom background"), "…, and …", "big"
# for large, "one" for "a".
PHRASING_PROBS = {"layout": 0.5, "oxford_comma": 0.3, "big": 0.3, "one": 0.1}
MAX_CAPTION_WORDS = 28  # the transformer reads 32 text tokens; leave room for commas

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


# ---------------------------------------------------------------------------------------------
# Writing a caption
# ---------------------------------------------------------------------------------------------


def _relation(a: SceneObject, b: SceneObject, rng: np.random.Generator) -> str:
    """A relation that holds between the cells of a and b (there is always one: cells differ)."""
    (ra, ca), (rb, cb) = a.cell, b.cell
    holds = (ra < rb, ra > rb, ca < cb, ca > cb)
    return choice(rng, [r for r, ok in zip(RELATIONS, holds, strict=True) if ok])


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
        return f"{'one' if number_one else article(words)} {words}"
    words = " ".join(w for w in (size_word, ref.colour, plural(ref.shape)) if w)
    return f"{NUMBER_WORDS[count]} {words}"


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
        return form.format(a=article(bg.colours[0]), c=bg.colours[0])
    a, b = bg.colours
    if not phrasing.background_layout:
        return f"on {article(a)} {a} and {b} background"
    if bg.layout == "top-bottom":
        return f"on {article(a)} {a} top and {b} bottom background"
    return f"on {article(a)} {a} left and {b} right background"


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


def write_caption(
    rng: np.random.Generator, objects: list[SceneObject], bg: Background
) -> tuple[str, str, CaptionSpec]:
    """A caption for ``objects`` on ``bg``: its template family, its text and what it states."""
    style, clauses = _caption_clauses(rng, objects)
    phrasing = _Phrasing(
        prefix=choice(rng, _PREFIXES),
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
_SHAPE_WORDS = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}
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
