"""The studio's one bridge to ``model/``: loads a bundle and runs completions on a worker thread.

torch runs on a single dedicated thread (a ``ThreadPoolExecutor`` with one worker), so the Qt
thread never waits on it. Results come back as typed messages through a Qt signal emitted from the
worker thread; Qt queues it to the receiver's (GUI) thread. Cancel is cooperative: a
``threading.Event`` that the sampler checks between tokens.

Everything the worker hands over is plain data (numpy uint8 images, floats, strings) so no torch
tensor or model object ever crosses into the GUI thread. Every error a user can meet (bad bundle,
bad option, out of memory) becomes a ``Failed``/``LoadFailed`` message with one line of text.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PySide6.QtCore import QObject, Signal

from model import bundle as bundle_io
from model import files, sampling
from model import images as model_images
from model.config import SamplingOptions
from model.device import pick_device
from model.geometry import PAPER_FACTOR, PAPER_SIZE, Geometry
from model.transformer import PRECISIONS, resolve_precision

log = logging.getLogger(__name__)

BUNDLE_SUFFIX = bundle_io.SUFFIX
IMAGE_SUFFIXES = files.IMAGE_SUFFIXES
# torch.OutOfMemoryError is torch >= 2.5; older releases only have the CUDA one
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


# -- messages -------------------------------------------------------------------------------


@dataclass
class Loaded:
    path: str
    device: str
    name: str
    card: dict[str, Any]
    size: int
    factor: int
    precision: str = "fp32"  # what sampling runs in on this device ("auto" resolved)
    tokenizer: Any = None  # the bundle's CaptionTokenizer: the caption box counts tokens with it


@dataclass
class LoadFailed:
    message: str


@dataclass
class RowDecoded:
    job: int
    preview: np.ndarray  # (H, W, 3) uint8 at the user's resolution, original outside the rectangle
    rows_done: int
    rows_total: int
    tokens_per_s: float
    eta_s: float


@dataclass
class Compiling:
    job: int
    batch: int  # rows the model runs at once: candidates, doubled with guidance


@dataclass
class Finished:
    job: int
    candidates: list[np.ndarray]  # (H, W, 3) uint8 each, pasted back, best first
    seed: int
    seconds: float
    tokens_per_s: float
    previewed: int = 0  # the candidate the live rows showed (sampled first; reranking moves it)


@dataclass
class Failed:
    job: int
    message: str


@dataclass
class Cancelled:
    job: int


Message = Loaded | LoadFailed | RowDecoded | Compiling | Finished | Failed | Cancelled


@dataclass
class Job:
    image: np.ndarray  # (H, W, 3) uint8, the user's pixels
    cell: tuple[int, int]
    caption: str
    options: SamplingOptions = field(default_factory=SamplingOptions)
    cancel: threading.Event = field(default_factory=threading.Event)
    id: int = 0


# -- helpers --------------------------------------------------------------------------------


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


def missing_default_message(path: Path) -> str:
    return (
        f"the embedded default model is not installed ({path}); "
        "open a model bundle (*.dalle.safetensors) with File > Settings"
    )


def read_card(path: str | Path) -> dict[str, Any]:
    """The bundle's card from its header only; raises ValueError with a one-line message."""
    return bundle_io.read_card(path)


def load_image(path: str | Path) -> np.ndarray:
    """A user image as (H, W, 3) uint8 RGB (EXIF orientation, alpha and palette handled)."""
    return np.array(model_images.load_image(path), dtype=np.uint8)


def image_from_pil(image: Image.Image) -> np.ndarray:
    return np.array(model_images.to_rgb(image), dtype=np.uint8)


def eta_seconds(cells_done: int, cells_total: int, tokens_per_s: float, n: int) -> float:
    if tokens_per_s <= 0:
        return math.inf
    return (cells_total - cells_done) * n / tokens_per_s


def available_devices() -> list[str]:
    """All choices; picking CUDA on a machine without it fails to load with a message."""
    return ["auto", "cuda", "cpu"]


def available_precisions() -> list[str]:
    """auto: bf16 on CUDA, int8 weights on x86 CPUs, else fp32 (``resolve_precision``)."""
    return list(PRECISIONS)


Sampler = Callable[..., Iterator[Any]]


