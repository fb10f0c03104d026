"""Regions anywhere, measured on scenes (issue 31): an object in the middle or the top-left place
of the 3x3 layout regenerated under another caption, where the scorer is exact.

Each case is ``scenes.completion_case`` for that place (the object wholly inside a square region
that ends inside the picture, every other object wholly outside it; the source draws the object
in another colour and shape), completed by the embedded model at its own size under the
target's caption, one candidate kept per case, in four modes:

- naive: DALL·E's own rectangle, as the server did before regions anywhere: the sampler
  regenerates every cell from the region's top-left cell to the bottom-right corner, so no kept
  cell right of the region in its rows, nor below it, is seen; only the region is pasted back.
- margin: the whole picture (the model's size) with the region's end: every kept cell after
  the region is forced, so a region row sees the kept cells to its right in the rows above and
  the margin is the rest of the picture. Lookahead K = 1 is this mode bit for bit. (Not the
  area ``auto``: on a picture of the model's size it gives a square that ends a margin past the
  region but starts at 0, smaller than the model, so the picture is scaled up into it.)
- lookahead K = 4 and 8: margin, K candidates sampled, the one whose following kept cells are
  likeliest kept.

Figures per mode and split: right % (``scenes.score`` of the result against the target's
caption) with one standard error, the seam figure (mean absolute colour step, 0-255 averaged
over RGB, across the region's right and bottom borders, across its top and left borders (none
for the top-left place), and between neighbouring pixels of the kept picture), and seconds per
sampled candidate. ``--mini`` times a candidate with lookahead for a full-size random DALL·E
Mini (random weights: timing only) on a small region in the middle, K = 1 and 4.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/regions.py --count 20 \\
        --json /tmp/regions.json --sheet docs/regions.png --mini /tmp/mini-fp32.dalle.safetensors
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/regions.py --count 20 --first 20  # more

The random Mini: ``python benchmarks/random_bart_bundle.py --model mini --dtype fp32 --out
/tmp/mini-fp32.dalle.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.bundle import default_bundle_path, load
from model.config import SamplingOptions
from model.data import scenes
from model.inference.completion import Completion, complete_all

PLACES = {"middle": (1, 1), "top-left": (0, 0)}
MODES = {"naive": 1, "margin": 1, "lookahead 4": 4, "lookahead 8": 8}  # mode: K
SPLITS = {"seen": "train", "heldout": "heldout"}  # as ``dalle eval`` reads them
SEED = 31


def region_of(bundle, place: tuple[int, int]) -> tuple[int, int]:
    """The square region (start, end) in pixels: the cells wholly inside the place's third of
    the grid (the bottom-right place's is ``dalle eval``'s completion rectangle)."""
    grid, factor = bundle.config.transformer.grid, bundle.config.vae.factor
    row = place[0]
    return math.ceil(grid * row / 3) * factor, math.floor(grid * (row + 1) / 3) * factor


def complete(bundle, source, target, start: int, end: int, mode: str, seed: int):
    """One case completed in ``mode``: (the kept candidate, seconds per sampled candidate)."""
    completion = Completion.at_pixel(
        bundle,
        source,
        (start, start),
        target.caption,
        SamplingOptions(n=1, seed=seed),
        area="whole",
        end=(end, end),
        precision="fp32",
        lookahead=MODES[mode],
    )
    if mode == "naive":  # sample to the corner; paste only the region (completion.end)
        completion.plan = completion.geometry.plan(completion.cell)
    began = time.perf_counter()
    pasted, _ = complete_all(completion)
    return pasted[0], (time.perf_counter() - began) / MODES[mode]


def steps(image: Image.Image, start: int, end: int) -> dict[str, float]:
    """Mean absolute colour step across the region's right and bottom borders, its top and left
    ones (NaN where the region touches the picture's edge) and the kept picture's."""
    a = np.asarray(image).astype(np.float64)
    size = a.shape[0]
    s, e = slice(start, end), end
    far = []
    if e < size:
        far += [np.abs(a[s, e] - a[s, e - 1]), np.abs(a[e, s] - a[e - 1, s])]
    near = []
    if start > 0:
        near += [np.abs(a[s, start] - a[s, start - 1]), np.abs(a[start, s] - a[start - 1, s])]
    kept = np.ones(a.shape[:2], dtype=bool)
    kept[s, s] = False
    dx = np.abs(np.diff(a, axis=1))[kept[:, 1:] & kept[:, :-1]]
    dy = np.abs(np.diff(a, axis=0))[kept[1:] & kept[:-1]]
    return {
        "right_bottom": float(np.mean(np.concatenate(far))) if far else math.nan,
        "top_left": float(np.mean(np.concatenate(near))) if near else math.nan,
        "kept": float(np.mean(np.concatenate([dx, dy]))),
    }


def summary(rows: list[dict]) -> dict:
    right = np.array([r["right"] for r in rows], dtype=np.float64)
    out = {
        "n": len(rows),
        "right": float(right.mean()),
        "right_se": float(right.std(ddof=1) / math.sqrt(len(right))) if len(right) > 1 else 0.0,
    }
    for key in ("right_bottom", "top_left", "kept", "seconds"):
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = float(np.mean(values)) if values else None
    return out


def run_place(bundle, place: str, split: str, count: int, tiles: list, first: int = 0) -> dict:
    size = bundle.config.vae.image_size
    start, end = region_of(bundle, PLACES[place])
    rows: dict[str, list] = {mode: [] for mode in ["target", *MODES]}
    for index in range(first, first + count):
        source, target = scenes.completion_case(
            SEED, index, size, start, SPLITS[split], PLACES[place], end
        )
        truth = scenes.render(target, size)
        rows["target"].append({"right": 1.0, "seconds": math.nan, **steps(truth, start, end)})
        shown = [source, truth]
        for mode in MODES:
            image, seconds = complete(bundle, source, target, start, end, mode, SEED + index)
            right = float(scenes.score(image, target.stated).correct)
            rows[mode].append({"right": right, "seconds": seconds, **steps(image, start, end)})
            shown.append(image)
        if index < 2:
            tiles.append((f"{place} {split} {index}: {target.caption}", shown, (start, end)))
        print(f"{place} {split} {index + 1 - first}/{count}", flush=True)
    return {mode: summary(values) for mode, values in rows.items()}


def write_sheet(tiles: list, path: Path, scale: int = 2) -> None:
    """One row per case: source, target, then each mode's result, the region outlined."""
    columns = ["source", "target", *MODES]
    side, label = tiles[0][1][0].width * scale, 16
    canvas = Image.new("RGB", (side * len(columns), (side + label) * len(tiles) + label), "white")
    draw = ImageDraw.Draw(canvas)
    for column, name in enumerate(columns):
        draw.text((column * side + 4, 2), name, fill="black")
    for row, (caption, images, (start, end)) in enumerate(tiles):
        top = label + row * (side + label)
        draw.text((4, top + 2), caption[:110], fill="black")
        for column, image in enumerate(images):
            left = column * side
            canvas.paste(image.resize((side, side), Image.Resampling.NEAREST), (left, top + label))
            box = (left + start * scale, top + label + start * scale)
            draw.rectangle(
                (*box, left + end * scale - 1, top + label + end * scale - 1), outline="white"
            )
    canvas.save(path)
    print(f"wrote {path}")


def mini_timing(path: str, repeats: int = 1) -> dict:
    """Seconds per candidate for a full-size random DALL·E Mini, a 2x2-cell region in the middle
    of a 256 px picture, margin with lookahead K = 1 and 4 (one candidate kept)."""
    bundle = load(path, "cpu")
    size, factor = bundle.config.vae.image_size, bundle.config.vae.factor
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), np.uint8))
    start = size // 2 - factor
    out = {}
    for k in (1, 4):
        times = []
        for _ in range(repeats):
            completion = Completion.at_pixel(
                bundle,
                picture,
                (start, start),
                "a red circle",
                SamplingOptions(n=1, seed=1),
                area="auto",
                end=(start + 2 * factor, start + 2 * factor),
                precision="fp32",
                lookahead=k,
            )
            began = time.perf_counter()
            complete_all(completion)
            times.append((time.perf_counter() - began) / k)
        out[f"lookahead {k}"] = min(times)
        print(json.dumps({"mini": out}), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="default: the embedded model")
    parser.add_argument("--count", type=int, default=20, help="cases per place and split")
    parser.add_argument("--first", type=int, default=0, help="the first case's index")
    parser.add_argument("--sheet", type=Path)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--mini", help="a random full-size Mini bundle (random_bart_bundle.py)")
    args = parser.parse_args()
    torch.manual_seed(0)
    out: dict = {"count": args.count, "first": args.first}
    if args.mini:
        out["mini"] = mini_timing(args.mini)
    bundle = load(args.bundle or default_bundle_path(), "cpu")
    tiles: list = []
    for place in PLACES:
        for split in SPLITS:
            out[f"{place} {split}"] = run_place(bundle, place, split, args.count, tiles, args.first)
            print(json.dumps({f"{place} {split}": out[f"{place} {split}"]}), flush=True)
            if args.json:
                args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.sheet:
        write_sheet(tiles, args.sheet)


if __name__ == "__main__":
    main()
