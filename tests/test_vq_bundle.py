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

from model.bundle import BundleError, default_bundle_path, load, read_config, save
from model.bundle.tokenizer_files import save_vq
from model.cli import main
from model.config import BundleConfig, DVAEConfig, SamplingOptions, VQConfig
from model.data.scenes import write_scenes
from model.evaluation import evaluate
from model.geometry import Plan
from model.inference.sampling import Done, complete, memory_needed, plan_mask
from model.networks.dvae import DVAE
from model.networks.vq import VQVAE
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


V1_DEFAULT = (
    Path(__file__).resolve().parents[1] / "resources/models/v1/default-2026-11-25.dalle.safetensors"
)


def test_the_v1_dvae_default_loads_unchanged(tmp_path):
    """The dVAE default shipped before v2, written before tokenizer kinds existed."""
    from safetensors.torch import load_file

    path = V1_DEFAULT
    if not path.exists():
        pytest.skip(f"{path.name} is not in this checkout")
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


def test_the_default_is_the_v2_vq_bundle_at_128_px(tmp_path):
    """The embedded model: VQ codes on a 16x16 grid, drawn at 128 px; saved again unchanged."""
    from safetensors.torch import load_file

    path = default_bundle_path()
    bundle = load(path)
    assert isinstance(bundle.vae, VQVAE) and bundle.config.vae_kind == "vq"
    assert (bundle.vae.image_size, bundle.vae.grid, bundle.config.vae.pool) == (128, 16, 2)
    assert bundle.config.transformer.grid == 16 and bundle.reranker is not None
    tensors = load_file(str(path))
    for prefix, module in bundle.modules().items():
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, tensors[f"{prefix}.{name}"]), name
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
    from model.bundle.tokenizer_files import save_vae

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


# -- a pool-2 tokenizer in a bundle: issue 17's 128 px decoder on the 64 px codes --------------


