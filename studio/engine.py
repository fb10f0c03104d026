"""The studio's torch worker: loads a bundle and runs completions on a worker thread (the catalog
of cards, devices and memory it shares with the Settings dialog is ``studio.catalog``).

torch runs on a single dedicated thread (a ``ThreadPoolExecutor`` with one worker), so the Qt
thread never waits on it. Results come back as typed messages through a Qt signal emitted from the
worker thread; Qt queues it to the receiver's (GUI) thread. Cancel is cooperative: a
``threading.Event`` that the sampler checks between tokens.

Everything the worker hands over is plain data (numpy uint8 images, floats, strings) so no torch
tensor or model object ever crosses into the GUI thread. Every error a user can meet (bad bundle,
bad option, out of memory) becomes a ``Failed``/``LoadFailed`` message with one line of text.
"""

from __future__ import annotations

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
from model import device as model_device
from model.config import SamplingOptions
from model.device import pick_device
from model.geometry import PAPER_FACTOR, PAPER_SIZE, Area
from model.inference import completion as completion_events
from model.inference import familiarity, sampling
from model.inference.completion import Completion
from model.networks.precision import resolve_precision
from studio.catalog import (
    bytes_held,
    default_bundle_path,
    memory_to_load,
    missing_default_message,
    one_line,
)

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

# Live rows: a decoder this fast previews every row (the embedded model's dVAE takes milliseconds).
PREVIEW_ALWAYS_S = 0.25
# A slower one (DALL·E Mega's VQGAN: about 3 s a preview on a CPU core) previews a row only once
# sampling has run this many times its decode since the last preview, so previews take at most
# a quarter of the job's time instead of doubling it; the progress bar and ETA move every row.
PREVIEW_EVERY = 3.0


# Upscaler choices besides a file: none (Lanczos alone) or the one the app ships
UPSCALER_CHOICES = ("off", "auto")


@dataclass
class Job:
    image: np.ndarray  # (H, W, 3) uint8, the user's pixels
    cell: tuple[int, int]  # on the working area's grid
    caption: str
    options: SamplingOptions = field(default_factory=SamplingOptions)
    cancel: threading.Event = field(default_factory=threading.Event)
    id: int = 0
    area: Area | None = None  # the part of the picture the model sees; None: the whole picture
    end: tuple[int, int] | None = None  # the region's bottom-right cell (exclusive); None: corner
    lookahead: int = 1  # candidates sampled per one kept, scored by the lookahead


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
        # what draws a result the model made smaller than the picture: "off", "auto" (the
        # shipped Real-ESRGAN) or an upscaler file; loaded on the worker by the first job
        self.upscaler = "off"
        self._upscaler: tuple[str, Any] | None = None  # (choice, the loaded net)

    def set_speed(self, precision: str, compile: bool) -> None:
        """How later jobs sample: a precision (see ``model.networks.precision.for_inference``) and
        whether the decode step is compiled. Raises ValueError naming an unknown precision."""
        resolve_precision(precision, "cpu")  # validates the name
        self.precision, self.compile = precision, bool(compile)

    def set_upscaler(self, choice: str) -> None:
        """What later jobs upscale with: "off", "auto" or the path of an upscaler file (read
        by the next job, which fails with one line when it cannot be)."""
        self.upscaler = str(choice or "off")

    def _loaded_upscaler(self, device: torch.device) -> Any:
        """The chosen upscaler on the worker, loaded on ``device`` once per choice (None:
        off)."""
        choice = self.upscaler
        if choice == "off":
            return None
        key = f"{choice}\n{device}"
        if self._upscaler is None or self._upscaler[0] != key:
            from model.bundle.upscaler_files import load_upscaler

            self._upscaler = None  # a failed load keeps no older net
            try:
                net, _ = load_upscaler(None if choice == "auto" else choice, device)
            except FileNotFoundError as error:
                raise ValueError(f"upscaler: {one_line(error)}") from None
            self._upscaler = (key, net)
        return self._upscaler[1]

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
        converted in place (``model.inference.sampling.prepared``), is never widened by "auto"."""
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
        """One job through ``model.inference.completion``: its events become the studio's
        messages."""
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
            area=job.area,
            upscaler=self._loaded_upscaler(bundle.device),
            end=job.end,
            lookahead=job.lookahead,
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
        """Say that ``job`` entered ``phase`` (a ``model.inference.completion.Phase``), with its
        ETA."""
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
        # at the model's resolution: the upscaler draws only the final candidates
        pasted = np.asarray(completion.paste(decoded, upscale=False), np.uint8)
        pace.previewed(decoded_at - began, time.perf_counter() - decoded_at)
        return pasted

    # -- the model's world ----------------------------------------------------------------

    def new_scene(self, seed: int) -> tuple[np.ndarray, str, tuple[int, int]]:
        """A picture from the scenes' world at the loaded model's size: (pixels (S, S, 3)
        uint8, the caption to complete it with, the rectangle's cell); see
        ``model.inference.familiarity.new_scene``. Pillow only, quick enough for the Qt thread."""
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
