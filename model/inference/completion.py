"""The one "complete this picture" use case: the studio, ``dalle complete`` and the server's edits
all run it, and each is a thin adapter over it.

A ``Completion`` takes the user's picture at its own size, the rectangle's top-left cell on the
model's grid (and its end cell, for a region that does not reach the bottom-right corner), a
caption and sampling options. It plans the cells (``Geometry.plan``: padding beside the
picture is not sampled), checks the memory the job needs before allocating it, brings the
picture to the model (``model.inference.images.to_model``), samples row by row (cancellable, one
``sampling.Progress`` per row) and pastes each candidate back at the picture's resolution, every
pixel outside the region the picture's own, bit for bit.

``run`` yields what happens, in order: ``Phase("reading")``, ``Phase("encoding")``, a
``sampling.Progress`` per row, ``Phase("decoding")`` once the last row is sampled, then for each
candidate (best first) ``Phase("pasting", index, count)`` and ``Pasted``, and last ``Finished``
(or ``sampling.Cancelled``). One pasted candidate is alive at a time unless the caller keeps it,
so a batch of large pictures holds one picture's worth of results. ``preview`` decodes the first
candidate's grid so far and pastes it, for a live view (``decode_first`` and ``paste``
apart, for a caller that times them); when to call it is the caller's choice.

Adapters turn the events into their own progress (a terminal bar, Qt messages, nothing) and the
results into their outputs (files, history entries, PNG bodies).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import card as card_schema
from model import device as model_device
from model.config import SamplingOptions
from model.geometry import Area, Cell, Geometry, Plan, working_area
from model.inference import familiarity, sampling
from model.inference.images import blend_into, model_view, paste_back, to_model
from model.inference.lookahead import memory_needed as lookahead_memory
from model.networks.upscaler import UpscaleCancelled, Upscaler, upscale

# Bytes per picture pixel a completion holds beside the model: the decoded picture, its resized
# model view, the pasted candidate and paste_back's working copies (measured on a 48 MP picture,
# issue 28; the studio keeps its candidates as well, which the history's own budget covers).
BYTES_PER_PICTURE_PIXEL = 40
# An upscaler draws the result when the picture has more than this many pixels per decoded
# pixel (below it, Lanczos alone is as sharp); it reads this many decoded pixels of context
# above and to the left of the rectangle, so its edge is not drawn from the zero padding.
UPSCALE_ABOVE = 1.25
UPSCALE_MARGIN = 8


def geometry_for(bundle: Any, width: int, height: int) -> Geometry:
    """Where a ``width`` x ``height`` picture lies on ``bundle``'s grid of cells."""
    vae = bundle.config.vae
    return Geometry(width, height, vae.image_size, vae.factor)


def default_area(bundle: Any) -> str:
    """The working area a model completes in unless told otherwise: "whole" for a model
    trained here on whole scenes at one scale (on scenes drawn at 2x and 4x its size, the area
    auto did not raise its completion fidelity: benchmarks/README.md, "Working area"), "auto"
    for an imported photo model, which learnt no one scale and gains the picture's detail."""
    card = card_schema.check(bundle.card or {})[0]
    return "whole" if familiarity.knows_scenes(card) else "auto"


def memory_needed(
    bundle: Any, options: SamplingOptions, pixels: int = 0, lookahead: int = 1
) -> int:
    """Bytes a completion of a ``pixels``-pixel picture (0: a generation) needs on the bundle's
    device: the sampler's keys, values and images, and the picture's working copies. With
    ``lookahead`` K > 1, K times the candidates sample at once and the lookahead scores them."""
    extra = 0
    if lookahead > 1:
        options = dataclasses.replace(options, n=options.n * lookahead)
        extra = lookahead_memory(bundle.config, options.n)
    needed = sampling.memory_needed(bundle.config, options, bundle.device.type)
    return needed + extra + BYTES_PER_PICTURE_PIXEL * pixels


