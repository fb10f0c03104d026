"""Which dVAE draws the scenes best? Side by side on the same held-out scenes.

For each image tokenizer (a `dalle train vae` or `dalle train vq` output, or a bundle, whose dVAE
is used) this prints the
figures `dalle eval` reports for the dVAE alone: PSNR of argmax tokens, codes in use, and how often
the scenes scorer reads each scene's own caption right on its reconstruction, overall, for
one-object captions and by fact. That last figure is the ceiling of every caption figure of a
transformer trained on those tokens, so it says whether a new dVAE is worth training one on.

    python benchmarks/dvae_ceiling.py [--count 300] [--sheet PNG] A.safetensors B.dalle.safetensors

``--size S`` measures at S px (default: the tokenizers' own size, which must then agree). A
tokenizer that reads a smaller picture by a whole factor (the 64 px VQ beside issue 17's 128 px
decoder) reads the scene area-averaged down to its size, and its reconstruction is shown at S
upscaled, once per ``--upscale`` mode (nearest, bilinear), each a row of its own: PSNR and the
ceiling are then those of what a user would see at S.

``--sheet`` also draws the first 16 seen scenes, then each dVAE's reconstruction of them, one
column per dVAE, framed green where the caption reads right and red where it does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.bundle import load  # noqa: E402
from model.bundle.tokenizer_files import load_image_tokenizer  # noqa: E402
from model.data import scenes  # noqa: E402
from model.evaluation import evaluate  # noqa: E402
from model.files import save_png  # noqa: E402

FACTS = ("present", "count", "size", "place", "relation", "background")


def load_any(path: str):
    """The image tokenizer of a bundle (a dVAE or a VQ tokenizer), or of a `train vae` /
    `train vq` file."""
    if path.endswith(".dalle.safetensors"):
        return load(path).vae
    return load_image_tokenizer(path)[0]


class Upscaled(nn.Module):
    """A tokenizer of smaller pictures shown at ``size``: the picture area-averaged down to the
    size it reads, its reconstruction upscaled back with ``mode`` (``F.interpolate``'s)."""

    def __init__(self, vae: nn.Module, size: int, mode: str):
        super().__init__()
        self.vae, self.mode = vae, mode
        self.ratio = size // vae.config.image_size
        self.config = SimpleNamespace(image_size=size, vocab_size=vae.config.vocab_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(F.avg_pool2d(images, self.ratio))  # (B, G, G)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        small = self.vae.decode(tokens).float()  # (B, C, s, s)
        corners = {"align_corners": False} if self.mode == "bilinear" else {}
        big = F.interpolate(small, scale_factor=self.ratio, mode=self.mode, **corners)
        return big.clamp(0, 1)  # (B, C, S, S)


def at_size(vaes: dict[str, nn.Module], size: int | None, modes: list[str]):
    """(size, {row name: tokenizer drawing at size}): ``vaes`` as they are, or upscaled."""
    sizes = {vae.config.image_size for vae in vaes.values()}
    if size is None:
        if len(sizes) != 1:
            raise SystemExit(
                f"the dVAEs read different image sizes {sorted(sizes)}; compare alike or give "
                "--size"
            )
        return sizes.pop(), vaes
    rows = {}
    for path, vae in vaes.items():
        own = vae.config.image_size
        if own == size:
            rows[path] = vae
        elif size % own == 0:
            for mode in modes:
                rows[f"{path} (x{size // own} {mode})"] = Upscaled(vae, size, mode).eval()
        else:
            raise SystemExit(f"{path} reads {own} px, not a whole fraction of --size {size}")
    return size, rows


def pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vaes", nargs="+", help="vae.safetensors, vq.safetensors or bundles")
    parser.add_argument("--count", type=int, default=300, help="scenes per split")
    parser.add_argument("--seed", type=int, default=evaluate.DEFAULT_SEED)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sheet", help="also draw the first 16 seen scenes and reconstructions")
    parser.add_argument("--size", type=int, help="measure at this size (see above)")
    parser.add_argument(
        "--upscale",
        default="nearest,bilinear",
        help="how a smaller tokenizer's pictures are brought to --size: comma-separated modes",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vaes = {path: load_any(path).eval() for path in args.vaes}
    modes = [mode for mode in args.upscale.split(",") if mode]
    size, vaes = at_size(vaes, args.size, modes)

    rows = []
    for split in evaluate.SPLITS:
        images, specs = evaluate.scene_batch(split, args.count, size, args.seed)
        for path, vae in vaes.items():
            recon = evaluate.reconstruction(SimpleNamespace(vae=vae, device="cpu"), images, specs)
            one = recon["caption_right_by_objects"].get(1)
            facts = [pct(recon["caption_right_by_fact"][f]) for f in FACTS]
            rows.append(
                (
                    Path(path).name,
                    split,
                    f"{recon['psnr_db']:.2f}",
                    f"{recon['codes_used']}/{vae.config.vocab_size}",
                    pct(recon["caption_right"]),
                    pct(one),
                    *facts,
                )
            )
    header = ("dVAE", "split", "PSNR dB", "codes", "caption right", "1 object", *FACTS)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))

    if args.sheet:
        images, specs = evaluate.scene_batch("seen", evaluate.SHEET_ROWS, size, args.seed)
        sheet_rows = []
        for image, spec in zip(images, specs, strict=True):
            original = evaluate.to_uint8(image)
            drawn, results = [], []
            for vae in vaes.values():
                drawn.append(evaluate.reconstruct(vae, image))
                results.append(scenes.score(drawn[-1], spec.stated))
            sheet_rows.append(evaluate.SheetRow(spec.caption, [(original, None)], drawn, results))
        title = "scene | " + ", ".join(Path(p).name for p in vaes)
        sheet = evaluate.contact_sheet(sheet_rows, title, first=Path(next(iter(vaes))).name)
        save_png(sheet, args.sheet)
        print(args.sheet, np.asarray(sheet).shape)


if __name__ == "__main__":
    main()
