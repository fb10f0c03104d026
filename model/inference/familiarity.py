"""What a model knows: how far a picture lies from the pictures its image tokenizer learnt.

A tokenizer draws back only what it was trained on. The embedded models learnt scenes of flat
coloured shapes (``model.data.scenes``); a sky-and-hills photo, encoded and decoded by them, comes
back as blocks of flat colour, and a completion of it can be no better. So the measure is the
tokenizer's own: encode the picture at the model's size, decode it, and read the PSNR of each
token cell of the picture (the edge padding beside a non-square one left out). The *typical
cell*, the median of those, is the figure: a scene is mostly flat colour that its tokenizer
redraws almost exactly, and only its few edge cells err; a natural picture's every cell is shaded
or textured, and most of them err. A colour cast over the whole picture is taken out first (each
channel's median difference): a blank white page comes back in the palette's white, 10 levels
darker, which is 28 dB but no block.

The whole picture's mean PSNR (what ``dalle eval`` records on the card) does not separate the
two: a busy scene's edges pull it as low as a photo's (measured below).

The bundle's own figure is its *reference*: the 5th percentile of the typical-cell PSNR of
``REFERENCE_SCENES`` scenes of its world (fixed seed), measured once per bundle; a picture is
*far* when its typical cell lies more than ``FAR_BELOW_DB`` below that. A gap in dB is a ratio
of squared errors, so the one rule serves a dVAE and a VQ tokenizer alike, and a new bundle (a
128 px decoder) brings its own reference.

Measured (issue 17; ``benchmarks/familiarity.py``: 200 scenes of each split at 64 px, 50 opened
from 256 px files; a drawn sky over hills, photo-like texture, portrait, colour ramp, two real
photos), dB:

    bundle                  reference  far below  scenes: lowest  pictures: highest
    default (dVAE, 64 px)      49.1       35.1         39.4              23.8
    v2 candidate (VQ, 64 px)   45.9       31.9         40.2              24.9

The whole picture's PSNR overlaps where the typical cell does not: dVAE scenes 17.5 to 34.9,
the drawn and real pictures 14.8 to 16.8; VQ scenes 24.6 to 40.7, the pictures 17.0 to 21.0.

Only a bundle trained on scenes is measured (``knows_scenes``): an imported real-weight model
(DALL·E Mega, ruDALL-E) knows photos, and a model trained on a user's own folder has no
description of its world here.

``new_scene`` draws a picture from that world for File › New scene: a completion case whose
bottom-right place holds another object than its caption says, so a Generate visibly redraws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.data import scenes
from model.geometry import Cell, Geometry
from model.inference.images import to_model

WORLD = "scenes of coloured shapes"  # what a scenes model was trained on, in the user's words
# A typical cell this far below the reference (a squared error 25 times) is far: across issue
# 17's gap on both shipped bundles (module docstring), nearer its middle than either side.
FAR_BELOW_DB = 14.0
REFERENCE_SCENES = 64  # scenes of the bundle's world its reference is measured on
REFERENCE_SEED = 17_004  # their dataset seed: the same scenes every time, for every bundle
REFERENCE_QUANTILE = 0.05  # the reference is this low in the scenes' spread, not their mean
MSE_FLOOR = 1e-10  # an exact cell is 100 dB, not infinite


@dataclass(frozen=True)
class Familiarity:
    """One picture measured against its bundle: typical-cell reconstruction PSNR in dB."""

    typical_db: float  # the picture's, at the model's size
    reference_db: float  # the bundle's, on scenes of its world

    @property
    def below_db(self) -> float:
        """How far below the reference the picture's typical cell lies (negative: above)."""
        return self.reference_db - self.typical_db

    @property
    def far(self) -> bool:
        return self.below_db > FAR_BELOW_DB


def knows_scenes(card: dict[str, Any]) -> bool:
    """True when ``card`` is a scenes model's: trained here (not imported), and every example
    caption it offers is written in the scenes' language (``scenes.parse_caption`` reads it)."""
    if card.get("imported") or card.get("stage") == "imported":
        return False
    examples = card.get("example_captions")
    if not isinstance(examples, list) or not examples:
        return False
    for caption in examples:
        try:
            scenes.parse_caption(str(caption))
        except ValueError:
            return False
    return True