class NotEnoughMemory(ValueError):
    """A job that would not fit; ``needed`` and ``free`` in bytes, for an adapter's own words."""

    def __init__(self, needed: int, free: int, device: str, n: int):
        self.needed, self.free, self.device, self.n = needed, free, device, n
        super().__init__(
            f"{n} candidate{'s' if n != 1 else ''} need about {needed / 2**20:,.0f} MB for the "
            f"keys, values and images, but {device} has {free / 2**20:,.0f} MB free: "
            "ask for fewer"
        )


def check_memory(
    bundle: Any, options: SamplingOptions, pixels: int = 0, lookahead: int = 1
) -> None:
    """Raise NotEnoughMemory before anything is allocated when the job would not fit."""
    needed = memory_needed(bundle, options, pixels, lookahead)
    free = model_device.available_memory(bundle.device)
    if free is not None and needed > free:
        raise NotEnoughMemory(needed, free, str(bundle.device), options.n)


@dataclass(frozen=True)
class Phase:
    """The job entered a phase: reading, encoding, decoding, or pasting candidate ``index`` of
    ``count``."""

    name: str
    index: int = 0
    count: int = 0


@dataclass(frozen=True)
class Pasted:
    """Candidate ``index`` of ``count`` (best first), pasted into the picture."""

    index: int
    count: int
    image: Image.Image


@dataclass(frozen=True)
class Finished:
    """The sampler's result (tokens, seed, timings; its decoded images at the model's size)."""

    done: sampling.Done


Event = Phase | sampling.Progress | Pasted | Finished | sampling.Cancelled
Sampler = Callable[..., Iterator[Any]]


