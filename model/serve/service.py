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

from model import card as card_schema
from model.files import has_alpha
from model.serve.protocol import APIError, ImageRequest, bounding_box
from model.serve.worker import JobCancelled

# The server upscales in small tiles: its memory bound (README, server) holds one tile's working
# memory, about 35 MB for the shipped upscaler at 64 px, where the default tile takes up to 512 MB.
UPSCALE_TILE, UPSCALE_OVERLAP = 64, 20


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

    def __init__(self, bundle, model_id: str, precision: str = "auto", upscaler=None):
        self.bundle = bundle
        self.upscaler = upscaler  # draws what the model made smaller than asked (None: Lanczos)
        self.id = model_id
        self.precision = precision
        vae = bundle.config.vae
        self.size = vae.image_size
        self.factor = vae.factor

    def describe(self) -> dict[str, Any]:
        """The loaded bundle and the headline of its card, as an OpenAI model object (+ ours):
        ``eval`` the card's figures as measured, ``headline`` the same as one line a user reads
        (what Settings shows; the Krita docker shows it)."""
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
            "headline": card_schema.measured(card) or None,
        }

    def check_memory(self, request: ImageRequest) -> None:
        """Refuse with 507, before anything is queued or allocated, a request that would not
        fit (``model.inference.completion``'s rule, the picture's pixels for an edit)."""
        from model.inference.completion import NotEnoughMemory, check_memory

        pixels = request.image.width * request.image.height if request.is_edit else 0
        try:
            check_memory(self.bundle, request.options, pixels)
        except NotEnoughMemory as error:
            raise APIError(
                507,
                f"n={request.options.n} needs about {error.needed / 2**20:,.0f} MB, but "
                f"{error.device} has {error.free / 2**20:,.0f} MB free: ask for fewer images",
                "n",
                "insufficient_memory",
                kind="server_error",
            ) from None

    def run(self, request: ImageRequest, cancel: threading.Event) -> Result:
        if request.is_edit:
            return self._edit(request, cancel)
        return self._generate(request, cancel)

    def _edit(self, request: ImageRequest, cancel: threading.Event) -> Result:
        """Regenerate the smallest rectangle on the model's grid that covers the mask, wherever
        it lies (a region anywhere, in the model's default working area, with the upscaler:
        ``model.inference.completion``), then keep every unmarked pixel, alpha included."""
        from model.inference.completion import Completion, complete_all, default_area

        image = request.image
        x0, y0, x1, y1 = bounding_box(request.marked)
        completion = Completion.at_pixel(
            self.bundle,
            image.convert("RGB"),
            (x0, y0),
            request.prompt,
            request.options,
            area=default_area(self.bundle),
            end=(x1, y1),
            upscaler=self.upscaler,
            upscale_tile=UPSCALE_TILE,
            precision=self.precision,
        )
        try:
            pasted, done = complete_all(completion, cancel)
        except RuntimeError as error:
            if cancel.is_set():
                raise JobCancelled("cancelled while sampling") from error
            raise
        pngs = [png_bytes(keep_unmarked(image, result, request)) for result in pasted]
        (left, top), (right, bottom) = completion.corner, completion.end_pixel
        grid, area = completion.geometry.grid, completion.area
        seen = "the whole image" if area.is_whole else f"the {area.width}x{area.height} px area"
        note = (
            f"regenerated the rectangle from pixel ({left}, {top}) to ({right}, {bottom}), "
            f"{completion.plan.cells} of the {grid}x{grid} cells the model sees of {seen}: the "
            f"smallest that covers the mask's {int(request.marked.sum())} pixels; every other "
            "pixel is the image's own"
        )
        return Result(pngs, done.seed, done.seconds, done.tokens_per_s, note)

    def _upscales(self, made: tuple[int, int], asked: tuple[int, int]) -> bool:
        from model.inference.completion import UPSCALE_ABOVE

        return self.upscaler is not None and max(asked) / max(made) > UPSCALE_ABOVE

    def _resized(self, image: Image.Image, size: tuple[int, int], cancel: threading.Event):
        """``image`` at ``size``: drawn by the upscaler first when it grows more than
        ``UPSCALE_ABOVE`` times, then resized exactly (Lanczos)."""
        from model.networks.upscaler import UpscaleCancelled, upscale

        if self._upscales(image.size, size):
            try:
                drawn = upscale(image, self.upscaler, UPSCALE_TILE, UPSCALE_OVERLAP, cancel)
            except UpscaleCancelled as error:
                raise JobCancelled("cancelled while upscaling") from error
            image = Image.fromarray(drawn)
        return image.resize(size, Image.Resampling.LANCZOS)

    def _generate(self, request: ImageRequest, cancel: threading.Event) -> Result:
        """A whole picture at the model's size, resized to the asked size."""
        from model.inference import sampling
        from model.inference.images import to_pil

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
        images = [to_pil(decoded) for decoded in done.images]
        note = ""
        if request.size is not None:
            drawn = "upscaled" if self._upscales(images[0].size, request.size) else "resized"
            images = [self._resized(image, request.size, cancel) for image in images]
            note = (
                f"generated at the model's {self.size}x{self.size} and {drawn} to "
                f"{request.size[0]}x{request.size[1]}"
            )
        pngs = [png_bytes(im) for im in images]
        return Result(pngs, done.seed, done.seconds, done.tokens_per_s, note)


def upscaler_bytes(upscaler) -> int:
    """The most memory the server's upscaler takes beside the model: one tile's working memory
    (``UPSCALE_TILE``) and the largest result it draws, 1024 px upscaled (0 without one)."""
    from model.networks.upscaler import tile_working_bytes

    if upscaler is None:
        return 0
    return tile_working_bytes(upscaler, UPSCALE_TILE, UPSCALE_OVERLAP) + 3 * (1024 * 4) ** 2


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
