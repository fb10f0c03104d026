"""The scenes generator (determinism, held-out pairs, captions, files) and its scorer."""

import io
import json
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import scenes
from model.data.scenes import (
    COLOURS,
    EMOJI,
    HELDOUT_PAIRS,
    MAX_CAPTION_WORDS,
    PLACE_CELLS,
    SHAPES,
    BackgroundRef,
    CaptionSpec,
    Clause,
    ObjectRef,
    SceneSpec,
    fidelity_table,
    parse_caption,
    render_scene,
    sample_spec,
    scene_rng,
    score,
    scoring,
    shapes,
    write_scenes,
)

log = logging.getLogger(__name__)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def specs(n: int, seed: int = 0, split: str = "train") -> list[SceneSpec]:
    return [sample_spec(scene_rng(seed, i, split), split) for i in range(n)]


# --- generator ---------------------------------------------------------------------------------


def test_render_scene_is_deterministic_per_index():
    image, spec = render_scene(7, 3)
    again, spec_again = render_scene(7, 3)
    assert png_bytes(image) == png_bytes(again)
    assert spec == spec_again and spec.caption == spec_again.caption
    assert image.size == (128, 128) and image.mode == "RGB"
    others = [render_scene(7, 4)[0], render_scene(8, 3)[0], render_scene(7, 3, split="heldout")[0]]
    assert all(png_bytes(other) != png_bytes(image) for other in others)


def test_write_scenes_files_do_not_depend_on_worker_count(tmp_path):
    calls = []
    assert (
        write_scenes(
            tmp_path / "one",
            10,
            seed=3,
            size=64,
            workers=1,
            progress=lambda d, t: calls.append((d, t)),
        )
        == 10
    )
    assert write_scenes(tmp_path / "two", 10, seed=3, size=64, workers=2) == 10
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(f"{i:06d}.{ext}" for i in range(10) for ext in ("png", "txt", "json"))
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())  # no temporary leftovers
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert calls[-1] == (10, 10) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    image, spec = render_scene(3, 7, size=64)
    assert (tmp_path / "one" / "000007.png").read_bytes() == png_bytes(image)
    assert (tmp_path / "one" / "000007.txt").read_text() == spec.caption + "\n"
    stored = SceneSpec.from_json((tmp_path / "one" / "000007.json").read_text())
    assert stored == spec


def test_write_scenes_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        write_scenes(tmp_path, 1, split="test")
    with pytest.raises(ValueError, match="count"):
        write_scenes(tmp_path, -1)
    assert write_scenes(tmp_path / "empty", 0) == 0


def test_heldout_pairs_never_in_train_and_always_in_heldout():
    assert {
        ("purple", "triangle"),
        ("green", "heart"),
        ("orange", "ring"),
        ("white", "star"),
        ("cyan", "cross"),
    } <= set(HELDOUT_PAIRS)
    for spec in specs(3000):
        assert not {o.kind for o in spec.objects} & set(HELDOUT_PAIRS), spec.caption
    seen = set()
    for spec in specs(500, split="heldout"):
        pairs = {o.kind for o in spec.objects} & set(HELDOUT_PAIRS)
        assert pairs, spec.caption
        assert spec.stated.heldout
        seen |= pairs
    assert seen == set(HELDOUT_PAIRS)


def test_scene_layout_rules():
    counts = Counter()
    for spec in specs(1000):
        n = len(spec.objects)
        counts[n] += 1
        assert 1 <= n <= 4
        assert len({o.cell for o in spec.objects}) == n  # distinct cells
        for o in spec.objects:
            assert o.colour in COLOURS and o.shape in SHAPES and o.size in ("small", "large")
            assert o.colour not in spec.background.colours  # never the colour behind it
            w, h = shapes.box_size(o.shape, o.extent)
            row, col = o.cell
            assert col / 3 < o.center[0] - w / 2 and o.center[0] + w / 2 < (col + 1) / 3
            assert row / 3 < o.center[1] - h / 2 and o.center[1] + h / 2 < (row + 1) / 3
        assert len(spec.caption.replace(",", " ,").split()) <= MAX_CAPTION_WORDS
    assert set(counts) == {1, 2, 3, 4}


