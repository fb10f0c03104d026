"""Train a tiny dVAE and transformer on generated scenes, then complete an image with the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.cli import main
from model.data.scenes import write_scenes
from model.training.trainer import read_metrics


@pytest.mark.slow
def test_train_tiny_models_and_complete(tmp_path):
    data = tmp_path / "scenes"
    assert write_scenes(data, 48, seed=3, size=32, workers=1) == 48
    vae_run, tf_run = tmp_path / "vae", tmp_path / "tf"
    common = ["--data", str(data), "--preset", "tiny", "--quiet"]
    assert main(["train", "vae", *common, "--out", str(vae_run), "--steps", "200"]) == 0
    vae_mse = [m["mse"] for m in read_metrics(vae_run)]
    assert (vae_run / "vae.safetensors").is_file()
    assert np.mean(vae_mse[-3:]) < np.mean(vae_mse[:3]), vae_mse

    assert (
        main(
            [
                "train",
                "transformer",
                *common,
                "--vae",
                str(vae_run / "vae.safetensors"),
                "--out",
                str(tf_run),
                "--steps",
                "200",
            ]
        )
        == 0
    )
    tf_metrics = read_metrics(tf_run)
    first, last = tf_metrics[0]["image_loss"], tf_metrics[-1]["image_loss"]
    assert last < first - 0.5, (first, last)  # well below where it started
    bundle = tf_run / "model.dalle.safetensors"
    assert bundle.is_file()

    source = sorted(data.glob("*.png"))[0]
    out = tmp_path / "out"
    assert (
        main(
            [
                "complete",
                "--bundle",
                str(bundle),
                "--image",
                str(source),
                "--from",
                "2,2",
                "--caption",
                "a red circle",
                "--n",
                "2",
                "--seed",
                "0",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    original = np.asarray(Image.open(source).convert("RGB"))
    for path in sorted(out.glob("*.png")):
        result = np.asarray(Image.open(path))
        assert result.shape == original.shape
        assert np.array_equal(result[:8], original[:8])  # rows above the rectangle kept
        assert np.array_equal(result[:, :8], original[:, :8])  # columns left of it kept
        assert not np.array_equal(result[8:, 8:], original[8:, 8:])  # the rectangle is new
