"""The plug-in's core, standard library only (it runs in Krita's own Python and in the tests):
the selection's bounding rectangle → the region; the crop sent for it (the region and its
context, scaled to fit the server's limits); the PNG image and mask for ``/v1/images/edits``
(the mask transparent where to regenerate, as OpenAI's API); each answer → the region's pixels
at document resolution, placed at the region's position.

Pixels are 8-bit RGBA ``bytes``, row after row. Decoding and resizing a PNG are a ``Codec``'s
(Krita's side uses QImage, the tests Pillow): pure Python would take seconds for one answer.
Encoding is here: zlib with no filter, fast enough for the largest crop sent (``MAX_SIDE``).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Protocol

CONTEXT = 2.0  # the crop's side: this many times the region's longer side (the server's "auto")
MAX_SIDE = 1024  # the longest side sent: n=10 answers of 1024x1024 fit the server's 16 MP
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PluginError(Exception):
    """A one-line reason shown to the artist: a bad selection, an unreachable server, a refusal."""


class Codec(Protocol):
    def decode(self, png: bytes) -> tuple[bytes, int, int]:
        """(RGBA bytes, width, height) of a PNG."""
        ...

    def resize(self, rgba: bytes, width: int, height: int, to: tuple[int, int]) -> bytes:
        """``rgba`` (``width`` x ``height``) resampled smoothly to ``to``."""
        ...


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def within(self, outer: Rect) -> Rect:
        """This rectangle in ``outer``'s coordinates."""
        return Rect(self.x - outer.x, self.y - outer.y, self.width, self.height)


@dataclass(frozen=True)
class EditPlan:
    """What one Generate sends: the ``region`` to regenerate and the ``crop`` around it (both in
    document pixels), and the ``sent`` size the crop is scaled to (the crop's own when it fits)."""

    document: tuple[int, int]
    region: Rect
    crop: Rect
    sent: tuple[int, int]

    @property
    def scaled(self) -> bool:
        return self.sent != (self.crop.width, self.crop.height)

    def sent_region(self) -> Rect:
        """The region in the sent image's pixels: scaled outwards, so it covers the region."""
        inner = self.region.within(self.crop)
        sx, sy = self.sent[0] / self.crop.width, self.sent[1] / self.crop.height
        x0, y0 = math.floor(inner.x * sx), math.floor(inner.y * sy)
        x1 = min(self.sent[0], math.ceil(inner.right * sx))
        y1 = min(self.sent[1], math.ceil(inner.bottom * sy))
        return Rect(x0, y0, max(1, x1 - x0), max(1, y1 - y0))


# -- the region and the crop -------------------------------------------------------------------


def region_of(bounds: tuple[int, int, int, int] | None, document: tuple[int, int]) -> Rect:
    """The region to regenerate: the selection's bounding rectangle (x, y, width, height),
    clipped to the document. No selection, or one outside the document: PluginError."""
    width, height = document
    if width < 1 or height < 1:
        raise PluginError(f"the document is {width}x{height} pixels: nothing to edit")
    if bounds is None or bounds[2] < 1 or bounds[3] < 1:
        raise PluginError("nothing is selected: select the region to regenerate first")
    x, y, w, h = bounds
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        raise PluginError(
            f"the selection ({x}, {y}, {w}x{h}) lies outside the {width}x{height} document"
        )
    return Rect(x0, y0, x1 - x0, y1 - y0)


def _span(start: int, length: int, side: int, total: int) -> int:
    """Where a ``side``-long span that holds [start, start + length) and is centred on it
    starts, kept inside [0, total)."""
    begin = start + length // 2 - side // 2
    return max(0, min(begin, total - side))


def plan_edit(
    region: Rect,
    document: tuple[int, int],
    model_size: int,
    max_side: int = MAX_SIDE,
    context: float = CONTEXT,
) -> EditPlan:
    """The crop for ``region``: a square ``context`` times the region's longer side, never
    smaller than the model's ``model_size`` (the picture is not scaled up into the model),
    centred on the region and clipped to the document; scaled down to ``max_side`` when longer.
    A small selection in a large document sends a small crop, not the canvas."""
    if model_size < 1 or max_side < 1:
        raise PluginError(f"the model's size ({model_size}) and the largest side sent must be > 0")
    width, height = document
    side = max(math.ceil(context * max(region.width, region.height)), model_size)
    crop_w, crop_h = min(side, width), min(side, height)
    crop = Rect(
        _span(region.x, region.width, crop_w, width),
        _span(region.y, region.height, crop_h, height),
        crop_w,
        crop_h,
    )
    scale = min(1.0, max_side / max(crop_w, crop_h))
    sent = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
    return EditPlan(document, region, crop, sent)


