"""The studio's catalog of models, devices and memory: a bundle's card read from its header, the
example captions' glosses, the devices and precisions offered, what loading a bundle needs, the
user's images as arrays, the one-line description of an error, and what File › Import model…
can import (``import_kinds``: ``model.importers.kinds``) with the free disk and memory it
weighs the import against.

Plain functions with no state of their own: the Settings dialog and the window call them on the Qt
thread, the engine (``studio.engine``) on its worker. They may import torch and ``model``; the
engine's worker, its jobs and their messages are ``studio.engine`` and ``studio.messages``.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import bundle as bundle_io
from model import card as card_schema
from model import device as model_device
from model import files
from model.bundle import upscaler_files
from model.importers import common as importer_common
from model.importers import kinds
from model.inference import familiarity
from model.inference import images as model_images
from model.networks.precision import PRECISIONS
from studio.project import data_dir

BUNDLE_SUFFIX = bundle_io.SUFFIX
UPSCALER_SUFFIX = upscaler_files.SUFFIX  # what Settings › Upscaler opens
IMAGE_SUFFIXES = files.IMAGE_SUFFIXES
# torch.OutOfMemoryError is torch >= 2.5; older releases only have the CUDA one
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
TORCH_VERSION = torch.__version__  # Help › About says it
import_kinds = kinds  # what File › Import model… imports (torch-free: model.importers.kinds)
ImportCancelled = importer_common.Cancelled  # its Cancel stops an importer between steps
WORLD = familiarity.WORLD  # what a scenes model was trained on, in the user's words
measured_figures = card_schema.measured  # the card's eval headline, one line (Settings, About)


def one_line(error: BaseException) -> str:
    """A user-facing one-line description of ``error``."""
    if isinstance(error, OUT_OF_MEMORY | MemoryError):
        return (
            "out of memory: try fewer candidates, a smaller model or the CPU device "
            f"({str(error).splitlines()[0] if str(error) else 'no details'})"
        )
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def default_bundle_path() -> Path:
    return bundle_io.default_bundle_path()


def models_folder() -> Path:
    """The user's models folder, created on demand: File › Import model… writes there and
    Settings lists what it holds (``<app data>/models``; ``DALLE_STUDIO_MODELS`` names another,
    for a shared drive or the tests)."""
    folder = models_folder_path()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def models_folder_path() -> Path:
    """Where the models folder is, without creating it: listing a folder that is missing, or
    that cannot be made, finds nothing rather than failing Settings."""
    override = os.environ.get("DALLE_STUDIO_MODELS")
    return Path(override).expanduser() if override else data_dir() / "models"


def free_disk(folder: str | Path) -> int:
    """Bytes free on ``folder``'s disk (what an import may write there)."""
    return shutil.disk_usage(folder).free


def available_ram() -> int | None:
    """Bytes of memory available now (``model.device``); None when it cannot be told."""
    return model_device.available_memory(torch.device("cpu"))


def missing_default_message(path: Path) -> str:
    return (
        f"the embedded default model is not installed ({path}); "
        "open a model bundle (*.dalle.safetensors) with File > Settings"
    )


def read_card(path: str | Path) -> dict[str, Any]:
    """The bundle's card from its header only; raises ValueError with a one-line message."""
    return bundle_io.read_card(path)


def clean_card(card: Any, source: str) -> dict[str, Any]:
    """``card`` as far as it is valid (``model.card``): what the studio reads of a model's card."""
    return card_schema.clean(card, source)


def example_glosses(card: dict[str, Any]) -> dict[str, str]:
    """Each example caption's English gloss, where the card gives one per caption (ruDALL-E's
    Russian examples); {} for a card without them or with a list that does not line up."""
    captions, glosses = card.get("example_captions"), card.get("example_glosses")
    if not (isinstance(captions, list) and isinstance(glosses, list)):
        return {}
    if len(glosses) != len(captions):
        return {}
    return {str(caption): str(gloss) for caption, gloss in zip(captions, glosses, strict=True)}


def load_image(path: str | Path) -> np.ndarray:
    """A user image as (H, W, 3) uint8 RGB (EXIF orientation, alpha and palette handled)."""
    return np.array(model_images.load_image(path), dtype=np.uint8)


def image_from_pil(image: Image.Image) -> np.ndarray:
    return np.array(model_images.to_rgb(image), dtype=np.uint8)


def bytes_held(bundle, device_type: str) -> int:
    """Bytes of ``bundle``'s weights and buffers on devices of ``device_type``."""
    return sum(
        tensor.numel() * tensor.element_size()
        for module in bundle.modules().values()
        for tensor in [*module.parameters(), *module.buffers()]
        if tensor.device.type == device_type
    )


def memory_to_load(path: str | Path) -> tuple[int, int]:
    """(bytes of CPU memory that loading ``path`` needs, bytes of its weights): the estimates
    ``model.bundle.load`` checks before it reads a weight. Raises BundleError (a ValueError) or
    OSError. Remembered per file version: DALL·E Mega's models take a second or two to build
    even on the meta device, and the Settings card asks each time it opens."""
    path = Path(path)
    stat = path.stat()
    return _memory_to_load(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)  # Settings lists every installed model
