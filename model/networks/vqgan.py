"""VQGAN image tokenizer (Esser et al. 2021) in the exact parameter layout of taming-transformers
(``taming/models/vqgan.py``, ``modules/diffusionmodules/model.py``, ``modules/vqvae/quantize.py``),
so that the released VQGANs load by name: dalle-mini's fine-tuned f16-16384 (DALL·E Mega and
Mini), min-dalle's ``detoker.pt`` (the decoder half of the same model), taming's own
checkpoints and ruDALL-E's Sber gumbel-f8 VQGAN (``quantize="gumbel"``; its Lightning checkpoint
is read by ``model.importers.rudalle_vqgan``).

An image (B, C, S, S) in [0, 1] becomes a grid (B, G, G) of token ids, G = S / 2**(levels - 1),
and back:

    encoder          conv_in -> levels down.0 .. down.L-1, each num_res_blocks residual blocks
                     (with self-attention after each where the level's resolution is listed in
                     attn_resolutions) and, but for the last, a stride-2 downsample -> mid (block,
                     attention, block) -> norm, swish, conv_out to z_channels
    quant_conv       1x1 to the code dimension
    quantize         "vq": the nearest of K codes by squared distance (taming's VectorQuantizer);
                     "gumbel": the argmax of a 1x1 conv's K logits (taming's GumbelQuantize, as
                     ruDALL-E runs it), the code vectors kept in a separate table
    post_quant_conv  1x1 back to z_channels
    decoder          conv_in -> mid -> levels up.L-1 .. up.0, each num_res_blocks + 1 residual
                     blocks (and attention) and, but for level 0, a nearest 2x upsample -> norm,
                     swish, conv_out to C channels

The model works in its own pixel range (``value_range``): taming's VQGANs in [-1, 1],
dalle-mini's fine-tuned one in [0, 1] (its encoding notebook feeds webdataset's float RGB in
[0, 1], and its inference pipeline clips the decoder's output to [0, 1]). ``encode`` and
``decode`` always speak [0, 1], as the product's other image tokenizers do.

Conversions into this layout (each returns a state dict and raises ValueError naming the first
missing, unexpected or wrong-shaped key): ``from_taming`` (a taming or Lightning state dict),
``from_min_dalle`` (``detoker.pt``: the decoder half), ``from_flax`` (dalle-mini's Flax
parameters, as ``model.importers.flax_msgpack.read_flax_msgpack`` returns them; module names from
patil-suraj/vqgan-jax ``modeling_flax_vqgan.py``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import NORM_GROUPS, VQGANConfig
from model.config import check_vqgan_config as check_config  # noqa: F401 - this module's API too
from model.networks.image_tokenizer import ConfigFacts, check_image_batch, check_token_grid

logger = logging.getLogger(__name__)

# rows of the (cells, K) distance matrix computed at once: 4096 x 16384 codes is 256 MiB in fp32
QUANTIZE_ROWS = 4096

Part = Literal["all", "encoder", "decoder"]


# the keys of vqgan-jax's config.json (and of taming's ddconfig) that must hold these values for
# this module to compute what theirs does
_FIXED_KEYS = {"resamp_with_conv": True, "give_pre_end": False}


def config_from_vqgan_jax(
    values: Mapping[str, Any], value_range: str = "0,1", norm_eps: float = 1e-6
) -> VQGANConfig:
    """The config of a vqgan-jax ``config.json`` (dalle-mini's) or a taming ``ddconfig`` with
    ``n_embed`` and ``embed_dim`` added. Other keys (``dropout``, ``transformers_version``, ...)
    do not change inference and are ignored. ``value_range`` and ``norm_eps`` are not in those
    files: the defaults are dalle-mini's."""
    names = ("resolution", "in_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions")
    names += ("z_channels", "embed_dim", "n_embed", "double_z")
    missing = [name for name in names if name not in values]
    if missing:
        raise ValueError(f"VQGAN config lacks {missing}")
    for key, expected in _FIXED_KEYS.items():
        if key in values and values[key] != expected:
            raise ValueError(f"VQGAN config {key} must be {expected}, got {values[key]!r}")
    if values.get("out_ch", values["in_channels"]) != values["in_channels"]:
        raise ValueError(
            f"VQGAN config out_ch {values['out_ch']!r} must equal in_channels "
            f"{values['in_channels']!r}"
        )
    fields = {name: values[name] for name in names}  # lists become tuples in __post_init__
    if isinstance(fields["attn_resolutions"], int):  # vqgan-jax's type hint allows one int
        fields["attn_resolutions"] = (fields["attn_resolutions"],)
    return VQGANConfig(**fields, value_range=value_range, norm_eps=norm_eps)


# -----------------------------------------------------------------------------------------------
# modules, named as taming's


def normalize(channels: int, eps: float) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=eps, affine=True)


