"""Bringing a user's image to the model's S x S and the result back to the user's resolution.

The rule: scale the image so that its longer side is S (aspect kept), anchor it at the top-left
and pad the right or bottom strip by repeating the edge pixels. Nothing of the image is cropped
away, so every pixel can be kept or regenerated; the padding only ever lies right of or below the
image, and since the rectangle always reaches the grid's bottom-right corner, the padding inside
it is sampled and dropped while the padding outside it is kept context.

The result keeps the user's pixels exactly outside the rectangle; inside it, the decoded pixels
are scaled to the original resolution, optionally feathered over a few pixels at the seam.
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


def check_image_batch(images: torch.Tensor, channels: int, multiple: int, what: str) -> None:
    """Raise ValueError unless ``images`` is (B, channels, H, W) with H and W multiples of
    ``multiple`` (an image tokenizer's input; ``what`` names the multiple in the message)."""
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(
            f"expected images of shape (B, {channels}, H, W), got {tuple(images.shape)}"
        )
    if images.shape[2] % multiple or images.shape[3] % multiple:
        raise ValueError(
            f"image height and width must be multiples of {what} {multiple}, "
            f"got {tuple(images.shape[2:])}"
        )


def check_token_grid(tokens: torch.Tensor, vocab_size: int) -> None:
    """Raise ValueError unless ``tokens`` is an integer (B, G, G) grid of ids in [0, vocab_size)
    (an image tokenizer's decoder input)."""
    if tokens.ndim != 3 or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError(
            f"expected integer tokens of shape (B, G, G), got {tokens.dtype} {tuple(tokens.shape)}"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}), "
            f"got [{int(tokens.min())}, {int(tokens.max())}]"
        )


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
) -> Image.Image:
    """The original with the rectangle from ``cell`` replaced by the decoded pixels.

    Outside the rectangle every pixel is the original's, bit for bit. ``feather`` blends the
    decoded pixels in over that many pixels inside the rectangle's top and left edges.
    """
    zoom = decoded.shape[-1] / geometry.size  # a decoder may draw finer than it reads
    w, h = (max(1, round(side * zoom)) for side in geometry.content)
    model_view = to_pil(decoded).crop((0, 0, w, h))
    regenerated = np.asarray(
        model_view.resize((geometry.width, geometry.height), Image.Resampling.LANCZOS)
    ).astype(np.float32)
    result = np.asarray(original.convert("RGB")).astype(np.float32)
    x0, y0 = geometry.pixel_of(cell)
    weight = np.zeros((geometry.height, geometry.width), dtype=np.float32)
    weight[y0:, x0:] = 1.0
    if feather > 0:
        ramp_x = np.clip((np.arange(geometry.width) - x0 + 1) / (feather + 1), 0, 1)
        ramp_y = np.clip((np.arange(geometry.height) - y0 + 1) / (feather + 1), 0, 1)
        weight *= np.minimum(ramp_y[:, None], ramp_x[None, :])
        weight[:y0, :] = 0
        weight[:, :x0] = 0
    blended = result * (1 - weight[..., None]) + regenerated * weight[..., None]
    out = np.where(weight[..., None] > 0, np.round(blended), result).astype(np.uint8)
    return Image.fromarray(out, "RGB")
