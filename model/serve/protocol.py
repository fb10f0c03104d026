"""OpenAI's images API as this server reads and answers it: requests checked field by field,
errors in OpenAI's shape, sizes, and an edit's mask turned into the rectangle the model can
regenerate.

Torch-free (numpy and Pillow only): every request is checked here, before a job is queued.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI uses: 400
for a bad field, 401 for the API key, 404 for an unknown model, 413 for an upload over the limit,
429 when the queue is full (with ``Retry-After``), 503 while shutting down, 504 on timeout.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from model.config import OptionError, SamplingOptions
from model.files import ImageError, open_image

MAX_PROMPT_CHARS = 1000  # OpenAI's limit for dall-e-2
MAX_IMAGES = 10  # n: OpenAI's limit for dall-e-2
OPENAI_SIZES = (256, 512, 1024)  # squares OpenAI's dall-e-2 makes
RESPONSE_FORMATS = ("url", "b64_json")

# OpenAI fields this server accepts and has no use for (it makes one kind of PNG)
IGNORED_FIELDS = frozenset({"user", "quality", "style", "moderation"})
# our extensions: the sampler's own options (model.config.SamplingOptions)
SAMPLING_FIELDS = ("seed", "temperature", "top_k", "top_p", "guidance")
GENERATION_FIELDS = frozenset(
    {"prompt", "n", "size", "response_format", "model", "output_format", "background", "stream"}
    | IGNORED_FIELDS
    | set(SAMPLING_FIELDS)
)
EDIT_FIELDS = GENERATION_FIELDS | {"image", "image[]", "mask"}


class APIError(Exception):
    """A request refused: OpenAI's error JSON, its HTTP status and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


@dataclass(frozen=True)
class ImageRequest:
    """A checked generation or edit: everything the worker needs, nothing left to validate."""

    prompt: str
    options: SamplingOptions
    response_format: str
    size: tuple[int, int] | None  # None: the model's own size (generation) or the image's (edit)
    image: Image.Image | None = None  # edits: RGB, or RGBA when it carries its own mask
    marked: np.ndarray | None = field(default=None, repr=False)  # edits: (H, W) bool, to redo

    @property
    def is_edit(self) -> bool:
        return self.image is not None


# -- fields ------------------------------------------------------------------------------------


def _integer(value: Any, name: str) -> int:
    if isinstance(value, str):  # multipart fields arrive as text
        if not re.fullmatch(r"\s*-?\d+\s*", value):
            raise bad(f"'{name}' must be an integer, got {value[:40]!r}", name)
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad(f"'{name}' must be an integer, got {value!r:.40}", name)
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise bad(f"'{name}' must be a number, got {value[:40]!r}", name) from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"'{name}' must be a number, got {value!r:.40}", name)
    else:
        number = float(value)
    if not math.isfinite(number):
        raise bad(f"'{name}' must be a finite number, got {value!r:.40}", name)
    return number


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise bad(f"'{name}' must be a string, got {type(value).__name__}", name)
    return value


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad(f"'{name}' must be true or false, got {value!r:.40}", name)


def parse_size(value: Any, allowed: list[tuple[int, int]], param: str = "size") -> tuple[int, int]:
    text = _text(value, param)
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", text)
    if not match:
        raise bad(f"'size' must be WIDTHxHEIGHT such as '256x256', got {text[:40]!r}", param)
    size = (int(match[1]), int(match[2]))
    if size not in allowed:
        names = ", ".join(f"'{w}x{h}'" for w, h in allowed)
        raise bad(f"'size' {text.strip()!r} is not offered; choose one of {names}", param)
    return size


def generation_sizes(model_size: int) -> list[tuple[int, int]]:
    """The model's own square first, then OpenAI's (made at the model's size and resized)."""
    sizes = [(model_size, model_size)]
    sizes += [(s, s) for s in OPENAI_SIZES if s != model_size]
    return sizes


def check_model(value: Any, served: str) -> None:
    name = _text(value, "model")
    if name != served:
        raise APIError(
            404,
            f"The model '{name[:80]}' does not exist on this server; it serves '{served}' "
            "(GET /v1/models)",
            "model",
            "model_not_found",
        )


