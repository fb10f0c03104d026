"""A small contrastive image–caption scorer that orders sampled candidates, as CLIP does for DALL·E.

The paper draws many samples and keeps those a contrastive model ranks highest. No CLIP can be
downloaded here, so we train a small one on our own caption–image pairs: a conv image tower and a
transformer text tower over the bundle's BPE ids, both projected to a shared unit sphere and trained
with the symmetric InfoNCE loss and a learned temperature (Radford et al. 2021).

Random in-batch captions are easy negatives: a background colour tells most of them apart. A
reranker must instead tell a "red star in the top left" from a "red heart in the top left", so each
caption also brings a hard negative, the same caption with one attribute word swapped (colour,
shape, count, size, side or relation), in the manner of NegCLIP (Yuksekgonul et al. 2023).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import RerankerConfig
from model.data.scenes.vocabulary import COLOURS, NUMBER_WORDS, OPPOSITES, SHAPES, SIZES, plural

# words that can be swapped for another of their group to make a hard negative caption: the
# scenes' colours, shapes, plural shapes, counts above one, sizes, and opposite sides
SWAP_GROUPS: tuple[tuple[str, ...], ...] = (
    COLOURS,
    SHAPES,
    tuple(plural(shape) for shape in SHAPES),
    tuple(word for count, word in NUMBER_WORDS.items() if count > 1),
    SIZES,
    *OPPOSITES,
)
_SWAPPABLE = {word: group for group in SWAP_GROUPS for word in group}


def hard_negative(caption: str, generator: torch.Generator | None = None) -> str | None:
    """``caption`` with one swappable word replaced by another of its group, or None when it has
    none. "a red star in the top left" may become "a red star in the bottom left"."""
    words = caption.split(" ")
    spots = [i for i, word in enumerate(words) if word.rstrip(",.") in _SWAPPABLE]
    if not spots:
        return None
    i = spots[int(torch.randint(len(spots), (1,), generator=generator))]
    core = words[i].rstrip(",.")
    others = [word for word in _SWAPPABLE[core] if word != core]
    words[i] = (
        others[int(torch.randint(len(others), (1,), generator=generator))] + words[i][len(core) :]
    )
    return " ".join(words)


class ImageTower(nn.Module):
    """Conv stages halving the resolution down to 8x8, pooled to 4x4 and flattened, so the
    embedding keeps where things are ("in the top left") and not only what they are.

    Pictures larger than ``config.image_size`` by a whole factor are area-averaged down to it
    first: a 64 px reranker ranks the candidates of a 128 px bundle (issue 17's decoder on the
    same 64 px codes) as it ranked that bundle's 64 px pictures."""

    def __init__(self, config: RerankerConfig):
        super().__init__()
        self.image_size = config.image_size
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
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.proj = nn.Linear(channels * 16, config.dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-1]
        if size != self.image_size:
            if images.shape[-2] != size or size % self.image_size:
                raise ValueError(
                    f"the reranker reads {self.image_size} px pictures or square multiples of "
                    f"that size, got {tuple(images.shape[-2:])}"
                )
            images = F.avg_pool2d(images, size // self.image_size)  # (B, 3, S, S) at its size
        x = self.pool(self.body(images * 2 - 1))  # (B, C, 4, 4)
        return self.proj(x.flatten(1))  # (B, dim)


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

    def loss(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        negatives: torch.Tensor | None = None,
        has_negative: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Symmetric InfoNCE over the batch: each image's caption against the others.

        ``negatives`` (B, T) are extra captions that match no image (hard negatives); they join
        the image-to-text side only, where ``has_negative`` (B,) bool marks the real ones.
        ``hard_accuracy`` is how often an image scores its caption above its own hard negative.
        """
        image_emb, text_emb = self.embed(images, text)
        scale = self.log_scale.clamp(max=math.log(100)).exp()
        logits = scale * image_emb @ text_emb.t()  # (B, B)
        labels = torch.arange(len(images), device=images.device)
        text_loss = F.cross_entropy(logits.t(), labels)
        metrics = {}
        if negatives is not None:
            negative_emb = F.normalize(self.text(negatives), dim=-1)
            extra = scale * image_emb @ negative_emb.t()  # (B, B)
            extra = extra.masked_fill(~has_negative[None, :], float("-inf"))
            own = extra.diagonal()
            hard = (logits.diagonal() > own)[has_negative].float()
            metrics["hard_accuracy"] = hard.mean().detach() if len(hard) else hard.sum()
            logits = torch.cat([logits, extra], dim=1)  # (B, 2B)
        image_loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        loss = (image_loss + text_loss) / 2
        return {"loss": loss, "accuracy": accuracy.detach(), **metrics}

    @torch.inference_mode()
    def score(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity of each image (B, 3, S, S) in [0, 1] with its caption ids."""
        image_emb, text_emb = self.embed(images, text.to(images.device))
        return (image_emb * text_emb).sum(dim=-1)
