"""The working area and the upscaler, measured (issue 30): which area each model family defaults
to, and what the picture gains.

``--scenes``: the embedded model's completion fidelity (``dalle eval``'s completion cases: the
bottom-right place of a scene regenerated under a new caption, scored at the model's size) on
scenes drawn at 2x and 4x the model's size, completed with the whole picture and with the
working area ``auto``. The default for models trained on whole scenes follows from it.

``--photos``: real photos (scikit-image's, and Debian's mate-backgrounds wallpapers, two of them
at least 1920 px wide) with a bottom-right rectangle of a quarter and of a sixteenth of the
picture, completed with the whole picture (Lanczos: what shipped before), the working area auto,
and the area auto with the shipped upscaler. Per run: picture pixels per model pixel, and
sharpness: the mean gradient magnitude inside the rectangle over that of the kept band around
it (1.00: as sharp as its surroundings; a blown-up patch is far below). Each run is made twice:
"drawn", the model sampling the rectangle under a caption (the embedded model paints flat
scenes, so its figure mixes resolution with content), and "redrawn", the rectangle's own tokens
decoded (the picture as the tokenizer sees it: resolution alone, content held). ``--sheet``
writes contact sheets of the rectangles' surroundings (NAME.png redrawn, NAME-drawn.png).

    (cd /tmp/wall && apt-get download gnome-backgrounds mate-backgrounds &&
     for f in *.deb; do dpkg-deb -x $f x; done)
    PYTHONPATH=. python benchmarks/working_area.py --scenes --count 60
    PYTHONPATH=. python benchmarks/working_area.py --photos \
        --wallpapers /tmp/wall/x/usr/share/backgrounds/mate/nature --sheet docs/working_area.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.bundle import load
from model.bundle.upscaler_files import load_upscaler
from model.config import SamplingOptions
from model.evaluation.evaluate import EvalConfig, completion_fidelity
from model.inference import sampling
from model.inference.completion import Completion, complete_all

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
WALLPAPERS = ("Garden.jpg", "Storm.jpg")  # mate nature: 2560 and 1920 px wide
RECTANGLES = {"quarter": 0.5, "sixteenth": 0.25}  # the rectangle's side over the picture's
MODES = ("whole", "auto", "auto+upscaler")
CAPTION = "a small red circle on a green background"
# (scale, area): the model's own size as the reference, then 2x and 4x with each area
SCENE_RUNS = [(1, "whole"), (2, "whole"), (2, "auto"), (4, "whole"), (4, "auto")]


def scenes(bundle, count: int, samples: int) -> list[dict]:
    config = EvalConfig(count=count, sampling=SamplingOptions(n=samples))
    rows = []
    for scale, area in SCENE_RUNS:
        began = time.perf_counter()
        result = completion_fidelity(bundle, "seen", config, scale=scale, area=area)
        rows.append(
            {
                "scale": scale,
                "area": area,
                "pixels_per_model_pixel": result.get("picture_pixels_per_model_pixel", 1.0),
                "right_reranked": result["reranked"]["accuracy"],
                "right_first": result["first"]["accuracy"],
                "right_any": result["any"]["accuracy"],
                "kept_identical": result["kept_region_identical"],
                "seconds": time.perf_counter() - began,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def photos(wallpapers: Path | None) -> dict[str, Image.Image]:
    from skimage import data

    found = {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in SKIMAGE_PHOTOS}
    for name in WALLPAPERS if wallpapers else ():
        path = wallpapers / name
        if path.is_file():
            found[path.stem] = Image.open(path).convert("RGB")
    return found


def gradient(image: np.ndarray) -> np.ndarray:
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    dy, dx = np.gradient(grey)
    return np.hypot(dx, dy)


def sharpness(result: Image.Image, corner: tuple[int, int]) -> float:
    """Mean gradient magnitude inside the rectangle over that of the kept band around it (as
    wide as half the rectangle's shorter side), 4 px clear of the seam on both sides."""
    magnitude = gradient(np.asarray(result))
    x0, y0 = corner
    height, width = magnitude.shape
    band = max(8, min(width - x0, height - y0) // 2)
    inside = magnitude[y0 + 4 :, x0 + 4 :]
    kept = np.zeros_like(magnitude, dtype=bool)
    kept[max(0, y0 - band) : max(0, y0 - 4), max(0, x0 - band) :] = True
    kept[max(0, y0 - band) :, max(0, x0 - band) : max(0, x0 - 4)] = True
    return float(inside.mean() / max(magnitude[kept].mean(), 1e-9))


def redrawn(bundle, image, plan, caption, options, cancel=None, **settings):
    """A sampler that keeps every token: the picture's own tokens, decoded."""
    with torch.inference_mode():
        tokens = bundle.vae.encode(image.unsqueeze(0).to(bundle.device))
        images = bundle.vae.decode(tokens).float().cpu()
    yield sampling.Done(tokens, images, None, 0, 0.0, 0.0, 0, [0])


def corner_of(picture: Image.Image, fraction: float) -> tuple[int, int]:
    width, height = picture.size
    return round(width * (1 - fraction)), round(height * (1 - fraction))


def run_photo(bundle, upscaler, picture: Image.Image, fraction: float, mode: str, sampler=None):
    completion = Completion.at_pixel(
        bundle,
        picture,
        corner_of(picture, fraction),
        CAPTION,
        SamplingOptions(n=1, seed=1),
        area="whole" if mode == "whole" else "auto",
        upscaler=upscaler if mode == "auto+upscaler" else None,
        precision="fp32",
        sampler=sampler,
    )
    began = time.perf_counter()
    pasted, _ = complete_all(completion)
    seconds = time.perf_counter() - began
    size = bundle.config.vae.image_size
    figures = {
        "pixels_per_model_pixel": completion.area.pixels_per_model_pixel(size),
        "sharpness": sharpness(pasted[0], completion.corner),
        "seconds": seconds,
    }
    return pasted[0], figures


def surroundings(image: Image.Image, corner: tuple[int, int], side: int = 200) -> Image.Image:
    """The rectangle's corner and what is around it, ``side`` px square (scaled)."""
    x0, y0 = corner
    width, height = image.size
    reach = min(width - x0, height - y0, x0, y0) or min(width, height) // 4
    box = (x0 - reach, y0 - reach, min(width, x0 + reach), min(height, y0 + reach))
    return image.crop(box).resize((side, side), Image.Resampling.LANCZOS)


def photo_table(bundle, upscaler, found: dict[str, Image.Image], sheet: Path | None) -> list:
    rows, tiles, drawn_tiles = [], [], []
    for name, picture in found.items():
        for rectangle, fraction in RECTANGLES.items():
            row = {"photo": f"{name} ({picture.width}x{picture.height})", "rectangle": rectangle}
            corner = corner_of(picture, fraction)
            shown, drawn_shown = [], []
            for mode in MODES:
                drawn, figures = run_photo(bundle, upscaler, picture, fraction, mode)
                again, again_figures = run_photo(bundle, upscaler, picture, fraction, mode, redrawn)
                figures["sharpness_redrawn"] = again_figures["sharpness"]
                row[mode] = figures
                shown.append(surroundings(again, corner))
                drawn_shown.append(surroundings(drawn, corner))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if rectangle == "sixteenth":
                tiles.append((row["photo"], shown))
                drawn_tiles.append((row["photo"], drawn_shown))
    if sheet is not None:
        write_sheet(tiles, sheet)
        write_sheet(drawn_tiles, sheet.with_name(f"{sheet.stem}-drawn{sheet.suffix}"))
    return rows


def write_sheet(tiles: list, path: Path, side: int = 200) -> None:
    label = 18
    canvas = Image.new("RGB", (side * len(MODES), (side + label) * len(tiles) + label), "white")
    draw = ImageDraw.Draw(canvas)
    for column, mode in enumerate(MODES):
        draw.text((column * side + 4, 2), mode, fill="black")
    for index, (name, images) in enumerate(tiles):
        top = label + index * (side + label)
        draw.text((4, top + 2), name, fill="black")
        for column, image in enumerate(images):
            canvas.paste(image, (column * side, top + label))
    canvas.save(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="default: the embedded model")
    parser.add_argument("--scenes", action="store_true")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--photos", action="store_true")
    parser.add_argument("--wallpapers", type=Path)
    parser.add_argument("--sheet", type=Path)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    from model.bundle import default_bundle_path

    bundle = load(args.bundle or default_bundle_path(), "cpu")
    out = {}
    if args.scenes:
        out["scenes"] = scenes(bundle, args.count, args.samples)
    if args.photos:
        upscaler, _ = load_upscaler()
        out["photos"] = photo_table(bundle, upscaler, photos(args.wallpapers), args.sheet)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
