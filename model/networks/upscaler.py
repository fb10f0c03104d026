"""Real-ESRGAN's two generators (Wang et al. 2021, BSD-3-Clause), and a tiled upscale.

``RRDBNet`` (ESRGAN's residual-in-residual dense blocks: RealESRGAN_x4plus, x4plus-anime) and
``SRVGGNetCompact`` (a plain stack of 3x3 convolutions and PReLUs whose last layer is a pixel
shuffle: realesr-animevideov3, realesr-general-x4v3) are written here from the paper's and the
released code's description; their parameter names are the released ``.pth`` files' own (``body.0
.weight``, ``conv_first.weight``, ...), so an official checkpoint's state dict loads as it is.
``model/importers/ncnn.py`` maps the ncnn conversions onto the same modules.

``upscale`` runs a net over a picture of any size in square tiles with an overlap of context on
each side; only each tile's core is kept. Peak working memory depends on the tile, never on the
picture (see ``tile_working_bytes``); the picture and its result are the caller's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# -- configs -----------------------------------------------------------------------------------


@dataclass
class RRDBNetConfig:
    scale: int = 4  # 4: RealESRGAN_x4plus; 2 and 1 fold the input with a pixel unshuffle first
    num_feat: int = 64  # trunk channels
    num_block: int = 23  # RRDBs in the trunk: 23 in x4plus, 6 in x4plus-anime
    num_grow_ch: int = 32  # channels each dense layer adds
    in_ch: int = 3
    out_ch: int = 3
    output_scale: int = 0  # 0: the net's own scale; else a bicubic resize to it (ncnn x2/x3)

    arch = "RRDBNet"


@dataclass
class SRVGGConfig:
    scale: int = 4  # the pixel shuffle's factor
    num_feat: int = 64  # channels of every hidden convolution
    num_conv: int = 16  # hidden convolutions: 16 in animevideov3, 32 in general-x4v3
    act_type: str = "prelu"  # "prelu" (every released one), "relu" or "leakyrelu" (slope 0.1)
    in_ch: int = 3
    out_ch: int = 3
    output_scale: int = 0  # 0: the net's own scale; else a bicubic resize to it (ncnn x2/x3)

    arch = "SRVGGNetCompact"


UpscalerConfig = RRDBNetConfig | SRVGGConfig
ARCHES = {"RRDBNet": RRDBNetConfig, "SRVGGNetCompact": SRVGGConfig}
# every integer field's bounds: a file's config is untrusted, and these bound what it can build
LIMITS = {
    "scale": (1, 8),
    "num_feat": (1, 512),
    "num_block": (1, 64),
    "num_grow_ch": (1, 256),
    "num_conv": (1, 128),
    "in_ch": (1, 4),
    "out_ch": (1, 4),
    "output_scale": (0, 8),
}
ACT_TYPES = ("prelu", "relu", "leakyrelu")


def config_to_dict(config: UpscalerConfig) -> dict:
    return {"arch": config.arch, **asdict(config)}


def config_from_dict(values: object) -> UpscalerConfig:
    """The config a file's JSON describes, every field checked; ValueError naming the field."""
    if not isinstance(values, dict) or values.get("arch") not in ARCHES:
        arch = values.get("arch") if isinstance(values, dict) else values
        raise ValueError(f"config.arch is {arch!r:.40}; expected one of {list(ARCHES)}")
    kind = ARCHES[values["arch"]]
    fields = set(kind.__dataclass_fields__)
    unknown = set(values) - fields - {"arch"}
    if unknown:
        raise ValueError(f"unknown {kind.arch} fields: {sorted(unknown)}")
    for name, value in values.items():
        if name == "arch":
            continue
        if name == "act_type":
            if value not in ACT_TYPES:
                raise ValueError(f"config.act_type is {value!r:.40}; expected one of {ACT_TYPES}")
            continue
        low, high = LIMITS[name]
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"config.{name} is {value!r:.40}; expected an integer {low}..{high}")
    config = kind(**{k: v for k, v in values.items() if k != "arch"})
    if isinstance(config, RRDBNetConfig) and config.scale not in (1, 2, 4):
        raise ValueError(f"config.scale is {config.scale}; an RRDBNet upscales 1, 2 or 4 times")
    return config