class Completion:
    """Regenerate the region of ``picture`` from ``cell`` to ``end`` (its bottom-right cell,
    exclusive; None: the bottom-right corner, DALL·E's own rectangle).

    The model sees the working ``area`` of the picture (default: the whole picture), and
    ``cell`` and ``end`` are on the area's grid; ``Completion.at_pixel`` finds them from
    pixels. Raises ValueError when the cell lies outside the grid or only in the padding beside
    the picture, or the end before it or past the picture. ``feather`` blends the result in
    over that many pixels inside the region's edges that meet kept pixels; ``precision``,
    ``compile`` and ``lookahead`` (K candidates sampled per one kept) are the sampler's
    (``sampling.complete``).
    """

    def __init__(
        self,
        bundle: Any,
        picture: Image.Image,
        cell: Cell,
        caption: str,
        options: SamplingOptions | None = None,
        *,
        feather: int = 0,
        precision: str = "fp32",
        compile: bool = False,
        sampler: Sampler | None = None,
        area: Area | None = None,
        upscaler: Upscaler | None = None,
        upscale_tile: int | None = None,
        end: Cell | None = None,
        lookahead: int = 1,
    ):
        self.bundle = bundle
        self.picture = picture if picture.mode == "RGB" else picture.convert("RGB")
        self.area = area or Area(self.picture.size)
        if self.area.picture != self.picture.size:
            raise ValueError(
                f"a working area of a {self.area.picture[0]}x{self.area.picture[1]} picture, "
                f"but the picture is {self.picture.width}x{self.picture.height}"
            )
        # what the model sees: the picture itself, or the area's crop of it
        self.view = self.picture if self.area.is_whole else self.picture.crop(self.area.box)
        self.cell = cell
        self.caption = caption
        self.options = options or SamplingOptions()
        self.feather = feather
        self.precision, self.compile = precision, compile
        self.sampler = sampler or sampling.complete
        self.upscaler = upscaler
        self.upscale_tile = (
            upscale_tile  # None: the largest within model.networks.upscaler's budget
        )
        self.geometry = geometry_for(bundle, self.view.width, self.view.height)
        self.plan: Plan = self.geometry.plan(cell, end)
        self.end = None if self.plan.to_corner else end
        self.lookahead = lookahead

    @classmethod
    def at_pixel(
        cls,
        bundle: Any,
        picture: Image.Image,
        corner: tuple[int, int],
        caption: str,
        options: SamplingOptions | None = None,
        area: str | int = "whole",
        end: tuple[int, int] | None = None,
        **settings: Any,
    ) -> Completion:
        """The completion of the region from picture pixel ``corner`` (snapped to the cell
        that holds it) to pixel ``end`` (exclusive, snapped to the cell that holds its last
        pixel; None: the bottom-right corner) in the working area ``area`` chooses
        (``geometry.working_area``: whole, auto or a side in pixels)."""
        vae = bundle.config.vae
        chosen = working_area(picture.size, corner, vae.image_size, area, end, vae.factor)
        geometry = geometry_for(bundle, chosen.width, chosen.height)
        cell = geometry.cell_at(corner[0] - chosen.left, corner[1] - chosen.top, clamp=False)
        last = None if end is None else geometry.end_cell(end[0] - chosen.left, end[1] - chosen.top)
        return cls(bundle, picture, cell, caption, options, area=chosen, end=last, **settings)

    @property
    def corner(self) -> tuple[int, int]:
        """The picture pixel where the regenerated rectangle starts."""
        x, y = self.geometry.pixel_of(self.cell)
        return self.area.left + x, self.area.top + y

    @property
    def end_pixel(self) -> tuple[int, int]:
        """The picture pixel where the regenerated region ends (exclusive)."""
        g = self.geometry
        x, y = (g.width, g.height) if self.end is None else g.pixel_of(self.end)
        return self.area.left + x, self.area.top + y

    @property
    def pixels(self) -> int:
        return self.picture.width * self.picture.height

    def check_memory(self) -> None:
        check_memory(self.bundle, self.options, self.pixels, self.lookahead)

    def run(self, cancel: threading.Event | None = None) -> Iterator[Event]:
        """The job's events, in order (see the module's docstring); raises NotEnoughMemory
        before anything is allocated, ValueError for a bad option."""
        self.check_memory()
        yield Phase("reading")
        tensor = to_model(self.view, self.geometry)
        yield Phase("encoding")  # the sampler encodes before its first row
        # a sampler without lookahead (a test's, the studio's fakes) is never asked for one
        chosen = {"lookahead": self.lookahead} if self.lookahead != 1 else {}
        messages = self.sampler(
            self.bundle,
            tensor,
            self.plan,
            self.caption,
            self.options,
            cancel,
            precision=self.precision,
            compile=self.compile,
            **chosen,
        )
        for message in messages:
            if isinstance(message, sampling.Progress):
                yield message
                if message.rows_done == message.rows_total:  # the sampler decodes them now
                    yield Phase("decoding")
            elif isinstance(message, sampling.Cancelled):
                yield message
                return
            elif isinstance(message, sampling.Done):
                yield from self._paste_all(message, cancel)
                return
        if cancel is not None and cancel.is_set():
            yield sampling.Cancelled(tokens=torch.empty(0, dtype=torch.long), cells_done=0)
            return
        raise RuntimeError("sampling ended without a result")

    def _paste_all(self, done: sampling.Done, cancel: threading.Event | None) -> Iterator[Event]:
        count = len(done.images)
        for index, decoded in enumerate(done.images):
            phase = "upscaling" if self.upscales(decoded) else "pasting"
            yield Phase(phase, index, count)
            try:
                pasted = self.paste(decoded, cancel)
            except UpscaleCancelled:
                yield sampling.Cancelled(tokens=done.tokens, cells_done=self.plan.cells)
                return
            yield Pasted(index, count, pasted)
        yield Finished(done)

    def upscales(self, decoded: torch.Tensor) -> bool:
        """True when the upscaler draws ``decoded``'s rectangle: the view has more than
        ``UPSCALE_ABOVE`` picture pixels per decoded pixel."""
        if self.upscaler is None:
            return False
        return max(self.view.size) / decoded.shape[-1] > UPSCALE_ABOVE

    def paste(
        self, decoded: torch.Tensor, cancel: threading.Event | None = None, upscale: bool = True
    ) -> Image.Image:
        """``decoded`` (3, H, W) at the model's size, pasted into the picture: only the
        region changes, every other pixel is the picture's own. The upscaler draws the
        region where ``upscales`` says so (and ``upscale``); cancel stops it between tiles
        (UpscaleCancelled)."""
        g = self.geometry
        if upscale and self.upscaler is not None and self.upscales(decoded):
            region = upscaled_region(
                decoded, g, self.cell, self.upscaler, cancel, self.upscale_tile, self.end
            )
            out = np.array(self.view, dtype=np.uint8)
            x1, y1 = (g.width, g.height) if self.end is None else g.pixel_of(self.end)
            inner = (x1 < g.width, y1 < g.height)
            blend_into(out, region, g.pixel_of(self.cell), self.feather, inner)
            pasted = Image.fromarray(out, "RGB")
        else:
            pasted = paste_back(self.view, decoded, g, self.cell, self.feather, self.end)
        if self.area.is_whole:
            return pasted
        whole = self.picture.copy()
        whole.paste(pasted, self.area.box[:2])
        return whole

    def decode_first(self, progress: sampling.Progress) -> torch.Tensor:
        """The first sampled candidate's grid so far, decoded: (3, H, W) in [0, 1]."""
        bundle = self.bundle
        with torch.inference_mode():
            return bundle.vae.decode(progress.tokens[:1].to(bundle.device))[0].float().cpu()

    def preview(self, progress: sampling.Progress) -> Image.Image:
        """The first sampled candidate's grid so far, decoded and pasted into the picture (at
        the model's resolution: the upscaler only draws the final candidates)."""
        return self.paste(self.decode_first(progress), upscale=False)


