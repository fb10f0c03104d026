"""The model behind the server: a loaded bundle that turns a checked ``ImageRequest`` into PNGs.

Runs on the worker thread. A generation samples the whole grid at the model's resolution and
resizes to the asked size; an edit regenerates the smallest rectangle that reaches the
bottom-right corner and covers the mask, then keeps every pixel the mask does not mark, bit for
bit.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image

from model.files import has_alpha
from model.geometry import Geometry
from model.serve.protocol import APIError, ImageRequest, covering_corner
from model.serve.worker import JobCancelled


@dataclass(frozen=True)
class Result:
    pngs: list[bytes]
    seed: int
    seconds: float
    tokens_per_s: float
    note: str  # what the server did beyond the request's letter (resizing, the rectangle)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ModelService:
    """A bundle, its precision, and what ``/v1/models`` says of it."""

    def __init__(self, bundle, model_id: str, precision: str = "auto"):
        self.bundle = bundle
        self.id = model_id
        self.precision = precision
        vae = bundle.config.vae
        self.size = vae.image_size
        self.factor = vae.factor

    def describe(self) -> dict[str, Any]:
        """The loaded bundle and the headline of its card, as an OpenAI model object (+ ours)."""
        card = self.bundle.card or {}
        path = self.bundle.path
        headline = (card.get("eval") or {}).get("headline")
        return {
            "id": self.id,
            "object": "model",
            "created": int(path.stat().st_mtime) if path is not None and path.exists() else 0,
            "owned_by": "dalle-studio",
            "name": card.get("name"),
            "file": path.name if path is not None else None,
            "image_size": self.size,
            "grid": self.size // self.factor,
            "device": str(self.bundle.device),
            "precision": self.precision,
            "example_captions": card.get("example_captions"),
            "eval": headline,
        }

    def check_memory(self, request: ImageRequest) -> None:
        from model.device import available_memory
        from model.sampling import memory_needed

        pixels = request.image.width * request.image.height if request.is_edit else 0
        needed = memory_needed(self.bundle.config, request.options, self.bundle.device.type)
        needed += 40 * pixels
        free = available_memory(self.bundle.device)
        if free is not None and needed > free:
            raise APIError(
                507,
                f"n={request.options.n} needs about {needed / 2**20:,.0f} MB, but "
                f"{self.bundle.device} has {free / 2**20:,.0f} MB free: ask for fewer images",
                "n",
                "insufficient_memory",
                kind="server_error",
            )

    def run(self, request: ImageRequest, cancel: threading.Event) -> Result:
        from model import sampling
        from model.images import paste_back, to_model, to_pil

        if request.is_edit:
            image = request.image
            geometry = Geometry(image.width, image.height, self.size, self.factor)
            x, y = covering_corner(request.marked)
            cell = geometry.cell_at(x, y)
            rgb = image.convert("RGB")
            messages = sampling.complete(
                self.bundle,
                to_model(rgb, geometry),
                cell,
                request.prompt,
                request.options,
                cancel,
                precision=self.precision,
                visible=geometry.visible_grid,
            )
        else:
            messages = sampling.generate(
                self.bundle, request.prompt, request.options, cancel, precision=self.precision
            )
        done = None
        for message in messages:
            if isinstance(message, sampling.Cancelled):
                raise JobCancelled("cancelled while sampling")
            if isinstance(message, sampling.Done):
                done = message
        if done is None:
            raise RuntimeError("sampling ended without a result")
        if request.is_edit:
            pngs = [
                png_bytes(keep_unmarked(image, paste_back(rgb, decoded, geometry, cell), request))
                for decoded in done.images
            ]
            x0, y0 = geometry.pixel_of(cell)
            note = (
                f"regenerated the rectangle from pixel ({x0}, {y0}) to the bottom-right corner, "
                f"the smallest on the model's {geometry.grid}x{geometry.grid} grid that covers the "
                f"mask's {int(request.marked.sum())} pixels; every other pixel is the image's own"
            )
        else:
            images = [to_pil(decoded) for decoded in done.images]
            note = ""
            if request.size is not None:
                width, height = request.size
                images = [im.resize(request.size, Image.Resampling.LANCZOS) for im in images]
                note = (
                    f"generated at the model's {self.size}x{self.size} and resized to "
                    f"{width}x{height}"
                )
            pngs = [png_bytes(im) for im in images]
        return Result(pngs, done.seed, done.seconds, done.tokens_per_s, note)


def keep_unmarked(original: Image.Image, regenerated: Image.Image, request: ImageRequest):
    """``regenerated`` on the marked pixels, ``original`` (alpha included) everywhere else:
    one copy of the original, the regenerated pixels pasted through the mask."""
    mask = Image.fromarray(request.marked).convert("L")  # 255 where marked, 0 elsewhere
    if has_alpha(original):
        kept = original.convert("RGBA")
        kept.paste(regenerated.convert("RGBA"), (0, 0), mask)  # opaque where regenerated
        return kept
    kept = original.convert("RGB")
    kept.paste(regenerated, (0, 0), mask)
    return kept
