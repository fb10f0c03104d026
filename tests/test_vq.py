"""The VQ tokenizer (model/networks/vq.py) and its training stage: shapes, hard codes from encoder
to decoder, the EMA codebook and dead-code restarts, exact resume, hostile files, `dalle train
vq`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import cli
from model.bundle.tokenizer_files import load_vq, save_vq
from model.config import PRESETS, VQConfig
from model.data.scenes import write_scenes
from model.networks.vq import VQVAE, pooled_from, token_part_problem
from model.training.train import train_vq
from model.training.trainer import TrainConfig, read_metrics
from tests.helpers import edit_stored_config

TINY_VQ = VQConfig(**PRESETS["tiny"]["vq"])  # 32 px, patch 4: an 8x8 grid of 64 codes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, 24, seed=1, size=32, workers=1)
    return folder


@pytest.fixture(scope="module")
def images(scenes):
    from model.data.folder import CaptionFolder

    dataset = CaptionFolder(scenes, TINY_VQ.image_size, augment=False)
    return torch.stack([dataset[i][0] for i in range(16)])  # (16, 3, 32, 32)


def tiny_vq(seed: int = 0, **changes) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(VQConfig(**{**PRESETS["tiny"]["vq"], **changes}))


def tiny_train_config(**overrides) -> TrainConfig:
    values = dict(
        steps=6, batch_size=4, lr=2e-3, warmup=2, checkpoint_every=3, log_every=1, ema=0.9
    )
    values.update(seed=5, device="cpu", **overrides)
    return TrainConfig(**values)


# -- the module ---------------------------------------------------------------------------------


def test_shapes_and_the_dvae_api(images):
    vq = tiny_vq().eval()
    assert (vq.image_size, vq.factor, vq.grid, vq.vocab_size) == (32, 4, 8, 64)
    assert (vq.config.grid, vq.config.factor, vq.config.vocab_size) == (8, 4, 64)
    codes = vq.encode(images[:3])
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    decoded = vq.decode(codes)
    assert decoded.shape == (3, 3, 32, 32)
    assert 0 <= float(decoded.min()) and float(decoded.max()) <= 1
    # taming's names, so that a VQGAN's state dict can be loaded by name later
    names = vq.state_dict().keys()
    for name in (
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "quant_conv.weight",
        "quantize.embedding.weight",
        "quantize.embedding.cluster_size",
        "quantize.embedding.embed_avg",
        "post_quant_conv.weight",
        "decoder.up.0.block.0.conv2.weight",
        "decoder.conv_out.weight",
    ):
        assert name in names
    # the patch factor is a config field: 8x8 patches give a 4x4 grid
    assert tiny_vq(patch=8).eval().encode(images[:1]).shape == (1, 4, 4)


def test_bad_inputs_are_refused_with_what_was_expected(images):
    vq = tiny_vq().eval()
    with pytest.raises(ValueError, match="multiples of the patch 4"):
        vq.encode(images[:, :, :30, :30])
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        vq.encode(images[:, :1])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        vq.decode(torch.full((1, 8, 8), 64))
    with pytest.raises(ValueError, match="integer tokens"):
        vq.decode(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="multiple of patch"):
        VQVAE(VQConfig(image_size=30, patch=4))


def test_training_reconstructs_through_exactly_the_codes_encode_gives(images):
    # what the decoder learns from (the straight-through quantised vectors) is the codebook
    # entry of encode()'s code at every cell, and its image is decode() of those codes
    vq = tiny_vq().eval()
    z = vq.latent(images)
    quantised, _, codes = vq.quantize(z)
    assert torch.equal(codes, vq.encode(images))
    assert torch.allclose(quantised, vq.quantize.lookup(codes), atol=1e-6)
    trained_on = ((vq.pixels(quantised) + 1) / 2).clamp(0, 1)
    assert torch.allclose(trained_on, vq.decode(codes), atol=1e-5)  # z + (e - z) is e to rounding
    # decoding is deterministic, and every code vector is its own nearest code
    assert torch.equal(vq.decode(codes), vq.decode(codes))
    table = vq.quantize.embedding.weight.t().reshape(1, -1, 8, 8)  # the 64 codes as a grid
    assert torch.equal(vq.quantize.codes(table).flatten(), torch.arange(64))
    # so re-encoding a decoded grid gives codes of the same grid, each a valid id
    again = vq.encode(vq.decode(codes))
    assert again.shape == codes.shape and int(again.max()) < 64


def test_ema_moves_each_used_code_to_the_mean_of_its_encoder_outputs(images):
    vq = tiny_vq(decay=0.0).train()  # decay 0: the codebook is this batch's averages alone
    with torch.no_grad():
        z = vq.latent(images)
        _, _, codes = vq.quantize(z)
    flat, ids = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), codes.flatten()
    counts = torch.bincount(ids, minlength=64).float()
    assert torch.equal(vq.quantize.embedding.cluster_size, counts)
    assert torch.equal(vq.quantize.usage, counts)
    for code in ids.unique():
        mean = flat[ids == code].mean(dim=0)
        assert torch.allclose(vq.quantize.embedding.weight[code], mean, atol=1e-4)

    vq = tiny_vq(decay=0.99).train()  # the recipe's decay: 1% of the batch's counts per step
    with torch.no_grad():
        vq.quantize(vq.latent(images))
    assert torch.allclose(vq.quantize.embedding.cluster_size, 0.01 * counts, atol=1e-6)
    vq.eval()
    with torch.no_grad():
        vq.quantize(vq.latent(images))  # eval mode: no update
    assert torch.allclose(vq.quantize.embedding.cluster_size, 0.01 * counts, atol=1e-6)


def test_dead_codes_come_back_and_training_keeps_them_alive(images):
    vq = tiny_vq().train()
    emb = vq.quantize.embedding
    with torch.no_grad():  # every code but 0 far from any encoder output: all of them dead
        emb.weight[1:] = emb.embed_avg[1:] = 1e3
    with torch.no_grad():
        vq.loss(images)
    assert int((vq.quantize.usage > 0).sum()) == 1
    assert len(vq.encode(images).unique()) == 1

    with torch.no_grad():
        z = vq.latent(images)
        vq.loss(images, restart=True)
    assert int(vq.quantize.usage.sum()) == 0  # counting starts again
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    for code in range(1, 64):  # each dead code now sits on one of this batch's encoder outputs
        assert (flat - emb.weight[code]).abs().amax(dim=1).min() < 1e-6
    assert len(vq.encode(images).unique()) >= 32

    optimizer = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=2e-3)
    first = None
    for step in range(40):
        vq.train()
        batch = images[(step * 4) % 16 : (step * 4) % 16 + 4]
        metrics = vq.loss(batch, restart=step % 5 == 0)
        optimizer.zero_grad()
        metrics["loss"].backward()
        optimizer.step()
        first = first if first is not None else float(metrics["mse"])
    vq.eval()
    assert len(vq.encode(images).unique()) >= 32  # still in use after 40 steps of EMA updates
    after = float(((vq.decode(vq.encode(images)) - images) ** 2).mean())
    assert after < first / 2  # and the reconstruction learned something meanwhile


# -- the training stage -------------------------------------------------------------------------


class Stop(Exception):
    pass


def test_resume_equals_uninterrupted_run(scenes, tmp_path):
    # restarts every 2 steps, so the codes to restart at step 4 depend on usage counted before
    # the checkpoint at step 3: the usage buffer must travel with the checkpoint
    config = VQConfig(**{**PRESETS["tiny"]["vq"], "restart_every": 2})
    straight = tmp_path / "straight"
    train_vq(scenes, straight, config, tiny_train_config())

    broken = tmp_path / "broken"

    def stop_at_first_checkpoint(trainer, path):
        raise Stop

    with pytest.raises(Stop):
        train_vq(
            scenes,
            broken,
            config,
            tiny_train_config(),
            callbacks=[("on_checkpoint", stop_at_first_checkpoint)],
        )
    assert torch.load(broken / "checkpoint.pt", weights_only=True)["step"] == 3
    train_vq(scenes, broken, config, tiny_train_config(), resume=True)

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(broken / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert [m["step"] for m in read_metrics(broken)] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in read_metrics(broken)] == [m["loss"] for m in read_metrics(straight)]
    for x, y in zip(
        load_vq(straight / "vq.safetensors")[0].state_dict().values(),
        load_vq(broken / "vq.safetensors")[0].state_dict().values(),
        strict=True,
    ):
        assert torch.equal(x, y)


def saved_vq(tmp_path, **config_changes) -> Path:
    """A tiny VQ file whose stored config (not its tensors) is edited by ``config_changes``."""
    path = tmp_path / "vq.safetensors"
    save_vq(tiny_vq(), path, {"steps": 1})
    if config_changes:
        edit_stored_config(path, **config_changes)
    return path


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"width": 1_000_000}, ["width", "1000000", "at most"]),
        ({"patch": "4"}, ["patch", "integer"]),
        ({"vocab_size": True}, ["vocab_size", "integer"]),
        ({"decay": float("nan")}, ["decay", "number"]),
        ({"colour": 1}, ["unknown VQConfig fields", "colour"]),
        ({"width": 32}, ["wrong shape"]),  # within bounds: shapes compared on the meta device
        ({"image_size": 30}, ["multiple of patch"]),
    ],
)
def test_a_hostile_vq_file_is_refused_in_one_line(tmp_path, changes, fragments):
    path = saved_vq(tmp_path, **changes)
    with pytest.raises(ValueError) as caught:
        load_vq(path)
    message = str(caught.value)
    assert message.startswith(f"VQ tokenizer {path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_corrupt_and_mistaken_files_are_refused_in_one_line(tmp_path):
    from model.bundle.tokenizer_files import load_image_tokenizer, load_vae

    path = saved_vq(tmp_path)
    vq, card = load_image_tokenizer(path)  # either kind, by its format
    assert isinstance(vq, VQVAE) and card == {"steps": 1}
    with pytest.raises(
        ValueError, match="format 'dalle-studio-vq/1', expected 'dalle-studio-vae/1'"
    ):
        load_vae(path)  # a VQ file is not a dVAE
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    for bad in (truncated, garbage):
        with pytest.raises(ValueError) as caught:
            load_vq(bad)
        assert str(bad) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(FileNotFoundError, match="no such VQ tokenizer file"):
        load_vq(tmp_path / "missing.safetensors")


def test_cli_trains_a_vq_tokenizer_end_to_end_and_resumes(tmp_path, capsys):
    data, out = tmp_path / "scenes", tmp_path / "run"
    scenes_argv = ["data", "scenes", "--count", "64", "--size", "64", "--out", str(data)]
    assert cli.main([*scenes_argv, "--workers", "1", "--quiet"]) == 0
    argv = ["train", "vq", "--data", str(data), "--out", str(out), "--preset", "tiny"]
    argv += ["--set", "image_size=64", "--batch-size", "8", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    assert cli.main([*argv, "--steps", "12", "--checkpoint-every", "6"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "vq.safetensors")]
    assert cli.main([*argv, "--steps", "20", "--resume"]) == 0
    capsys.readouterr()

    vq, card = load_vq(out / "vq.safetensors")
    assert (vq.image_size, vq.grid, vq.vocab_size) == (64, 16, 64)
    assert card["stage"] == "vq" and card["steps"] == 20
    assert card["data"] == {"folder": str(data), "images": 64}
    assert card["config"]["image_size"] == 64 and card["config"]["restart_every"] == 25
    assert card["train"]["lr"] == 2e-3  # the tiny preset's, over VQ_TRAIN's defaults
    assert card["device"].startswith("cpu") and card["wall_seconds_total"] > 0
    assert card["final_metrics"]["step"] == 20 and "psnr" in card["final_metrics"]
    assert [r["step"] for r in read_metrics(out)] == [10, 12, 20]  # 12: the first run's end

    assert cli.main([*argv, "--init", str(out / "vq.safetensors")]) == 2
    assert "--init PATH and --decoder-only together" in capsys.readouterr().err


def test_dvae_ceiling_benchmark_reads_a_vq_file(tmp_path):
    path = saved_vq(tmp_path)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "dvae_ceiling.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), "--count", "2", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vq.safetensors" in result.stdout and "/64" in result.stdout


# -- pool: issue 17's 128 px decoder on the 64 px codes ---------------------------------------


@pytest.fixture(scope="module")
def scenes64(tmp_path_factory):
    """The scenes of ``scenes`` drawn at 64 px: targets for a pool-2 decoder of the 32 px tiny."""
    folder = tmp_path_factory.mktemp("scenes64")
    write_scenes(folder, 24, seed=1, size=64, workers=1)
    return folder


def pool2(vq: VQVAE) -> VQConfig:
    return VQConfig(**{**vq.config.__dict__, "pool": 2, "image_size": 2 * vq.config.image_size})


def test_pool_reads_and_writes_the_larger_picture_on_the_same_grid(images):
    vq = tiny_vq(pool=2, image_size=64).eval()
    assert (vq.image_size, vq.factor, vq.grid) == (64, 8, 8)
    big = F.interpolate(images[:3], scale_factor=2, mode="bilinear")  # (3, 3, 64, 64)
    codes = vq.encode(big)
    assert codes.shape == (3, 8, 8)
    assert vq.decode(codes).shape == (3, 3, 64, 64)
    assert vq.decoder.conv_out.out_channels == 3 * 8 * 8  # PixelShuffle(patch * pool)
    assert tiny_vq().decoder.conv_out.out_channels == 3 * 4 * 4
    with pytest.raises(ValueError, match=r"multiples of patch \* pool 8"):
        vq.encode(big[:, :, :60, :60])


def test_pooled_codes_are_the_small_encoders_codes_of_the_pooled_picture(images):
    small = tiny_vq(seed=3).eval()
    big = pooled_from(small, pool2(small)).eval()
    pictures = torch.rand(6, 3, 64, 64)
    assert torch.equal(big.encode(pictures), small.encode(F.avg_pool2d(pictures, 2)))
    # and the new decoder starts as the old one's picture upscaled nearest-neighbour
    codes = small.encode(images[:4])
    upscaled = F.interpolate(small.decode(codes), scale_factor=2, mode="nearest")
    assert torch.equal(big.decode(codes), upscaled)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"pool": 0}, "VQ pool must be at least 1, got 0"),
        ({"pool": -2}, "VQ pool must be at least 1, got -2"),
        ({"pool": 2, "image_size": 36}, "VQ image_size 36 must be a positive multiple of patch"),
        ({"pool": 2, "image_size": 36}, "patch * pool = 4 * 2"),
        ({"pool": 3, "image_size": 96 + 4}, "multiple of patch * pool = 4 * 3"),
        ({"patch": 0}, "VQ patch must be at least 1, got 0"),
    ],
)
def test_bad_pool_values_are_refused_in_one_line(changes, message):
    with pytest.raises(ValueError) as caught:
        tiny_vq(**changes)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_pool_that_would_change_the_tokens_is_refused():
    small = tiny_vq()
    for changes, fragment in [
        ({"pool": 2, "image_size": 32}, "image_size 32 / pool 2 must equal the tokenizer's 32 / 1"),
        ({"pool": 2, "image_size": 64, "width": 8}, "width would change the encoder"),
    ]:
        config = VQConfig(**{**small.config.__dict__, **changes})
        with pytest.raises(ValueError, match=fragment):
            pooled_from(small, config)
    four = VQConfig(**{**small.config.__dict__, "pool": 4, "image_size": 128})
    assert token_part_problem(pool2(small), four) is None  # 64 / 2 == 128 / 4
    assert token_part_problem(pool2(small), small.config) is None  # back to pool 1
    three = VQConfig(**{**small.config.__dict__, "pool": 3, "image_size": 96})
    with pytest.raises(ValueError, match="not a multiple of the tokenizer's pool 2"):
        pooled_from(VQVAE(pool2(small)), three)  # grown from pool 2 to 3: no whole ratio


def decoder_only(scenes64, out, init, **kwargs):
    return train_vq(
        scenes64,
        out,
        None,
        tiny_train_config(),
        init=init,
        decoder_only=True,
        decoder_sets={"pool": 2, "image_size": 64},
        **kwargs,
    )


def test_decoder_only_training_keeps_encoder_and_codebook_bit_identical(scenes64, tmp_path):
    init = saved_vq(tmp_path)
    small, _ = load_vq(init)
    path = decoder_only(scenes64, tmp_path / "run", init)
    big, card = load_vq(path)
    assert (big.config.pool, big.image_size, big.grid) == (2, 64, 8)
    assert card["decoder_only"] and card["init"]["path"] == str(init)
    before, after = small.state_dict(), big.state_dict()
    frozen = [k for k in before if not k.startswith(("decoder.", "post_quant_conv."))]
    assert any(k.startswith("encoder.") for k in frozen) and "quantize.embedding.weight" in frozen
    for name in frozen:  # the encoder, quant_conv and every codebook tensor
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["post_quant_conv.weight"], after["post_quant_conv.weight"])
    pictures = torch.rand(4, 3, 64, 64)
    assert torch.equal(big.encode(pictures), small.encode(F.avg_pool2d(pictures, 2)))
    assert read_metrics(tmp_path / "run")[-1]["psnr"] > 0


def test_decoder_only_resume_equals_uninterrupted_run(scenes64, tmp_path):
    init = saved_vq(tmp_path)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    decoder_only(scenes64, straight, init)

    def stop_at_first_checkpoint(trainer, path):
        raise Stop

    with pytest.raises(Stop):
        decoder_only(
            scenes64, broken, init, callbacks=[("on_checkpoint", stop_at_first_checkpoint)]
        )
    assert torch.load(broken / "checkpoint.pt", weights_only=True)["step"] == 3
    decoder_only(scenes64, broken, init, resume=True)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(broken / "checkpoint.pt", weights_only=True)
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert [m["loss"] for m in read_metrics(broken)] == [m["loss"] for m in read_metrics(straight)]
    for x, y in zip(
        load_vq(straight / "vq.safetensors")[0].state_dict().values(),
        load_vq(broken / "vq.safetensors")[0].state_dict().values(),
        strict=True,
    ):
        assert torch.equal(x, y)


def test_cli_trains_a_pool_2_decoder_and_refuses_what_would_change_tokens(
    scenes64, tmp_path, capsys
):
    init = saved_vq(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "vq", "--data", str(scenes64), "--out", str(out), "--preset", "tiny"]
    argv += ["--init", str(init), "--decoder-only", "--set", "pool=2", "--set", "image_size=64"]
    argv += ["--steps", "4", "--batch-size", "4", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.split() == [str(out / "vq.safetensors")]
    assert load_vq(out / "vq.safetensors")[0].config.pool == 2
    assert cli.main([*argv, "--steps", "6", "--resume"]) == 0
    assert [r["step"] for r in read_metrics(out)] == [4, 6]

    def refused(*args) -> str:
        capsys.readouterr()
        assert cli.main(list(args)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    base = [a for a in argv if a not in ("--decoder-only",)]
    assert "--init PATH and --decoder-only together" in refused(*base)
    err = refused(*argv, "--set", "width=32")
    assert "--set width" in err and "only edge_weight, image_size, pool can change" in err
    swapped = [a if a != "image_size=64" else "image_size=96" for a in argv]
    assert "image_size 96 / pool 2 must equal the tokenizer's 32 / 1" in refused(*swapped)
    assert "VQ pool must be at least 1, got 0" in refused(*argv, "--set", "pool=0")


def test_dvae_ceiling_benchmark_shows_a_smaller_tokenizer_upscaled_beside_a_pooled_one(tmp_path):
    small = saved_vq(tmp_path)
    vq, _ = load_vq(small)
    big = tmp_path / "vq64.safetensors"
    save_vq(pooled_from(vq, pool2(vq)), big, {})
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "dvae_ceiling.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), "--count", "2", "--size", "64", str(small), str(big)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()[1:]]
    names = {"vq.safetensors (x2 nearest)", "vq.safetensors (x2 bilinear)", "vq64.safetensors"}
    assert {cells[0] for cells in table} == names
    # the pooled tokenizer starts as the small one upscaled nearest: the same PSNR on each split
    psnr = {(cells[0], cells[1]): cells[2] for cells in table}
    for split in ("seen", "heldout"):
        assert psnr[("vq64.safetensors", split)] == psnr[("vq.safetensors (x2 nearest)", split)]
