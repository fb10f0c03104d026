"""The studio's generation state: the document, the engine, the running job, the sampling options,
the seed mode, the loaded model and its speed, and errors.

A QObject with ``*_changed`` signals and no widgets (krita-ai-diffusion's model/ui split): the
window and its panels bind to these signals and call ``generate``, ``cancel`` and the setters, so
the app's whole workflow runs without a window (tests/test_session.py). Every engine message
reaches ``handle`` on the Qt thread (the engine's signal is queued here from its worker); one from
a job the session no longer runs is dropped. A finished job's history entry is made from the
engine's ``Finished`` message and the job the session submitted, nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from model.config import SamplingOptions
from studio import catalog, messages
from studio.document import Document, area_choice
from studio.engine import Engine, Job

log = logging.getLogger(__name__)

SEED_MODES = ("random", "fixed", "increment")
MAX_LOOKAHEAD = 16  # candidates sampled per one kept, at most
MAX_SEED = 2**31 - 1  # the seed field is a QSpinBox (a C int); model.config allows far more
# four candidates to choose from; the seed field starts at 1, used in the fixed and increment modes
DEFAULT_OPTIONS = SamplingOptions(n=4, seed=1)


class Session(QObject):
    """One document and the generations made on it (see the module's docstring)."""

    document_changed = Signal(object)  # the new Document
    caption_changed = Signal(str)
    options_changed = Signal(object)  # the new SamplingOptions
    seed_mode_changed = Signal(str)
    # a job is (no longer) running: the document's ``generating_changed``, relayed (the document
    # owns the fact, ``running`` reads it)
    running_changed = Signal(bool)
    model_changed = Signal()  # model_state, model_name, model_path, device, precision, card
    speed_changed = Signal(float)  # tokens/s of the last finished run
    status_changed = Signal(str)  # one line on what the generation is doing or did
    # a job's phase besides sampling rows ("reading", "encoding", "decoding", "pasting"), its
    # step and steps (pasting candidate 2 of 4; 0 and 0 when it cannot be counted)
    phase_changed = Signal(str, int, int)
    finished = Signal()  # a job's candidates are staged and its history entries added
    error = Signal(str)  # one line a user can act on; the image is never touched
    familiar = Signal(object)  # a Familiar message: how far a picture lies from the model's data
    area_changed = Signal(object)  # the working area choice: "whole", "auto" or a side in px
    to_corner_changed = Signal(bool)  # the rectangle tool's "to the corner" toggle
    lookahead_changed = Signal(int)  # candidates sampled per one kept (the lookahead's K)

    def __init__(
        self, engine: Engine, document: Document | None = None, parent: QObject | None = None
    ):
        super().__init__(parent)
        self.engine = engine
        self.document = document or Document()
        self.job: Job | None = None
        self.caption = ""
        self.options = DEFAULT_OPTIONS
        self.seed_mode = SEED_MODES[0]
        # the working area the user chose ("whole", "auto" or a side in pixels); None: the
        # loaded model's default (``default_area``)
        self.area_choice: str | int | None = None
        # the rectangle tool: True, a drag places the region's top-left and it reaches the
        # bottom-right corner (DALL·E's own rectangle); False, a drag selects the region from
        # the press to the release, as a selection tool does
        self.to_corner = True
        self.lookahead = 1  # K: each candidate kept is the best of K by the lookahead's score
        self.status = ""
        # the model, as its last Loaded message said (the engine may also be given one directly)
        self.model_state = "loading"  # "loading", "loaded" or "failed"
        self.model_name = ""
        self.model_path = ""
        self.device = ""
        self.card: dict[str, Any] = {}  # the model's card as far as it is valid (model.card)
        self.examples: list[str] = []
        self.glosses: dict[str, str] = {}  # an example caption's English gloss (ruDALL-E's card)
        # the bundle's caption tokenizer (ours or an imported model's BartTokenizer): the caption
        # box counts tokens with it
        self.tokenizer: Any = None
        self.load_error = ""  # why the last load failed ("" after a load that worked)
        # speed of the last finished run: the canvas's ETA (``estimate_seconds``)
        self.tokens_per_s = 0.0
        self.seconds_per_cell = 0.0  # sampling's steady pace (``studio.pace``)
        self.overhead_s = 0.0  # reading, encoding, decoding and pasting
        engine.message.connect(self.handle)
        self.document.generating_changed.connect(self._generating_changed)
        self.document.rectangle_changed.connect(self._rectangle_changed)

    # -- state ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """A job is running on the document (``Document.generating``: one fact, its owner the
        document; ``job`` is the handle its messages are matched with)."""
        return self.document.generating

    def _generating_changed(self, generating: bool) -> None:
        self.running_changed.emit(generating)

    def set_document(self, document: Document) -> None:
        """Work on ``document`` from now on; a running job's results belong to the image being
        left, so the job is dropped."""
        self.drop_job()
        if self.loaded:
            document.set_model_geometry(self.geometry_size, self.geometry_factor)
        self.document.generating_changed.disconnect(self._generating_changed)
        self.document.rectangle_changed.disconnect(self._rectangle_changed)
        self.document = document
        document.generating_changed.connect(self._generating_changed)
        document.rectangle_changed.connect(self._rectangle_changed)
        if document.caption_history:  # a reopened project: its last caption, ready to go on
            self.set_caption(document.caption_history[-1])
        document.set_area_choice(self.area)
        self._rectangle_changed()  # a project's region that ends inside turns the toggle off
        self.document_changed.emit(document)

    # -- the working area -----------------------------------------------------------------

    @property
    def default_area(self) -> str:
        """The loaded model's working area (``model.inference.completion.default_area``):
        whole for a model trained on scenes, auto for an imported photo model."""
        return "auto" if self.engine.loaded and not self.engine.knows_scenes else "whole"

    @property
    def area(self) -> str | int:
        """The working area the next rectangle is in: the user's choice, else the default."""
        return self.default_area if self.area_choice is None else self.area_choice

    def set_area_choice(self, choice: str | int | None) -> None:
        """Choose the working area ("whole", "auto", a side in pixels; None: the model's
        default); ValueError names a bad one. The rectangle moves onto the area's grid."""
        if choice is not None:
            choice = area_choice(choice)
        changed = choice != self.area_choice
        self.area_choice = choice
        self.document.set_area_choice(self.area)
        if changed:
            self.area_changed.emit(self.area)

    def _rectangle_changed(self) -> None:
        """A region that ends inside the picture (a handle dragged, a project opened) turns the
        toggle off: the toggle always says what the region does."""
        if self.document.end is not None and self.to_corner:
            self.to_corner = False
            self.to_corner_changed.emit(False)

    def set_to_corner(self, to_corner: bool) -> None:
        """The rectangle tool's toggle. Turned on, the region reaches the bottom-right corner
        again from the same top-left; turned off, the next drag selects the region's both
        corners (the region's own bottom-right handle moves its end at any time)."""
        to_corner = bool(to_corner)
        if to_corner and not self.running:
            self.document.set_end_from_pixel(None)
        if to_corner != self.to_corner:
            self.to_corner = to_corner
            self.to_corner_changed.emit(to_corner)

    def set_lookahead(self, k: int) -> None:
        """Sample ``k`` candidates for each one kept and keep the best by the lookahead's score
        (1: none); ValueError for another."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_LOOKAHEAD:
            raise ValueError(f"the lookahead is 1 to {MAX_LOOKAHEAD} candidates, got {k!r:.40}")
        if k != self.lookahead:
            self.lookahead = k
            self.lookahead_changed.emit(k)

    def set_caption(self, caption: str) -> None:
        if caption != self.caption:
            self.caption = caption
            self.caption_changed.emit(caption)

    def set_options(self, **changes: Any) -> None:
        """Change some sampling options (``n=2, top_p=0.9``); ValueError names a bad one."""
        options = dataclasses.replace(self.options, **changes)
        options.validate()
        if options != self.options:
            self.options = options
            self.options_changed.emit(options)

    def set_seed_mode(self, mode: str) -> None:
        if mode not in SEED_MODES:
            raise ValueError(f"seed mode must be one of {', '.join(SEED_MODES)}, got {mode!r}")
        if mode != self.seed_mode:
            self.seed_mode = mode
            self.seed_mode_changed.emit(mode)

    def next_seed(self) -> int:
        """The seed for the next run: a fresh one in random mode, else the seed field's."""
        if self.seed_mode == "random" or self.options.seed is None:
            return random.randint(0, MAX_SEED)
        return self.options.seed

    def record_speed(
        self,
        tokens_per_s: float,
        n: int,
        seconds_per_cell: float = 0.0,
        overhead_s: float = 0.0,
    ) -> None:
        """A run of ``n`` candidates sampled ``tokens_per_s``, a cell in ``seconds_per_cell``
        at its steady pace (0: unknown, then the sampling speed alone says) and spent
        ``overhead_s`` besides (reading, encoding, decoding, pasting): the next run's ETA
        follows, and the rectangle's label with it."""
        self.tokens_per_s = tokens_per_s
        if seconds_per_cell > 0:
            self.seconds_per_cell = seconds_per_cell
        elif tokens_per_s > 0:
            self.seconds_per_cell = n / tokens_per_s
        self.overhead_s = max(0.0, overhead_s)
        self.speed_changed.emit(tokens_per_s)

    def estimate_seconds(self, cells: int) -> float:
        """What a run on ``cells`` masked cells should take, from the last run; 0: unknown."""
        if self.seconds_per_cell <= 0:
            return 0.0
        return self.overhead_s + cells * self.seconds_per_cell

    def _set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    # -- model ----------------------------------------------------------------------------
    # The model's facts the window reads: the widgets ask the session, never the engine.

    @property
    def loaded(self) -> bool:
        """A model is loaded and can generate."""
        return self.engine.loaded

    @property
    def knows_scenes(self) -> bool:
        """The loaded model was trained on scenes (File › New scene, the familiarity hint)."""
        return self.engine.knows_scenes

    @property
    def geometry_size(self) -> int:
        """The loaded model's picture size in pixels (the paper's until one loads)."""
        return self.engine.geometry_size

    @property
    def geometry_factor(self) -> int:
        """Pixels a token cell of the loaded model covers (the paper's until one loads)."""
        return self.engine.geometry_factor

    @property
    def precision(self) -> str:
        """What sampling runs in on the model's device ("auto" resolved); "" before a load."""
        return self.engine.sampling_precision(self.device) if self.device else ""

    @property
    def chosen_precision(self) -> str:
        """The precision chosen in the settings ("auto" unresolved; ``set_precision``)."""
        return self.engine.precision

    @property
    def compile(self) -> bool:
        """Whether the decode step is compiled (``set_precision``)."""
        return self.engine.compile

    @property
    def upscaler(self) -> str:
        """What draws a result the model made smaller than the picture: "off", "auto" (the
        shipped Real-ESRGAN) or an upscaler file (``set_upscaler``)."""
        return self.engine.upscaler

    def set_upscaler(self, choice: str) -> None:
        """Upscale later results with ``choice`` (read by the next job on the worker)."""
        self.engine.set_upscaler(choice)

    def reload_needed(self) -> bool:
        """The chosen precision can only be had by loading the model again
        (``Engine.reload_needed``)."""
        return self.engine.reload_needed()

    def new_scene(self, seed: int) -> tuple[np.ndarray, str, tuple[int, int]]:
        """A picture from the loaded model's world, its caption and the rectangle's cell
        (``Engine.new_scene``)."""
        return self.engine.new_scene(seed)

    def measure_familiarity(self, image: np.ndarray, request: int) -> None:
        """Measure ``image`` against the loaded model's training data on the engine's worker;
        ``familiar`` follows, unless the model does not know scenes."""
        self.engine.measure_familiarity(image, request)

    def load(self, bundle: str | Path | None, device: str) -> None:
        """Load a bundle on the engine's worker (None or "": the embedded default)."""
        self.model_state = "loading"
        self.load_error = ""
        self.model_changed.emit()
        self.engine.load(bundle or None, device)

    def set_precision(self, precision: str, compile: bool) -> None:
        """How later jobs sample (``Engine.set_speed``); ValueError names an unknown precision."""
        changed = (precision, bool(compile)) != (self.chosen_precision, self.compile)
        self.engine.set_speed(precision, compile)
        if changed:
            self._forget_speed()
        self.model_changed.emit()

    # -- generation -----------------------------------------------------------------------

    def generate(self) -> Job | None:
        """Start a job on the rectangle with the caption and options; None (and an error line
        when the user must act) when it cannot start."""
        document = self.document
        if self.running:
            return None
        if not self.engine.loaded:
            self.error.emit("no model is loaded yet: wait for it, or open one in Settings")
            return None
        if document.cell is None:
            self.error.emit("drag a rectangle on the image first: it will be regenerated")
            return None
        document.discard_candidates()
        options = dataclasses.replace(self.options, seed=self.next_seed())
        area = None if document.area.is_whole else document.area
        job = Job(
            document.image,
            document.cell,
            self.caption,
            options,
            area=area,
            end=document.end,
            lookahead=self.lookahead,
        )
        document.start_generation()
        self.job = self.engine.submit(job)
        self._set_status("generating…")
        return self.job

    def cancel(self) -> None:
        """Ask the running job to stop; a Cancelled message follows, the image unchanged."""
        if self.job is not None:
            self.engine.cancel()

    def drop_job(self) -> None:
        """Cancel the running job and ignore whatever it still sends (the document is left, or
        the app ends); the document's live preview goes."""
        if self.job is not None:
            self.engine.cancel()
            self._end_job()
        if self.document.generating:
            self.document.end_generation()

    def _end_job(self) -> Job | None:
        job, self.job = self.job, None
        return job

    # -- engine messages ------------------------------------------------------------------

    def handle(self, message: messages.Message) -> None:
        """One message from the engine (on the Qt thread)."""
        if isinstance(message, messages.Loaded):
            self._loaded(message)
        elif isinstance(message, messages.LoadFailed):
            self._load_failed(message)
        elif isinstance(message, messages.Familiar):
            self.familiar.emit(message)
        elif self.job is None or getattr(message, "job", None) != self.job.id:
            return  # a stale message from a job the user already left
        elif isinstance(message, messages.RowDecoded):
            self.document.show_row(
                message.preview,
                message.rows_done,
                message.rows_total,
                message.tokens_per_s,
                message.eta_s,
            )
        elif isinstance(message, messages.Phase):
            self._set_status(phase_text(message))
            self.phase_changed.emit(message.phase, message.step, message.steps)
        elif isinstance(message, messages.Converting):
            self._set_status(
                f"converting the model to {message.precision} for sampling "
                "(once per load; about 10 s a billion parameters)…"
            )
        elif isinstance(message, messages.Compiling):
            self._set_status(
                f"compiling the model for {message.batch} rows at once "
                "(once per number of candidates, 10–20 s)…"
            )
        elif isinstance(message, messages.Finished):
            self._finished(message)
        elif isinstance(message, messages.Failed):
            self._end_job()
            self.document.end_generation()
            self.error.emit(message.message)
        elif isinstance(message, messages.Cancelled):
            self._end_job()
            self.document.end_generation()
            self._set_status("cancelled — the image is unchanged")

    def _load_failed(self, message: messages.LoadFailed) -> None:
        """The model in use (if any) stays loaded and says so; the error is one line."""
        text = message.message
        if self.engine.loaded and self.model_name:
            self.model_state = "loaded"
            text = f"{text} (still using {self.model_name})"
        else:
            if self.model_name:  # the engine let it go to make room (Engine._make_room)
                text = f"{text} (no model is loaded now)"
            self.model_state = "failed"
        self.load_error = text
        self.model_changed.emit()
        self.error.emit(text)

    def _forget_speed(self) -> None:
        """Another model, device or precision: the last run's speed says nothing of the next
        (the ETA waits for a run rather than promise another model's pace)."""
        if self.tokens_per_s or self.seconds_per_cell:
            self.tokens_per_s = self.seconds_per_cell = self.overhead_s = 0.0
            self.speed_changed.emit(0.0)

    def _loaded(self, message: messages.Loaded) -> None:
        # what the card offers first, then the state: an odd card (``model.card``) changes
        # nothing half-way
        card = catalog.clean_card(message.card, message.path)
        examples = card.get("example_captions", [])
        glosses = catalog.example_glosses(card)
        self._forget_speed()
        self.model_state = "loaded"
        self.load_error = ""
        self.model_name = message.name
        self.model_path = message.path
        self.device = message.device
        self.card = card
        self.examples = examples
        self.glosses = glosses
        self.tokenizer = message.tokenizer
        self.document.set_model_geometry(message.size, message.factor)
        self.document.set_area_choice(self.area)  # the model's default, unless one was chosen
        self.model_changed.emit()
        self.area_changed.emit(self.area)

    def _finished(self, message: messages.Finished) -> None:
        job = self._end_job()
        if job is None:  # not reached: handle() passes only the running job's messages
            return
        self.document.finish_generation(
            message.candidates,
            job.caption,
            job.cell,
            message.seed,
            job.options,
            self.model_name,
            previewed=message.previewed,
            seconds=round(message.seconds, 2),
            area=_area_record(job.area),
            end=job.end,
        )
        shown = (message.seed + 1) % MAX_SEED if self.seed_mode == "increment" else message.seed
        self.set_options(seed=shown)  # the seed field shows the one used, or the next one
        self.record_speed(
            message.tokens_per_s, job.options.n, message.seconds_per_cell, message.overhead_s
        )
        waited = message.wall_seconds or message.seconds  # what the ETA promised
        count = len(message.candidates)
        self._set_status(
            f"{count} candidate{'' if count == 1 else 's'} in {waited:.1f} s — "
            "←/→ browse, Enter accepts, Esc discards"
        )
        self.finished.emit()


PHASES = {
    "reading": "Reading the picture…",
    "encoding": "Encoding the picture…",
    "decoding": "Decoding the candidates…",
    "pasting": "Pasting candidate {step} of {steps} into the picture…",
    "upscaling": "Upscaling candidate {step} of {steps} to the picture's resolution…",
}


def phase_text(message: messages.Phase) -> str:
    """The status line for a job's phase, with its ETA once one is known."""
    text = PHASES.get(message.phase, f"{message.phase}…")
    text = text.format(step=message.step + 1, steps=message.steps)
    if math.isfinite(message.eta_s) and message.eta_s >= 0.5:
        text += f" · ETA {message.eta_s:.0f} s"
    return text


def _area_record(area: Any) -> tuple[int, ...] | None:
    """A job's area as its history entries record it (``Document.area_record``)."""
    if area is None or area.is_whole:
        return None
    if (area.right, area.bottom) == area.picture:
        return area.left, area.top
    return area.box
