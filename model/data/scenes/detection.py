"""Reading an image back: the background from the frame, objects as connected blobs of one
palette colour, each blob's colour, shape (by template overlap at sub-pixel placement), size and
place in the 3×3 grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.data.scenes.shapes import box_size, coverage, unit_moments
from model.data.scenes.spec import BackgroundRef
from model.data.scenes.vocabulary import COLOURS, LARGE_THRESHOLD, PALETTE, PLACES, SHAPES

_PALETTE_ARRAY = np.array(list(PALETTE.values()), dtype=np.int32)  # (12, 3)
PURE_DISTANCE = 60  # a pixel this close to a palette colour votes for the blob's colour
MIN_PURE_PIXELS, MIN_PURE_FRACTION = 4, 0.2  # fewer pure pixels: unmix the colour instead
SEAM_TOLERANCE = 30  # RGB distance within which a pixel is a mix of the two background halves
SEAM_BAND = 0.04  # of the image side: how far from the seam blurred mixes are expected
MIN_BLOB_AREA = 0.02  # of a cell's area; the smallest star covers ~0.05
MIN_BLOB_SIDE = 0.12  # of a cell's side; drops one-pixel seams and blends between halves
BLOB_PAD = 2  # pixels of context around a blob for its coverage map; objects are >= 2.5 px apart


@dataclass(frozen=True)
class Detection:
    """One object found in an image."""

    colour: str
    shape: str
    size: str
    cell: tuple[int, int]
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int
    shape_iou: float  # overlap with the winning shape template; low values mean "unsure"

    @property
    def place(self) -> str:
        return PLACES[self.cell[0]][self.cell[1]]


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image or an (H, W, 3) / (3, H, W) array (uint8 or 0–1 float)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3) or (3, H, W), got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, as flat pixel-index arrays.

    Union–find over horizontal runs: a few hundred runs per image, so plain Python is quick.
    """
    h, w = mask.shape
    runs: list[tuple[int, int, int]] = []  # (row, start, stop)
    row_runs: list[range] = []
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    for y in range(h):
        starts = np.flatnonzero(edges[y] == 1)
        stops = np.flatnonzero(edges[y] == -1)
        first = len(runs)
        runs += [(y, int(s), int(e)) for s, e in zip(starts, stops, strict=True)]
        row_runs.append(range(first, len(runs)))
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, h):
        above, here = row_runs[y - 1], row_runs[y]
        i, j = above.start, here.start
        while i < above.stop and j < here.stop:
            _, s1, e1 = runs[i]
            _, s2, e2 = runs[j]
            if s1 <= e2 and s2 <= e1:  # overlapping or diagonally touching
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[rj] = ri
            if e1 < e2:
                i += 1
            else:
                j += 1
    groups: dict[int, list[np.ndarray]] = {}
    for k, (y, s, e) in enumerate(runs):
        groups.setdefault(find(k), []).append(np.arange(y * w + s, y * w + e))
    return [np.concatenate(parts) for parts in groups.values()]