class ResnetBlock(nn.Module):
    """taming's ResnetBlock without its timestep input (temb_ch = 0) and dropout (0 at
    inference): shortcut(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))."""

    def __init__(self, n_in: int, n_out: int, eps: float):
        super().__init__()
        self.norm1 = normalize(n_in, eps)
        self.conv1 = nn.Conv2d(n_in, n_out, 3, padding=1)
        self.norm2 = normalize(n_out, eps)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1)
        # no parameters where the width is kept, as taming's (its conv_shortcut is never used)
        self.nin_shortcut = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H * W positions, with 1x1 convs for q, k, v and the
    output projection; scale C**-0.5."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.norm = normalize(channels, eps)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_norm = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head, a position per row
        q, k, v = (
            conv(x_norm).view(b, 1, c, h * w).transpose(2, 3) for conv in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C), softmax(q k^T / sqrt C) v
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad one zero row and column at the bottom and right, then a stride-2 3x3 conv: taming's
    asymmetric padding (torch's conv pads both sides)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level (taming's ``down.i`` / ``up.i``): residual blocks ``block.j``, each
    followed by ``attn.j`` where the level has attention, then ``downsample`` or ``upsample``
    (absent on the encoder's last level and the decoder's level 0)."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        blocks: int,
        attention: bool,
        resample: Literal["down", "up"] | None,
        eps: float,
    ):
        super().__init__()
        widths = [n_in] + [n_out] * blocks
        self.block = nn.ModuleList(ResnetBlock(widths[j], n_out, eps) for j in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(n_out, eps) for _ in range(blocks if attention else 0))
        if resample == "down":
            self.downsample = Downsample(n_out)
        elif resample == "up":
            self.upsample = Upsample(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Mid(nn.Module):
    """The middle at the lowest resolution: ``block_1``, ``attn_1``, ``block_2``."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, eps)
        self.attn_1 = AttnBlock(channels, eps)
        self.block_2 = ResnetBlock(channels, channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Pixels in the model's range (B, C, S, S) -> features (B, z_channels, G, G)."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        eps, ch, levels = config.norm_eps, config.ch, len(config.ch_mult)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        widths = [ch * m for m in (1, *config.ch_mult)]  # level i: widths[i] -> widths[i + 1]
        self.down = nn.ModuleList(
            Level(
                widths[i],
                widths[i + 1],
                config.num_res_blocks,
                attention=config.resolution // 2**i in config.attn_resolutions,
                resample="down" if i < levels - 1 else None,
                eps=eps,
            )
            for i in range(levels)
        )
        top = widths[-1]
        self.mid = Mid(top, eps)
        self.norm_out = normalize(top, eps)
        self.conv_out = nn.Conv2d(top, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, S, S)
        for level in self.down:
            h = level(h)  # halves the resolution but on the last level
        h = self.mid(h)  # (B, ch * ch_mult[-1], G, G)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, G, G)


class Decoder(nn.Module):
    """Features (B, z_channels, G, G) -> pixels in about the model's range (B, C, S, S),
    unclamped. ``up`` is indexed as the encoder's ``down`` (``up.0`` is the full resolution) and
    runs from the last level to the first."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        eps, ch, levels = config.norm_eps, config.ch, len(config.ch_mult)
        top = ch * config.ch_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, top, 3, padding=1)
        self.mid = Mid(top, eps)
        # level i reads the width of level i + 1 (the top width for the last level)
        widths = [ch * m for m in config.ch_mult] + [top]
        self.up = nn.ModuleList(
            Level(
                widths[i + 1],
                widths[i],
                config.num_res_blocks + 1,
                attention=config.resolution // 2**i in config.attn_resolutions,
                resample="up" if i > 0 else None,
                eps=eps,
            )
            for i in range(levels)
        )
        self.norm_out = normalize(widths[0], eps)
        self.conv_out = nn.Conv2d(widths[0], config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch * ch_mult[-1], G, G)
        for level in reversed(self.up):
            h = level(h)  # doubles the resolution but on level 0
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, S, S)


