"""``dalle generate`` and ``dalle complete``: outputs, kept pixels, bad input refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from model.cli import main
from tests.helpers import tiny_bundle_file


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return tiny_bundle_file(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)  # not square, not the model size
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def dalle(*args) -> int:
    return main([str(a) for a in args])


def test_complete_keeps_pixels_outside_rectangle(bundle_path, photo, tmp_path, capsys):
    out = tmp_path / "out"
    code = dalle(
        "complete",
        "--bundle",
        bundle_path,
        "--image",
        photo,
        "--from-px",
        "20,15",
        "--caption",
        "a red circle",
        "--n",
        2,
        "--seed",
        1,
        "--out",
        out,
        "--quiet",
    )
    assert code == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["photo-0.png", "photo-1.png"]
    original = np.asarray(Image.open(photo))
    for path in written:
        result = np.asarray(Image.open(path))
        assert result.shape == original.shape  # the input's resolution
        # cell size in user pixels is 8 / (32 / 60) = 15: --from-px 20,15 snaps to x0=15, y0=15
        keep = np.ones(original.shape[:2], dtype=bool)
        keep[15:, 15:] = False
        assert np.array_equal(result[keep], original[keep])
        assert not np.array_equal(result[~keep], original[~keep])
    assert capsys.readouterr().out.split() == [str(p) for p in written]


def test_complete_from_cell_and_seed_reproducible(bundle_path, photo, tmp_path):
    args = [
        "complete",
        "--bundle",
        bundle_path,
        "--image",
        photo,
        "--from",
        "2,1",
        "--caption",
        "three purple stars",
        "--seed",
        7,
        "--quiet",
    ]
    assert dalle(*args, "--out", tmp_path / "a") == 0
    assert dalle(*args, "--out", tmp_path / "b") == 0
    a = np.asarray(Image.open(tmp_path / "a" / "photo-0.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "photo-0.png"))
    assert np.array_equal(a, b)


def test_generate_writes_numbered_pngs(bundle_path, tmp_path):
    out = tmp_path / "gen.png"
    assert (
        dalle(
            "generate",
            "--bundle",
            bundle_path,
            "--caption",
            "a green ring",
            "--n",
            3,
            "--out",
            out,
            "--quiet",
        )
        == 0
    )
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["gen-0.png", "gen-1.png", "gen-2.png"]
    assert Image.open(tmp_path / "gen-0.png").size == (32, 32)


def test_batch_jobs(bundle_path, photo, tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,caption,row,col\nphoto.png,a red circle,1,1\nphoto.png,two stars,2,2\n")
    out = tmp_path / "batch"
    assert dalle("complete", "--bundle", bundle_path, "--batch", jobs, "--out", out, "--quiet") == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["0002-photo-0.png", "0003-photo-0.png"]  # one name per CSV line


def bad(capsys, *args) -> str:
    code = dalle(*args)
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    return lines[0]


def test_bad_inputs_give_one_line_and_no_output(bundle_path, photo, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["complete", "--bundle", bundle_path, "--out", out, "--quiet"]
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a png")
    cases = {
        "no such file": [
            *base,
            "--image",
            tmp_path / "missing.png",
            "--from",
            "1,1",
            "--caption",
            "x",
        ],
        "not a readable image": [*base, "--image", not_image, "--from", "1,1", "--caption", "x"],
        "outside the 4x4 token grid": [*base, "--image", photo, "--from", "4,0", "--caption", "x"],
        "outside the 60x45 image": [*base, "--image", photo, "--from-px", "60,3", "--caption", "x"],
        "caption is empty": [*base, "--image", photo, "--from", "1,1", "--caption", "   "],
        "at least 1": [*base, "--image", photo, "--from", "1,1", "--caption", "x", "--n", "0"],
        "padding": [*base, "--image", photo, "--from", "3,0", "--caption", "x"],
    }
    for expected, args in cases.items():
        line = bad(capsys, *args)
        assert expected in line, line
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_is_refused(bundle_path, photo, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    line = bad(
        capsys,
        "complete",
        "--bundle",
        bundle_path,
        "--image",
        photo,
        "--from",
        "1,1",
        "--caption",
        "x",
        "--out",
        blocker / "out",
        "--quiet",
    )
    assert "cannot write to output folder" in line
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        line = bad(
            capsys, "generate", "--bundle", bundle_path, "--caption", "x", "--out", locked / "x.png"
        )
        assert "cannot write" in line


def test_bad_bundle_and_bad_batch(bundle_path, photo, tmp_path, capsys):
    junk = tmp_path / "junk.dalle.safetensors"
    junk.write_bytes(b"\x00" * 10)
    line = bad(capsys, "generate", "--bundle", junk, "--caption", "x", "--out", tmp_path / "a.png")
    assert str(junk) in line
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"{photo},a caption,1\n")
    line = bad(capsys, "complete", "--bundle", bundle_path, "--batch", jobs, "--out", tmp_path)
    assert "line 1" in line and "image,caption,row,col" in line
    jobs.write_text(f"{photo},ok,1,1\n{tmp_path / 'nope.png'},x,1,1\n")
    out = tmp_path / "batch-out"
    line = bad(capsys, "complete", "--bundle", bundle_path, "--batch", jobs, "--out", out)
    assert "line 2" in line and "no such file" in line
    assert not any(out.glob("*.png"))  # every job is checked before the first one runs


def test_generate_refuses_non_png_and_bad_options(bundle_path, tmp_path, capsys):
    assert ".png" in bad(
        capsys, "generate", "--bundle", bundle_path, "--caption", "x", "--out", tmp_path / "a.jpg"
    )
    assert "temperature" in bad(
        capsys,
        "generate",
        "--bundle",
        bundle_path,
        "--caption",
        "x",
        "--temperature",
        "0",
        "--out",
        tmp_path / "a.png",
    )
    assert not list(tmp_path.glob("*.png"))


def test_bench_random_model_prints_one_json_object(capsys):
    import json

    args = "--dim 32 --depth 2 --heads 4 --grid 4 --text-len 4 --vocab 16 --repeats 1"
    assert dalle("bench", "--random", *args.split(), "--batch", "1", "3", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"] == {"dim": 32, "depth": 2, "heads": 4, "grid": 4, "text_len": 4}
    assert report["tokens_per_s"] > 0 and report["seconds_per_image"] > 0
    assert report["copy_bandwidth_gb_per_s"] > 0
    runs = report["runs"]
    assert [(r["task"], r["batch"], r["cells"]) for r in runs] == [
        ("full", 1, 16),
        ("quarter", 1, 4),
        ("full", 3, 16),
        ("quarter", 3, 4),
    ]
    for r in runs:
        assert r["tokens_per_s"] == pytest.approx(r["cells"] * r["batch"] / r["seconds"])
        assert 0 < r["fraction_of_copy_bandwidth"]


def test_bench_step_bytes_counts_the_weights_a_step_reads():
    from model.bench import random_transformer, step_bytes
    from model.sampling import prepared

    model = random_transformer(32, 2, 4, 4, 4, 16, "cpu")
    fp32 = step_bytes(model, 1)
    skipped = ("text_", "image_embed", "row_embed", "col_embed", "to_text")  # not read per step
    weights = sum(p.numel() * 4 for n, p in model.named_parameters() if not n.startswith(skipped))
    window = sum(getattr(model, f"keys_{k}").shape[1] for k in model.kinds)
    assert fp32 == weights + 2 * 32 * window * 4  # + keys and values, batch 1, fp32 cache
    int8 = step_bytes(prepared(model, "int8"), 1)
    assert fp32 / 4.5 < int8 - 2 * 32 * window * 4 < fp32 / 2  # one byte per weight, not four
    assert step_bytes(model, 8) - fp32 == 7 * 2 * 32 * window * 4  # more rows: more keys


def test_bench_refuses_bad_sizes_with_one_line(capsys):
    assert dalle("bench", "--random", "--dim", "0") != 0
    err = capsys.readouterr().err.strip()
    assert "--dim must be positive" in err and "\n" not in err


def test_complete_samples_no_padding_rows(bundle_path, photo, tmp_path, capsys):
    # 60x45 in a 32x32 square: 32x24 pixels of image, 3 of the 4 token rows; row 3 is padding
    code = dalle(
        "complete", "--bundle", bundle_path, "--image", photo, "--from", "1,0",
        "--caption", "a red circle", "--seed", 1, "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 0
    bar = capsys.readouterr().err.strip().splitlines()[-1]
    assert " 2/2 rows" in bar, bar