# -- RRDBNet -------------------------------------------------------------------------------------


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing the block's input and every earlier output."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        grow = num_grow_ch
        self.conv1 = nn.Conv2d(num_feat, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * grow, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, H, W) -> (B, F, H, W)
        x1 = F.leaky_relu(self.conv1(x), 0.2)  # (B, G, H, W)
        x2 = F.leaky_relu(self.conv2(torch.cat((x, x1), 1)), 0.2)
        x3 = F.leaky_relu(self.conv3(torch.cat((x, x1, x2), 1)), 0.2)
        x4 = F.leaky_relu(self.conv4(torch.cat((x, x1, x2, x3), 1)), 0.2)
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))  # (B, F + 4G, H, W) -> (B, F, H, W)
        return x5 * 0.2 + x  # the residual scaled by 0.2, as trained


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBNetConfig):
        super().__init__()
        self.config = config
        fold = {4: 1, 2: 2, 1: 4}[config.scale]  # pixel unshuffle: every net upsamples 4x
        self.fold = fold
        c = config.num_feat
        self.conv_first = nn.Conv2d(config.in_ch * fold * fold, c, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(c, config.num_grow_ch) for _ in range(config.num_block)))
        self.conv_body = nn.Conv2d(c, c, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv_hr = nn.Conv2d(c, c, 3, 1, 1)
        self.conv_last = nn.Conv2d(c, config.out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 3, sH, sW)
        if self.fold > 1:
            x = F.pixel_unshuffle(x, self.fold)  # (B, 3 f^2, H/f, W/f)
        feat = self.conv_first(x)  # (B, F, h, w)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.interpolate(feat, scale_factor=2, mode="nearest")  # (B, F, 2h, 2w)
        feat = F.leaky_relu(self.conv_up1(feat), 0.2)
        feat = F.interpolate(feat, scale_factor=2, mode="nearest")  # (B, F, 4h, 4w)
        feat = F.leaky_relu(self.conv_up2(feat), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))  # (B, 3, 4h, 4w)


# -- SRVGGNetCompact -----------------------------------------------------------------------------


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU()
    return nn.LeakyReLU(negative_slope=0.1)


