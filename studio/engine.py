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

import functools
import gc
import itertools
import logging
import threading
import time
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
from model import card as card_schema
from model import completion as completion_events
from model import device as model_device
from model import familiarity, files, sampling
from model import images as model_images
from model.completion import Completion
from model.config import SamplingOptions
from model.device import pick_device
from model.geometry import PAPER_FACTOR, PAPER_SIZE
from model.precision import PRECISIONS, resolve_precision

# the messages, re-exported: the studio reads them as ``engine.Loaded`` and so on
from studio.messages import (
    Cancelled,
    Compiling,
    Converting,
    Failed,
    Familiar,
    Finished,
    Loaded,
    LoadFailed,
    Message,
    Phase,
    RowDecoded,
)
from studio.pace import Pace

log = logging.getLogger(__name__)

BUNDLE_SUFFIX = bundle_io.SUFFIX
IMAGE_SUFFIXES = files.IMAGE_SUFFIXES
# torch.OutOfMemoryError is torch >= 2.5; older releases only have the CUDA one
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
# Live rows: a decoder this fast previews every row (the embedded model's dVAE takes milliseconds).
PREVIEW_ALWAYS_S = 0.25
# A slower one (DALL·E Mega's VQGAN: about 3 s a preview on a CPU core) previews a row only once
# sampling has run this many times its decode since the last preview, so previews take at most
# a quarter of the job's time instead of doubling it; the progress bar and ETA move every row.
PREVIEW_EVERY = 3.0


WORLD = familiarity.WORLD  # what a scenes model was trained on, in the user's words


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