class VectorQuantizer(nn.Module):
    """taming's VectorQuantizer at inference: each cell takes its nearest code (squared L2) in
    ``embedding.weight`` (K, D)."""

    def __init__(self, n_embed: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, G, G) -> (B, G, G): each cell's nearest code id."""
        b, d, g, h = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # (B*G*G, D), raster order
        weight = self.embedding.weight.float()  # (K, D)
        weight_sq = weight.pow(2).sum(1)  # (K,)
        ids = []
        for rows in flat.split(QUANTIZE_ROWS):
            # |z|^2 + |e|^2 - 2 z.e, summed in taming's order (near-ties resolve as there)
            distance = rows.pow(2).sum(1, keepdim=True) + weight_sq - 2 * rows @ weight.t()
            ids.append(distance.argmin(dim=1))
        return torch.cat(ids).view(b, g, h)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, G, G) ids -> (B, D, G, G) code vectors."""
        return self.embedding(codes).permute(0, 3, 1, 2)


class GumbelQuantizer(nn.Module):
    """taming's GumbelQuantize at inference as ruDALL-E runs it (``rudalle/vae/model.py``,
    ``disable_gumbel_softmax=True``): each cell's code is the argmax of ``proj``'s K logits, with
    no Gumbel noise (taming's own forward samples even in eval mode, so its tokens are random).
    The code vectors are a separate table, ``embed.weight`` (K, D)."""

    def __init__(self, n_embed: int, dim: int):
        super().__init__()
        # taming builds proj with z_channels inputs but feeds it quant_conv's embed_dim
        # channels; the two are equal in every released gumbel VQGAN (Sber's: 256)
        self.proj = nn.Conv2d(dim, n_embed, 1)
        self.embed = nn.Embedding(n_embed, dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, G, G) -> (B, G, G): each cell's most likely code."""
        b, _, g, h = z.shape
        # the logits of a few images at a time: (B, K, G, G) is 32 MiB an image at K 8192,
        # G 32; computed in float32, as the VQ path's distances, since rounding moves argmaxes
        images = max(1, QUANTIZE_ROWS // (g * h))
        weight, bias = self.proj.weight.float(), self.proj.bias.float()
        ids = [
            F.conv2d(chunk.float(), weight, bias).argmax(dim=1)  # (b', K, G, G) -> (b', G, G)
            for chunk in z.split(images)
        ]
        return torch.cat(ids).view(b, g, h)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, G, G) ids -> (B, D, G, G) code vectors."""
        return self.embed(codes).permute(0, 3, 1, 2)


QUANTIZERS = {"vq": VectorQuantizer, "gumbel": GumbelQuantizer}


class VQGAN(ConfigFacts, nn.Module):
    """The tokenizer: encoder, quant_conv, quantize, post_quant_conv and decoder, with
    ``encode``/``decode`` as the product's other image tokenizers."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = QUANTIZERS[config.quantize](config.n_embed, config.embed_dim)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    @classmethod
    def load(cls, config: VQGANConfig, state_dict: Mapping[str, torch.Tensor]) -> VQGAN:
        """A VQGAN holding ``state_dict`` (this module's names: what the ``from_*`` conversions
        return). The parameters are the given tensors themselves, not copies."""
        _check_state(state_dict, parameter_shapes(config), "VQGAN state dict")
        # built on the meta device and filled by assignment: no random init of ~80M parameters
        # that are overwritten at once
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state_dict, assign=True)
        logger.info("loaded %s", describe(config))
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> continuous codes (B, D, G, G) before quantisation."""
        check_image_batch(
            images, self.config.in_channels, self.config.factor, "the downsampling factor"
        )
        x = images.to(self.quant_conv.weight.dtype)
        if self.config.value_range == "-1,1":
            x = 2 * x - 1
        return self.quant_conv(self.encoder(x))

    def pixels(self, quantised: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, G, G) -> pixels (B, C, S, S) in about the model's own range,
        unclamped."""
        return self.decoder(self.post_quant_conv(quantised))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> token ids (B, G, G): the nearest codes ("vq") or
        the most likely ones ("gumbel")."""
        return self.quantize.codes(self.latent(images))

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, G, G) -> images (B, C, S, S) in [0, 1], float32."""
        check_token_grid(tokens, self.config.n_embed)
        x = self.pixels(self.quantize.lookup(tokens.long())).float()
        if self.config.value_range == "-1,1":
            x = (x + 1) / 2
        return x.clamp(0, 1)