class Engine(QObject):
    """Owns the loaded bundle and the worker thread; emits ``message`` with typed messages."""

    message = Signal(object)

    def __init__(self, sampler: Sampler | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._sampler = sampler or sampling.complete
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-torch")
        self._bundle = None
        self._ids = itertools.count(1)
        self._current: Job | None = None
        self._lock = threading.Lock()
        self.geometry_size = PAPER_SIZE
        self.geometry_factor = PAPER_FACTOR
        self.last_tokens_per_s = 0.0
        self.precision = "auto"  # what the CLI and `dalle eval` sample in by default
        self.compile = False  # torch.compile the decode step (first run per batch size compiles)

    def set_speed(self, precision: str, compile: bool) -> None:
        """How later jobs sample: a precision (see ``model.transformer.for_inference``) and
        whether the decode step is compiled. Raises ValueError naming an unknown precision."""
        resolve_precision(precision, "cpu")  # validates the name
        self.precision, self.compile = precision, bool(compile)

    # -- bundle ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._bundle is not None

    def set_bundle(self, bundle) -> None:
        """Use an already loaded bundle (tests, embedding)."""
        self._bundle = bundle
        self.geometry_size = bundle.config.vae.image_size
        self.geometry_factor = bundle.config.vae.factor

    def load(self, path: str | Path | None, device: str = "auto") -> Future:
        """Load a bundle on the worker; emits Loaded or LoadFailed. None = the embedded default."""
        return self._executor.submit(self._load, path, device)

    def _load(self, path: str | Path | None, device: str) -> Message:
        try:
            if path is None:
                path = default_bundle_path()
                if not Path(path).exists():
                    raise FileNotFoundError(missing_default_message(Path(path)))
            target = pick_device(device)
            bundle = bundle_io.load(path, target)
            self.set_bundle(bundle)
            result: Message = Loaded(
                path=str(path),
                device=str(target),
                name=str(bundle.card.get("name") or Path(path).name),
                card=dict(bundle.card),
                size=self.geometry_size,
                factor=self.geometry_factor,
                precision=resolve_precision(self.precision, target),
                tokenizer=bundle.tokenizer,
            )
        except FileNotFoundError as error:
            result = LoadFailed(one_line(error))
        except (ValueError, RuntimeError, OSError, MemoryError) as error:
            result = LoadFailed(one_line(error))
        except Exception as error:  # an unforeseen bug must not kill the worker silently
            log.exception("loading %s failed", path)
            result = LoadFailed(f"could not load {path}: {one_line(error)}")
        self.message.emit(result)
        return result

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job`` on the worker; messages follow on ``message``. Returns the job (its id)."""
        job.id = next(self._ids)
        with self._lock:
            self._current = job  # so that a cancel before the worker starts it is not lost
        self._executor.submit(self.run_job_blocking, job, self.message.emit)
        return job

    def cancel(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.cancel.set()

    def run_job_blocking(self, job: Job, emit: Callable[[Message], None]) -> Message:
        """Run ``job`` on the calling thread, passing each message to ``emit``; return the last."""
        if not job.id:
            job.id = next(self._ids)
        with self._lock:
            self._current = job
        try:
            result = self._run(job, emit)
        except (ValueError, RuntimeError, OSError, MemoryError) as error:
            log.warning("generation failed: %s", error)
            result = Failed(job.id, one_line(error))
        except Exception as error:  # never let a bug take the image or the worker down
            log.exception("generation failed")
            result = Failed(job.id, f"internal error: {one_line(error)}")
        finally:
            with self._lock:
                if self._current is job:
                    self._current = None
        emit(result)
        return result

    def _run(self, job: Job, emit: Callable[[Message], None]) -> Message:
        bundle = self._bundle
        if bundle is None:
            return Failed(job.id, "no model is loaded: open a model bundle in Settings")
        if job.cancel.is_set():
            return Cancelled(job.id)
        image = Image.fromarray(job.image, "RGB")
        size = bundle.config.vae.image_size
        factor = bundle.config.vae.factor
        geometry = Geometry(image.width, image.height, size, factor)
        tensor = model_images.to_model(image, geometry)
        options = job.options
        if self.compile:  # say why the first run at a new batch size waits
            batch = sampling.batch_rows(options)
            step = sampling.prepared(bundle.transformer, self.precision, True).decode_step
            if step.will_compile(batch):
                emit(Compiling(job.id, batch))
        messages = self._sampler(
            bundle,
            tensor,
            job.cell,
            job.caption,
            options,
            job.cancel,
            precision=self.precision,
            compile=self.compile,
            visible=geometry.visible_grid,  # the padding below or beside is not sampled
        )
        for message in messages:
            if isinstance(message, sampling.Progress):
                # one decode of the whole current grid per finished row, of the first sampled
                # candidate only; Finished.previewed says where reranking put it
                with torch.inference_mode():
                    decoded = bundle.vae.decode(message.tokens[:1].to(bundle.device))[0]
                preview = model_images.paste_back(
                    image, decoded.float().cpu(), geometry, job.cell
                )
                self.last_tokens_per_s = message.tokens_per_s
                emit(
                    RowDecoded(
                        job=job.id,
                        preview=np.asarray(preview, dtype=np.uint8),
                        rows_done=message.rows_done,
                        rows_total=message.rows_total,
                        tokens_per_s=message.tokens_per_s,
                        eta_s=eta_seconds(
                            message.cells_done, message.cells_total, message.tokens_per_s, options.n
                        ),
                    )
                )
            elif isinstance(message, sampling.Cancelled):
                return Cancelled(job.id)
            elif isinstance(message, sampling.Done):
                candidates = [
                    np.asarray(
                        model_images.paste_back(image, decoded, geometry, job.cell),
                        dtype=np.uint8,
                    )
                    for decoded in message.images
                ]
                self.last_tokens_per_s = message.tokens_per_s
                previewed = message.order.index(0) if 0 in message.order else 0
                return Finished(
                    job.id,
                    candidates,
                    message.seed,
                    message.seconds,
                    message.tokens_per_s,
                    previewed,
                )
        if job.cancel.is_set():
            return Cancelled(job.id)
        return Failed(job.id, "sampling ended without a result")

    def shutdown(self) -> None:
        self.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