# -- pixels ------------------------------------------------------------------------------------


def crop_pixels(rgba: bytes, width: int, rect: Rect) -> bytes:
    """The ``rect`` of a ``width``-wide RGBA picture."""
    stride, start, end = width * 4, rect.x * 4, rect.right * 4
    return b"".join(
        rgba[row * stride + start : row * stride + end] for row in range(rect.y, rect.bottom)
    )


def paste_pixels(rgba: bytes, width: int, patch: bytes, rect: Rect) -> bytes:
    """A copy of the ``width``-wide RGBA picture with ``patch`` (``rect``'s size) at ``rect``."""
    out = bytearray(rgba)
    stride, line = width * 4, rect.width * 4
    for row in range(rect.height):
        at = (rect.y + row) * stride + rect.x * 4
        out[at : at + line] = patch[row * line : (row + 1) * line]
    return bytes(out)


def mask_pixels(size: tuple[int, int], hole: Rect) -> bytes:
    """OpenAI's mask: opaque white, fully transparent (alpha 0) on ``hole``, the pixels to redo."""
    width, height = size
    opaque, clear = b"\xff\xff\xff\xff", b"\xff\xff\xff\x00"
    plain = opaque * width
    holed = opaque * hole.x + clear * hole.width + opaque * (width - hole.right)
    return b"".join(holed if hole.y <= row < hole.bottom else plain for row in range(height))


def swap_red_blue(pixels: bytes) -> bytes:
    """RGBA ↔ BGRA (Krita's byte order for 8-bit RGBA documents on little-endian machines)."""
    out = bytearray(pixels)
    out[0::4], out[2::4] = pixels[2::4], pixels[0::4]
    return bytes(out)


def encode_png(rgba: bytes, width: int, height: int, level: int = 1) -> bytes:
    """An 8-bit RGBA PNG of ``rgba``: no filter, zlib at ``level``."""
    if len(rgba) != width * height * 4:
        raise PluginError(f"{len(rgba)} bytes are not a {width}x{height} RGBA picture")
    stride = width * 4
    raw = b"".join(b"\x00" + rgba[row * stride : (row + 1) * stride] for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, level))
        + chunk(b"IEND", b"")
    )


# -- the request and its answers ---------------------------------------------------------------


def edit_images(plan: EditPlan, crop_rgba: bytes, codec: Codec) -> tuple[bytes, bytes]:
    """(image PNG, mask PNG) for ``plan`` from the crop's RGBA pixels (document resolution)."""
    crop = plan.crop
    if len(crop_rgba) != crop.width * crop.height * 4:
        raise PluginError(
            f"{len(crop_rgba)} bytes are not the {crop.width}x{crop.height} crop's RGBA pixels"
        )
    if plan.scaled:
        crop_rgba = codec.resize(crop_rgba, crop.width, crop.height, plan.sent)
    image = encode_png(crop_rgba, *plan.sent)
    mask = encode_png(mask_pixels(plan.sent, plan.sent_region()), *plan.sent)
    return image, mask


def region_from_answer(plan: EditPlan, png: bytes, codec: Codec) -> bytes:
    """The region's RGBA pixels at document resolution from one answer (the sent crop,
    regenerated): scaled back to the crop's size when it was sent smaller, then cut out."""
    rgba, width, height = codec.decode(png)
    if (width, height) != plan.sent:
        raise PluginError(
            f"the server answered a {width}x{height} image for the {plan.sent[0]}x{plan.sent[1]} "
            "one sent"
        )
    crop = plan.crop
    if plan.scaled:
        rgba = codec.resize(rgba, width, height, (crop.width, crop.height))
    return crop_pixels(rgba, crop.width, plan.region.within(crop))


def composite(document_rgba: bytes, plan: EditPlan, region_rgba: bytes) -> bytes:
    """The document as it looks with a candidate's layer above it: the region's pixels placed
    at the region, every other pixel the document's own."""
    return paste_pixels(document_rgba, plan.document[0], region_rgba, plan.region)


def layer_name(caption: str, seed: int | None, number: int, count: int) -> str:
    """A candidate layer's name: its caption (shortened), its seed, and which of the n it is."""
    text = " ".join(caption.split())
    text = text if len(text) <= 48 else text[:47] + "…"
    seed_part = f"seed {seed}" if seed is not None else "seed ?"
    which = f", {number + 1}/{count}" if count > 1 else ""
    return f"{text} ({seed_part}{which})"
