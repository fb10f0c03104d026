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

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.files import ImageError, open_image, to_rgb  # noqa: F401 - re-exported


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


@dataclass(frozen=True)
class Placement:
    """Where the user's image (width x height) lies in the model's size x size square."""

    width: int
    height: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.width, self.height)

    @property
    def content(self) -> tuple[int, int]:
        """(w, h) of the scaled image inside the square, at least one pixel each."""
        return (
            max(1, round(self.width * self.scale)),
            max(1, round(self.height * self.scale)),
        )

    def cell_at(self, x: float, y: float, factor: int) -> tuple[int, int]:
        """The token cell (row, col) that holds user pixel (x, y)."""
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise ValueError(f"pixel ({x}, {y}) is outside the {self.width}x{self.height} image")
        return int(y * self.scale // factor), int(x * self.scale // factor)

    def pixel_of(self, cell: tuple[int, int], factor: int) -> tuple[int, int]:
        """The user pixel (x, y) where the rectangle from ``cell`` starts (clamped to the image)."""
        row, col = cell
        x = min(self.width, math.ceil(col * factor / self.scale - 1e-6))
        y = min(self.height, math.ceil(row * factor / self.scale - 1e-6))
        return x, y

    def visible_grid(self, factor: int) -> tuple[int, int]:
        """(rows, cols) of token cells that hold some of the image; the rest is padding."""
        w, h = self.content
        return math.ceil(h / factor), math.ceil(w / factor)

    def grid_covers_image(self, cell: tuple[int, int], factor: int) -> bool:
        """True when the rectangle from ``cell`` touches the image (not only its padding)."""
        x, y = self.pixel_of(cell, factor)
        return x < self.width and y < self.height


def to_model(image: Image.Image, size: int) -> tuple[torch.Tensor, Placement]:
    """RGB image -> ((3, size, size) float tensor in [0, 1], placement)."""
    placement = Placement(image.width, image.height, size)
    w, h = placement.content
    scaled = np.asarray(image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS))
    padded = np.pad(scaled, ((0, size - h), (0, size - w), (0, 0)), mode="edge")
    tensor = torch.from_numpy(padded.copy()).permute(2, 0, 1).float() / 255.0
    return tensor, placement


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB image."""
    array = (tensor.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    return Image.fromarray(array.cpu().numpy(), "RGB")


def paste_back(
    original: Image.Image,
    decoded: torch.Tensor,
    placement: Placement,
    cell: tuple[int, int],
    factor: int,
    feather: int = 0,
) -> Image.Image:
    """The original with the rectangle from ``cell`` replaced by the decoded pixels.

    Outside the rectangle every pixel is the original's, bit for bit. ``feather`` blends the
    decoded pixels in over that many pixels inside the rectangle's top and left edges.
    """
    w, h = placement.content
    model_view = to_pil(decoded).crop((0, 0, w, h))
    regenerated = np.asarray(
        model_view.resize((placement.width, placement.height), Image.Resampling.LANCZOS)
    ).astype(np.float32)
    result = np.asarray(original.convert("RGB")).astype(np.float32)
    x0, y0 = placement.pixel_of(cell, factor)
    weight = np.zeros((placement.height, placement.width), dtype=np.float32)
    weight[y0:, x0:] = 1.0
    if feather > 0:
        ramp_x = np.clip((np.arange(placement.width) - x0 + 1) / (feather + 1), 0, 1)
        ramp_y = np.clip((np.arange(placement.height) - y0 + 1) / (feather + 1), 0, 1)
        weight *= np.minimum(ramp_y[:, None], ramp_x[None, :])
        weight[:y0, :] = 0
        weight[:, :x0] = 0
    blended = result * (1 - weight[..., None]) + regenerated * weight[..., None]
    out = np.where(weight[..., None] > 0, np.round(blended), result).astype(np.uint8)
    return Image.fromarray(out, "RGB")
