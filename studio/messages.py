"""The engine's messages: what a job or a load tells the Qt thread, plain data only (numpy uint8
images, floats, strings), so no torch tensor or model object crosses into the GUI thread.
``studio.engine`` emits them and re-exports them (the studio reads them as ``engine.Loaded``…).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Loaded:
    path: str
    device: str
    name: str
    card: dict[str, Any]
    size: int
    factor: int
    precision: str = "fp32"  # what sampling runs in on this device ("auto" resolved)
    # the bundle's caption tokenizer (ours, or an imported model's BartTokenizer): the caption
    # box counts tokens with its length, kept and text_len
    tokenizer: Any = None


@dataclass
class LoadFailed:
    message: str


@dataclass
class RowDecoded:
    job: int
    # (H, W, 3) uint8 at the user's resolution, original outside the rectangle; None for a row
    # whose preview was skipped because decoding costs too much (``PREVIEW_EVERY``)
    preview: np.ndarray | None
    rows_done: int
    rows_total: int
    tokens_per_s: float
    eta_s: float


@dataclass
class Compiling:
    job: int
    batch: int  # rows the model runs at once: candidates, doubled with guidance


@dataclass
class Converting:
    job: int
    precision: str  # what an imported model is turned into, in place, before its first row


@dataclass
class Phase:
    """What a job does now besides sampling rows: "reading" the picture, "encoding" it,
    "decoding" the candidates, "pasting" candidate ``step`` of ``steps``; ``eta_s``: seconds
    left for the whole job (inf: not known yet)."""

    job: int
    phase: str
    step: int = 0
    steps: int = 0
    eta_s: float = math.inf


@dataclass
class Finished:
    job: int
    candidates: list[np.ndarray]  # (H, W, 3) uint8 each, pasted back, best first
    seed: int
    seconds: float
    tokens_per_s: float
    previewed: int = 0  # the candidate the live rows showed (sampled first; reranking moves it)
    # what the user waited (``seconds`` is the sampling alone): encoding the picture, the live
    # previews and decoding the candidates included; 0: not measured
    wall_seconds: float = 0.0
    # the next rectangle's ETA (``studio.pace``): overhead_s + cells * seconds_per_cell, where
    # seconds_per_cell is sampling's steady pace (previews in, a compile out) and overhead_s
    # reading, encoding, decoding and pasting
    seconds_per_cell: float = 0.0
    overhead_s: float = 0.0


@dataclass
class Failed:
    job: int
    message: str


@dataclass
class Cancelled:
    job: int


@dataclass
class Familiar:
    """How far a picture lies from the loaded model's training data
    (``model.inference.familiarity``: typical-cell reconstruction PSNR, dB)."""

    request: int  # the caller's number for the picture it asked about
    typical_db: float
    reference_db: float  # the model's own, on scenes of its world
    far_below_db: float  # the margin: far when typical_db < reference_db - far_below_db
    far: bool


Message = (
    Loaded
    | LoadFailed
    | RowDecoded
    | Phase
    | Converting
    | Compiling
    | Finished
    | Failed
    | Cancelled
    | Familiar
)