def test_caption_states_what_the_scene_holds():
    seen = Counter()
    for spec in specs(600):
        stated = spec.stated
        assert parse_caption(spec.caption) == stated, spec.caption
        # Captions name every object: the stated inventory is the scene's.
        assert stated.inventory() == Counter(o.kind for o in spec.objects), spec.caption
        for o in spec.objects:
            assert o.colour in spec.caption and o.shape in spec.caption
        for clause in stated.clauses:
            seen[clause.kind] += 1
            matching = [o for o in spec.objects if o.kind == clause.subject.kind]
            size = clause.subject.size
            if clause.kind == "count" and size:
                assert all(o.size == size for o in matching), spec.caption
            if clause.kind == "place":
                at = [o for o in matching if o.place == clause.place]
                assert at and (size is None or at[0].size == size), spec.caption
            if clause.kind == "relation":
                seen[clause.relation] += 1
                (a,) = matching
                (b,) = [o for o in spec.objects if o.kind == clause.other.kind]
                assert size in (None, a.size) and clause.other.size in (None, b.size)
                assert scoring._holds(clause.relation, a.cell, b.cell), spec.caption
        if stated.background is not None:
            seen[f"background {stated.background.layout}"] += 1
            assert set(stated.background.colours) == set(spec.background.colours)
            if stated.background.layout is not None:
                assert stated.background.layout == spec.background.layout
                assert stated.background.colours == spec.background.colours
        seen["prefixed"] += spec.caption.startswith(("a photo of", "an image", "a picture of"))
    for what in (
        "count",
        "place",
        "relation",
        "above",
        "below",
        "to the left of",
        "to the right of",
        "background plain",
        "background top-bottom",
        "background left-right",
        "background None",
        "prefixed",
    ):
        assert seen[what] > 0, what
    assert any(c.count > 1 for s in specs(100) for c in s.stated.clauses)  # "three blue stars"


def test_spec_json_round_trip():
    for spec in specs(50):
        text = spec.to_json()
        assert SceneSpec.from_json(text) == spec
        assert json.loads(text)["caption"] == spec.caption


def test_parse_caption_phrasings_synonyms_and_errors():
    stars = ObjectRef("star", "gray", "large")
    assert parse_caption("A Photo of Three BIG grey Stars.") == CaptionSpec(
        (Clause("count", stars, count=3),)
    )
    spec = parse_caption(
        "a red heart in the top left corner and a cyan ring in the middle, on a yellow background"
    )
    assert spec.clauses == (
        Clause("place", ObjectRef("heart", "red"), place="top left"),
        Clause("place", ObjectRef("ring", "cyan"), place="center"),
    )
    assert spec.background == BackgroundRef(("yellow",), "plain")
    spec = parse_caption(
        "a green ring above a small pink square on a red top and blue bottom background"
    )
    assert spec.clauses == (
        Clause(
            "relation",
            ObjectRef("ring", "green"),
            relation="above",
            other=ObjectRef("square", "pink", "small"),
        ),
    )
    assert spec.background == BackgroundRef(("red", "blue"), "top-bottom")
    for bad in ("a purple elephant juggling", "", "on a red background", "two stars above a ring"):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_emoji_are_optional_and_named_unambiguously(monkeypatch):
    assert len(EMOJI) >= 100
    reserved = (
        set(COLOURS)
        | set(SHAPES)
        | {
            "and",
            "above",
            "below",
            "left",
            "right",
            "top",
            "bottom",
            "background",
            "center",
            "middle",
        }
    )
    for name in EMOJI:
        words = set(name.split())
        assert not words & (reserved - set(COLOURS)), name
        assert parse_caption(f"a {name}").clauses[0].subject == ObjectRef(name, emoji=True)
    assert not any(o.emoji for s in specs(300) for o in s.objects)  # off by default
    monkeypatch.setattr(shapes, "EMOJI_FONT_PATH", Path("/nonexistent/emoji.ttf"))
    with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
        render_scene(0, 0, emoji=True)


@pytest.mark.skipif(not scenes.emoji_available(), reason="Noto Color Emoji is not installed")
def test_emoji_scenes_render_when_the_font_is_installed():
    found = 0
    for i in range(40):
        image, spec = render_scene(0, i, emoji=True)
        assert parse_caption(spec.caption) == spec.stated
        found += sum(o.emoji for o in spec.objects)
        assert score(image, spec).correct  # emoji facts are unverifiable, the rest must hold
    assert found > 0