def upscaled_region(
    decoded: torch.Tensor,
    geometry: Geometry,
    cell: Cell,
    upscaler: Upscaler,
    cancel: threading.Event | None = None,
    tile: int | None = None,
    end: Cell | None = None,
) -> np.ndarray:
    """The region from ``cell`` to ``end`` (exclusive; None: the corner) at the picture's
    resolution, drawn by ``upscaler`` from the decoded pixels: (y1 - y0, x1 - x0, 3) uint8.

    The upscaler reads the decoded region and ``UPSCALE_MARGIN`` pixels around it (tiled,
    ``model.networks.upscaler.upscale``); the result is resized exactly onto the region's
    pixels, over the same span of the decoded view as ``paste_back``'s Lanczos path maps."""
    view = model_view(decoded, geometry)
    w, h = view.size
    sx, sy = w / geometry.width, h / geometry.height  # decoded pixels per picture pixel
    x0, y0 = geometry.pixel_of(cell)
    x1, y1 = (geometry.width, geometry.height) if end is None else geometry.pixel_of(end)
    left = max(0, math.floor(x0 * sx) - UPSCALE_MARGIN)
    top = max(0, math.floor(y0 * sy) - UPSCALE_MARGIN)
    right = min(w, math.ceil(x1 * sx) + UPSCALE_MARGIN)
    bottom = min(h, math.ceil(y1 * sy) + UPSCALE_MARGIN)
    crop = view.crop((left, top, right, bottom))
    drawn = Image.fromarray(upscale(crop, upscaler, tile=tile, cancel=cancel))
    s = upscaler.scale
    far = (w, h) if end is None else (x1 * sx, y1 * sy)  # the corner's own, to the bit
    box = ((x0 * sx - left) * s, (y0 * sy - top) * s, (far[0] - left) * s, (far[1] - top) * s)
    size = (x1 - x0, y1 - y0)
    return np.asarray(drawn.resize(size, Image.Resampling.LANCZOS, box=box))


def complete_all(
    completion: Completion, cancel: threading.Event | None = None
) -> tuple[list[Image.Image], sampling.Done]:
    """Run ``completion`` to the end: its pasted candidates, best first, and the sampler's
    result; raises RuntimeError when it was cancelled."""
    images: list[Image.Image] = []
    done = None
    for event in completion.run(cancel):
        if isinstance(event, Pasted):
            images.append(event.image)
        elif isinstance(event, Finished):
            done = event.done
        elif isinstance(event, sampling.Cancelled):
            raise RuntimeError("sampling was cancelled")
    if done is None:
        raise RuntimeError("sampling ended without a result")
    return images, done
