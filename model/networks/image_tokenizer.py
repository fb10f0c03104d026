"""What the three image tokenizers share: the ``ImageTokenizer`` protocol and the checks of what
they are given.

Our dVAE (``model.networks.dvae.DVAE``), our VQ tokenizer (``model.networks.vq.VQVAE``) and the
imported VQGANs (``model.networks.vqgan.VQGAN``: DALL·E Mega's f16, ruDALL-E's gumbel f8) turn a
square picture into a grid of token ids and back. The sampler, the evaluator and the studio ask
nothing else of them: a bundle's ``vae`` is any of the three.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ImageTokenizer(Protocol):
    """A picture (B, C, S, S) in [0, 1] to token ids (B, G, G) and back, G = S / factor."""

    @property
    def image_size(self) -> int: ...  # S: the resolution it was trained at

    @property
    def factor(self) -> int: ...  # pixels per cell along each side

    @property
    def grid(self) -> int: ...  # G = image_size / factor

    @property
    def vocab_size(self) -> int: ...  # ids are in [0, vocab_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...


class ConfigFacts:
    """The four facts of ``ImageTokenizer`` read off a tokenizer's ``config`` (a mixin of the
    dVAE, the VQ tokenizer and the VQGAN)."""

    config: Any

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def grid(self) -> int:
        return self.config.grid

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size


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
