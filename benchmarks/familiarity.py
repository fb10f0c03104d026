"""Calibrate ``model.inference.familiarity``: reconstruction PSNR of scenes against natural-looking
pictures.

    python benchmarks/familiarity.py [--bundle B ...] [--count 200] [--photo FILE ...]

For each bundle: its reference (``model.inference.familiarity.reference_psnr``: the typical-cell
PSNR of its own scenes, low end) and the card's recorded evaluation PSNR for comparison. Then, for
each group of pictures, the typical-cell PSNR at the model's size, how far below the reference it
lies, the share ``model.inference.familiarity`` calls far, and the whole picture's PSNR (which does
not separate the groups). The groups: scenes of the seen and held-out splits (drawn at the model's
size, and at 256 px brought down as an opened file is), pictures drawn here the way a new user's
might look (a sky over hills, a photo-like texture, a portrait-like figure, the selftest's colour
ramp), and any real photos given. The pictures come from fixed seeds, so tests/test_familiarity.py
measures the same ones.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = [
    ROOT / "resources/models/v1/default-2026-11-25.dalle.safetensors",  # the dVAE default before v2
    ROOT / "resources/models/default.dalle.safetensors",
]


def sky_and_hills(width: int = 320, height: int = 240) -> Image.Image:
    """A blue sky fading to haze, a soft sun, two rows of shaded green hills."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = y / height
    sky = np.stack([70 + 150 * t, 130 + 100 * t, 210 + 35 * t], axis=-1)
    sun = np.exp(-((x - 0.75 * width) ** 2 + (y - 0.22 * height) ** 2) / (2 * (0.06 * width) ** 2))
    sky += sun[..., None] * np.array([180, 150, 40], np.float32)
    image = sky
    for base, amplitude, waves, colour, phase in (
        (0.55, 0.08, 1.6, (90, 150, 70), 0.3),
        (0.72, 0.10, 2.3, (50, 115, 40), 1.7),
    ):
        ridge = height * (
            base
            + amplitude * np.sin(2 * math.pi * waves * x[0] / width + phase)
            + 0.3 * amplitude * np.sin(2 * math.pi * 5.1 * x[0] / width)
        )
        below = y >= ridge[None, :]
        depth = np.clip((y - ridge[None, :]) / (0.4 * height), 0, 1)[..., None]
        shade = np.array(colour, np.float32) * (1.1 - 0.5 * depth)
        image = np.where(below[..., None], shade, image)
    rng = np.random.default_rng(1)
    image = image + rng.normal(0, 3, image.shape)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    return picture.filter(ImageFilter.GaussianBlur(0.8))