def _memory_to_load(path: str, mtime_ns: int, size: int) -> tuple[int, int]:
    header = bundle_io.read_header(path)
    config = bundle_io.read_config(path)
    shapes = bundle_io.build_models(config, device="meta")
    weights = sum(entry.end - entry.begin for entry in header.tensors.values())
    return bundle_io.memory_to_load(header, config, shapes), weights


def memory_summary(path: str | Path) -> str:
    """One line for the Settings card: what loading ``path`` needs and what this machine has
    free now; "" when it cannot be told."""
    try:
        needed, _ = memory_to_load(path)
    except (ValueError, OSError):
        return ""
    free = model_device.available_memory(torch.device("cpu"))
    text = f"loading needs about {_size(needed)}"
    return text + (f" ({_size(free)} available now)" if free is not None else "")


def _size(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


size_text = kinds.size_text  # bytes as a user reads them, as File › Import model… says them
FOLDER = "models folder"  # where an installed model lives, as the list says it
HEADLINE_CHARS = 120  # of a card's name: a list row, not the whole card


@dataclass(frozen=True)
class InstalledModel:
    """One model file as Settings lists it, read from its header alone (no weight is read).

    ``choice`` is what the settings keep for it ("" for the embedded model, else its path);
    ``problem`` says in one line why the file cannot be used ("" when it can)."""

    choice: str
    path: Path
    place: str  # "embedded", "models folder" or "elsewhere"
    headline: str  # the card's name, else its description's first line, else the file's name
    size: int | None  # bytes on disk; None when there is no file
    memory: int | None = None  # bytes of CPU memory loading needs; None when it cannot be told
    problem: str = ""


def _headline(card: dict[str, Any], path: Path) -> str:
    for key in ("name", "description"):
        value = card.get(key)
        if isinstance(value, str) and value.strip():
            line = value.strip().splitlines()[0]
            return line if len(line) <= HEADLINE_CHARS else line[: HEADLINE_CHARS - 1] + "…"
    return path.name


def _problem(error: BaseException) -> str:
    """A file's problem without its path, which the list shows beside it."""
    return getattr(error, "problem", "") or one_line(error)


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _installed_bundle(path: Path, choice: str, place: str) -> InstalledModel:
    size = _file_size(path)
    try:
        card = read_card(path)
        memory, _ = memory_to_load(path)  # also checks the config: a model that cannot build
    except (ValueError, OSError) as error:
        return InstalledModel(choice, path, place, path.name, size, problem=_problem(error))
    return InstalledModel(choice, path, place, _headline(card, path), size, memory)


def _same_file(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compared as written
        return path


def same_model(first: str, second: str) -> bool:
    """Whether two settings values name one file ("" is the embedded model)."""

    def key(choice: str) -> Path:
        return _same_file(Path(choice) if choice else default_bundle_path())

    return key(first) == key(second)


def installed_model(choice: str) -> InstalledModel:
    """One bundle as ``installed_models`` lists it (``choice`` "": the embedded one)."""
    if not choice:
        return _installed_bundle(default_bundle_path(), "", "embedded")
    path = Path(choice)
    place = FOLDER if _same_file(path.parent) == _same_file(models_folder_path()) else "elsewhere"
    return _installed_bundle(path, choice, place)


def installed_models(*others: str) -> list[InstalledModel]:
    """The models Settings offers: the embedded one first, then every bundle in the models
    folder by file name, then each of ``others`` (the bundle chosen now, a file opened with
    "Other file…") that is neither; a file that cannot be used comes after those that can,
    with its problem."""
    folder = sorted(models_folder_path().glob("*" + BUNDLE_SUFFIX))  # none when it is no folder
    models: list[InstalledModel] = []
    for choice in ["", *map(str, folder), *others]:
        if not any(same_model(choice, listed.choice) for listed in models):  # once each
            models.append(installed_model(choice))
    return models[:1] + sorted(models[1:], key=lambda model: bool(model.problem))


def installed_upscalers() -> list[InstalledModel]:
    """Every upscaler file in the models folder by file name, with its card's name (header
    only); one that cannot be read is listed with its problem."""
    upscalers = []
    for path in sorted(models_folder_path().glob("*" + UPSCALER_SUFFIX)):
        size = _file_size(path)
        try:
            card = upscaler_files.read_upscaler_card(path)
        except (ValueError, OSError) as error:
            problem = one_line(error).removeprefix(f"upscaler {path}: ")
            upscalers.append(
                InstalledModel(str(path), path, FOLDER, path.name, size, None, problem)
            )
            continue
        upscalers.append(InstalledModel(str(path), path, FOLDER, _headline(card, path), size))
    return upscalers


def available_devices() -> list[str]:
    """All choices; picking CUDA on a machine without it fails to load with a message."""
    return ["auto", "cuda", "cpu"]


def available_precisions() -> list[str]:
    """auto: bf16 on CUDA, int8 weights on x86 CPUs, else fp32 (``resolve_precision``)."""
    return list(PRECISIONS)
