"""What the README tells a new user matches what the product does (issue 28): the server's
default size for the embedded model, CSV captions with commas, and --from's cells against
--from-px's pixels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from model import bundle as bundle_io
from model.cli import main
from model.cli.sample import read_jobs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_servers_default_size_is_the_embedded_models():
    path = bundle_io.default_bundle_path()
    if not path.exists():
        pytest.skip(f"{path.name} is not installed")
    said = re.search(r"the model's own square \((\d+)x(\d+) for the embedded model", README)
    assert said, "the README's server sizes line"
    size = bundle_io.read_config(path).vae.image_size
    assert (int(said[1]), int(said[2])) == (size, size)


def test_a_csv_caption_with_commas_is_quoted_as_the_readme_says(tmp_path, capsys):
    assert 'a caption with commas in "quotes"' in README
    jobs = tmp_path / "jobs.csv"
    jobs.write_text('image,caption,row,col\nphoto.png,"a red circle, on the left",2,3\n')
    (job,) = read_jobs(jobs)
    assert (job.caption, job.cell) == ("a red circle, on the left", (2, 3))
    jobs.write_text("photo.png,a red circle, on the left,2,3\n")  # unquoted: five fields
    assert main(["complete", "--batch", str(jobs), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "jobs.csv line 1" in error
    assert 'a caption with commas goes in double quotes: "a, b"' in error


@pytest.mark.parametrize(
    "option, shape", [("--from", "ROW,COL (cells)"), ("--from-px", "X,Y (pixels)")]
)
def test_from_and_from_px_say_which_numbers_they_want(option, shape, tmp_path, capsys):
    code = main(["complete", "--image", "x.png", option, "8", "--caption", "x", "--out", "o.png"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error
    assert error.endswith(f"{option} must be two integers {shape}, got '8'")
    assert main(["complete", "--help"]) == 0
    assert f"{option} {shape.split()[0]} " in capsys.readouterr().out
