"""File › New scene: a new document from the loaded model's own world, ready to Generate.

A new user's first picture is rarely one the embedded model can draw: it learnt scenes of
coloured shapes, and a photo comes back as blocks (``studio.familiarity_hint`` says so). A new
scene gives them one that works in one click. The engine draws it (``Engine.new_scene``:
``model.inference.familiarity.new_scene``): a scene at the model's own size whose bottom-right place
holds another object than its caption names, the rectangle on that place (snapped to the model's
grid), and the caption; Generate redraws the place to match the caption.

Each use draws a new scene (``seeds``: consecutive seeds from a random start); a test passes
its own. The document is untitled and, like a new blank one, not yet work: a second New scene
replaces it without asking, while a generated candidate (or any other change) makes it work the
window asks about before replacing.

Torch-free, like the document: the pixels come from the engine.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import numpy as np

from model.geometry import Cell
from studio.document import Document

FIRST_SEED_LIMIT = 2**31 - 1  # seeds are drawn below this, as the sampler's are


def seeds() -> Iterator[int]:
    """Scene seeds for one window: consecutive from a random start, so every use is new."""
    return itertools.count(random.SystemRandom().randrange(FIRST_SEED_LIMIT))


def scene_document(picture: np.ndarray, cell: Cell, size: int, factor: int) -> Document:
    """An untitled document of ``picture`` with the rectangle from ``cell`` of a ``size`` px
    model's grid of ``factor`` px cells."""
    document = Document(np.ascontiguousarray(picture))
    document.set_model_geometry(size, factor)
    document.set_cell(cell)
    return document