# -----------------------------------------------------------------------------------------------
# conversions into this module's state dict

# the VQ codebook serves both halves; a gumbel quantizer's proj only encodes, its embed only
# decodes
_ENCODER_PREFIXES = ("encoder.", "quant_conv.", "quantize.embedding.", "quantize.proj.")
_DECODER_PREFIXES = ("decoder.", "post_quant_conv.", "quantize.embedding.", "quantize.embed.")


@functools.lru_cache(maxsize=8)
def _layout(config: VQGANConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{parameter name: (module kind, shape)} in this module's order, read off a model built on
    the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = VQGAN(config)
    layout = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            kind = type(module).__name__  # Conv2d, GroupNorm or Embedding
            layout[f"{module_name}.{param_name}"] = (kind, tuple(param.shape))
    return layout


def parameter_shapes(config: VQGANConfig, part: Part = "all") -> dict[str, tuple[int, ...]]:
    """{name: shape} of a VQGAN's parameters; ``part`` "encoder" (what ``encode`` needs:
    encoder, quant_conv, the codebook or a gumbel quantizer's proj) or "decoder" (what ``decode``
    needs: the codebook or a gumbel quantizer's embed, post_quant_conv, decoder)."""
    prefixes = {"all": ("",), "encoder": _ENCODER_PREFIXES, "decoder": _DECODER_PREFIXES}[part]
    return {
        name: shape for name, (_, shape) in _layout(config).items() if name.startswith(prefixes)
    }


def _check_state(
    state_dict: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise ValueError naming the first key of ``expected`` that ``state_dict`` lacks or holds
    in another shape or as a non-float, then the first key it has that is not expected."""
    for name, shape in expected.items():
        if name not in state_dict:
            raise ValueError(f"{source} lacks {name!r} (expected shape {shape})")
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{source} {name!r} is not a float tensor: {type(tensor).__name__}")
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{source} {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
    unexpected = [name for name in state_dict if name not in expected]
    if unexpected:
        raise ValueError(f"{source} has unexpected key {unexpected[0]!r}")


def from_taming(
    state_dict: Mapping[str, Any], config: VQGANConfig, part: Part = "all"
) -> dict[str, torch.Tensor]:
    """A taming-transformers ``VQModel`` state dict, or a ``GumbelVQ``'s where
    ``config.quantize`` is "gumbel" (or a Lightning checkpoint's, whose ``{"state_dict": ...}``
    wrapper and ``loss.*`` discriminator and LPIPS weights are dropped), checked against
    ``config``. The names are this module's already. Tensors are float32."""
    inner = state_dict.get("state_dict")
    if isinstance(inner, Mapping):
        state_dict = inner
    prefixes = {"all": ("",), "encoder": _ENCODER_PREFIXES, "decoder": _DECODER_PREFIXES}[part]
    kept = {
        name: tensor
        for name, tensor in state_dict.items()
        if not name.startswith("loss.") and name.startswith(prefixes)
    }
    _check_state(kept, parameter_shapes(config, part), "taming state dict")
    return {name: tensor.float() for name, tensor in kept.items()}


# min-dalle's VQGanDetokenizer (min_dalle/models/vqgan_detokenizer.py) keeps the codebook as a
# bare ``embedding``; post_quant_conv and decoder.* are taming's names
_MIN_DALLE_RENAMES = {"embedding.weight": "quantize.embedding.weight"}


def from_min_dalle(state_dict: Mapping[str, Any], config: VQGANConfig) -> dict[str, torch.Tensor]:
    """min-dalle's ``detoker.pt`` state dict -> the decoder half of this module's (codebook,
    post_quant_conv, decoder; ``parameter_shapes(config, "decoder")``). min-dalle's GroupNorms
    use eps 1e-5: build with ``norm_eps=1e-5`` to reproduce it exactly."""
    renamed = {_MIN_DALLE_RENAMES.get(name, name): tensor for name, tensor in state_dict.items()}
    _check_state(renamed, parameter_shapes(config, "decoder"), "min-dalle detokenizer state dict")
    return {name: tensor.float() for name, tensor in renamed.items()}


# Flax names (vqgan-jax ``modeling_flax_vqgan.py``): a list of submodules assigned in ``setup``
# (``self.down``, ``self.block``, ``self.attn``, ``self.up``) names its items ``down_0``,
# ``block_1``, ...; named attributes (``mid.block_1``, ``mid.attn_1``) keep their names. So a
# taming name becomes the Flax path by turning "<word>.<digit>" into "<word>_<digit>", as
# vqgan-jax's own converter (``convert_pt_model_to_jax.rename_key``) does in the other direction.
_INDEXED = re.compile(r"(\w+)\.(\d+)")
# the Flax leaf of each torch parameter, by module kind
_FLAX_LEAF = {
    ("Conv2d", "weight"): "kernel",
    ("Conv2d", "bias"): "bias",
    ("GroupNorm", "weight"): "scale",
    ("GroupNorm", "bias"): "bias",
    ("Embedding", "weight"): "embedding",
}
# wrappers a Flax tree may come in: a variables dict ({"params": ...}) or a transformers model
# saved with its base_model_prefix ({"model": ...}, unwrapped by FlaxPreTrainedModel too)
_FLAX_WRAPPERS = ("params", "model")


def _flax_leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flax_leaves(value, path)
        else:
            yield path, value


def flax_path(name: str, kind: str) -> str:
    """This module's parameter ``name`` (of a ``kind`` module: Conv2d, GroupNorm, Embedding) ->
    its path in vqgan-jax's parameter tree, e.g. ``encoder.down.0.block.1.norm1.weight`` ->
    ``encoder/down_0/block_1/norm1/scale``."""
    module, leaf = name.rsplit(".", 1)
    flax_module = _INDEXED.sub(r"\1_\2", module).replace(".", "/")
    return f"{flax_module}/{_FLAX_LEAF[kind, leaf]}"


def from_flax(params: Mapping[str, Any], config: VQGANConfig) -> dict[str, torch.Tensor]:
    """dalle-mini's Flax VQGAN parameters (the nested dict of arrays that
    ``model.importers.flax_msgpack.read_flax_msgpack`` returns for ``flax_model.msgpack``) -> this
    module's state dict, float32.

    Conv ``kernel`` (H, W, in, out) becomes ``weight`` (out, in, H, W); GroupNorm ``scale`` and
    Embed ``embedding`` become ``weight``; biases keep their name. Raises ValueError naming the
    first missing, wrong-shaped or unexpected Flax path."""
    source = "dalle-mini Flax params"
    tree: Any = params
    while isinstance(tree, Mapping) and len(tree) == 1 and next(iter(tree)) in _FLAX_WRAPPERS:
        tree = next(iter(tree.values()))
    if not isinstance(tree, Mapping):
        raise ValueError(f"{source} are a {type(tree).__name__}, not a tree of arrays")
    leaves = dict(_flax_leaves(tree))
    state = {}
    for name, (kind, shape) in _layout(config).items():
        path = flax_path(name, kind)
        if path not in leaves:
            raise ValueError(f"{source} lack {path!r} (for {name})")
        array = leaves.pop(path)
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise ValueError(
                f"{source} {path!r} is not a float array: {getattr(array, 'dtype', type(array))}"
            )
        flax_shape = shape[2:] + shape[1::-1] if len(shape) == 4 else shape  # (H, W, in, out)
        if array.shape != flax_shape:
            raise ValueError(f"{source} {path!r} has shape {array.shape}, expected {flax_shape}")
        if len(shape) == 4:
            array = array.transpose(3, 2, 0, 1)  # (H, W, in, out) -> (out, in, H, W)
        # a fresh, writable, contiguous copy: the reader's arrays are views of the file's bytes
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    if leaves:
        raise ValueError(f"{source} have unexpected {next(iter(leaves))!r}")
    return state


def describe(config: VQGANConfig) -> str:
    """One line for logs and cards: the grid, codes and parameter count."""
    count = sum(int(np.prod(shape)) for shape in parameter_shapes(config).values())
    quantizer = " (gumbel)" if config.quantize == "gumbel" else ""
    return (
        f"VQGAN f{config.factor} {config.grid}x{config.grid} of {config.n_embed} codes"
        f"{quantizer} at {config.resolution} px, {count / 1e6:.1f}M parameters, pixels in "
        f"[{config.value_range}]"
    )