@torch.inference_mode()
def typical_cell_psnr(
    vae, images: torch.Tensor, content: tuple[int, int] | None = None
) -> torch.Tensor:
    """The median over token cells of each image's reconstruction PSNR (dB) by ``vae``:
    images (B, 3, S, S) in [0, 1] -> (B,) float on the CPU. ``content`` (width, height): only
    the cells over those top-left pixels count (the rest is edge padding)."""
    device = next(vae.parameters()).device
    x = images.to(device).float()
    decoded = vae.decode(vae.encode(x)).float()
    if decoded.shape[-2:] != x.shape[-2:]:  # a decoder may draw finer than it reads
        decoded = F.interpolate(decoded, size=x.shape[-2:], mode="area")
    factor = vae.config.factor
    width, height = content or (x.shape[-1], x.shape[-2])
    rows, cols = math.ceil(height / factor), math.ceil(width / factor)
    difference = (decoded - x)[..., :height, :width]
    # a colour cast over the whole picture (pure white drawn as the palette's 245) is no block:
    # each channel's typical difference is taken out, only what varies across the picture counts
    cast = difference.flatten(2).median(dim=2).values[..., None, None]  # (B, 3, 1, 1)
    error = (difference - cast).pow(2).mean(dim=1, keepdim=True)  # (B, 1, height, width)
    cells = F.avg_pool2d(error, factor, ceil_mode=True)[:, 0, :rows, :cols]  # (B, rows, cols)
    psnr = -10 * torch.log10(cells.flatten(1).clamp_min(MSE_FLOOR))
    return psnr.median(dim=1).values.cpu()


def picture_psnr(bundle, image: Image.Image) -> float:
    """The typical-cell PSNR of a user's picture, brought to the model's square as a
    completion brings it (``model.inference.images.to_model``)."""
    size, factor = bundle.config.vae.image_size, bundle.config.vae.factor
    geometry = Geometry(image.width, image.height, size, factor)
    tensor = to_model(image, geometry)
    return float(typical_cell_psnr(bundle.vae, tensor[None], geometry.content)[0])


def scene_images(
    size: int, count: int = REFERENCE_SCENES, seed: int = REFERENCE_SEED, split: str = "train"
) -> torch.Tensor:
    """``count`` scenes of ``split`` at ``size`` px: (count, 3, size, size) in [0, 1]."""
    pictures = [
        np.asarray(scenes.render_scene(seed, index, size, split)[0]) for index in range(count)
    ]
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255


def reference_psnr(bundle) -> float:
    """The bundle's reference: see the module's docstring."""
    values = typical_cell_psnr(bundle.vae, scene_images(bundle.config.vae.image_size))
    return float(values.quantile(REFERENCE_QUANTILE))


def measure(bundle, image: Image.Image, reference: float | None = None) -> Familiarity:
    """How far ``image`` lies from ``bundle``'s training data (``reference``: a remembered
    ``reference_psnr(bundle)``, which costs a batch of scenes)."""
    if reference is None:
        reference = reference_psnr(bundle)
    return Familiarity(picture_psnr(bundle, image), reference)


def new_scene(seed: int, size: int, factor: int) -> tuple[Image.Image, str, Cell]:
    """A picture from the scenes' world at ``size`` px for a model of ``factor`` px cells: (the
    picture, the caption to complete it with, the rectangle's cell).

    The rectangle is the bottom-right place of the scene's 3x3 layout (from the first cell wholly
    inside it, as ``dalle eval`` completes), and the picture is an evaluation completion case:
    the object there differs in colour and shape from the one the caption names."""
    grid = Geometry(size, size, size, factor).grid
    corner = math.ceil(grid * 2 / 3)
    picture, target = scenes.completion_case(seed, 0, size, corner * factor)
    return picture, target.caption, (corner, corner)
