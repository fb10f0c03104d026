"""Bringing a user's image to the model's S x S and the result back to the user's resolution.

The rule: scale the image so that its longer side is S (aspect kept), anchor it at the top-left
and pad the right or bottom strip by repeating the edge pixels. Nothing of the image is cropped
away, so every pixel can be kept or regenerated; the padding only ever lies right of or below the
image: a region's padding cells are not sampled, and the padding outside it is kept context.

The result keeps the user's pixels exactly outside the region; inside it, the decoded pixels
are scaled to the original resolution, optionally feathered over a few pixels at its seams.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.files import ImageError, open_image, to_rgb  # noqa: F401 - re-exported
from model.geometry import Geometry


def load_image(path: str | Path) -> Image.Image:
    """A user's image file as RGB, its size checked before decoding (``model.files``)."""
    return open_image(path)


def to_model(image: Image.Image, geometry: Geometry) -> torch.Tensor:
    """RGB image -> (3, size, size) float tensor in [0, 1], placed as ``geometry`` says."""
    size = geometry.size
    w, h = geometry.content
    scaled = np.asarray(image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS))
    padded = np.pad(scaled, ((0, size - h), (0, size - w), (0, 0)), mode="edge")
    tensor = torch.from_numpy(padded.copy()).permute(2, 0, 1).float() / 255.0
    return tensor


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB image."""
    array = (tensor.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    return Image.fromarray(array.cpu().numpy(), "RGB")


def paste_back(
    original: Image.Image,
    decoded: torch.Tensor,
    geometry: Geometry,
    cell: tuple[int, int],
    feather: int = 0,
    end: tuple[int, int] | None = None,
) -> Image.Image:
    """The original with the region from ``cell`` to ``end`` (its bottom-right cell, exclusive;
    None: the bottom-right corner) replaced by the decoded pixels.

    Outside the region every pixel is the original's, bit for bit. ``feather`` blends the
    decoded pixels in over that many pixels inside the region's top and left edges, and inside
    its right and bottom edges where they lie inside the picture.

    The decoded view is resampled to the picture's size as a whole (a source ``box`` would
    resample only the rectangle, but Pillow's taps then differ by up to 27 levels), then only the
    rectangle is copied or blended, in 8 bits: pasting into a 48 MP picture no longer makes
    three float copies of it (issue 28: 19 s and gigabytes, now about 2 s).
    """
    x0, y0 = geometry.pixel_of(cell)
    x1, y1 = (geometry.width, geometry.height) if end is None else geometry.pixel_of(end)
    out = np.array(original.convert("RGB"), dtype=np.uint8)  # (H, W, 3), a copy
    if x0 >= x1 or y0 >= y1:
        return Image.fromarray(out, "RGB")
    resized = model_view(decoded, geometry).resize(
        (geometry.width, geometry.height), Image.Resampling.LANCZOS
    )
    inner = (x1 < geometry.width, y1 < geometry.height)
    blend_into(out, np.asarray(resized)[y0:y1, x0:x1], (x0, y0), feather, inner)
    return Image.fromarray(out, "RGB")


def model_view(decoded: torch.Tensor, geometry: Geometry) -> Image.Image:
    """The decoded square without its padding: the picture as the model drew it (a decoder may
    draw finer than it reads: ``zoom`` times the geometry's size)."""
    zoom = decoded.shape[-1] / geometry.size
    w, h = (max(1, round(side * zoom)) for side in geometry.content)
    return to_pil(decoded).crop((0, 0, w, h))


def blend_into(
    out: np.ndarray,
    region: np.ndarray,
    at: tuple[int, int],
    feather: int,
    inner: tuple[bool, bool] = (False, False),
) -> None:
    """Write ``region`` (h, w, 3) into ``out`` (H, W, 3 uint8) from pixel ``at``, blended in
    over ``feather`` pixels inside its top and left edges, and inside its right and bottom
    edges where ``inner`` says they lie inside the picture (a region that ends before its
    right, before its bottom)."""
    x0, y0 = at
    height, width = region.shape[:2]
    window = (slice(y0, y0 + height), slice(x0, x0 + width))
    if feather <= 0:
        out[window] = region
        return
    ramp_x = ramp(width, feather, inner[0])
    ramp_y = ramp(height, feather, inner[1])
    weight = np.minimum(ramp_y[:, None], ramp_x[None, :])[..., None]  # (height, width, 1)
    kept = out[window].astype(np.float32)
    blended = kept * (1 - weight) + region.astype(np.float32) * weight
    out[window] = np.round(blended).astype(np.uint8)


def ramp(length: int, feather: int, both: bool) -> np.ndarray:
    """(length,) float32 blend weights rising over ``feather`` pixels from the start, and
    falling over as many to the end when ``both``."""
    steps = np.arange(length)
    rising = (steps + 1) / (feather + 1)
    if both:
        rising = np.minimum(rising, (length - steps) / (feather + 1))
    return np.clip(rising, 0, 1).astype(np.float32)