def _detect_background(labels: np.ndarray) -> BackgroundRef:
    """The background from the image frame: the mode of each quadrant's stretch of the border."""
    h, w = labels.shape
    fw = max(1, round(min(h, w) / 64))
    frame = np.zeros_like(labels, dtype=bool)
    frame[:fw], frame[-fw:], frame[:, :fw], frame[:, -fw:] = True, True, True, True
    modes = {}
    for name, (ys, xs) in {
        "tl": (slice(0, h // 2), slice(0, w // 2)),
        "tr": (slice(0, h // 2), slice(w // 2, w)),
        "bl": (slice(h // 2, h), slice(0, w // 2)),
        "br": (slice(h // 2, h), slice(w // 2, w)),
    }.items():
        values = labels[ys, xs][frame[ys, xs]]
        modes[name] = int(np.bincount(values, minlength=len(COLOURS)).argmax())
    tl, tr, bl, br = modes["tl"], modes["tr"], modes["bl"], modes["br"]
    if tl == tr and bl == br and tl != bl:
        return BackgroundRef((COLOURS[tl], COLOURS[bl]), "top-bottom")
    if tl == bl and tr == br and tl != tr:
        return BackgroundRef((COLOURS[tl], COLOURS[tr]), "left-right")
    overall = int(np.bincount(labels[frame], minlength=len(COLOURS)).argmax())
    return BackgroundRef((COLOURS[overall],), "plain")


def _background_image(background: BackgroundRef, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float: the background colour behind every pixel."""
    behind = np.empty((h, w, 3), dtype=np.float32)
    behind[:] = PALETTE[background.colours[0]]
    if background.layout == "top-bottom":
        behind[h // 2 :] = PALETTE[background.colours[1]]
    elif background.layout == "left-right":
        behind[:, w // 2 :] = PALETTE[background.colours[1]]
    return behind


def _mix_residual(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from colours ``p`` (..., 3) to the nearest mix of ``a`` and ``b`` (broadcast)."""
    d = b - a
    t = np.clip(((p - a) * d).sum(-1) / np.maximum(1.0, (d * d).sum(-1)), 0, 1)
    return np.sqrt(((p - a - t[..., None] * d) ** 2).sum(-1))


def _blob_colour(
    pixels: np.ndarray,
    labels: np.ndarray,
    pure: np.ndarray,
    rgb: np.ndarray,
    behind: np.ndarray,
    candidates: list[int],
) -> int:
    """A blob's palette index: the vote of its pure pixels, or when too few are left (a thin or
    blurred object), the colour whose mixes with the background explain its pixels best."""
    solid = pixels[pure[pixels]]
    if len(solid) >= max(MIN_PURE_PIXELS, MIN_PURE_FRACTION * len(pixels)):
        return int(np.bincount(labels[solid], minlength=len(COLOURS)).argmax())
    p, b = rgb[pixels], behind[pixels]
    residuals = [
        _mix_residual(p, b, _PALETTE_ARRAY[i].astype(np.float32)).sum() for i in candidates
    ]
    return candidates[int(np.argmin(residuals))]


def _classify_shape(alpha: np.ndarray) -> tuple[str, float, float]:
    """The shape that best explains a blob's coverage map, its soft IoU, and its extent (px).

    Each shape's template is placed by moments: scaled so its area equals the blob's coverage sum
    and moved so the centroids coincide, then rendered the way scenes are. Matching soft coverage
    at sub-pixel placement is what keeps 8-pixel objects in 64-pixel images apart.
    """
    area = float(alpha.sum())
    if area < 1.0:  # nothing of the blob's colour over the background: no shape to read
        return ("unknown", 0.0, 0.0)
    ys, xs = np.mgrid[: alpha.shape[0], : alpha.shape[1]] + 0.5
    cx, cy = float((alpha * xs).sum()) / area, float((alpha * ys).sum()) / area
    best = (SHAPES[0], -1.0, 0.0)
    for shape in SHAPES:
        fill, ux, uy = unit_moments(shape)
        w1, h1 = box_size(shape, 1.0)
        extent = math.sqrt(area / (fill * w1 * h1))
        w, h = w1 * extent, h1 * extent
        template = coverage(shape, cx - ux * w, cy - uy * h, w, h, alpha.shape[::-1])
        iou = np.minimum(alpha, template).sum() / max(1e-6, np.maximum(alpha, template).sum())
        if iou > best[1]:
            best = (shape, float(iou), extent)
    return best


def _seam(
    rgb: np.ndarray, dist: np.ndarray, labels: np.ndarray, background: BackgroundRef
) -> np.ndarray:
    """(H, W) bool: pixels near the seam of a two-colour background that are a mix of its halves.

    A soft seam between the two halves mixes their colours into a third one (white and red make
    pink); such pixels are background, not an object.
    """
    h, w = labels.shape
    first, second = (np.asarray(PALETTE[c], dtype=np.float32) for c in background.colours)
    residual = _mix_residual(rgb, first, second)
    nearest = np.sqrt(np.take_along_axis(dist, labels[..., None], -1)[..., 0])
    seam = (residual <= SEAM_TOLERANCE) & (residual < nearest)
    band = max(1, round(min(h, w) * SEAM_BAND))
    near = np.zeros((h, w), dtype=bool)
    if background.layout == "top-bottom":
        near[max(0, h // 2 - band) : h // 2 + band] = True
    else:
        near[:, max(0, w // 2 - band) : w // 2 + band] = True
    return seam & near


def _find_blobs(
    foreground: np.ndarray,
    labels: np.ndarray,
    pure: np.ndarray,
    rgb: np.ndarray,
    behind: np.ndarray,
    background: BackgroundRef,
) -> dict[tuple[int, tuple[int, int]], list[np.ndarray]]:
    """The foreground's pieces by (palette index, cell), small specks and thin seams left out."""
    h, w = foreground.shape
    cell_w, cell_h = w / 3, h / 3
    flat_rgb, flat_behind = rgb.reshape(-1, 3), behind.reshape(-1, 3)
    flat_labels, flat_pure = labels.ravel(), pure.ravel()
    candidates = [i for i, c in enumerate(COLOURS) if c not in background.colours]

    blobs: dict[tuple[int, tuple[int, int]], list[np.ndarray]] = {}
    for pixels in _components(foreground):
        ys, xs = np.divmod(pixels, w)
        bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        if len(pixels) < MIN_BLOB_AREA * cell_w * cell_h:
            continue
        if min(bw / cell_w, bh / cell_h) < MIN_BLOB_SIDE:
            continue
        colour = _blob_colour(pixels, flat_labels, flat_pure, flat_rgb, flat_behind, candidates)
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        cell = (min(2, int(cy / cell_h)), min(2, int(cx / cell_w)))
        # Two objects never share a cell, so same-coloured pieces in one cell are one object
        # broken up (a generated image's noise), not two.
        blobs.setdefault((colour, cell), []).append(pixels)
    return blobs


def _read_blobs(
    blobs: dict[tuple[int, tuple[int, int]], list[np.ndarray]],
    foreground: np.ndarray,
    rgb: np.ndarray,
    behind: np.ndarray,
) -> list[Detection]:
    """A :class:`Detection` for each blob, its shape and size read from its coverage map.

    The coverage of each blob's colour over the background behind it, pixel by pixel: a
    box-filtered edge pixel is exactly that mix, so the blob's shape is read to a fraction of a
    pixel.
    """
    h, w = foreground.shape
    cell_w, cell_h = w / 3, h / 3
    owner = np.full(h * w, -1)
    for k, parts in enumerate(blobs.values()):
        owner[np.concatenate(parts)] = k
    owner = owner.reshape(h, w)
    detections = []
    for k, ((colour, cell), parts) in enumerate(blobs.items()):
        pixels = np.concatenate(parts)
        ys, xs = np.divmod(pixels, w)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        crop = (
            slice(max(0, y0 - BLOB_PAD), y1 + BLOB_PAD),
            slice(max(0, x0 - BLOB_PAD), x1 + BLOB_PAD),
        )
        base = behind[crop]
        direction = np.asarray(PALETTE[COLOURS[colour]], dtype=np.float32) - base
        alpha = ((rgb[crop] - base) * direction).sum(-1) / np.maximum(1.0, (direction**2).sum(-1))
        alpha = np.clip(alpha, 0, 1)
        alpha[(owner[crop] != k) & foreground[crop]] = 0  # other objects and stray specks
        shape, iou, extent = _classify_shape(alpha)
        size = "large" if extent / ((cell_w + cell_h) / 2) >= LARGE_THRESHOLD else "small"
        detections.append(
            Detection(COLOURS[colour], shape, size, cell, (x0, y0, x1, y1), len(pixels), iou)
        )
    return detections


def detect(image: Image.Image | np.ndarray) -> tuple[BackgroundRef, list[Detection]]:
    """Find the background and every palette object in an image (any size, ideally ≥ 64 px)."""
    rgb = _as_rgb(image)
    h, w, _ = rgb.shape
    dist = ((rgb[:, :, None, :].astype(np.int32) - _PALETTE_ARRAY) ** 2).sum(-1)  # (H, W, 12)
    labels = dist.argmin(-1)
    pure = np.take_along_axis(dist, labels[..., None], -1)[..., 0] <= PURE_DISTANCE**2
    background = _detect_background(labels)
    behind = _background_image(background, h, w)
    foreground = ~np.isin(labels, [COLOURS.index(c) for c in background.colours])
    rgb = rgb.astype(np.float32)
    if background.layout != "plain":
        foreground &= ~_seam(rgb, dist, labels, background)
    blobs = _find_blobs(foreground, labels, pure, rgb, behind, background)
    detections = _read_blobs(blobs, foreground, rgb, behind)
    detections.sort(key=lambda d: (d.cell, d.colour, d.shape))
    return background, detections