def pool2_files(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny VQ bundle with a reranker (32 px) and its tokenizer grown to pool 2 (64 px, the
    same codes, a decoder of its own), as files."""
    import dataclasses

    from model.config import RerankerConfig
    from model.networks.rerank import Reranker
    from model.networks.vq import pooled_from

    bundle = tiny_bundle(kind="vq")
    reranker_config = RerankerConfig(
        text_vocab=bundle.tokenizer.padded_vocab_size,
        text_len=bundle.tokenizer.text_len,
        image_size=32,
        dim=16,
        text_layers=1,
        heads=2,
        image_width=8,
    )
    bundle.reranker = Reranker(reranker_config).eval()
    bundle.config = dataclasses.replace(bundle.config, reranker=reranker_config)
    path = save(bundle, tmp_path / "small.dalle.safetensors")
    big = pooled_from(bundle.vae, VQConfig(**{**TINY_VQ.__dict__, "pool": 2, "image_size": 64}))
    with torch.no_grad():
        big.decoder.conv_out.bias.add_(0.05)  # not merely the old decoder upscaled
    vq = tmp_path / "vq64.safetensors"
    save_vq(big, vq, {"decoder_only": True})
    return path, vq


def test_a_pool_2_bundle_fine_tunes_on_its_pool_1_twin_and_swaps_back(tmp_path):
    """The shipped default's case: its transformer trains on with the 64 px tokenizer its codes
    came from (`train transformer --init` checks the tokens, not the drawing size), and
    `dalle bundle --vae` puts the 64 px decoder back in place of the 128 px one."""
    from model.bundle.tokenizer_files import load_image_tokenizer
    from model.training.train import fine_tuning_start

    small_path, vq = pool2_files(tmp_path)
    big_path = tmp_path / "big.dalle.safetensors"
    assert (
        main(
            [
                str(a)
                for a in ["bundle", "--transformer", small_path, "--vae", vq, "--out", big_path]
            ]
        )
        == 0
    )
    twin = tmp_path / "twin.safetensors"
    save_vq(load(small_path).vae, twin, {})
    start = fine_tuning_start(big_path, load_image_tokenizer(twin)[0])
    assert start.config.vae.pool == 2
    back = tmp_path / "back.dalle.safetensors"
    argv = ["bundle", "--transformer", big_path, "--vae", twin, "--out", back]
    assert main([str(a) for a in argv]) == 0
    assert load(back).config.vae == load(small_path).config.vae


def test_dalle_bundle_vae_takes_a_pool_2_tokenizer_and_completes_at_its_size(tmp_path, capsys):
    from PIL import Image

    from model.geometry import Geometry

    small_path, vq = pool2_files(tmp_path)
    path = tmp_path / "big.dalle.safetensors"
    argv = ["bundle", "--transformer", small_path, "--vae", vq, "--out", path]
    assert main([str(a) for a in argv]) == 0
    stored = stored_config(path)["vae"]
    assert stored["pool"] == 2 and stored["image_size"] == 64
    assert "pool" not in stored_config(small_path)["vae"]  # pool 1 is written as before
    small, bundle = load(small_path), load(path)
    vae = bundle.config.vae
    assert (vae.image_size, vae.factor, vae.grid, bundle.config.transformer.grid) == (64, 16, 4, 4)
    assert bundle.card["vae"] == {"decoder_only": True}
    for name, tensor in small.transformer.state_dict().items():
        assert torch.equal(bundle.transformer.state_dict()[name], tensor), name
    pictures = torch.rand(3, 3, 64, 64)
    assert torch.equal(
        bundle.vae.encode(pictures),
        small.vae.encode(torch.nn.functional.avg_pool2d(pictures, 2)),
    )
    # sampling: candidates at 64 px, ranked by the 32 px reranker on them averaged down
    done = list(complete(bundle, None, (0, 0), "a red circle", SamplingOptions(n=3, seed=2)))[-1]
    assert done.images.shape == (3, 3, 64, 64) and done.scores is not None
    assert done.scores.tolist() == sorted(done.scores.tolist(), reverse=True)

    # dalle complete keeps every pixel outside the rectangle, at the model's size and another
    rng = np.random.default_rng(0)
    for width, height in [(64, 64), (100, 70)]:
        source = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        picture = tmp_path / f"p{width}.png"
        Image.fromarray(source).save(picture)
        out = tmp_path / f"out{width}"
        argv = ["complete", "--bundle", path, "--image", picture, "--from", "2,1"]
        argv += ["--caption", "a red circle", "--n", "2", "--seed", "1", "--out", out, "--quiet"]
        assert main([str(a) for a in argv]) == 0
        x0, y0 = Geometry(width, height, 64, 16).pixel_of((2, 1))
        kept = np.ones((height, width), dtype=bool)
        kept[y0:, x0:] = False
        results = sorted(out.glob("*.png"))
        assert len(results) == 2
        for result in results:
            pixels = np.asarray(Image.open(result).convert("RGB"))
            assert pixels.shape == source.shape
            assert np.array_equal(pixels[kept], source[kept])

    # dalle eval measures it at 64 px: reconstruction, captions, completions
    report = tmp_path / "eval.json"
    argv = ["eval", "--bundle", path, "--count", "1", "--samples", "2", "--recon-count", "2"]
    argv += ["--json", report, "--quiet", "--precision", "fp32"]
    assert main([str(a) for a in argv]) == 0
    seen = json.loads(report.read_text())["seen"]
    assert seen["reconstruction"]["images"] == 2
    assert seen["completion"]["kept_region_identical"] == 1.0


def test_dalle_bundle_vae_refuses_a_vq_tokenizer_whose_codes_differ(tmp_path, capsys):
    from model.bundle.tokenizer_files import load_vq

    small_path, vq = pool2_files(tmp_path)
    big, _ = load_vq(vq)
    with torch.no_grad():
        big.quantize.embedding.weight[0] += 1  # another codebook: other tokens
    moved = tmp_path / "moved.safetensors"
    save_vq(big, moved, {})
    torch.manual_seed(0)
    wider = tmp_path / "wider.safetensors"
    save_vq(VQVAE(VQConfig(**{**TINY_VQ.__dict__, "width": 16})), wider, {})
    out = tmp_path / "o.dalle.safetensors"
    for bad, fragment in [
        (moved, "its encoder or codebook differs from the bundle's (tokens would change)"),
        (wider, "its VQ tokenizer's width would change the encoder or codebook"),
    ]:
        capsys.readouterr()
        argv = ["bundle", "--transformer", small_path, "--vae", bad, "--out", out]
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and fragment in err and str(bad) in err
        assert not out.exists()


def test_a_reranker_scores_a_larger_picture_as_that_picture_averaged_down():
    from model.config import RerankerConfig
    from model.networks.rerank import Reranker

    torch.manual_seed(0)
    config = RerankerConfig(text_vocab=40, text_len=6, image_size=32, dim=16, text_layers=1,
                            heads=2, image_width=8)  # fmt: skip
    reranker = Reranker(config).eval()
    pictures, text = torch.rand(2, 3, 64, 64), torch.randint(0, 40, (2, 6))
    pooled = torch.nn.functional.avg_pool2d(pictures, 2)
    assert torch.equal(reranker.score(pictures, text), reranker.score(pooled, text))
    with pytest.raises(ValueError, match=r"reads 32 px pictures .* got \(48, 48\)"):
        reranker.score(torch.rand(1, 3, 48, 48), text[:1])
