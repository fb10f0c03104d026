"""``dalle generate`` and ``dalle complete``: outputs, kept pixels, bad input refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.cli import main
from tests.helpers import tiny_bundle_file


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return tiny_bundle_file(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module", params=["dvae", "vq"])
def any_bundle_path(request, tmp_path_factory):
    """A tiny bundle of each image tokenizer kind."""
    return tiny_bundle_file(tmp_path_factory.mktemp("bundle"), kind=request.param)


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)  # not square, not the model size
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def dalle(*args) -> int:
    return main([str(a) for a in args])


def test_complete_keeps_pixels_outside_rectangle(any_bundle_path, photo, tmp_path, capsys):
    out = tmp_path / "out"
    code = dalle(
        "complete",
        "--bundle",
        any_bundle_path,
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
    from model.evaluation.bench import random_transformer, step_bytes
    from model.inference.sampling import prepared

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


# -- issue 15: hostile input, one rule for --out, nothing left behind -----------------------------


def png_header(path, width: int, height: int, bit_depth: int = 8, colour: int = 2):
    """A tiny PNG whose header claims ``width`` x ``height``: one empty IDAT, no pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    data += chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None)
                  for p in folder.rglob("*"))  # fmt: skip


def test_a_decompression_bomb_is_one_line_in_complete_and_batch(bundle_path, tmp_path, capsys):
    bomb = png_header(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 80
    out = tmp_path / "out"
    base = ["complete", "--bundle", bundle_path, "--out", out, "--quiet"]
    line = bad(capsys, *base, "--image", bomb, "--from", "1,1", "--caption", "x")
    assert "bomb.png" in line and "900 megapixels" in line and "up to 50 megapixels" in line
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("bomb.png,a caption,1,1\n")
    line = bad(capsys, *base[:-1], "--batch", jobs)
    assert "line 1" in line and "megapixels" in line
    assert not out.exists()


def test_a_large_image_is_refused_before_decoding(bundle_path, tmp_path, capsys, monkeypatch):
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("decoded pixels of an image that is over the limit")

    big = png_header(tmp_path / "big.png", 11000, 11000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    line = bad(capsys, "complete", "--bundle", bundle_path, "--image", big, "--from", "1,1",
               "--caption", "x", "--out", tmp_path / "out")  # fmt: skip
    assert "11000x11000" in line and "121 megapixels" in line


def test_sixteen_bit_grey_is_scaled_not_clipped(bundle_path, tmp_path):
    grey = np.full((40, 40), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = tmp_path / "out"
    assert dalle("complete", "--bundle", bundle_path, "--image", path, "--from", "2,2",
                 "--caption", "x", "--out", out, "--quiet") == 0  # fmt: skip
    result = np.asarray(Image.open(out / "grey16-0.png"))
    assert result[:10, :10].tolist() == np.full((10, 10, 3), 128).tolist()  # kept: grey


def test_generate_out_rule(bundle_path, tmp_path, capsys):
    base = ["generate", "--bundle", bundle_path, "--caption", "A red heart!", "--quiet"]
    assert dalle(*base, "--out", tmp_path / "one.png") == 0
    assert (tmp_path / "one.png").is_file()
    capsys.readouterr()
    assert dalle(*base, "--n", 3, "--out", tmp_path / "heart.png") == 0
    captured = capsys.readouterr()
    names = [f"heart-{i}.png" for i in range(3)]
    assert captured.out.split() == [str(tmp_path / name) for name in names]
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and "heart-0.png" in note[0] and "heart-2.png" in note[0]
    assert not (tmp_path / "heart.png").exists()
    folder = tmp_path / "gallery"
    assert dalle(*base, "--n", 2, "--out", folder) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a-red-heart-0.png", "a-red-heart-1.png"]
    assert "png" in bad(capsys, *base, "--out", tmp_path / "x.jpg")


def test_complete_out_rule(bundle_path, photo, tmp_path, capsys):
    base = ["complete", "--bundle", bundle_path, "--image", photo, "--from", "1,1",
            "--caption", "x", "--quiet"]  # fmt: skip
    assert dalle(*base, "--out", tmp_path / "result.png") == 0
    assert (tmp_path / "result.png").is_file()
    assert Image.open(tmp_path / "result.png").size == (60, 45)
    assert dalle(*base, "--n", 2, "--out", tmp_path / "two.png") == 0
    assert (tmp_path / "two-0.png").is_file() and (tmp_path / "two-1.png").is_file()
    assert not (tmp_path / "two.png").exists()
    assert dalle(*base, "--out", tmp_path / "folder") == 0
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["photo-0.png"]
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("photo.png,a caption,1,1\n")
    before = listing(tmp_path)
    capsys.readouterr()
    line = bad(capsys, "complete", "--bundle", bundle_path, "--batch", jobs,
               "--out", tmp_path / "batch.png")  # fmt: skip
    assert "batch.png" in line and "folder" in line
    assert listing(tmp_path) == before


def test_bad_input_leaves_no_output_folder(bundle_path, photo, tmp_path, capsys):
    out = tmp_path / "new" / "nested" / "out"
    cases = [
        ["--image", tmp_path / "missing.png", "--from", "1,1", "--caption", "x"],
        ["--image", photo, "--from", "1,1", "--caption", ""],
        ["--image", photo, "--from", "3,0", "--caption", "x"],
    ]
    for case in cases:
        bad(capsys, "complete", "--bundle", bundle_path, "--out", out, *case)
        assert not (tmp_path / "new").exists()
    bad(capsys, "generate", "--bundle", tmp_path / "nope", "--caption", "x", "--out", out / "a.png")
    assert not (tmp_path / "new").exists()
    # eval and data too: their folders appear only once the input is known good
    line = bad(capsys, "eval", "--bundle", tmp_path / "nope", "--sheets", out / "sheets",
               "--json", out / "json" / "r.json")  # fmt: skip
    assert "no such file" in line
    line = bad(capsys, "data", "scenes", "--count", "2", "--size", "0", "--out", out)
    assert "at least 8 pixels" in line
    assert not (tmp_path / "new").exists()


NUMBER_CASES = {
    "at most 64": ["--n", "10000"],
    "seed must be from 0": ["--seed", str(2**64)],
    "seed must be from 0 ": ["--seed", "-1"],
    "guidance": ["--guidance", "nan"],
    "guidance ": ["--guidance", "inf"],
    "temperature": ["--temperature", "1e-45"],
    "temperature ": ["--temperature", "nan"],
    "temperature  ": ["--temperature", "inf"],
    "top-p": ["--top-p", "nan"],
    "'tpu'": ["--device", "tpu"],
    "invalid int value": ["--n", "many"],
}


@pytest.mark.parametrize("expected", list(NUMBER_CASES))
def test_bad_numbers_and_devices_are_one_line(bundle_path, tmp_path, capsys, expected):
    out = tmp_path / "out"
    args = NUMBER_CASES[expected]
    line = bad(capsys, "generate", "--bundle", bundle_path, "--caption", "x", "--out",
               out / "a.png", *args)  # fmt: skip
    assert expected.strip() in line, line
    assert not out.exists()


def test_negative_cells_are_named_not_misparsed(bundle_path, photo, tmp_path, capsys):
    base = ["complete", "--bundle", bundle_path, "--image", photo, "--caption", "x",
            "--out", tmp_path / "out"]  # fmt: skip
    for option, value in (("--from", "-1,3"), ("--from-px", "-5,2"), ("--from", "1,-3")):
        line = bad(capsys, *base, option, value)
        assert f"{option} must not be negative" in line and value in line
    code = main(["complete", "--bundle", str(bundle_path), "--image", str(photo), "--caption",
                 "x", "--from=-1,3", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_caption_is_one_line(bundle_path, tmp_path, capsys):
    caption = b"a red \xff heart".decode("utf-8", "surrogateescape")  # as argv brings it
    line = bad(capsys, "generate", "--bundle", bundle_path, "--caption", caption,
               "--out", tmp_path / "a.png")  # fmt: skip
    assert "caption" in line and "UTF-8" in line
    assert list(tmp_path.iterdir()) == []


def test_too_many_candidates_for_memory_are_refused_before_sampling(
    bundle_path, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("model.device.available_memory", lambda device: 2**20)
    line = bad(capsys, "generate", "--bundle", bundle_path, "--caption", "x", "--n", 64,
               "--out", tmp_path / "a.png")  # fmt: skip
    assert "--n 64" in line and "MB" in line
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(
    bundle_path, tmp_path, capsys, monkeypatch
):
    import errno

    def full(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "out"
    line = bad(capsys, "generate", "--bundle", bundle_path, "--caption", "x",
               "--out", out / "a.png", "--quiet")  # fmt: skip
    assert "No space left on device" in line and "a.png" in line
    assert not out.exists()  # no temporary file, and the folder the run made is gone
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_error_is_one_line_and_a_log(bundle_path, tmp_path, capsys, monkeypatch):
    import model.cli as cli

    def broken(args):
        raise RuntimeError("something nobody expected\nwith a second line")

    monkeypatch.setattr(cli, "cmd_generate", broken)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "state"))
    code = dalle("generate", "--caption", "x")
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert "RuntimeError: something nobody expected" in err
    log = Path(err.split("details in ")[1])
    assert log.is_file() and "Traceback" in log.read_text()
    assert "something nobody expected" in log.read_text()


def test_planted_symlinks_are_not_followed(bundle_path, photo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / ".photo-0.png.tmp").symlink_to(victim)  # the old predictable temporary name
    (out / "photo-1.png").symlink_to(victim)  # the target itself
    assert dalle("complete", "--bundle", bundle_path, "--image", photo, "--from", "1,1",
                 "--caption", "x", "--n", 2, "--out", out, "--quiet") == 0  # fmt: skip
    assert victim.read_text() == "keep me"
    assert not (out / "photo-1.png").is_symlink()
    assert Image.open(out / "photo-1.png").size == (60, 45)


def test_sigterm_during_a_save_leaves_no_temporary_file(bundle_path, tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from PIL import Image
        def slow(self, fp, *args, **kwargs):
            fp.write(b"partial")
            fp.flush()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        Image.Image.save = slow
        from model.cli import main
        sys.exit(main(["generate", "--bundle", {str(bundle_path)!r}, "--caption", "x",
                       "--out", {str(tmp_path / "out" / "a.png")!r}, "--quiet"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parent.parent)  # fmt: skip
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "terminated" in done.stderr
    assert not (tmp_path / "out").exists()


def test_batch_csv_bom_utf8_and_empty_captions(bundle_path, photo, tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    out = tmp_path / "out"
    base = ["complete", "--bundle", bundle_path, "--batch", jobs, "--out", out, "--quiet"]
    jobs.write_bytes("\ufeffimage,caption,row,col\nphoto.png,a caption,1,1\n".encode())
    assert dalle(*base) == 0
    assert [p.name for p in out.iterdir()] == ["0002-photo-0.png"]
    before = listing(tmp_path)
    cases = {
        "line 3": b"image,caption,row,col\nphoto.png,ok,1,1\nphoto.png,\xff\xfe,1,1\n",
        "line 2: the caption is empty": b"photo.png,ok,1,1\nphoto.png,  ,1,1\n",
        "line 1: expected image,caption,row,col": b"photo.png,ok,1,1,extra\n",
        "line 2: row and col must be integers": b"photo.png,ok,1,1\nphoto.png,ok,one,1\n",
        "line 1: row and col must not be negative": b"photo.png,ok,-1,1\n",
        "line 1": b"photo.png,\x00,1,1\n",
    }
    for expected, data in cases.items():
        jobs.write_bytes(data)
        line = bad(capsys, *base)
        assert expected in line and str(jobs) in line, line
        if "\\xff" in repr(data):
            assert "UTF-8" in line
    jobs.write_bytes(data)
    assert listing(tmp_path) == [
        entry if entry[0] != "jobs.csv" else ("jobs.csv", data) for entry in before
    ]


def test_batch_checks_every_header_first_and_decodes_each_image_just_before_its_job(
    bundle_path, photo, tmp_path, monkeypatch
):
    import model.cli.sample as cli
    import model.inference.sampling as sampling

    events = []
    real_open, real_complete = cli.open_image, sampling.complete

    def opening(path, *args, **kwargs):
        events.append(("decode", Path(path).name))
        return real_open(path, *args, **kwargs)

    def completing(*args, **kwargs):
        events.append(("sample",))
        return real_complete(*args, **kwargs)

    monkeypatch.setattr(cli, "open_image", opening)
    monkeypatch.setattr(sampling, "complete", completing)
    other = tmp_path / "other.png"
    Image.open(photo).save(other)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("photo.png,a,1,1\nother.png,b,1,1\n")
    assert dalle("complete", "--bundle", bundle_path, "--batch", jobs,
                 "--out", tmp_path / "out", "--quiet") == 0  # fmt: skip
    assert events == [("decode", "photo.png"), ("sample",), ("decode", "other.png"), ("sample",)]
    jobs.write_text("photo.png,a,1,1\nmissing.png,b,1,1\n")
    events.clear()
    assert dalle("complete", "--bundle", bundle_path, "--batch", jobs,
                 "--out", tmp_path / "out2", "--quiet") == 2  # fmt: skip
    assert events == []  # line 2 refused from its header before line 1 was decoded
