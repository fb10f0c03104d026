"""A bundle's model card, checked at load as its config is: every field the product reads has a
type and a range, and one that has not is left out with a logged warning naming the file.

The card is description, not model: a card with an odd field (``data.pairs: "many"``, example
captions that are lists or ``5``) still loads and samples, and is shown as far as it is valid.
What reads a card (the Settings card, the studio's Examples menu, the server's model object, the
familiarity check) then meets only the types below and never raises. Unknown keys are kept as
they are, so a later version may add fields; nobody reads them.

Stdlib only, like ``studio.project``'s schema.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_TEXT = 10_000  # characters in a name, a description, a caption, a source
MAX_ITEMS = 1_000  # example captions, sources, files, headline figures
MAX_COUNT = 2**63  # steps, pairs, parameters: any real count, and exact in an int64
SHOWN = 60  # characters of an odd value the warning repeats

Checker = Callable[[Any, str, list[str]], Any]


class _Odd(Exception):
    """A value that is not what its field holds: ``expected`` says what would be."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def text(value: Any, where: str, problems: list[str]) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _Odd(f"text of at most {MAX_TEXT:,} characters")
    return value


def count(value: Any, where: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise _Odd("a whole number from 0")
    return value


def seconds(value: Any, where: str, problems: list[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Odd("a number of seconds")
    if not (math.isfinite(value) and 0 <= value <= MAX_COUNT):
        raise _Odd("a finite number of seconds from 0")
    return value


def figure(value: Any, where: str, problems: list[str]) -> Any:
    """A measured figure: a finite number, a short text ("n/a"), or None (not measured)."""
    if value is None:
        return None
    if isinstance(value, str):
        return text(value, where, problems)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Odd("a number or text")
    if not math.isfinite(value) or abs(value) > MAX_COUNT:
        raise _Odd("a finite number")
    return value


def items_of(item: Checker) -> Checker:
    """A list whose items ``item`` checks; an odd item is left out, the others kept."""

    def check(value: Any, where: str, problems: list[str]) -> list:
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise _Odd(f"a list of at most {MAX_ITEMS:,} items")
        return [
            kept
            for index, one in enumerate(value)
            if (kept := _checked(item, one, f"{where}[{index}]", problems)) is not _LEFT_OUT
        ]

    return check


def mapping_of(item: Checker) -> Checker:
    """An object of named values that ``item`` checks; an odd value is left out."""

    def check(value: Any, where: str, problems: list[str]) -> dict:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise _Odd(f"an object of at most {MAX_ITEMS:,} entries")
        return {
            key: kept
            for key, one in value.items()
            if (kept := _checked(item, one, f"{where}.{key}", problems)) is not _LEFT_OUT
        }

    return check


def record(fields: dict[str, Checker]) -> Checker:
    """An object whose known ``fields`` are checked; an odd one is left out, unknown ones kept."""

    def check(value: Any, where: str, problems: list[str]) -> dict:
        if not isinstance(value, dict):
            raise _Odd("an object")
        cleaned = {}
        for key, one in value.items():
            item = fields.get(key)
            kept = one if item is None else _checked(item, one, f"{where}.{key}", problems)
            if kept is not _LEFT_OUT:
                cleaned[key] = kept
        return cleaned

    return check


def text_or_texts(value: Any, where: str, problems: list[str]) -> Any:
    """A licence: one text, or one text per part (``{"weights": "MIT", ...}``)."""
    if isinstance(value, dict):
        return mapping_of(text)(value, where, problems)
    return text(value, where, problems)


_LEFT_OUT = object()


def _checked(item: Checker, value: Any, where: str, problems: list[str]) -> Any:
    try:
        return item(value, where, problems)
    except _Odd as odd:
        problems.append(f"{where} is {_show(value)}; expected {odd.expected}")
        return _LEFT_OUT


# A training stage's card (``model.training.trainer.run_stage``): the bundle's own, its image
# tokenizer's under "vae" and its reranker's under "reranker".
STAGE = {
    "stage": text,
    "steps": count,
    "device": text,
    "wall_seconds_this_run": seconds,
    "train": record({"batch_size": count}),
    "data": record({"folder": text, "pairs": count, "images": count}),
}
IMPORTED = {
    "from": text,
    "source": text,
    "sources": mapping_of(text),
    "licence": text_or_texts,
    "files": mapping_of(text),
    "dtype": text,
    "vqgan": text,
    "version": text,
}
CARD = {
    **STAGE,
    "name": text,
    "description": text,
    "parameters": count,
    "imported": record(IMPORTED),
    "vae": record(STAGE),
    "reranker": record(STAGE),
    "eval": record({"headline": mapping_of(figure)}),
    "example_captions": items_of(text),
    "example_glosses": items_of(text),
}


def check(card: Any) -> tuple[dict[str, Any], list[str]]:
    """(the card as far as it is valid, one line per field left out). Example glosses go with
    their captions: when a caption was left out they no longer line up, and go too."""
    problems: list[str] = []
    if not isinstance(card, dict):
        return {}, [f"the card is {_show(card)}; expected an object"]
    cleaned = record(CARD)(card, "card", problems)
    captions, kept = card.get("example_captions"), cleaned.get("example_captions")
    glosses = cleaned.get("example_glosses")
    if glosses is not None and (
        not isinstance(captions, list)
        or kept is None
        or not len(kept) == len(captions) == len(glosses)
    ):
        del cleaned["example_glosses"]
        problems.append("card.example_glosses do not line up with the example captions")
    return cleaned, problems


def clean(card: Any, source: str) -> dict[str, Any]:
    """``card`` as far as it is valid; each field left out is a warning naming ``source``."""
    cleaned, problems = check(card)
    for problem in problems:
        log.warning("%s: %s: left out", source, problem)
    return cleaned


# -- the card as a user reads it ----------------------------------------------------------------

FIGURE_NAMES = {
    "psnr_db": "tokenizer PSNR",
    "ceiling_one_object": "ceiling one object",
    "ceiling_all": "ceiling all captions",
    "heldout_pairs": "held-out pairs",
}


def figure_text(key: str, value: Any) -> str:
    """One headline figure as a user reads it: "tokenizer PSNR 30.9 dB", "one object 33%"."""
    label = FIGURE_NAMES.get(key, key.removesuffix("_db").replace("_", " "))
    if value is None:  # a report's figure that was not measured (e.g. no two-object captions)
        return f"{label} not measured"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{label} {value}"
    if key.endswith("_db"):
        return f"{label} {value:.1f} dB"
    if 0 <= value <= 1 and isinstance(value, float):
        return f"{label} {value:.0%}"
    return f"{label} {value:,}"


def measured(card: dict[str, Any]) -> str:
    """The card's ``dalle eval`` headline as one line ("tokenizer PSNR 30.9 dB · one object 33%
    · …"), or "" when it has none: what Settings, About, the server's model object and the
    Krita docker show."""
    evaluation = card.get("eval") if isinstance(card.get("eval"), dict) else {}
    headline = evaluation.get("headline") if isinstance(evaluation.get("headline"), dict) else {}
    return " · ".join(figure_text(key, value) for key, value in headline.items())
