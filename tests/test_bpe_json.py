"""``model.tokenizers.bpe_json``: the one JSON form of an imported BPE caption tokenizer
(Mega/Mini's BART BPE and ruDALL-E's youtokentome BPE both store themselves through it)."""

from __future__ import annotations

import json

import pytest

from model.tokenizers.bpe_json import bpe_from_json, bpe_to_json, first_line

VOCAB = {"<s>": 0, "a": 1, "b": 2, "ab": 3, "é": 4}
MERGES = [("a", "b")]


def test_round_trip_keeps_vocab_merges_and_text_len_compactly():
    text = bpe_to_json("demo-bpe/1", 7, VOCAB, MERGES)
    assert "é" in text and ", " not in text  # not ASCII-escaped, no spaces: a bundle's metadata
    assert json.loads(text) == {
        "format": "demo-bpe/1",
        "text_len": 7,
        "vocab": VOCAB,
        "merges": [["a", "b"]],
    }
    assert bpe_from_json(text, "demo-bpe/1", "demo tokenizer") == (VOCAB, [["a", "b"]], 7)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "not a demo tokenizer JSON: Expecting property name"),
        (None, "not a demo tokenizer JSON: the JSON object must be str"),
        ('{"format": "other/1"}', "not a demo tokenizer JSON: expected format 'demo-bpe/1'"),
        ("[1, 2]", "not a demo tokenizer JSON: expected format 'demo-bpe/1'"),
        (
            '{"format": "demo-bpe/1", "merges": "a b"}',
            "not a demo tokenizer JSON: merges must be a list of pairs",
        ),
    ],
)
def test_each_refusal_is_one_line_naming_the_tokenizer(text, problem):
    with pytest.raises(ValueError) as caught:
        bpe_from_json(text, "demo-bpe/1", "demo tokenizer")
    assert str(caught.value).startswith(problem)
    assert "\n" not in str(caught.value)


def test_first_line_of_a_message_or_the_error_type():
    assert first_line(ValueError("  one\ntwo  ")) == "one"
    assert first_line(RuntimeError("")) == "RuntimeError"
