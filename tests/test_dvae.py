"""dVAE: shapes, the released parameter layout, weight import, pixel mapping, loss and schedules."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.config import DVAEConfig
from model.networks.dvae import (
    DVAE,
    PAPER_BETA,
    Conv2d,
    Decoder,
    Encoder,
    beta_at,
    config_from_openai,
    logit_laplace_nll,
    map_pixels,
    tau_at,
    unmap_pixels,
)

TINY = DVAEConfig(
    image_size=32, channels=3, n_groups=3, n_hid=8, n_blk_per_group=1, vocab_size=32, n_init=16
)
# the released dVAE's hyperparameters (dall_e/encoder.py, decoder.py defaults)
RELEASED = DVAEConfig(
    image_size=256,
    channels=3,
    n_groups=4,
    n_hid=256,
    n_blk_per_group=2,
    vocab_size=8192,
    n_init=128,
)


def tiny(**changes) -> DVAEConfig:
    return dataclasses.replace(TINY, **changes)


def make_model(config: DVAEConfig = TINY, seed: int = 0) -> DVAE:
    torch.manual_seed(seed)
    return DVAE(config)


def simple_images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Flat-coloured backgrounds, each with a differently coloured and placed square."""
    g = torch.Generator().manual_seed(1)
    images = torch.empty(n, 3, size, size)
    for i in range(n):
        images[i] = torch.rand(3, 1, 1, generator=g)
        top, left = (4 + 5 * i) % (size // 2), (8 + 3 * i) % (size // 2)
        images[i, :, top : top + size // 3, left : left + size // 3] = torch.rand(
            3, 1, 1, generator=g
        )
    return images


@pytest.fixture(scope="module")
def released_modules() -> tuple[Encoder, Decoder]:
    # the paper-size modules on the meta device: names and shapes without allocating 100M floats
    with torch.device("meta"):
        return Encoder(RELEASED), Decoder(RELEASED)


# -----------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("n_groups", [1, 2, 3, 4])
def test_encode_decode_shapes(n_groups):
    config = tiny(n_groups=n_groups)
    model = make_model(config)
    images = torch.rand(2, 3, 32, 32)
    grid = 32 // 2 ** (n_groups - 1)
    assert config.grid == grid

    logits = model.logits(images)
    assert logits.shape == (2, config.vocab_size, grid, grid)
    tokens = model.encode(images)
    assert tokens.shape == (2, grid, grid)
    assert tokens.dtype == torch.long
    decoded = model.decode(tokens)
    assert decoded.shape == (2, 3, 32, 32)
    assert decoded.dtype == torch.float32


def test_block_structure_follows_release():
    model = make_model(tiny(n_blk_per_group=2))
    n_layers = TINY.n_groups * 2
    enc_block = model.encoder.blocks.group_2.block_1
    dec_block = model.decoder.blocks.group_3.block_2
    assert enc_block.post_gain == dec_block.post_gain == 1 / n_layers**2

    def kernels(block):
        return [block.res_path.get_submodule(f"conv_{i}").kernel for i in range(1, 5)]

    assert kernels(enc_block) == [3, 3, 3, 1]
    assert kernels(dec_block) == [1, 3, 3, 3]
    names = [name for name, _ in enc_block.res_path.named_children()]
    assert names == [f"{kind}_{i}" for i in range(1, 5) for kind in ("relu", "conv")]
    # hidden width is a quarter of the block's output width (group 2 is 2 * n_hid wide)
    assert enc_block.res_path.conv_1.w.shape == (4, 8, 3, 3)
    # id_path is a 1x1 conv only where the width changes
    assert isinstance(enc_block.id_path, Conv2d)
    assert isinstance(model.encoder.blocks.group_2.block_2.id_path, nn.Identity)
    assert isinstance(model.encoder.blocks.group_1.block_1.id_path, nn.Identity)
    # pooling / upsampling in all groups but the last
    assert isinstance(model.encoder.blocks.group_1.pool, nn.MaxPool2d)
    assert not hasattr(model.encoder.blocks.group_3, "pool")
    assert isinstance(model.decoder.blocks.group_2.upsample, nn.Upsample)
    assert not hasattr(model.decoder.blocks.group_3, "upsample")


def test_bad_config_is_refused_with_the_value():
    with pytest.raises(ValueError, match="n_hid"):
        DVAE(tiny(n_hid=6))
    with pytest.raises(ValueError, match="image_size 34"):
        DVAE(tiny(image_size=34))
    with pytest.raises(ValueError, match="dec_n_hid must be .* got 6"):
        DVAE(tiny(dec_n_hid=6))
    with pytest.raises(ValueError, match="dec_n_blk_per_group .* got -1"):
        DVAE(tiny(dec_n_blk_per_group=-1))


# -----------------------------------------------------------------------------------------------
# the released layout


def released_keys(part: str, n_blk: int = 2) -> set[str]:
    """Parameter names of the released ``dall_e`` Encoder/Decoder (4 groups), from their code:
    input conv, groups 1..4 of blocks with res_path.conv_1..4, an id_path where the block changes
    width (encoder: first block of groups 2-4; decoder: first block of every group, since n_init
    differs from 8 * n_hid), output.conv."""
    id_groups = (2, 3, 4) if part == "encoder" else (1, 2, 3, 4)
    keys = {"blocks.input.w", "blocks.input.b", "blocks.output.conv.w", "blocks.output.conv.b"}
    for g in range(1, 5):
        for k in range(1, n_blk + 1):
            block = f"blocks.group_{g}.block_{k}"
            keys |= {f"{block}.res_path.conv_{i}.{p}" for i in range(1, 5) for p in "wb"}
            if k == 1 and g in id_groups:
                keys |= {f"{block}.id_path.w", f"{block}.id_path.b"}
    return keys


def test_state_dict_names_equal_released(released_modules):
    encoder, decoder = released_modules
    enc_sd, dec_sd = encoder.state_dict(), decoder.state_dict()
    assert set(enc_sd) == released_keys("encoder")
    assert set(dec_sd) == released_keys("decoder")
    assert len(enc_sd) == 2 + 4 * 2 * 8 + 3 * 2 + 2 == 74
    assert len(dec_sd) == 2 + 4 * 2 * 8 + 4 * 2 + 2 == 76


def test_state_dict_shapes_equal_released(released_modules):
    encoder, decoder = released_modules
    enc_sd, dec_sd = encoder.state_dict(), decoder.state_dict()
    # shapes of the released weights (encoder.pkl / decoder.pkl)
    expected_enc = {
        "blocks.input.w": (256, 3, 7, 7),
        "blocks.group_1.block_1.res_path.conv_1.w": (64, 256, 3, 3),
        "blocks.group_1.block_1.res_path.conv_4.w": (256, 64, 1, 1),
        "blocks.group_2.block_1.id_path.w": (512, 256, 1, 1),
        "blocks.group_2.block_1.res_path.conv_1.w": (128, 256, 3, 3),
        "blocks.group_4.block_2.res_path.conv_3.w": (512, 512, 3, 3),
        "blocks.group_4.block_2.res_path.conv_4.b": (2048,),
        "blocks.output.conv.w": (8192, 2048, 1, 1),
    }
    expected_dec = {
        "blocks.input.w": (128, 8192, 1, 1),
        "blocks.group_1.block_1.id_path.w": (2048, 128, 1, 1),
        "blocks.group_1.block_1.res_path.conv_1.w": (512, 128, 1, 1),
        "blocks.group_1.block_1.res_path.conv_4.w": (2048, 512, 3, 3),
        "blocks.group_4.block_1.id_path.w": (256, 512, 1, 1),
        "blocks.group_4.block_2.res_path.conv_2.w": (64, 64, 3, 3),
        "blocks.output.conv.w": (6, 256, 1, 1),
        "blocks.output.conv.b": (6,),
    }
    for sd, expected in ((enc_sd, expected_enc), (dec_sd, expected_dec)):
        for key, shape in expected.items():
            assert tuple(sd[key].shape) == shape, key


def test_config_from_openai_reads_the_released_config(released_modules):
    encoder, decoder = released_modules
    assert config_from_openai(encoder.state_dict(), decoder.state_dict()) == RELEASED


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        tiny(n_groups=2, n_blk_per_group=2, vocab_size=48, channels=1),
        tiny(n_groups=4, n_init=64),  # n_init equals the widest group: no id_path there
    ],
)
def test_config_from_openai_round_trips(config):
    model = make_model(config)
    enc_sd, dec_sd = model.encoder.state_dict(), model.decoder.state_dict()
    assert config_from_openai(enc_sd, dec_sd, image_size=config.image_size) == config