class SRVGGNetCompact(nn.Module):
    def __init__(self, config: SRVGGConfig):
        super().__init__()
        self.config = config
        c, s = config.num_feat, config.scale
        # body.0 conv, body.1 activation, ... body.{2n+2} the last conv: the released names
        layers: list[nn.Module] = [nn.Conv2d(config.in_ch, c, 3, 1, 1)]
        layers.append(_activation(config.act_type, c))
        for _ in range(config.num_conv):
            layers += [nn.Conv2d(c, c, 3, 1, 1), _activation(config.act_type, c)]
        layers.append(nn.Conv2d(c, config.out_ch * s * s, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.fold = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 3, sH, sW)
        out = x
        for layer in self.body:
            out = layer(out)  # (B, F, H, W); the last: (B, 3 s^2, H, W)
        out = F.pixel_shuffle(out, self.config.scale)  # (B, 3, sH, sW)
        # the net learns the residual over the nearest-neighbour upscale
        return out + F.interpolate(x, scale_factor=self.config.scale, mode="nearest")


# -- building and running ------------------------------------------------------------------------


class Upscaler(nn.Module):
    """One of the two nets, and the bicubic resize an ncnn x2/x3 conversion ends with."""

    def __init__(self, config: UpscalerConfig):
        super().__init__()
        self.config = config
        self.net = RRDBNet(config) if isinstance(config, RRDBNetConfig) else SRVGGNetCompact(config)

    @property
    def scale(self) -> int:
        """How many output pixels per input pixel, along each side."""
        return self.config.output_scale or self.config.scale

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this (the pixel unshuffle's fold)."""
        return self.net.fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in 0..1 -> (B, 3, sH, sW)
        out = self.net(x)
        if self.config.output_scale and self.config.output_scale != self.config.scale:
            height, width = x.shape[-2] * self.scale, x.shape[-1] * self.scale
            # ncnn's Interp bicubic: A = -0.75, half-pixel centres, edges clamped, as torch's
            out = F.interpolate(out, size=(height, width), mode="bicubic", align_corners=False)
        return out


def build_upscaler(config: UpscalerConfig) -> Upscaler:
    return Upscaler(config)


class UpscaleCancelled(Exception):
    """``cancel`` was set: the upscale stopped between two tiles."""


# the working memory a tile may take when the caller names no tile size
TILE_BUDGET = 512 * 2**20


def tile_working_bytes(upscaler: Upscaler, tile: int, overlap: int) -> int:
    """A bound on the memory one tile's forward pass needs, independent of the picture:
    ``(tile + 2 overlap)^2 * 4 bytes * K``, K the float32 values alive at once per input pixel
    at the net's widest point: a convolution's input and output and its im2col workspace (9
    values per input channel), 11 F for F channels; in RRDBNet the widest point is after the
    trunk's two 2x upsamplings (16 times the pixels: 176 F), in SRVGGNetCompact any hidden
    convolution (11 F); plus the tile's input and its s^2-times-larger output. Measured for
    the shipped SRVGGNetCompact (F = 64, x4) at tile 192, overlap 20: about 120 MB against
    this bound's 175 MB (benchmarks/README.md)."""
    config = upscaler.config
    s = config.scale
    widest = 11 * config.num_feat
    if isinstance(config, RRDBNetConfig):
        dense = 2 * (config.num_feat + 4 * config.num_grow_ch) + 9 * config.num_feat
        widest = max(16 * widest // upscaler.net.fold**2, dense)
    side = tile + 2 * overlap
    return side * side * 4 * (widest + config.in_ch + 3 * config.out_ch * s * s)


def largest_tile(upscaler: Upscaler, overlap: int, budget: int = TILE_BUDGET) -> int:
    """The largest tile (a multiple of 8, 16 to 1024 px) whose working memory is within
    ``budget``: 352 px for the shipped upscaler at overlap 20, 64 for RealESRGAN_x4plus."""
    tile = 1024
    while tile > 16 and tile_working_bytes(upscaler, tile, overlap) > budget:
        tile -= 8
    return tile


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
    ):
        raise ValueError("upscale takes an RGB picture: a PIL image or a uint8 array H x W x 3")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"upscale: the picture has no pixels ({image.shape[1]}x{image.shape[0]})")
    return image


def _spans(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) cores covering ``length`` pixels, each ``tile`` long but the last."""
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


@torch.inference_mode()
def upscale(
    image: np.ndarray | Image.Image,
    upscaler: Upscaler,
    tile: int | None = None,
    overlap: int = 20,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``image`` (RGB, uint8 H x W x 3 or PIL) upscaled ``upscaler.scale`` times: uint8
    sH x sW x 3.

    The picture is cut into ``tile`` x ``tile`` cores (default: the largest whose working
    memory stays within ``TILE_BUDGET``, ``largest_tile``); each runs through the net with up to
    ``overlap`` pixels of the picture around it (none past the picture's edge, which the net
    pads with zeros as it would the whole picture), and only the core's output is kept. Where
    ``overlap`` covers the net's receptive field (18 px for SRVGGNetCompact with 16 hidden
    convolutions) the result equals the untiled one up to float rounding; RRDBNet's field is
    wider than any tile, and its tiles differ from the whole-picture run by what the far
    context contributes (within 2/255 at overlap 12 in the tests' small net).
    Peak working memory: ``tile_working_bytes(upscaler, tile, overlap)``, plus the result.
    ``cancel`` is checked before each tile (UpscaleCancelled); ``progress(done, total)`` after.
    """
    pixels = _as_array(image)
    if tile is None:
        tile = largest_tile(upscaler, overlap)
    if tile < 8 or overlap < 0:
        raise ValueError(f"upscale: tile must be >= 8 and overlap >= 0, got {tile} and {overlap}")
    multiple = upscaler.multiple
    tile = max(multiple, tile // multiple * multiple)
    overlap = math.ceil(overlap / multiple) * multiple
    height, width = pixels.shape[:2]
    # an RRDBNet x2/x1 folds 2x2/4x4 pixels: pad the picture to a multiple, cropped at the end
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    full_h, full_w = pixels.shape[:2]
    s = upscaler.scale
    device = next(upscaler.parameters()).device
    dtype = next(upscaler.parameters()).dtype
    result = np.empty((full_h * s, full_w * s, 3), dtype=np.uint8)
    rows, columns = _spans(full_h, tile), _spans(full_w, tile)
    total, done = len(rows) * len(columns), 0
    for top, bottom in rows:
        for left, right in columns:
            if cancel is not None and cancel.is_set():
                raise UpscaleCancelled("the upscale was cancelled")
            y0, y1 = max(0, top - overlap), min(full_h, bottom + overlap)
            x0, x1 = max(0, left - overlap), min(full_w, right + overlap)
            crop = torch.from_numpy(pixels[y0:y1, x0:x1].copy())  # (h, w, 3) uint8
            x = crop.to(device).permute(2, 0, 1)[None].to(dtype) / 255.0  # (1, 3, h, w)
            out = upscaler(x)[0]  # (3, s h, s w)
            core = out[:, (top - y0) * s : (bottom - y0) * s, (left - x0) * s : (right - x0) * s]
            core = (core.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
            result[top * s : bottom * s, left * s : right * s] = core.permute(1, 2, 0).cpu().numpy()
            done += 1
            if progress is not None:
                progress(done, total)
    return result[: height * s, : width * s]