def parse_common(fields: dict[str, Any], allowed: frozenset[str], served: str) -> dict[str, Any]:
    """The fields generations and edits share, checked; returns prompt, options, format."""
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {unknown[0][:60]}", unknown[0])
    if "prompt" not in fields:
        raise bad("'prompt' is a required property", "prompt")
    prompt = _text(fields["prompt"], "prompt")
    if not prompt.strip():
        raise bad("'prompt' is empty: describe what the image should show", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise bad(
            f"'prompt' is {len(prompt)} characters; the maximum is {MAX_PROMPT_CHARS}", "prompt"
        )
    if "\x00" in prompt:
        raise bad("'prompt' contains a NUL character", "prompt")
    lone = next((c for c in prompt if "\ud800" <= c <= "\udfff"), None)
    if lone is not None:  # JSON's "\\ud800" alone: no character, and not encodable as UTF-8
        raise bad(
            f"'prompt' contains a lone surrogate (U+{ord(lone):04X}), not a character", "prompt"
        )
    if fields.get("model") is not None:
        check_model(fields["model"], served)
    n = _integer(fields.get("n", 1), "n")
    if not 1 <= n <= MAX_IMAGES:
        raise bad(f"'n' must be from 1 to {MAX_IMAGES}, got {n}", "n")
    response_format = _text(fields.get("response_format", "url"), "response_format")
    if response_format not in RESPONSE_FORMATS:
        raise bad(
            f"'response_format' must be 'url' or 'b64_json', got {response_format[:40]!r}",
            "response_format",
        )
    if fields.get("output_format", "png") != "png":
        raise bad("'output_format': this server makes PNG only", "output_format")
    if fields.get("background", "auto") not in ("auto", "opaque"):
        raise bad("'background': this server makes opaque images only", "background")
    if _flag(fields.get("stream", False), "stream"):
        raise bad("'stream': this server does not stream partial images", "stream")
    values: dict[str, Any] = {"n": n}
    for name in SAMPLING_FIELDS:
        if fields.get(name) is None:
            continue
        integer = name in ("seed", "top_k")
        values[name] = (_integer if integer else _number)(fields[name], name)
    options = SamplingOptions(**values)
    try:
        options.validate()
    except OptionError as error:  # its field is the API's field of the same name
        raise bad(str(error), error.field) from None
    return {"prompt": prompt.strip(), "options": options, "response_format": response_format}


def parse_generation(body: Any, model_size: int, served: str) -> ImageRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    common = parse_common(body, GENERATION_FIELDS, served)
    size = None
    if body.get("size") is not None:
        size = parse_size(body["size"], generation_sizes(model_size))
        if size == (model_size, model_size):
            size = None
    return ImageRequest(size=size, **common)


# -- edits: the image, its mask, and the rectangle ---------------------------------------------


def read_upload(data: bytes, name: str, max_pixels: int, keep_alpha: bool) -> Image.Image:
    """An uploaded image, its size checked from the header before a pixel is decoded."""
    try:
        return open_image(data, name=name, max_pixels=max_pixels, keep_alpha=keep_alpha)
    except ImageError as error:
        code = "image_too_large" if "megapixels" in str(error) else "invalid_image"
        raise APIError(413 if code == "image_too_large" else 400, str(error), name, code) from None


def marked_pixels(image: Image.Image, mask: Image.Image | None) -> np.ndarray:
    """(H, W) bool: the pixels to regenerate, OpenAI's way: fully transparent (alpha 0) pixels
    of the mask, or of the image itself when no mask is sent."""
    source, param = (mask, "mask") if mask is not None else (image, "image")
    if mask is not None and mask.size != image.size:
        raise bad(
            f"the mask is {mask.width}x{mask.height} but the image is "
            f"{image.width}x{image.height}; they must be the same size",
            "mask",
        )
    if source.mode != "RGBA":
        what = "the mask has" if mask is not None else "no mask was sent and the image has"
        raise bad(
            f"{what} no transparency: mark the area to edit with fully transparent pixels "
            "(alpha 0) in a PNG",
            param,
        )
    marked = np.asarray(source.getchannel("A")) == 0
    if not marked.any():
        raise bad(
            f"the {param} has no fully transparent pixels: nothing is marked for editing "
            "(alpha 0 marks the area to edit)",
            param,
        )
    return marked


def bounding_box(marked: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the smallest rectangle that covers every marked pixel, its end
    exclusive (an empty mask: the whole image)."""
    columns, rows = np.flatnonzero(marked.any(axis=0)), np.flatnonzero(marked.any(axis=1))
    if not len(columns):
        return 0, 0, marked.shape[1], marked.shape[0]
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def parse_edit(
    fields: dict[str, Any],
    files: dict[str, bytes],
    model_size: int,
    served: str,
    max_pixels: int,
) -> ImageRequest:
    """An edit from its multipart form: ``fields`` the text fields, ``files`` the uploads."""
    common = parse_common({**fields, **files}, EDIT_FIELDS, served)
    if "image" in files and "image[]" in files:
        raise bad("send one 'image', not both 'image' and 'image[]'", "image")
    data = files.get("image", files.get("image[]"))
    if data is None:
        if "image" in fields or "image[]" in fields:
            raise bad("'image' must be a file upload, not a text field", "image")
        raise bad("'image' is a required file", "image")
    mask_data = files.get("mask")
    if mask_data is None and "mask" in fields:
        raise bad("'mask' must be a file upload, not a text field", "mask")
    image = read_upload(data, "image", max_pixels, keep_alpha=True)
    mask = read_upload(mask_data, "mask", max_pixels, True) if mask_data is not None else None
    marked = marked_pixels(image, mask)
    if fields.get("size") is not None:
        own = (image.width, image.height)
        size = parse_size(fields["size"], [own] + generation_sizes(model_size))
        if size != own:
            raise bad(
                f"an edit keeps the image's own pixels, so its result is "
                f"{own[0]}x{own[1]} like the image: leave out 'size' or send '{own[0]}x{own[1]}'",
                "size",
            )
    return ImageRequest(size=None, image=image, marked=marked, **common)