def test_config_from_openai_refuses_mismatched_pair():
    enc_sd = make_model(TINY).encoder.state_dict()
    dec_sd = make_model(tiny(vocab_size=64)).decoder.state_dict()
    with pytest.raises(ValueError, match="64 codes.*32"):
        config_from_openai(enc_sd, dec_sd)
    with pytest.raises(ValueError, match="released naming"):
        config_from_openai({"weight": torch.zeros(1)}, dec_sd)


def test_load_openai_reproduces_outputs():
    source = make_model(tiny(n_blk_per_group=2), seed=3)
    loaded = DVAE.load_openai(
        source.encoder.state_dict(), source.decoder.state_dict(), image_size=32
    )
    assert loaded.config == source.config
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), source.logits(images))
    tokens = source.encode(images)
    assert torch.equal(loaded.decode(tokens), source.decode(tokens))


def test_load_openai_refuses_missing_parameters():
    source = make_model(TINY)
    enc_sd = source.encoder.state_dict()
    del enc_sd["blocks.group_2.block_1.res_path.conv_2.b"]
    with pytest.raises(RuntimeError, match="conv_2.b"):
        DVAE.load_openai(enc_sd, source.decoder.state_dict(), image_size=32)


# -----------------------------------------------------------------------------------------------
# pixels and likelihood


