"""One image in the studio's history tree and what a project and the autosave's journal keep of
it: where it was generated (its cell, working area and region's end), how (its sampling options,
seed and time) and what the user did with it (starred, accepted)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.config import SamplingOptions

# the keys of an entry's options in a file that are sampling options (the others: seconds,
# candidate)
SAMPLING_KEYS = frozenset(field.name for field in dataclasses.fields(SamplingOptions))


@dataclass
class HistoryEntry:
    """One image in the history tree: the opened original (parent None) or a generated one."""

    id: int
    parent: int | None
    image: np.ndarray
    caption: str = ""
    cell: tuple[int, int] | None = None  # on the working area's grid
    # the working area in picture pixels: (left, top) when it reaches the picture's bottom-right
    # corner, else (left, top, right, bottom); None: the whole picture (and every entry of a
    # project written before areas)
    area: tuple[int, ...] | None = None
    # the region's bottom-right cell on the area's grid (exclusive); None: to the corner (and
    # every entry of a project written before regions anywhere)
    end: tuple[int, int] | None = None
    seed: int | None = None
    # how it was sampled: its run's options but the seed (the entry's own field); None for the
    # original and for an entry whose project recorded none
    options: SamplingOptions | None = None
    seconds: float | None = None  # how long its run took
    candidate: int | None = None  # its place among its run's candidates (0: the first)
    time: float = field(default_factory=time.time)
    model: str = ""
    starred: bool = False
    accepted: bool = False

    @property
    def is_original(self) -> bool:
        return self.parent is None

    def options_dict(self) -> dict[str, Any]:
        """Its "options" as a project and the autosave's journal write them: the sampling
        options but the seed (the entry's own "seed"), then ``seconds`` and ``candidate``,
        each where the entry has it."""
        values: dict[str, Any] = {}
        if self.options is not None:
            values = self.options.to_dict()
            del values["seed"]
        if self.seconds is not None:
            values["seconds"] = self.seconds
        if self.candidate is not None:
            values["candidate"] = self.candidate
        return values

    @staticmethod
    def typed_options(values: dict[str, Any]) -> dict[str, Any]:
        """The fields ``options``, ``seconds`` and ``candidate`` from what ``options_dict`` wrote
        (one saved before top-p was recorded has the default top-p). Invalid sampling options
        raise ValueError naming the field; none at all (the original's ``{}``) give None; other
        keys, and a seconds or candidate of another type, are not kept."""
        sampling = {key: value for key, value in values.items() if key in SAMPLING_KEYS}
        seconds, candidate = values.get("seconds"), values.get("candidate")
        typed: dict[str, Any] = {"options": None, "seconds": None, "candidate": None}
        if sampling:
            typed["options"] = SamplingOptions.from_dict(sampling)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            typed["seconds"] = float(seconds)
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            typed["candidate"] = candidate
        return typed