def photo_texture(width: int = 320, height: int = 240, seed: int = 2) -> Image.Image:
    """Noise at several scales, coloured like foliage and bark: texture everywhere, as a photo."""
    rng = np.random.default_rng(seed)
    field = np.zeros((height, width), np.float32)
    for octave, weight in ((4, 1.0), (8, 0.6), (16, 0.4), (48, 0.25), (160, 0.15)):
        small = rng.random((max(2, height * octave // width), octave)).astype(np.float32)
        layer = Image.fromarray(small * 255).resize((width, height), Image.Resampling.BICUBIC)
        field += weight * np.asarray(layer, np.float32) / 255
    field = (field - field.min()) / (field.max() - field.min())
    dark, light = np.array([40, 50, 25], np.float32), np.array([170, 190, 110], np.float32)
    image = dark + field[..., None] * (light - dark)
    image += rng.normal(0, 6, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def portrait(width: int = 240, height: int = 300) -> Image.Image:
    """A head and shoulders: soft skin-toned face, dark hair, eyes, a shirt, a lit backdrop."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = np.exp(-((x - 0.3 * width) ** 2 + (y - 0.3 * height) ** 2) / (2 * (0.5 * width) ** 2))
    background = np.stack([90 + 80 * light, 80 + 70 * light, 70 + 50 * light], axis=-1)
    picture = Image.fromarray(background.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    cx = width // 2
    draw.ellipse((cx - 95, int(0.78 * height), cx + 95, height + 120), fill=(40, 55, 90))
    draw.ellipse((cx - 62, 38, cx + 62, 190), fill=(50, 35, 25))  # hair
    draw.rectangle((cx - 22, 170, cx + 22, 240), fill=(200, 150, 120))  # neck
    draw.ellipse((cx - 52, 60, cx + 52, 210), fill=(225, 175, 145))  # face
    for ex in (cx - 22, cx + 22):
        draw.ellipse((ex - 9, 115, ex + 9, 127), fill=(245, 245, 240))
        draw.ellipse((ex - 4, 116, ex + 4, 126), fill=(60, 40, 30))
    draw.polygon([(cx, 125), (cx - 8, 160), (cx + 8, 160)], fill=(205, 150, 120))
    draw.chord((cx - 22, 165, cx + 22, 190), 0, 180, fill=(170, 80, 80))
    picture = picture.filter(ImageFilter.GaussianBlur(2.5))
    rng = np.random.default_rng(3)
    noisy = np.asarray(picture, np.float32) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def colour_ramp(width: int = 160, height: int = 120) -> Image.Image:
    """The app's selftest picture: red across, green down, blue stripes."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    return Image.fromarray(image.astype(np.uint8), "RGB")


NATURAL = {
    "sky and hills": sky_and_hills,
    "photo-like texture": photo_texture,
    "portrait-like": portrait,
    "colour ramp (selftest)": colour_ramp,
}


def _mean_psnr(vae, x, content):
    """The whole picture's PSNR (what `dalle eval` records as psnr_db), for comparison."""
    import torch
    import torch.nn.functional as F

    decoded = vae.decode(vae.encode(x)).float()
    if decoded.shape[-2:] != x.shape[-2:]:
        decoded = F.interpolate(decoded, size=x.shape[-2:], mode="area")
    width, height = content
    mse = (decoded - x)[..., :height, :width].pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (-10 * torch.log10(mse)).tolist()


def _row(name: str, typical: list[float], mean: list[float], reference: float) -> str:
    from model.inference.familiarity import FAR_BELOW_DB

    typical, mean = np.asarray(typical), np.asarray(mean)
    far = float((reference - typical > FAR_BELOW_DB).mean())
    span = (
        f"{typical.min():.1f} .. {typical.max():.1f}" if len(typical) > 1 else f"{typical[0]:.1f}"
    )
    whole = f"{mean.min():.1f} .. {mean.max():.1f}" if len(mean) > 1 else f"{mean[0]:.1f}"
    return (
        f"| {name} | {len(typical)} | {span} | {reference - typical.max():.1f} .. "
        f"{reference - typical.min():.1f} | {far:.0%} | {whole} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", help="default: the two shipped bundles")
    parser.add_argument("--count", type=int, default=200, help="scenes per split")
    parser.add_argument("--photo", action="append", default=[], help="a real photo to measure")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from model import bundle as bundle_io
    from model.data import scenes
    from model.files import open_image
    from model.geometry import Geometry
    from model.inference import familiarity
    from model.inference.images import to_model

    torch.set_grad_enabled(False)
    for path in args.bundle or BUNDLES:
        bundle = bundle_io.load(path, torch.device("cpu"))
        vae, size = bundle.vae, bundle.config.vae.image_size
        reference = familiarity.reference_psnr(bundle)
        print(f"\n{bundle.card.get('name', path)} ({Path(path).name}): {size} px")
        print(
            f"reference (typical cell, {familiarity.REFERENCE_SCENES} scenes, "
            f"{familiarity.REFERENCE_QUANTILE:.0%} quantile) {reference:.1f} dB; far below "
            f"{reference - familiarity.FAR_BELOW_DB:.1f} dB; card's eval psnr_db "
            f"{familiarity_card(bundle.card)}"
        )
        print("| pictures | n | typical cell dB | below reference | far | whole picture dB |")
        print("|---|---|---|---|---|---|")

        def measured(pictures, vae=vae, size=size):
            typical, mean = [], []
            for picture in pictures:
                geometry = Geometry(picture.width, picture.height, size, vae.config.factor)
                x = to_model(picture, geometry)[None]
                typical += familiarity.typical_cell_psnr(vae, x, geometry.content).tolist()
                mean += _mean_psnr(vae, x, geometry.content)
            return typical, mean

        for split in ("train", "heldout"):
            pictures = [scenes.render_scene(2026, i, size, split)[0] for i in range(args.count)]
            print(_row(f"scenes, {split}, {size} px", *measured(pictures), reference))
        pictures = [scenes.render_scene(2027, i, 256)[0] for i in range(args.count // 4)]
        print(_row("scenes, train, opened 256 px file", *measured(pictures), reference))
        for name, draw in NATURAL.items():
            print(_row(name, *measured([draw()]), reference))
        for photo in args.photo:
            print(_row(f"photo {Path(photo).name}", *measured([open_image(photo)]), reference))
    return 0


def familiarity_card(card: dict) -> str:
    value = (card.get("eval") or {}).get("headline", {}).get("psnr_db")
    return f"{value:.1f} dB" if isinstance(value, float) else "not recorded"


if __name__ == "__main__":
    sys.exit(main())
