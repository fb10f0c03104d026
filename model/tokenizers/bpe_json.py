"""The JSON a bundle holds for a BPE caption tokenizer read from another project's files
(``model.tokenizers.bart_text`` for DALL·E Mega/Mini, ``model.tokenizers.yttm_text`` for ruDALL-E):
a format tag, the text length, the vocabulary and the merges, so that the app never needs the
original files. ``model.tokenizers.text``'s own tokenizer is stored as ``tokenizers``' JSON
instead."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): a tokenizer
    error made one line."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def bpe_to_json(
    format_: str, text_len: int, vocab: Mapping[str, int], merges: Sequence[Sequence[str]]
) -> str:
    data = {
        "format": format_,
        "text_len": text_len,
        "vocab": dict(vocab),
        "merges": [list(pair) for pair in merges],
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def bpe_from_json(text: str, format_: str, noun: str) -> tuple[Any, list, Any]:
    """``(vocab, merges, text_len)`` from ``bpe_to_json``'s string, for the tokenizer's own
    constructor to check; ValueError "not a ``noun`` JSON: ..." when ``text`` is not JSON, not of
    ``format_``, or its merges are not a list."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"not a {noun} JSON: {first_line(error)}") from None
    if not isinstance(data, dict) or data.get("format") != format_:
        raise ValueError(f"not a {noun} JSON: expected format {format_!r}")
    merges = data.get("merges")
    if not isinstance(merges, list):
        raise ValueError(f"not a {noun} JSON: merges must be a list of pairs")
    return data.get("vocab"), merges, data.get("text_len")