def test_map_unmap_round_trip():
    x = torch.rand(2, 3, 8, 8)
    mapped = map_pixels(x, 0.1)
    assert mapped.min() >= 0.1 and mapped.max() <= 0.9
    assert torch.allclose(unmap_pixels(mapped, 0.1), x, atol=1e-6)
    assert torch.allclose(map_pixels(torch.tensor([0.0, 1.0]), 0.1), torch.tensor([0.1, 0.9]))
    # values outside the mapped interval are clamped back into [0, 1]
    outside = torch.tensor([0.0, 0.05, 0.95, 1.0])
    assert torch.equal(unmap_pixels(outside, 0.1), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_logit_laplace_density_integrates_to_one():
    y = torch.linspace(0, 1, 400_001, dtype=torch.float64)[1:-1]
    for mu, ln_b in [(0.0, 0.0), (1.5, math.log(0.3)), (-2.0, math.log(0.8))]:
        density = torch.exp(
            -logit_laplace_nll(y, torch.tensor(mu, dtype=torch.float64), torch.tensor(ln_b))
        )
        assert torch.trapezoid(density, y).item() == pytest.approx(1.0, abs=2e-3)


def test_logit_laplace_nll_is_smallest_at_the_mode():
    y = torch.full((5,), 0.7)
    mu = torch.logit(torch.tensor([0.3, 0.6, 0.7, 0.8, 0.9]))
    nll = logit_laplace_nll(y, mu, torch.zeros(5))
    assert nll.argmin().item() == 2


# -----------------------------------------------------------------------------------------------
# encode / decode behaviour


def test_encode_is_deterministic_argmax():
    model = make_model()
    images = torch.rand(3, 3, 32, 32)
    first, second = model.encode(images), model.encode(images)
    assert torch.equal(first, second)
    with torch.no_grad():
        assert torch.equal(first, model.logits(images).argmax(dim=1))


def test_decode_range_and_one_hot_equivalence():
    model = make_model()
    # push mu far out in both directions so that sigmoid saturates beyond (eps, 1 - eps)
    with torch.no_grad():
        model.decoder.blocks.output.conv.b[:3] = torch.tensor([50.0, -50.0, 0.0])
    tokens = torch.randint(0, TINY.vocab_size, (2, TINY.grid, TINY.grid))
    images = model.decode(tokens)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.all(images[:, 0] == 1) and torch.all(images[:, 1] == 0)
    # decode's lookup path equals the decoder run on the dense one-hot, as the release does it
    one_hot = F.one_hot(tokens, TINY.vocab_size).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        mu = model.decoder(one_hot)[:, :3]
    assert torch.allclose(images, unmap_pixels(torch.sigmoid(mu), 0.1), atol=1e-6)


def test_bad_inputs_are_refused():
    model = make_model()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of the downsampling factor 4"):
        model.encode(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.decode(torch.full((1, 8, 8), 32))
    with pytest.raises(ValueError, match="integer tokens"):
        model.decode(torch.zeros(1, 8, 8))


# -----------------------------------------------------------------------------------------------
# loss and training


def test_loss_terms_are_finite_and_differentiable():
    model = make_model()
    out = model.loss(simple_images(2), tau=1.0, beta=2.0)
    assert set(out) == {"loss", "nll", "kl", "usage", "perplexity", "mse"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert 0 <= out["kl"].item() <= math.log(TINY.vocab_size) + 1e-5
    # the paper's normalisation: KL weight beta * positions / pixel values (8*8 / (3*32*32))
    expected = out["nll"] + 2.0 * (8 * 8) / (3 * 32 * 32) * out["kl"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert not out["mse"].requires_grad
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.blocks.input.w.grad.abs().sum() > 0  # gradient reaches the encoder


def test_kl_is_zero_for_uniform_codes():
    model = make_model()
    with torch.no_grad():
        model.encoder.blocks.output.conv.w.zero_()
        model.encoder.blocks.output.conv.b.zero_()
    out = model.loss(simple_images(2), tau=1.0, beta=1.0)
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-6)


def test_code_usage_term_measures_the_batch_average():
    model = make_model()
    images = simple_images(2)
    with torch.no_grad():
        # every position certain of code 3: the batch uses one code, the most skewed average
        model.encoder.blocks.output.conv.w.zero_()
        model.encoder.blocks.output.conv.b.zero_()
        model.encoder.blocks.output.conv.b[3] = 50.0
    collapsed = model.loss(images, tau=1.0, beta=0.0, usage_weight=0.5)
    assert collapsed["usage"].item() == pytest.approx(math.log(TINY.vocab_size), abs=1e-4)
    assert collapsed["perplexity"].item() == pytest.approx(1.0, abs=1e-3)
    assert collapsed["loss"].item() == pytest.approx(
        (collapsed["nll"] + 0.5 * collapsed["usage"]).item(), rel=1e-6
    )
    with torch.no_grad():
        model.encoder.blocks.output.conv.b.zero_()
    uniform = model.loss(images, tau=1.0, beta=0.0, usage_weight=0.5)
    assert uniform["usage"].item() == pytest.approx(0.0, abs=1e-5)
    assert uniform["perplexity"].item() == pytest.approx(TINY.vocab_size, rel=1e-4)


def test_adam_steps_reduce_the_loss():
    model = make_model(seed=0)
    images = simple_images(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, mses = [], []
    for _ in range(60):
        out = model.loss(images, tau=1.0, beta=0.1)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
        mses.append(out["mse"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.2, (first, last)
    assert sum(mses[-5:]) < 0.8 * sum(mses[:5]), mses  # the reconstruction itself improves


# -----------------------------------------------------------------------------------------------
# schedules


def test_tau_schedule():
    total = 1000
    assert tau_at(0, total) == pytest.approx(1.0)
    assert tau_at(total, total) == pytest.approx(1 / 16)
    assert tau_at(5 * total, total) == pytest.approx(1 / 16)
    assert tau_at(total // 2, total) == pytest.approx((1 + 1 / 16) / 2)
    values = [tau_at(s, total) for s in range(0, total + 1, 10)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))
    assert tau_at(0, 0) == pytest.approx(1 / 16)  # no anneal: straight to the end value


def test_beta_schedule():
    total = 3000
    warmup = 100  # the paper's 5,000 / 150,000 of the tau-anneal length
    assert beta_at(0, total) == 0
    assert beta_at(warmup, total) == pytest.approx(PAPER_BETA)
    assert beta_at(total, total) == pytest.approx(6.6)
    assert 0 < beta_at(warmup // 2, total) < 6.6
    values = [beta_at(s, total) for s in range(0, total + 1, 5)]
    assert all(a <= b for a, b in zip(values[:-1], values[1:], strict=True))
    assert beta_at(10, total, end=2.0, warmup_fraction=0.5) < beta_at(10, total, end=2.0)
    assert beta_at(0, total, warmup_fraction=0) == pytest.approx(6.6)
