"""A small contrastive image–caption scorer that orders sampled candidates, as CLIP does for DALL·E.

The paper draws many samples and keeps those a contrastive model ranks highest. No CLIP can be
downloaded here, so we train a small one on our own caption–image pairs: a conv image tower and a
transformer text tower over the bundle's BPE ids, both projected to a shared unit sphere and trained
with the symmetric InfoNCE loss and a learned temperature (Radford et al. 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import RerankerConfig


class ImageTower(nn.Module):
    """Conv stages halving the resolution down to 8x8, then global average pooling."""

    def __init__(self, config: RerankerConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width, size, channels = config.image_width, config.image_size, 3
        while size > 8:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1),
                nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GELU(),
            ]
            channels, width, size = width, width * 2, size // 2
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(channels, config.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.body(images * 2 - 1)  # (B, C, 8, 8)
        return self.proj(x.mean(dim=(2, 3)))  # (B, dim)


class TextTower(nn.Module):
    def __init__(self, config: RerankerConfig):
        super().__init__()
        self.embed = nn.Embedding(config.text_vocab, config.dim)
        self.pos = nn.Parameter(torch.zeros(config.text_len, config.dim))
        layer = nn.TransformerEncoderLayer(
            config.dim, config.heads, 4 * config.dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, config.text_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(config.dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.body(self.embed(text) + self.pos)  # (B, T, dim)
        return self.ln(x.mean(dim=1))  # per-position padding ids make mean pooling safe


class Reranker(nn.Module):
    def __init__(self, config: RerankerConfig):
        super().__init__()
        self.config = config
        self.image = ImageTower(config)
        self.text = TextTower(config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial 1/τ

    def embed(self, images: torch.Tensor, text: torch.Tensor):
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(text), dim=-1)

    def loss(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE over the batch: each image's caption against the others."""
        image_emb, text_emb = self.embed(images, text)
        logits = self.log_scale.clamp(max=math.log(100)).exp() * image_emb @ text_emb.t()
        labels = torch.arange(len(images), device=images.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

    @torch.inference_mode()
    def score(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity of each image (B, 3, S, S) in [0, 1] with its caption ids."""
        image_emb, text_emb = self.embed(images, text.to(images.device))
        return (image_emb * text_emb).sum(dim=-1)
