"""A bundle's card with odd types (issue 28): shown as far as it is valid, never an exception.

Every field the product reads is replaced by every wrong kind of value; each such card goes
through ``model.card``, ``bundle.read_card`` / ``bundle.load`` from a file, the Settings card
and dialog, and the session's load handler."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model import bundle as bundle_io
from model import card as card_schema
from studio import engine as messages
from studio.engine import Engine
from studio.session import Session
from studio.widgets.settings import SettingsDialog, card_text, readable_card
from tests.helpers import tiny_bundle_file

VALID = {
    "name": "odd card",
    "description": "a tiny model",
    "stage": "transformer",
    "steps": 1200,
    "device": "cpu (2 cores)",
    "wall_seconds_this_run": 12.5,
    "parameters": 123_456,
    "data": {"folder": "runs/scenes", "pairs": 60_000, "images": 60_000},
    "train": {"batch_size": 32, "lr": 0.001},
    "imported": {
        "from": "dalle import mega",
        "sources": {"transformer": "somewhere"},
        "licence": {"weights": "Apache-2.0"},
        "files": {"a/b.bin": "ab" * 32},
        "dtype": "fp16",
        "vqgan": "f16-16384",
    },
    "vae": {"steps": 10, "device": "cpu", "train": {"batch_size": 8}},
    "reranker": {"steps": 5},
    "eval": {"headline": {"psnr_db": 30.5, "heldout_pairs": 0.42}},
    "example_captions": ["a red circle", "a blue square"],
    "example_glosses": ["one", "two"],
}
PATHS = [
    "name", "description", "stage", "steps", "device", "wall_seconds_this_run", "parameters",
    "data", "data.pairs", "data.images", "data.folder", "train", "train.batch_size",
    "imported", "imported.sources", "imported.licence", "imported.files", "imported.from",
    "vae", "vae.steps", "vae.train", "reranker", "eval", "eval.headline",
    "eval.headline.psnr_db", "example_captions", "example_captions.0", "example_glosses",
    "example_glosses.1",
]  # fmt: skip
WRONG = [None, True, -1, 2**70, 1.5, float("nan"), "many", "x" * 20_000, [], [1, [2]], {},
         {"a": [1]}, 5]  # fmt: skip


def replaced(path: str, value) -> dict:
    card = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    holder = card
    for key in parents:
        holder = holder[key]
    if isinstance(holder, list):
        holder[int(last)] = value
    else:
        holder[last] = value
    return card


def odd_cards() -> Iterator[tuple[str, dict]]:
    for path in PATHS:
        for index, value in enumerate(WRONG):
            yield f"{path}={index}", replaced(path, value)
    yield "captions as lists", dict(VALID, example_captions=[["a"], ["b", "c"]])
    yield "captions 5", dict(VALID, example_captions=5)
    yield "pairs many", replaced("data.pairs", "many")


CASES = list(odd_cards())


def values_are_valid(cleaned: dict) -> None:
    """What the product reads has its type (checked again, independently of model.card)."""
    assert isinstance(cleaned.get("name", ""), str)
    data = cleaned.get("data", {})
    assert isinstance(data, dict)
    for key in ("pairs", "images"):
        assert key not in data or (type(data[key]) is int and data[key] >= 0)
    captions = cleaned.get("example_captions", [])
    assert isinstance(captions, list) and all(isinstance(c, str) for c in captions)
    glosses = cleaned.get("example_glosses")
    assert glosses is None or len(glosses) == len(captions)
    headline = cleaned.get("eval", {}).get("headline", {})
    assert all(v is None or isinstance(v, str | int | float) for v in headline.values())


def test_each_odd_field_is_left_out_with_a_warning_and_the_rest_kept(caplog):
    assert card_schema.check(VALID) == (VALID, [])
    for name, card in CASES:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="model.card"):
            cleaned = card_schema.clean(card, "x.dalle.safetensors")
        values_are_valid(cleaned)
        said = [record.getMessage() for record in caplog.records]
        assert all(line.startswith("x.dalle.safetensors: card.") for line in said), name
        for key in card:  # every field changed is said, naming the file and the field
            if key not in cleaned or cleaned[key] != card[key]:
                assert any(f"card.{key}" in line for line in said), (name, key)
        assert name.startswith("name=") or cleaned["name"] == card["name"]
        readable_card(cleaned)  # the Settings card's text


def test_odd_items_are_left_out_one_by_one():
    cleaned = card_schema.check(dict(VALID, example_captions=["a", 5, ["b"], "c"]))[0]
    assert cleaned["example_captions"] == ["a", "c"]
    assert "example_glosses" not in cleaned  # they no longer line up with the captions
    pairs = card_schema.check(replaced("data.pairs", "many"))[0]
    assert pairs["data"] == {"folder": "runs/scenes", "images": 60_000}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[dict, dict]:
    path = tiny_bundle_file(tmp_path_factory.mktemp("base"))
    with safe_open(str(path), "pt") as stored:
        metadata = dict(stored.metadata())
    return load_file(path), metadata


def with_card(base, path: Path, card) -> Path:
    tensors, metadata = base
    save_file(tensors, path, metadata=dict(metadata, card=json.dumps(card)))
    return path


def test_odd_cards_read_from_a_file_show_in_settings(base, tmp_path, qtbot, monkeypatch):
    from studio.widgets import settings

    monkeypatch.setattr(settings, "memory_summary", lambda path: "")  # builds a model a file
    for index, (name, card) in enumerate(CASES):
        path = with_card(base, tmp_path / f"odd{index}.dalle.safetensors", card)
        read = bundle_io.read_card(path)
        assert read == card_schema.check(card)[0], name
        text = card_text(str(path))
        assert text.startswith("Name: ") and "Cannot read" not in text, name
        if index % 13 == 0:  # the dialog itself for a sample (each opens a window)
            dialog = SettingsDialog("cpu", str(path))
            qtbot.addWidget(dialog)
            shown = dialog.card.toPlainText()  # the memory line's free figure moves
            assert shown.split("Memory:")[0] == text.split("Memory:")[0], name
        path.unlink()


def test_a_bundle_with_odd_cards_loads_samples_and_the_session_takes_it(base, tmp_path, qtbot):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    every = copy.deepcopy(VALID)  # every field odd at once, each in another way
    for index, path in enumerate(PATHS):
        if "." not in path:
            every[path] = WRONG[index % len(WRONG)]
    cases = dict(CASES)
    worst = {"every field": every, **{n: cases[n] for n in ("captions as lists", "captions 5")}}
    worst["pairs many"] = cases["pairs many"]
    for name, card in worst.items():
        path = with_card(base, tmp_path / "odd.dalle.safetensors", card)
        engine = Engine()
        session = Session(engine)
        loaded = engine._load(path, "cpu")  # what the worker emits, handled on the Qt thread
        assert isinstance(loaded, messages.Loaded), (name, loaded)
        session.handle(loaded)
        assert session.model_state == "loaded" and session.model_name, name
        assert all(isinstance(caption, str) for caption in session.examples), name
        assert set(session.glosses) <= set(session.examples), name
        if name == "every field":
            job = messages.Job(image=image, cell=(2, 2), caption="a red circle")
            result = engine.run_job_blocking(job, lambda m: None)
            assert isinstance(result, messages.Finished), (name, result)
        engine.shutdown()


def test_the_load_handler_takes_an_odd_card_whole_or_not_at_all(qtbot):
    """A Loaded message whose card was never cleaned (an engine given a bundle in code)."""
    for name, card in CASES:
        session = Session(Engine())
        message = messages.Loaded("odd.dalle.safetensors", "cpu", "odd", card, 32, 8)
        session.handle(message)
        assert session.model_state == "loaded" and session.device == "cpu", name
        assert all(isinstance(caption, str) for caption in session.examples), name


def test_a_figure_not_measured_is_kept_and_said_so():
    """An eval report writes None for a figure it could not measure (no two-object captions in
    a split): the card keeps it, and Settings and About say "not measured", not "None"."""
    card = replaced("eval.headline.psnr_db", None)
    assert card_schema.check(card) == (card, [])
    text = card_schema.figure_text("two_objects_relation", None)
    assert text == "two objects relation not measured"
