"""No command writes over its own input without ``--overwrite`` (issue 28): ``complete --image
X.png --out X.png`` replaced the picture it was completing, exit 0, without a word."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.cli import main
from tests.helpers import tiny_bundle_file

REFUSED = "is the same file as"


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return tiny_bundle_file(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(path)
    return path


def dalle(*args) -> int:
    return main([str(a) for a in args])


def complete(bundle, image, out, *extra) -> int:
    return dalle(
        "complete", "--bundle", bundle, "--image", image, "--from", "2,2", "--caption",
        "a red circle", "--seed", 1, "--out", out, "--quiet", *extra,
    )  # fmt: skip


def refused(capsys, code: int, *names: str) -> str:
    """The run's one-line refusal, exit 2, naming each of ``names``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and REFUSED in err and "--overwrite" in err, err
    for name in names:
        assert name in err, err
    return err


def same_path_variants(photo: Path) -> dict[str, Path]:
    """--out spellings that all name ``photo``'s bytes."""
    folder = photo.parent
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "link.png").symlink_to(photo)
    os.link(photo, folder / "hard.png")
    return {
        "same path": photo,
        "../ path": folder / "sub" / ".." / photo.name,
        "symlink": folder / "link.png",
        "hard link": folder / "hard.png",
    }


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges there")
def test_complete_refuses_to_write_over_its_image(bundle_path, photo, capsys):
    before = photo.read_bytes()
    for how, out in same_path_variants(photo).items():
        code = complete(bundle_path, photo, out)
        refused(capsys, code, "--image", photo.name)
        assert photo.read_bytes() == before, how
        assert out.read_bytes() == before, how
    # the image given through a symlink, the result to the real file
    code = complete(bundle_path, photo.parent / "link.png", photo)
    refused(capsys, code, "--image")
    assert photo.read_bytes() == before


def test_numbered_and_folder_outputs_are_checked_too(bundle_path, tmp_path, capsys):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
    photo = tmp_path / "x-1.png"  # what --out x.png --n 2 numbers its second result
    Image.fromarray(pixels).save(photo)
    before = photo.read_bytes()
    code = complete(bundle_path, photo, tmp_path / "x.png", "--n", 2)
    refused(capsys, code, "x-1.png")
    shot = tmp_path / "shot.png"  # a folder --out names results STEM-i.png
    (tmp_path / "shot-0.png").symlink_to(shot)
    Image.fromarray(pixels).save(shot)
    code = complete(bundle_path, shot, tmp_path)
    refused(capsys, code, "shot-0.png", "shot.png")
    assert photo.read_bytes() == before and shot.read_bytes() == before


def test_a_batch_may_not_write_over_its_csv_or_any_image_it_names(bundle_path, tmp_path, capsys):
    rng = np.random.default_rng(2)
    out = tmp_path / "out"
    out.mkdir()
    # line 3's result, out/0003-b-0.png, is line 2's picture
    first = out / "0003-b-0.png"
    Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(first)
    second = tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(second)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"image,caption,row,col\n{first},a red circle,2,2\nb.png,a blue square,2,2\n")
    saved = {path: path.read_bytes() for path in (first, second, jobs)}
    code = dalle("complete", "--bundle", bundle_path, "--batch", jobs, "--out", out, "--quiet")
    refused(capsys, code, "0003-b-0.png", "jobs.csv line 2")
    # the CSV itself, reached through a hard link named like a result
    other = tmp_path / "other"
    other.mkdir()
    os.link(jobs, other / "0003-b-0.png")
    code = dalle("complete", "--bundle", bundle_path, "--batch", jobs, "--out", other, "--quiet")
    refused(capsys, code, "--batch", "jobs.csv")
    assert {path: path.read_bytes() for path in saved} == saved
    assert sorted(p.name for p in out.iterdir()) == ["0003-b-0.png"]


def test_overwrite_allows_it(bundle_path, photo, capsys):
    before = np.asarray(Image.open(photo))
    assert complete(bundle_path, photo, photo, "--overwrite") == 0
    after = np.asarray(Image.open(photo))
    assert after.shape == before.shape and not np.array_equal(after, before)
    assert np.array_equal(after[:10], before[:10])  # above the rectangle: the same picture


def test_generate_bundle_train_and_import_refuse_their_inputs(bundle_path, tmp_path, capsys):
    before = bundle_path.read_bytes()
    png = tmp_path / "model.png"
    os.link(bundle_path, png)  # generate's .png result would be the bundle itself
    code = dalle("generate", "--bundle", png, "--caption", "a red circle", "--out", png)
    refused(capsys, code, "--bundle")
    code = dalle("bundle", "--transformer", bundle_path, "--out", bundle_path)
    refused(capsys, code, "--transformer")
    run = tmp_path / "run"
    run.mkdir()
    os.link(bundle_path, run / "model.dalle.safetensors")
    code = dalle(
        "train", "transformer", "--data", tmp_path, "--vae", tmp_path / "vae.safetensors",
        "--init", run / "model.dalle.safetensors", "--out", run, "--steps", 1,
    )  # fmt: skip
    refused(capsys, code, "--init")
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "pytorch_model_v3.bin").write_bytes(b"weights")
    os.symlink(sources / "pytorch_model_v3.bin", tmp_path / "ru.dalle.safetensors")
    code = dalle("import", "rudalle", "--from", sources, "--out", tmp_path / "ru.dalle.safetensors")
    refused(capsys, code, "--from's", "pytorch_model_v3.bin")
    (sources / "encoder.pkl").write_bytes(b"pickle")
    code = dalle(
        "import", "openai-dvae", "--encoder", sources / "encoder.pkl", "--decoder",
        sources / "decoder.pkl", "--out", sources / "encoder.pkl",
    )  # fmt: skip
    refused(capsys, code, "--encoder")
    assert bundle_path.read_bytes() == before
    assert (sources / "pytorch_model_v3.bin").read_bytes() == b"weights"
    assert (sources / "encoder.pkl").read_bytes() == b"pickle"