# --- scorer ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "count"), [(128, 300), (64, 200)])
def test_scorer_agrees_with_the_generator_on_clean_renders(size, count):
    results = []
    for split in ("train", "heldout"):
        for i in range(count // 2):
            image, spec = render_scene(11, i, size=size, split=split)
            results.append(score(image, spec.caption))  # from the caption text alone
    agreement = sum(r.correct for r in results) / len(results)
    log.info("scorer agreement at %d px: %.4f", size, agreement)
    assert agreement >= 0.99
    table = fidelity_table(results)
    assert table["n"] == count and table["accuracy"] == agreement
    assert set(table["by_objects"]) == {1, 2, 3, 4}
    assert table["by_heldout"]["heldout"]["n"] == count // 2
    json.dumps(table)


def test_scorer_rejects_wrong_captions():
    rejected, total = Counter(), 0
    for i in range(80):
        image, spec = render_scene(5, i)
        used = {o.colour for o in spec.objects} | set(spec.background.colours)
        clauses = list(spec.stated.clauses)
        first = clauses[0]
        subject = first.subject
        wrong_colour = next(c for c in COLOURS if c not in used)
        wrong_shape = next(
            s for s in SHAPES if (subject.colour, s) not in {o.kind for o in spec.objects}
        )
        variants = {
            "colour": replace(first, subject=replace(subject, colour=wrong_colour)),
            "shape": replace(first, subject=replace(subject, shape=wrong_shape)),
        }
        for what, clause in variants.items():
            wrong = CaptionSpec(tuple([clause] + clauses[1:]), spec.stated.background)
            rejected[what] += not score(image, wrong).correct
        one_more = CaptionSpec(tuple(clauses + [Clause("count", subject)]), spec.stated.background)
        rejected["count"] += not score(image, one_more).correct
        bg = BackgroundRef((wrong_colour,), "plain")
        rejected["background"] += not score(image, replace(spec.stated, background=bg)).correct
        total += 1
    for what, n in rejected.items():
        assert n / total >= 0.95, (what, n, total)


def test_scorer_checks_places_and_relations():
    image, spec = None, None
    for i in range(200):
        image, spec = render_scene(9, i)
        if len(spec.objects) == 2 and len({o.kind for o in spec.objects}) == 2:
            break
    a, b = spec.objects
    ra, rb = ObjectRef(a.shape, a.colour), ObjectRef(b.shape, b.colour)
    wrong_place = next(p for p, cell in PLACE_CELLS.items() if cell != a.cell)
    right = CaptionSpec((Clause("place", ra, place=a.place), Clause("count", rb)))
    assert score(image, right).correct
    result = score(
        image, CaptionSpec((Clause("place", ra, place=wrong_place), Clause("count", rb)))
    )
    assert not result.correct and result.place is False and result.present is True
    holds = [r for r in scenes.RELATIONS if scoring._holds(r, a.cell, b.cell)]
    fails = [r for r in scenes.RELATIONS if not scoring._holds(r, a.cell, b.cell)]
    assert score(image, CaptionSpec((Clause("relation", ra, relation=holds[0], other=rb),))).correct
    result = score(image, CaptionSpec((Clause("relation", ra, relation=fails[0], other=rb),)))
    assert result.relation is False and result.count is True


def test_scorer_tolerates_pixel_noise_and_accepts_arrays():
    rng = np.random.default_rng(0)
    correct = 0
    for i in range(60):
        image, spec = render_scene(13, i)
        noisy = np.asarray(image) + rng.normal(0, 12, (128, 128, 3))
        chw = np.clip(noisy, 0, 255).transpose(2, 0, 1) / 255  # (3, H, W) float in [0, 1]
        correct += score(chw, spec).correct
    assert correct / 60 >= 0.95
    with pytest.raises(ValueError, match="RGB"):
        score(np.zeros((8, 8)), "a red circle")


def test_fidelity_table_groups_results():
    results = [
        score(*render_scene(1, i, size=64, split=split))
        for split in ("train", "heldout")
        for i in range(12)
    ]
    table = fidelity_table(results)
    assert table["n"] == 24
    assert table["by_heldout"]["seen"]["n"] == 12 and table["by_heldout"]["heldout"]["n"] == 12
    assert sum(v["n"] for v in table["by_objects"].values()) == 24
    assert set(table["by_fact"]) == {"present", "count", "size", "place", "relation", "background"}
    empty = fidelity_table([])
    assert empty["n"] == 0 and empty["accuracy"] is None
