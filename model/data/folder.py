"""User datasets: a folder of images, each with a same-name ``.txt`` caption (docs/DESIGN.md §4).

``photos/cat.jpg`` pairs with ``photos/cat.txt``. Subfolders are searched; hidden files and folders
(``.name``, including macOS ``._name`` resource forks) are ignored, and so are other files, such
as the ``.json`` that :func:`model.data.scenes.write_scenes` writes beside each pair. A caption file
with several non-empty lines holds alternative captions: training draws one at random.

Images are brought to RGB the way the studio brings a user's image in: EXIF orientation applied,
transparency composited on white, palette and greyscale modes converted (:func:`to_rgb`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from model.files import IMAGE_SUFFIXES, check_pixels, to_rgb

log = logging.getLogger(__name__)

CAPTION_SUFFIXES = (".txt", ".TXT", ".Txt")  # same stem; tried in this order
# Side of the random square crop as a fraction of the image's shorter side. The paper's listing
# (random crop of the shorter side, area-resize to 9/8–12/8 of the target, random crop) keeps
# 2/3–8/9 of it; we keep more, because captions often name things near the borders.
CROP_SCALE = (0.75, 1.0)
MAX_LOAD_RETRIES = 8  # __getitem__ tries the next pairs when an image turns out to be corrupt


def load_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open an image file as RGB (:func:`to_rgb`). ``draft_size`` lets JPEG decode at a reduced
    scale that still leaves at least that many pixels on each side, which is much faster."""
    with Image.open(path) as image:
        check_pixels(image.width, image.height, str(path))
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return to_rgb(image)


def _read_caption(image_path: Path) -> list[str] | None:
    for suffix in CAPTION_SUFFIXES:
        caption_path = image_path.with_suffix(suffix)
        if caption_path.is_file():
            text = caption_path.read_text(encoding="utf-8", errors="replace")
            lines = [" ".join(line.split()) for line in text.splitlines()]
            return [line for line in lines if line] or None
    return None


class CaptionFolder(Dataset):
    """Image–caption pairs found under ``root``; items are ``(image (3, S, S) in [0, 1], caption)``.

    The folder is scanned once, here. Images without a caption (or with an empty one) and files
    that are not readable images are skipped, counted in ``skipped_no_caption`` and
    ``skipped_unreadable``, and reported in a single warning.

    With ``augment``: a random square crop (side ``CROP_SCALE`` of the shorter side, anywhere in
    the image) resized to S, and a random caption line. Without: the largest centred square and
    the first caption line. There is no flip: captions say "left" and "right".
    """

    def __init__(self, root: str | os.PathLike, image_size: int, augment: bool = True):
        self.root = Path(root)
        self.image_size = int(image_size)
        self.augment = augment
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not self.root.exists():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"dataset path is not a folder: {self.root}")
        self.samples: list[tuple[Path, list[str]]] = []
        self.skipped_no_caption = 0
        self.skipped_unreadable = 0
        self._scan()

    def _scan(self) -> None:
        candidates = 0
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                candidates += 1
                captions = _read_caption(path)
                if captions is None:
                    self.skipped_no_caption += 1
                    continue
                try:
                    with Image.open(path) as image:
                        image.verify()  # header and, for PNG, chunk checksums; no decoding
                except Exception:  # noqa: BLE001 - PIL raises many kinds for a bad file
                    self.skipped_unreadable += 1
                    continue
                self.samples.append((path, captions))
        skipped = self.skipped_no_caption + self.skipped_unreadable
        if skipped:
            log.warning(
                "skipped %d of %d images in %s: %d without a caption (.txt), %d unreadable",
                skipped,
                candidates,
                self.root,
                self.skipped_no_caption,
                self.skipped_unreadable,
            )
        if not self.samples:
            raise ValueError(
                f"no image–caption pairs found in {self.root} (expected images "
                f"{', '.join(IMAGE_SUFFIXES)} each with a same-name .txt caption; "
                f"{candidates} images seen)"
            )
        log.info("found %d image–caption pairs in %s", len(self.samples), self.root)

    def __len__(self) -> int:
        return len(self.samples)

    def _crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        short = min(width, height)
        if not self.augment:
            left, top = (width - short) / 2, (height - short) / 2
            return (left, top, left + short, top + short)
        # torch's generator, not numpy's: DataLoader seeds it differently in every worker.
        lo, hi = CROP_SCALE
        side = short * (lo + (hi - lo) * torch.rand(()).item())
        left = (width - side) * torch.rand(()).item()
        top = (height - side) * torch.rand(()).item()
        return (left, top, left + side, top + side)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        for attempt in range(MAX_LOAD_RETRIES):
            path, captions = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = load_rgb(path, draft_size=2 * self.image_size)
                break
            except Exception as error:  # noqa: BLE001 - corrupt data passes verify() sometimes
                log.warning("cannot read %s (%s); using the next pair instead", path, error)
        else:
            raise OSError(f"{MAX_LOAD_RETRIES} images in a row could not be read near {path}")
        box = self._crop_box(*image.size)
        size = (self.image_size, self.image_size)
        image = image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (S, S, 3)
        tensor = pixels.permute(2, 0, 1).float().div_(255)  # (3, S, S)
        if self.augment and len(captions) > 1:
            caption = captions[int(torch.randint(len(captions), ()).item())]
        else:
            caption = captions[0]
        return tensor, caption
