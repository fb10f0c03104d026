"""``dalle upscale``: a picture upscaled by a Real-ESRGAN upscaler (the shipped one by default),
in tiles, so that memory stays bounded whatever the picture's size."""

from __future__ import annotations

import sys
from pathlib import Path

from model.cli.common import CLIError, check_can_create, shown
from model.cli.overwrite import OVERWRITE_HELP, refuse_overwrite
from model.files import MAX_PIXELS, ImageError, open_image, probe_image, save_png


def add_upscale_args(sub) -> None:
    p = sub.add_parser(
        "upscale",
        help="upscale a picture with a Real-ESRGAN upscaler (default: the shipped x4 one)",
        description="Upscale --image by the upscaler's factor (x4 for the shipped "
        "realesr-animevideov3) into a PNG, tile by tile.",
    )
    p.add_argument("--image", required=True, help="the picture (PNG, JPEG, WebP, BMP)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument(
        "--upscaler",
        default=None,
        help="an .upscaler.safetensors file from `dalle import realesrgan` (default: the shipped)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile side in input pixels (default: the largest within 512 MB of working memory)",
    )
    p.add_argument("--overlap", type=int, default=20, help="context around each tile (px)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=cmd_upscale)


def cmd_upscale(args) -> int:
    from model.bundle.upscaler_files import load_upscaler
    from model.networks.upscaler import upscale

    image, out = Path(args.image), Path(args.out)
    if out.suffix.lower() != ".png":
        raise CLIError(f"--out {shown(out)}: name a .png file")
    # (model/cli/overwrite.py: the same path, through .. or a symlink, or the same inode)
    refuse_overwrite([out], [("--image", image)], args.overwrite)
    if out.is_dir():
        raise CLIError(f"--out {shown(out)} is a folder; name a .png file")
    if (args.tile is not None and not 8 <= args.tile <= 4096) or not 0 <= args.overlap <= 512:
        raise CLIError(
            f"--tile must be 8..4096 and --overlap 0..512, got {args.tile}, {args.overlap}"
        )
    check_can_create(out.parent if str(out.parent) else Path("."))
    try:
        width, height = probe_image(image)  # the header only: refused before decoding
        upscaler, _ = load_upscaler(args.upscaler)
        scale = upscaler.scale
        if width * height * scale * scale > MAX_PIXELS:
            raise CLIError(
                f"{shown(image)}: {width}x{height} upscaled x{scale} would be "
                f"{width * height * scale * scale / 1e6:.0f} megapixels; "
                f"DALL·E Studio writes pictures up to {MAX_PIXELS / 1e6:.0f}"
            )
        pixels = open_image(image)
    except (ImageError, ValueError, FileNotFoundError) as error:
        raise CLIError(str(error)) from None

    def progress(done: int, total: int) -> None:
        print(f"\rdalle upscale: tile {done}/{total}", end="", file=sys.stderr, flush=True)

    from PIL import Image

    result = upscale(pixels, upscaler, tile=args.tile, overlap=args.overlap, progress=progress)
    print(file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(Image.fromarray(result), out)
    print(shown(out))
    return 0
