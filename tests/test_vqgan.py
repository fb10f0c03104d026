"""The taming-layout VQGAN (model/networks/vqgan.py) and the Flax checkpoint reader
(model/importers/flax_msgpack.py): parity with taming's own Encoder/Decoder/VectorQuantizer and with
min-dalle's detokenizer, the three conversions, dalle-mini-style Flax files written in the real
format, and hostile files."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from model.networks.vqgan import (
    VQGAN,
    VQGANConfig,
    config_from_vqgan_jax,
    flax_path,
    from_flax,
    from_min_dalle,
    from_taming,
    parameter_shapes,
)

# 32 px, three levels (factor 4, an 8x8 grid), attention at the 16 px level and in the middle,
# a width change (nin_shortcut) between levels 1 and 2, code dimension unlike z_channels
TINY = VQGANConfig(
    resolution=32,
    ch=32,
    ch_mult=(1, 1, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    z_channels=32,
    embed_dim=16,
    n_embed=64,
)
TOLERANCE = 1e-5

# dalle-mini/vqgan_imagenet_f16_16384's config.json keys (vqgan-jax's VQGANConfig)
DALLE_MINI_CONFIG_JSON = {
    "attn_resolutions": [16],
    "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4],
    "double_z": False,
    "dropout": 0.0,
    "embed_dim": 256,
    "give_pre_end": False,
    "in_channels": 3,
    "n_embed": 16384,
    "num_res_blocks": 2,
    "out_ch": 3,
    "resamp_with_conv": True,
    "resolution": 256,
    "z_channels": 256,
    "transformers_version": "4.9.0.dev0",
}


def randomise_(module: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, GroupNorm scales and biases included (their init, 1 and 0,
    would hide a swapped pair), so that parity means something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.GroupNorm):
                sub.weight.copy_(1 + 0.3 * torch.randn(sub.weight.shape, generator=generator))
                sub.bias.copy_(0.1 * torch.randn(sub.bias.shape, generator=generator))
            elif isinstance(sub, nn.Conv2d):
                bound = 1 / math.sqrt(sub.weight[0].numel())
                sub.weight.uniform_(-bound, bound, generator=generator)
                sub.bias.copy_(0.1 * torch.randn(sub.bias.shape, generator=generator))
            elif isinstance(sub, nn.Embedding):
                sub.weight.normal_(std=0.2, generator=generator)  # about the latents' scale
    return module


def tiny_vqgan(seed: int = 0, **changes) -> VQGAN:
    return randomise_(VQGAN(dataclasses.replace(TINY, **changes)), seed).eval()


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def one_line_error(excinfo: pytest.ExceptionInfo, *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# -- config -------------------------------------------------------------------------------------


def test_config_defaults_are_dalle_minis_f16_and_round_trip_through_json():
    config = VQGANConfig()
    assert (config.factor, config.grid, config.image_size, config.vocab_size) == (
        16,
        16,
        256,
        16384,
    )
    assert (TINY.factor, TINY.grid, TINY.channels) == (4, 8, 3)
    stored = json.loads(json.dumps(dataclasses.asdict(config)))  # as a bundle stores configs
    assert VQGANConfig(**stored) == config
    assert config_from_vqgan_jax(DALLE_MINI_CONFIG_JSON) == config
    taming = config_from_vqgan_jax(DALLE_MINI_CONFIG_JSON, value_range="-1,1", norm_eps=1e-5)
    assert (taming.value_range, taming.norm_eps) == ("-1,1", 1e-5)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"ch": 48}, ["48", "multiple of 32"]),
        ({"ch_mult": ()}, ["ch_mult"]),
        ({"ch_mult": (1, 0)}, ["ch_mult"]),
        ({"resolution": 250}, ["250", "factor 16"]),
        ({"n_embed": 0}, ["n_embed"]),
        ({"num_res_blocks": 0}, ["num_res_blocks"]),
        ({"value_range": "0,255"}, ["value_range", "0,255"]),
        ({"double_z": True}, ["double_z"]),
        ({"norm_eps": 0.0}, ["norm_eps"]),
        ({"ch": 2**20}, ["ch"]),
        ({"attn_resolutions": (16, -1)}, ["attn_resolutions"]),
    ],
)
def test_config_refuses_bad_values_in_one_line(changes, words):
    with pytest.raises(ValueError) as excinfo:
        VQGANConfig(**changes)
    one_line_error(excinfo, *words)


def test_vqgan_jax_config_with_other_semantics_is_refused():
    for key, value, word in [
        ("out_ch", 1, "out_ch"),
        ("resamp_with_conv", False, "resamp_with_conv"),
        ("give_pre_end", True, "give_pre_end"),
    ]:
        with pytest.raises(ValueError) as excinfo:
            config_from_vqgan_jax({**DALLE_MINI_CONFIG_JSON, key: value})
        one_line_error(excinfo, word)
    with pytest.raises(ValueError) as excinfo:
        config_from_vqgan_jax({k: v for k, v in DALLE_MINI_CONFIG_JSON.items() if k != "n_embed"})
    one_line_error(excinfo, "n_embed")


# -- the module ---------------------------------------------------------------------------------


def test_encode_decode_shapes_dtypes_and_range():
    vq = tiny_vqgan()
    assert (vq.image_size, vq.factor, vq.grid, vq.vocab_size) == (32, 4, 8, 64)
    tokens = vq.encode(images())
    assert tokens.shape == (2, 8, 8) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 64
    assert len(tokens.unique()) > 4  # random weights still spread over the codebook
    decoded = vq.decode(tokens)
    assert decoded.shape == (2, 3, 32, 32) and decoded.dtype == torch.float32
    assert 0 <= float(decoded.min()) and float(decoded.max()) <= 1
    # the decoder's raw output leaves [0, 1] with random weights: decode clamps it
    with torch.no_grad():
        raw = vq.pixels(vq.quantize.lookup(tokens))
    assert float(raw.min()) < 0 or float(raw.max()) > 1
    # fully convolutional: any multiple of the factor
    assert vq.encode(images(1, 48)).shape == (1, 12, 12)


def test_bad_inputs_are_refused():
    vq = tiny_vqgan()
    with pytest.raises(ValueError, match="multiples"):
        vq.encode(images(1, 30))
    with pytest.raises(ValueError, match="shape"):
        vq.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        vq.decode(torch.full((1, 8, 8), 64))
    with pytest.raises(ValueError, match="integer"):
        vq.decode(torch.zeros(1, 8, 8))


def test_codes_are_the_nearest_codebook_entries_and_codebook_vectors_map_to_themselves():
    vq = tiny_vqgan()
    z = vq.latent(images()).detach()  # (2, 16, 8, 8)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 16)
    brute = torch.cdist(flat, vq.quantize.embedding.weight.detach()).argmin(1).view(2, 8, 8)
    assert torch.equal(vq.quantize.codes(z), brute)
    # codebook-exact latents: every code vector quantises to its own id
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(1)).view(1, 8, 8)
    with torch.no_grad():
        assert torch.equal(vq.quantize.codes(vq.quantize.lookup(ids)), ids)


def test_decode_of_encode_is_the_decoder_on_the_chosen_codes():
    vq = tiny_vqgan()
    x = images()
    tokens = vq.encode(x)
    with torch.no_grad():
        expected = vq.pixels(vq.quantize.lookup(vq.quantize.codes(vq.latent(x)))).clamp(0, 1)
    assert torch.equal(vq.decode(tokens), expected)


def test_value_range_is_converted_inside():
    """A "-1,1" model sees 2x - 1 where a "0,1" model with the same weights sees x, and returns
    (y + 1) / 2 where the other returns y."""
    minus = tiny_vqgan(value_range="-1,1")
    plain = VQGAN(TINY).eval()
    plain.load_state_dict(minus.state_dict())
    x = images()
    tokens = minus.encode(x)
    with torch.no_grad():
        assert torch.equal(tokens, plain.quantize.codes(plain.quant_conv(plain.encoder(2 * x - 1))))
        raw = plain.pixels(plain.quantize.lookup(tokens))
    torch.testing.assert_close(minus.decode(tokens), ((raw + 1) / 2).clamp(0, 1))
    torch.testing.assert_close(plain.decode(tokens), raw.clamp(0, 1))


def test_parameter_names_are_tamings_and_halves_share_the_codebook():
    shapes = parameter_shapes(VQGANConfig())
    for name in (
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.4.attn.1.proj_out.weight",
        "encoder.down.3.downsample.conv.weight",
        "encoder.mid.attn_1.q.weight",
        "quant_conv.weight",
        "quantize.embedding.weight",
        "post_quant_conv.bias",
        "decoder.up.4.block.2.conv2.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.1.block.0.nin_shortcut.weight",
        "decoder.norm_out.bias",
    ):
        assert name in shapes, name
    assert "encoder.down.4.downsample.conv.weight" not in shapes  # the last level keeps its size
    assert "decoder.up.0.upsample.conv.weight" not in shapes
    assert shapes["quantize.embedding.weight"] == (16384, 256)
    encoder, decoder = (
        parameter_shapes(VQGANConfig(), "encoder"),
        parameter_shapes(VQGANConfig(), "decoder"),
    )
    assert set(encoder) & set(decoder) == {"quantize.embedding.weight"}
    assert set(encoder) | set(decoder) == set(shapes)
    # min-dalle's detokenizer: 46,709,891 parameters (its own count)
    assert sum(math.prod(s) for s in decoder.values()) == 46_709_891


def test_load_checks_the_state_dict():
    vq = tiny_vqgan()
    state = vq.state_dict()
    loaded = VQGAN.load(TINY, state)
    assert torch.equal(loaded.encode(images()), vq.encode(images()))
    missing = {k: v for k, v in state.items() if k != "decoder.conv_out.bias"}
    with pytest.raises(ValueError) as excinfo:
        VQGAN.load(TINY, missing)
    one_line_error(excinfo, "lacks", "decoder.conv_out.bias")
    with pytest.raises(ValueError) as excinfo:
        VQGAN.load(TINY, {**state, "encoder.conv_in.weight": torch.zeros(32, 3, 1, 1)})
    one_line_error(excinfo, "encoder.conv_in.weight", "(32, 3, 1, 1)", "(32, 3, 3, 3)")
    with pytest.raises(ValueError) as excinfo:
        VQGAN.load(TINY, {**state, "encoder.extra": torch.zeros(1)})
    one_line_error(excinfo, "unexpected", "encoder.extra")


# -- parity with taming -------------------------------------------------------------------------


class TamingVQModel(nn.Module):
    """taming's VQModel at inference, from taming's own modules (``taming/models/vqgan.py``
    itself imports Lightning): the same attribute names and the same encode / decode steps."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        model = pytest.importorskip("taming.modules.diffusionmodules.model")
        quantize = pytest.importorskip("taming.modules.vqvae.quantize")
        ddconfig = dict(
            ch=config.ch,
            out_ch=config.in_channels,
            ch_mult=config.ch_mult,
            num_res_blocks=config.num_res_blocks,
            attn_resolutions=config.attn_resolutions,
            in_channels=config.in_channels,
            resolution=config.resolution,
            z_channels=config.z_channels,
            double_z=False,
            dropout=0.0,
        )
        self.encoder = model.Encoder(**ddconfig)
        self.decoder = model.Decoder(**ddconfig)
        self.quantize = quantize.VectorQuantizer(config.n_embed, config.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        z = self.latent(x)
        _, _, (_, _, indices) = self.quantize(z)
        return indices.view(z.shape[0], z.shape[2], z.shape[3])

    def pixels(self, tokens: torch.Tensor) -> torch.Tensor:
        b, g, h = tokens.shape
        z_q = self.quantize.embedding(tokens).permute(0, 3, 1, 2)  # (B, D, G, G)
        return self.decoder(self.post_quant_conv(z_q))


def test_parity_with_taming():
    config = dataclasses.replace(TINY, value_range="-1,1")  # taming's own range
    torch.manual_seed(0)
    taming = randomise_(TamingVQModel(config), seed=3).eval()
    # as a Lightning checkpoint holds it: wrapped, with the GAN loss's weights beside the model
    checkpoint = {
        "state_dict": {**taming.state_dict(), "loss.discriminator.main.0.weight": torch.ones(1)}
    }
    ours = VQGAN.load(config, from_taming(checkpoint, config)).eval()

    x = images(3)
    with torch.no_grad():
        reference_latent = taming.latent(2 * x - 1)
        reference_tokens = taming.tokens(2 * x - 1)
        torch.testing.assert_close(ours.latent(x), reference_latent, atol=TOLERANCE, rtol=0)
    tokens = ours.encode(x)
    assert len(reference_tokens.unique()) > 4
    assert torch.equal(tokens, reference_tokens)
    with torch.no_grad():
        reference = taming.pixels(tokens)
        ours_raw = ours.pixels(ours.quantize.lookup(tokens))
    assert float(reference.abs().max()) > 1  # unclamped values are compared, not just [0, 1]
    torch.testing.assert_close(ours_raw, reference, atol=TOLERANCE, rtol=0)
    expected = ((reference + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(ours.decode(tokens), expected, atol=TOLERANCE, rtol=0)


def test_from_taming_names_the_first_problem():
    torch.manual_seed(0)
    state = TamingVQModel(TINY).state_dict()
    wider = dataclasses.replace(TINY, n_embed=128)
    with pytest.raises(ValueError) as excinfo:
        from_taming(state, wider)
    one_line_error(excinfo, "taming", "quantize.embedding.weight", "(64, 16)", "(128, 16)")
    with pytest.raises(ValueError) as excinfo:
        from_taming({**state, "quantize.proj.weight": torch.zeros(1)}, TINY)  # a gumbel VQGAN
    one_line_error(excinfo, "unexpected", "quantize.proj.weight")
    half = from_taming(state, TINY, part="decoder")
    assert set(half) == set(parameter_shapes(TINY, "decoder"))


# -- parity with min-dalle ----------------------------------------------------------------------


@pytest.mark.slow
def test_parity_with_min_dalle_detokenizer_at_full_size():
    detokenizer = pytest.importorskip("min_dalle.models.vqgan_detokenizer")
    torch.manual_seed(0)
    theirs = randomise_(detokenizer.VQGanDetokenizer(), seed=5).eval()
    with torch.no_grad():  # keep most pixels inside (0, 1), where min-dalle's clip is no-op
        theirs.decoder.conv_out.weight.mul_(0.05)
        theirs.decoder.conv_out.bias.fill_(0.5)
    config = VQGANConfig(norm_eps=1e-5)  # min-dalle keeps torch's GroupNorm default
    half = from_min_dalle(theirs.state_dict(), config)
    with torch.device("meta"):
        ours = VQGAN(config)
    missing, unexpected = ours.load_state_dict(half, strict=False, assign=True)
    assert set(missing) == set(parameter_shapes(config)) - set(half) and not unexpected
    assert set(missing) == set(parameter_shapes(config, "encoder")) - {"quantize.embedding.weight"}
    ours.eval()

    tokens = torch.randint(0, 16384, (1, 16, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = theirs(False, tokens.view(1, 256)) / 255  # (256, 256, 3) in [0, 1]
    decoded = ours.decode(tokens)[0].permute(1, 2, 0)  # (256, 256, 3)
    inside = ((reference > 0) & (reference < 1)).float().mean()
    assert inside > 0.5, f"only {inside:.0%} of pixels inside (0, 1): the comparison is weak"
    torch.testing.assert_close(decoded, reference, atol=TOLERANCE, rtol=0)


def test_from_min_dalle_checks_the_decoder_half():
    state = {
        name: torch.zeros(shape)
        for name, shape in parameter_shapes(TINY, "decoder").items()
        if name != "quantize.embedding.weight"
    }
    state["embedding.weight"] = torch.zeros(64, 16)
    assert set(from_min_dalle(state, TINY)) == set(parameter_shapes(TINY, "decoder"))
    with pytest.raises(ValueError) as excinfo:
        from_min_dalle({**state, "encoder.conv_in.weight": torch.zeros(1)}, TINY)
    one_line_error(excinfo, "min-dalle", "unexpected", "encoder.conv_in.weight")
    del state["embedding.weight"]
    with pytest.raises(ValueError) as excinfo:
        from_min_dalle(state, TINY)
    one_line_error(excinfo, "min-dalle", "lacks", "quantize.embedding.weight")


# -- Flax checkpoints ---------------------------------------------------------------------------


def _pack_array(array: np.ndarray, shape: tuple[int, ...] | None = None):
    """flax.serialization's ``_ndarray_to_bytes`` in an ExtType 1 (``_msgpack_ext_pack``);
    ``shape`` overrides the declared shape, to write a corrupt entry."""
    import msgpack

    declared = list(array.shape if shape is None else shape)
    payload = msgpack.packb((declared, array.dtype.name, array.tobytes("C")), use_bin_type=True)
    return msgpack.ExtType(1, payload)


def _to_bytes(tree: dict, chunk_bytes: int = 2**30) -> bytes:
    """``flax.serialization.to_bytes`` of a tree of numpy arrays without Flax: arrays over
    ``chunk_bytes`` (Flax: MAX_CHUNK_SIZE = 2**30) become ``__msgpack_chunked_array__`` maps
    of flat chunks; numpy scalars are ExtType 3."""
    import msgpack

    def chunk(node):
        if isinstance(node, dict):
            return {key: chunk(value) for key, value in node.items()}
        if isinstance(node, np.ndarray) and node.nbytes > chunk_bytes:
            size = max(1, chunk_bytes // node.dtype.itemsize)
            flat = node.reshape(-1)
            pieces = [flat[i : i + size] for i in range(0, flat.size, size)]
            return {
                "__msgpack_chunked_array__": True,
                "shape": {str(i): d for i, d in enumerate(node.shape)},
                "chunks": {str(i): piece for i, piece in enumerate(pieces)},
            }
        return node

    def default(value):
        if isinstance(value, np.ndarray):
            return _pack_array(value)
        if isinstance(value, np.generic):
            payload = _pack_array(np.asarray(value)).data
            return msgpack.ExtType(3, payload)
        if isinstance(value, msgpack.ExtType):
            return value
        raise TypeError(f"cannot pack {type(value).__name__}")

    return msgpack.packb(chunk(tree), default=default, strict_types=True)


def _flax_tree(state: dict[str, torch.Tensor], dtype=np.float32) -> dict:
    """The parameter tree of vqgan-jax's ``VQModule`` for a taming state dict, as its converter
    (``convert_pt_model_to_jax.py``) builds it: "down.0" -> "down_0"; conv weights (out, in, H,
    W) -> kernel (H, W, in, out); GroupNorm weight -> scale; Embed weight -> embedding."""
    tree: dict = {}
    for name, tensor in state.items():
        module, leaf = name.rsplit(".", 1)
        path = re.sub(r"(\w+)[.](\d+)", r"\1_\2", module).split(".")
        array = tensor.detach().numpy()
        if leaf == "weight" and array.ndim == 4:
            leaf, array = "kernel", array.transpose(2, 3, 1, 0)
        elif leaf == "weight" and path[-1] == "embedding":
            leaf = "embedding"
        elif leaf == "weight":
            leaf = "scale"
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(array, dtype=dtype)
    return tree


def _node(tree: dict, path: str) -> tuple[dict, str]:
    *parents, leaf = path.split("/")
    for part in parents:
        tree = tree[part]
    return tree, leaf


def write_flax(tmp_path, tree: dict, name: str = "flax_model.msgpack", **kwargs):
    path = tmp_path / name
    path.write_bytes(_to_bytes(tree, **kwargs))
    return path


def test_flax_checkpoint_in_dalle_mini_layout_converts_to_the_same_model(tmp_path):
    pytest.importorskip("msgpack")
    from model.importers.flax_msgpack import read_flax_msgpack

    reference = tiny_vqgan(seed=11)
    tree = _flax_tree(reference.state_dict())
    # the names vqgan-jax's modules give (modeling_flax_vqgan.py), spelled out
    for path in (
        "encoder/conv_in/kernel",
        "encoder/down_0/block_0/norm1/scale",
        "encoder/down_1/attn_0/q/kernel",
        "encoder/down_1/downsample/conv/kernel",
        "encoder/mid/attn_1/proj_out/bias",
        "encoder/mid/block_2/conv2/kernel",
        "quant_conv/kernel",
        "quantize/embedding/embedding",
        "post_quant_conv/bias",
        "decoder/up_1/upsample/conv/kernel",
        "decoder/up_1/block_0/nin_shortcut/kernel",
        "decoder/norm_out/scale",
    ):
        node, leaf = _node(tree, path)
        assert leaf in node, path
    assert _node(tree, "encoder/conv_in/kernel")[0]["kernel"].shape == (3, 3, 3, 32)  # HWIO

    # arrays over 1000 bytes (the codebook, most kernels) go in chunks, as Flax stores arrays
    # over 1 GiB
    path = write_flax(tmp_path, tree, chunk_bytes=1000)
    assert b"__msgpack_chunked_array__" in path.read_bytes()
    params = read_flax_msgpack(path)
    state = from_flax(params, TINY)
    expected = reference.state_dict()
    assert list(state) == list(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == torch.float32 and torch.equal(state[name], tensor), name
    converted = VQGAN.load(TINY, state)
    x = images()
    assert torch.equal(converted.encode(x), reference.encode(x))
    tokens = reference.encode(x)
    assert torch.equal(converted.decode(tokens), reference.decode(tokens))
    # a variables dict ({"params": ...}) and a transformers base-model prefix unwrap too
    assert from_flax({"params": {"model": params}}, TINY).keys() == state.keys()


def test_flax_half_precision_arrays_are_widened(tmp_path):
    pytest.importorskip("msgpack")
    from model.importers.flax_msgpack import read_flax_msgpack

    reference = tiny_vqgan(seed=12)
    tree = _flax_tree(reference.state_dict(), dtype=np.float16)
    state = from_flax(read_flax_msgpack(write_flax(tmp_path, tree)), TINY)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(state[name], tensor.half().float()), name


def test_flax_reader_keeps_every_leaf_kind(tmp_path):
    pytest.importorskip("msgpack")
    import msgpack

    from model.importers.flax_msgpack import read_flax_msgpack

    bits = np.array([0x3F80, 0xC000, 0x0000, 0x7F80], dtype=np.uint16)  # 1, -2, 0, inf
    bfloat16 = msgpack.ExtType(
        1, msgpack.packb(([2, 2], "bfloat16", bits.tobytes()), use_bin_type=True)
    )
    tree = {
        "opt": {"step": np.int64(7), "mu": np.arange(6, dtype=np.int32).reshape(2, 3)},
        "bf16": bfloat16,
        "empty": np.zeros((0, 3), np.float32),
        "big": np.arange(1000, dtype=np.float64),
        "note": "text",
    }
    back = read_flax_msgpack(write_flax(tmp_path, tree, chunk_bytes=800))
    assert back["opt"]["step"] == 7 and isinstance(back["opt"]["step"], np.integer)
    assert np.array_equal(back["opt"]["mu"], tree["opt"]["mu"])
    assert back["bf16"].dtype == np.float32
    assert back["bf16"].tolist() == [[1.0, -2.0], [0.0, float("inf")]]
    assert back["empty"].shape == (0, 3)
    assert np.array_equal(back["big"], tree["big"]) and back["big"].dtype == np.float64
    assert back["note"] == "text"


def test_flax_reader_matches_flax_itself(tmp_path, monkeypatch):
    """Only where Flax is installed: bytes from flax.serialization.to_bytes, chunked arrays,
    bfloat16 and scalars included, read back to what Flax's own msgpack_restore gives."""
    serialization = pytest.importorskip("flax.serialization")
    jnp = pytest.importorskip("jax.numpy")
    from model.importers.flax_msgpack import read_flax_msgpack

    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 256)
    rng = np.random.default_rng(0)
    tree = {
        "conv": {"kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32)},
        "bf16": jnp.asarray(rng.standard_normal((5, 3)), dtype=jnp.bfloat16),
        "step": np.int32(3),
    }
    data = serialization.to_bytes(tree)
    assert b"__msgpack_chunked_array__" in data
    path = tmp_path / "real.msgpack"
    path.write_bytes(data)
    ours, theirs = read_flax_msgpack(path), serialization.msgpack_restore(data)
    assert np.array_equal(ours["conv"]["kernel"], theirs["conv"]["kernel"])
    assert np.array_equal(ours["bf16"], np.asarray(theirs["bf16"], dtype=np.float32))
    assert ours["step"] == theirs["step"]


@pytest.mark.parametrize(
    "damage, words",
    [
        ("truncated", ["ends early"]),
        ("garbage", ["not a Flax msgpack checkpoint"]),
        ("trailing", ["after the checkpoint"]),
        ("short array", ["declares", "bytes but holds"]),
        ("object dtype", ["unsupported dtype", "object"]),
        ("bad chunks", ["chunked array", "malformed"]),
        ("unknown ext", ["extension type 9"]),
        ("not a map", ["not a tree"]),
        ("too big", ["over the 100-byte limit"]),
        ("empty", ["empty"]),
        ("huge declared length", ["ends early"]),
    ],
)
def test_flax_reader_refuses_damaged_files_in_one_line(tmp_path, damage, words):
    pytest.importorskip("msgpack")
    import msgpack

    from model.importers.flax_msgpack import read_flax_msgpack

    tree = _flax_tree(tiny_vqgan().state_dict())
    data = _to_bytes(tree)
    limit = {}
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"\xc1" + data
    elif damage == "trailing":
        data = data + msgpack.packb(1)
    elif damage == "short array":
        kernel = tree["encoder"]["conv_in"]["kernel"]
        tree["encoder"]["conv_in"]["kernel"] = _pack_array(kernel, shape=(3, 3, 3, 64))
        data = _to_bytes(tree)
    elif damage == "object dtype":
        payload = msgpack.packb(([1], "object", b"\0" * 8), use_bin_type=True)
        tree["encoder"]["conv_in"]["bias"] = msgpack.ExtType(1, payload)
        data = _to_bytes(tree)
    elif damage == "bad chunks":
        data = _to_bytes(tree, chunk_bytes=1000).replace(b"chunks", b"chunkz")
    elif damage == "unknown ext":
        tree["quant_conv"]["bias"] = msgpack.ExtType(9, b"")
        data = _to_bytes(tree)
    elif damage == "not a map":
        data = msgpack.packb([1, 2, 3])
    elif damage == "too big":
        limit = {"max_bytes": 100}
    elif damage == "empty":
        data = b""
    elif damage == "huge declared length":  # {"a": a 4 GiB bin} in 8 bytes
        data = b"\x81\xa1a\xc6\xff\xff\xff\xff"
    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(data)
    with pytest.raises(ValueError) as excinfo:
        read_flax_msgpack(path, **limit)
    one_line_error(excinfo, str(path), *words)


def test_from_flax_names_a_wrong_missing_or_unexpected_parameter():
    tree = _flax_tree(tiny_vqgan().state_dict())

    wrong = _flax_tree(tiny_vqgan().state_dict())
    wrong["encoder"]["conv_in"]["kernel"] = np.zeros((3, 3, 3, 64), np.float32)
    with pytest.raises(ValueError) as excinfo:
        from_flax(wrong, TINY)
    one_line_error(excinfo, "encoder/conv_in/kernel", "(3, 3, 3, 64)", "(3, 3, 3, 32)")

    missing = _flax_tree(tiny_vqgan().state_dict())
    del missing["decoder"]["mid"]["attn_1"]["q"]["bias"]
    with pytest.raises(ValueError) as excinfo:
        from_flax(missing, TINY)
    one_line_error(excinfo, "lack", "decoder/mid/attn_1/q/bias", "decoder.mid.attn_1.q.bias")

    extra = {**tree, "encoder": {**tree["encoder"], "temb_proj": {"kernel": np.zeros((1, 1))}}}
    with pytest.raises(ValueError) as excinfo:
        from_flax(extra, TINY)
    one_line_error(excinfo, "unexpected", "encoder/temb_proj/kernel")

    ints = _flax_tree(tiny_vqgan().state_dict())
    ints["quant_conv"]["bias"] = np.zeros(16, np.int32)
    with pytest.raises(ValueError) as excinfo:
        from_flax(ints, TINY)
    one_line_error(excinfo, "quant_conv/bias", "not a float array")


def test_flax_paths_follow_vqgan_jax_module_names():
    assert flax_path("encoder.down.3.block.1.norm2.weight", "GroupNorm") == (
        "encoder/down_3/block_1/norm2/scale"
    )
    assert flax_path("decoder.mid.block_1.conv1.weight", "Conv2d") == (
        "decoder/mid/block_1/conv1/kernel"
    )
    assert flax_path("decoder.up.4.attn.2.proj_out.bias", "Conv2d") == (
        "decoder/up_4/attn_2/proj_out/bias"
    )
    assert flax_path("quantize.embedding.weight", "Embedding") == "quantize/embedding/embedding"
