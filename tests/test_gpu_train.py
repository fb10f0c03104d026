"""benchmarks/gpu_train.sh: the v2 recipe end to end, at toy size on the CPU."""

import subprocess
from pathlib import Path

import pytest

from model import bundle as bundle_io

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.sh"


@pytest.mark.slow
def test_the_recipe_writes_a_vq_bundle_with_a_reranker(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out), "tiny", "cpu"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stages = [line.split()[0] for line in (out / "times.txt").read_text().splitlines()]
    expected = "scenes vq scenes-big decoder transformer reranker bundle bundle".split()
    assert stages == expected
    bundle = bundle_io.load(out / "model.dalle.safetensors", "cpu")
    assert bundle.config.vae_kind == "vq" and bundle.reranker is not None
    # the tiny recipe's 32 px codes drawn at twice the size, as the full one draws 128 px
    assert (bundle.config.vae.pool, bundle.vae.image_size) == (2, 64)
    assert bundle.card["name"] == "scenes 64px, VQ tokens (gpu_train.sh)"


def test_an_unknown_scale_is_one_line(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "run"), "huge"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "gpu_train.sh: scale must be full or tiny, got 'huge'"
    assert not (tmp_path / "run").exists()