@functools.lru_cache(maxsize=8)
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
        self._live: list[Job] = []  # submitted and not finished: the running one first
        self._lock = threading.Lock()
        self.geometry_size = PAPER_SIZE
        self.geometry_factor = PAPER_FACTOR
        self.last_tokens_per_s = 0.0
        self.precision = "auto"  # what the CLI and `dalle eval` sample in by default
        self.compile = False  # torch.compile the decode step (first run per batch size compiles)
        self.knows_scenes = False  # the loaded model was trained on scenes (File › New scene)
        self._reference_db: float | None = None  # its familiarity reference, once measured

    def set_speed(self, precision: str, compile: bool) -> None:
        """How later jobs sample: a precision (see ``model.precision.for_inference``) and
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
        self._stored_precision = getattr(bundle.transformer, "precision", "fp32")
        self.geometry_size = bundle.config.vae.image_size
        self.geometry_factor = bundle.config.vae.factor
        self.knows_scenes = familiarity.knows_scenes(card_schema.check(bundle.card)[0])
        self._reference_db = None

    def sampling_precision(self, device: str | torch.device) -> str:
        """What the next job samples in on ``device`` ("auto" resolved). An imported model,
        converted in place (``model.sampling.prepared``), is never widened by "auto"."""
        transformer = self._bundle.transformer if self._bundle is not None else None
        if getattr(transformer, "converts_in_place", False):
            return sampling.resolve_in_place(transformer, self.precision, torch.device(device))
        return resolve_precision(self.precision, device)

    def reload_needed(self) -> bool:
        """True when the chosen precision can only be had by loading the bundle again: an
        imported model converted in place from its stored weights (to int8, or bf16 from fp32)
        cannot be turned back, and sampling would fail or use rounded weights."""
        bundle = self._bundle
        if bundle is None or not getattr(bundle.transformer, "converts_in_place", False):
            return False
        current = bundle.transformer.precision
        wanted = self.sampling_precision(bundle.device)
        return current != self._stored_precision and wanted != current

    def load(self, path: str | Path | None, device: str = "auto") -> Future:
        """Load a bundle on the worker; emits Loaded or LoadFailed. None = the embedded default.
        A bundle that cannot be loaded leaves the one in use loaded, unless only its room
        could hold the new one (``_make_room``)."""
        return self._executor.submit(self._load, path, device)

    def _load(self, path: str | Path | None, device: str) -> Message:
        try:
            if path is None:
                path = default_bundle_path()
                if not Path(path).exists():
                    raise FileNotFoundError(missing_default_message(Path(path)))
            target = pick_device(device)
            self._make_room(path, target)
            bundle = bundle_io.load(path, target)
            self.set_bundle(bundle)
            card = card_schema.clean(bundle.card, str(path))  # as read_card gives it
            result: Message = Loaded(
                path=str(path),
                device=str(target),
                name=card.get("name") or Path(path).name,
                card=card,
                size=self.geometry_size,
                factor=self.geometry_factor,
                precision=self.sampling_precision(target),
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

    def _make_room(self, path: str | Path, target: torch.device) -> None:
        """Let go of the model in use when the new one does not fit beside it but does in its
        place (loading DALL·E Mega again in another precision, or over Mini, on a machine that
        holds one). Otherwise the model in use stays: a refused load leaves it working."""
        held = self._bundle
        if held is None:
            return
        try:
            needed, weights = memory_to_load(path)
        except (ValueError, OSError):
            return  # the load itself says what is wrong with the file
        checks = [(torch.device("cpu"), needed)]  # as model.bundle.load checks them
        if target.type != "cpu":
            checks.append((target, weights))
        for where, amount in checks:
            free = model_device.available_memory(where)
            if free is None or amount <= free:
                continue
            if amount <= free + bytes_held(held, where.type):
                log.info("releasing %s to make room for %s", held.path or "the model", path)
                self._bundle = held = None
                gc.collect()
                if target.type == "cuda":
                    torch.cuda.empty_cache()
                return

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job`` on the worker; messages follow on ``message``. Returns the job (its id)."""
        job.id = next(self._ids)
        with self._lock:
            self._live.append(job)  # so that a cancel before the worker starts it is not lost
        self._executor.submit(self.run_job_blocking, job, self.message.emit)
        return job

    def cancel(self, job: Job | None = None) -> None:
        """Flag ``job`` to stop, or with None every job not finished: the one running and any
        queued behind it (a later submit must not take the running one's cancel)."""
        with self._lock:
            for live in self._live if job is None else [job]:
                live.cancel.set()

    def run_job_blocking(self, job: Job, emit: Callable[[Message], None]) -> Message:
        """Run ``job`` on the calling thread, passing each message to ``emit``; return the last."""
        if not job.id:
            job.id = next(self._ids)
        with self._lock:
            if not any(live is job for live in self._live):  # identity: Jobs hold arrays
                self._live.append(job)
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
                self._live = [live for live in self._live if live is not job]
        emit(result)
        return result

    def _run(self, job: Job, emit: Callable[[Message], None]) -> Message:
        """One job through ``model.completion``: its events become the studio's messages."""
        bundle = self._bundle
        if bundle is None:
            return Failed(job.id, "no model is loaded: open a model bundle in Settings")
        if job.cancel.is_set():
            return Cancelled(job.id)
        completion = Completion(
            bundle,
            Image.fromarray(job.image, "RGB"),
            job.cell,
            job.caption,
            job.options,
            precision=self.precision,
            compile=self.compile,
            sampler=self._sampler,
        )
        pace = Pace(job.options.n)
        previewed_at = paste_began = pace.started  # when the last preview was ready
        candidates: list[np.ndarray] = []
        for event in completion.run(job.cancel):
            if isinstance(event, completion_events.Phase):
                self._enter(job, event, pace, emit)
                paste_began = time.perf_counter()
            elif isinstance(event, sampling.Progress):
                pace.row(event.cells_done)
                spent = pace.decode_s + pace.paste_s  # the last preview's
                preview = None
                if spent < PREVIEW_ALWAYS_S or time.perf_counter() - previewed_at >= (
                    PREVIEW_EVERY * spent
                ):
                    preview = self._preview(completion, event, pace)
                    previewed_at = time.perf_counter()
                self.last_tokens_per_s = event.tokens_per_s
                emit(
                    RowDecoded(
                        job=job.id,
                        preview=preview,
                        rows_done=event.rows_done,
                        rows_total=event.rows_total,
                        tokens_per_s=event.tokens_per_s,
                        eta_s=pace.eta_sampling(event.cells_done, event.cells_total),
                    )
                )
            elif isinstance(event, completion_events.Pasted):
                candidates.append(np.asarray(event.image, dtype=np.uint8))
                pace.candidate_pasted(time.perf_counter() - paste_began)
            elif isinstance(event, completion_events.Finished):
                return self._finish(job, event.done, candidates, pace)
            elif isinstance(event, sampling.Cancelled):
                return Cancelled(job.id)
        return Failed(job.id, "sampling ended without a result")

    def _enter(self, job: Job, phase, pace: Pace, emit: Callable[[Message], None]) -> None:
        """Say that ``job`` entered ``phase`` (a ``model.completion.Phase``), with its ETA."""
        if phase.name == "reading":
            emit(Phase(job.id, "reading"))
        elif phase.name == "encoding":
            pace.read()
            emit(Phase(job.id, "encoding"))
            pace.once_only = self._say_once_only_waits(job, emit)
        elif phase.name == "decoding":
            pace.decoding()
            emit(Phase(job.id, "decoding", eta_s=pace.eta_decoding()))
        elif phase.name in ("upscaling", "pasting"):  # each candidate, upscaled or not
            if phase.index == 0:
                pace.pasting()
            emit(Phase(job.id, phase.name, phase.index, phase.count, pace.eta_pasting()))

    def _say_once_only_waits(self, job: Job, emit: Callable[[Message], None]) -> bool:
        """Say why the first row waits (a conversion in place, a compile); True when it does."""
        bundle, said = self._bundle, False
        transformer = bundle.transformer
        if getattr(transformer, "converts_in_place", False):
            wanted = self.sampling_precision(sampling.model_device(transformer))
            if wanted != transformer.precision:
                emit(Converting(job.id, wanted))
                said = True
        if self.compile:  # the first run at a new batch size compiles
            batch = sampling.batch_rows(job.options)
            step = sampling.prepared(bundle.transformer, self.precision, True).decode_step
            if step.will_compile(batch):
                emit(Compiling(job.id, batch))
                said = True
        return said

    def _finish(self, job, done: sampling.Done, candidates, pace: Pace) -> Finished:
        """The job's result: its pasted candidates, best first, and how long it took."""
        self.last_tokens_per_s = done.tokens_per_s
        previewed = done.order.index(0) if 0 in done.order else 0
        return Finished(
            job.id,
            candidates,
            done.seed,
            done.seconds,
            done.tokens_per_s,
            previewed,
            wall_seconds=time.perf_counter() - pace.started,
            seconds_per_cell=pace.seconds_per_cell,
            overhead_s=pace.overhead_s(),
        )

    @staticmethod
    def _preview(completion: Completion, progress: sampling.Progress, pace: Pace) -> np.ndarray:
        """The first sampled candidate's grid so far, decoded and pasted back (Finished.previewed
        says where reranking put it); ``pace`` learns what the decode and paste cost."""
        began = time.perf_counter()
        decoded = completion.decode_first(progress)
        decoded_at = time.perf_counter()
        pasted = np.asarray(completion.paste(decoded), np.uint8)
        pace.previewed(decoded_at - began, time.perf_counter() - decoded_at)
        return pasted

    # -- the model's world ----------------------------------------------------------------

    def new_scene(self, seed: int) -> tuple[np.ndarray, str, tuple[int, int]]:
        """A picture from the scenes' world at the loaded model's size: (pixels (S, S, 3)
        uint8, the caption to complete it with, the rectangle's cell); see
        ``model.familiarity.new_scene``. Pillow only, quick enough for the Qt thread."""
        picture, caption, cell = familiarity.new_scene(
            seed, self.geometry_size, self.geometry_factor
        )
        return np.array(picture, dtype=np.uint8), caption, cell

    def measure_familiarity(self, image: np.ndarray, request: int) -> Future | None:
        """Measure how far ``image`` lies from the loaded model's training data on the worker;
        a ``Familiar`` message follows. None, and no cost, unless the model knows scenes (an
        imported real-weight model is never measured)."""
        if not self.knows_scenes:
            return None
        return self._executor.submit(self._measure_familiarity, image, request)

    def _measure_familiarity(self, image: np.ndarray, request: int) -> Familiar | None:
        bundle = self._bundle
        if bundle is None or not self.knows_scenes:
            return None
        try:
            if self._reference_db is None:  # once per model: a batch of its scenes
                self._reference_db = familiarity.reference_psnr(bundle)
            measured = familiarity.measure(
                bundle, Image.fromarray(image, "RGB"), self._reference_db
            )
        except (ValueError, RuntimeError, OSError, MemoryError) as error:
            log.warning("could not measure the picture against the model: %s", one_line(error))
            return None
        result = Familiar(
            request,
            measured.typical_db,
            measured.reference_db,
            familiarity.FAR_BELOW_DB,
            measured.far,
        )
        self.message.emit(result)
        return result

    def shutdown(self) -> None:
        self.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
