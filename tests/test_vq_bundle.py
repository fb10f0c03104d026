"""A bundle whose image tokenizer is the VQ-VAE (issue 17): config kind, loading, sampling,
training and the CLI, beside the dVAE bundles that must not change. The studio engine and
``dalle complete`` run their kept-pixels tests on both kinds (tests/test_engine.py,
tests/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from model import evaluate
from model.bundle import BundleError, default_bundle_path, load, read_config, save
from model.cli import main
from model.config import BundleConfig, DVAEConfig, SamplingOptions, VQConfig
from model.data.scenes import write_scenes
from model.dvae import DVAE
from model.geometry import Plan
from model.sampling import Done, complete, memory_needed, plan_mask
from model.tokenizer_files import save_vq
from model.vq import VQVAE
from tests.helpers import TINY_VQ, tiny_bundle, tiny_bundle_file


@pytest.fixture(scope="module")
def vq_bundle():
    return tiny_bundle(kind="vq")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, 12, seed=1, size=32, workers=1)
    return folder


def stored_config(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["config"])


def rewrite_config(source: Path, target: Path, change) -> None:
    """``source`` with its config JSON passed through ``change`` (weights kept)."""
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata())
    config = json.loads(metadata["config"])
    change(config)
    metadata["config"] = json.dumps(config)
    save_file(load_file(str(source)), str(target), metadata=metadata)


# -- the config and the file --------------------------------------------------------------------


def test_a_vq_bundle_round_trips_with_its_kind(tmp_path, vq_bundle):
    path = tiny_bundle_file(tmp_path, kind="vq")
    assert stored_config(path)["vae"]["kind"] == "vq"
    loaded = load(path)
    assert isinstance(loaded.vae, VQVAE) and loaded.config.vae == TINY_VQ
    assert loaded.config.vae_kind == "vq" and read_config(path).vae_kind == "vq"
    for name, tensor in vq_bundle.vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[name], tensor), name
    again = tmp_path / "again.dalle.safetensors"
    save(loaded, again)
    assert stored_config(again) == stored_config(path)


def test_a_dvae_bundle_without_a_kind_loads_as_before(tmp_path):
    path = tiny_bundle_file(tmp_path)
    assert "kind" not in stored_config(path)["vae"]  # dVAE bundles are written as they were
    loaded = load(path)
    assert isinstance(loaded.vae, DVAE) and loaded.config.vae_kind == "dvae"
    explicit = tmp_path / "explicit.dalle.safetensors"
    rewrite_config(path, explicit, lambda c: c["vae"].update(kind="dvae"))
    assert load(explicit).config == loaded.config


def test_the_default_bundle_loads_unchanged(tmp_path):
    from safetensors.torch import load_file

    path = default_bundle_path()
    stored = stored_config(path)
    bundle = load(path)
    config = bundle.config
    assert config.vae_kind == "dvae" and isinstance(config.vae, DVAEConfig)
    assert BundleConfig.from_dict(stored) == config
    tensors = load_file(str(path))
    for prefix, module in bundle.modules().items():
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, tensors[f"{prefix}.{name}"]), name  # bit for bit
    # saved again, the metadata is the same text: no kind added to a dVAE's config
    again = save(bundle, tmp_path / "again.dalle.safetensors")
    with safe_open(str(path), "pt") as before, safe_open(str(again), "pt") as after:
        assert after.metadata() == before.metadata()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["vae"].update(kind="gumbel"), "vae.kind is 'gumbel'; expected one of"),
        (lambda c: c["vae"].update(kind=3), "vae.kind is 3"),
        (lambda c: c["vae"].update(patch=0), "vae.patch is 0; expected at least 1"),
        (lambda c: c["vae"].update(width=10**9), "vae.width is 1000000000; expected at most"),
        (lambda c: c["vae"].update(n_groups=3), "unknown VQConfig fields: ['n_groups']"),
        (lambda c: c["vae"].update(decay=float("nan")), "vae.decay is nan"),
        (lambda c: c["vae"].update(patch=16), "the vae's grid 2 != transformer.grid 4"),
        (lambda c: c["vae"].update(vocab_size=64), "vae.vocab_size 64 != transformer.image_vocab"),
        (lambda c: c["vae"].update(image_size=33), "VQ image_size 33 must be a positive multiple"),
        (lambda c: c["vae"].update(kind="dvae"), "unknown DVAEConfig fields"),
        (lambda c: c["vae"].update(embed_dim=16), "wrong shape or dtype: vae."),
    ],
)
def test_hostile_vq_configs_are_one_line_bundle_errors(tmp_path, change, message):
    source = tiny_bundle_file(tmp_path, kind="vq")
    target = tmp_path / "hostile.dalle.safetensors"
    rewrite_config(source, target, change)
    with pytest.raises(BundleError) as caught:
        load(target)
    text = str(caught.value)
    assert message in text and "\n" not in text and str(target) in text


def test_save_refuses_a_tokenizer_of_another_kind_than_the_config(tmp_path, vq_bundle):
    mixed = tiny_bundle(kind="vq")
    mixed.config.vae = DVAEConfig(image_size=32, n_groups=4, n_hid=8, vocab_size=32, n_init=16)
    with pytest.raises(BundleError, match="the vae was built with another config"):
        save(mixed, tmp_path / "mixed.dalle.safetensors")


# -- using it -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [(0, 0), (1, 2), (3, 3)])
def test_complete_keeps_the_kept_tokens_and_decodes_the_sampled_ones(vq_bundle, cell):
    grid = vq_bundle.config.transformer.grid
    image = vq_bundle.vae.decode(torch.randint(0, 32, (1, grid, grid)))[0]
    own = vq_bundle.vae.encode(image.unsqueeze(0))[0]
    messages = list(complete(vq_bundle, image, cell, "a red circle", SamplingOptions(n=2, seed=1)))
    done = messages[-1]
    assert isinstance(done, Done) and done.images.shape == (2, 3, 32, 32)
    mask = plan_mask(Plan(grid, *cell))  # the rectangle from ``cell`` to the bottom right
    assert done.model_calls == int(mask.sum())
    for tokens, decoded in zip(done.tokens, done.images, strict=True):
        assert torch.equal(tokens[~mask], own[~mask])  # kept cells, bit for bit
        assert torch.allclose(vq_bundle.vae.decode(tokens.unsqueeze(0))[0], decoded, atol=1e-5)
    assert memory_needed(vq_bundle.config, SamplingOptions(n=2)) > 0


def test_reconstruction_and_likelihood_read_a_vq_bundle(vq_bundle):
    images = torch.rand(4, 3, 32, 32)
    report = evaluate.reconstruction(vq_bundle, images)
    assert report["images"] == 4 and 0 < report["codes_used"] <= 32
    assert np.isfinite(report["psnr_db"])
    assert np.isfinite(evaluate.likelihood(vq_bundle, images, ["a red circle"] * 4))


def test_dalle_bundle_vae_refuses_to_swap_a_dvae_into_a_vq_bundle(tmp_path, capsys):
    path = tiny_bundle_file(tmp_path, kind="vq")
    from model.tokenizer_files import save_vae

    vae = tmp_path / "vae.safetensors"
    save_vae(tiny_bundle().vae, vae, {})
    code = main(
        [
            "bundle",
            "--transformer",
            str(path),
            "--vae",
            str(vae),
            "--out",
            str(tmp_path / "o.dalle.safetensors"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "this bundle's image tokenizer is a vq" in err
    assert not (tmp_path / "o.dalle.safetensors").exists()


def test_train_transformer_on_a_vq_file_makes_a_bundle_for_every_stage(scenes, tmp_path, capsys):
    torch.manual_seed(0)
    vq = tmp_path / "vq.safetensors"
    save_vq(VQVAE(VQConfig(**{**TINY_VQ.__dict__, "patch": 4, "vocab_size": 64})), vq, {})
    out = tmp_path / "run"
    args = ["train", "transformer", "--vae", vq, "--data", scenes, "--out", out]
    args += ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--quiet"]
    assert main([str(a) for a in args]) == 0
    path = out / "model.dalle.safetensors"
    assert stored_config(path)["vae"]["kind"] == "vq"
    bundle = load(path)
    assert isinstance(bundle.vae, VQVAE) and bundle.config.transformer.grid == 8
    picture = next(Path(scenes).glob("*.png"))
    result = tmp_path / "completed.png"
    args = ["complete", "--bundle", path, "--image", picture, "--caption", "a red circle"]
    args += ["--from", "6,0", "--seed", "1", "--out", result]
    assert main([str(a) for a in args]) == 0
    assert result.is_file()

    # the reranker trains on it, on the VQ tokenizer's reconstructions too
    args = ["train", "reranker", "--data", scenes, "--bundle", path, "--out", tmp_path / "rr"]
    args += ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--quiet", "--reconstructed"]
    args += ["--set", "dim=16", "--set", "text_layers=1", "--set", "image_width=8"]
    assert main([str(a) for a in args]) == 0
    ranked = load(tmp_path / "rr" / "model.dalle.safetensors")
    assert ranked.config.vae_kind == "vq" and ranked.reranker is not None

    # and `dalle eval` measures it
    report = tmp_path / "eval.json"
    args = ["eval", "--bundle", tmp_path / "rr" / "model.dalle.safetensors", "--count", "1"]
    args += ["--samples", "2", "--recon-count", "2", "--json", report, "--quiet"]
    assert main([str(a) for a in args + ["--precision", "fp32"]]) == 0
    assert json.loads(report.read_text())["seen"]["reconstruction"]["images"] == 2

    # a dVAE-only feature asked of the VQ file is one line
    capsys.readouterr()
    args = ["train", "transformer", "--vae", vq, "--init", tiny_bundle_file(tmp_path)]
    args += ["--data", scenes, "--out", tmp_path / "mixed", "--preset", "tiny", "--quiet"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image tokenizer is a dvae but --vae's is a vq" in err
    args = ["train", "vae", "--init", vq, "--decoder-only", "--data", scenes]
    args += ["--out", tmp_path / "dec", "--preset", "tiny", "--steps", "1", "--quiet"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(vq) in err and "'dalle-studio-vq/1'" in err
