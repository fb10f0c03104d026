"""How long a job's phases take, for an honest ETA now and for the next rectangle's.

A job reads the picture (and brings it to the model's size), encodes it into tokens, samples the
rectangle row by row, decodes the candidates and pastes each back into the user's picture. On a
48 MP picture the phases around sampling are most of the wait: reading and encoding took 9 s and
decoding and pasting 25 s where sampling took a second (issue 28). So each is measured apart:

- sampling runs at the *steady* pace of the rows after the first (the first row also pays for
  the encoding, and once per model or batch size for a conversion or a compile);
- decoding a candidate costs about what decoding a live preview did, and pasting one what
  pasting a preview did (both measured on the previews);
- the ETA while sampling is the rows left at the steady pace, then decoding and pasting every
  candidate; while pasting, the candidates left at the measured paste.

``Pace`` is plain Python with an injectable clock, torch-free: the engine feeds it, tests too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Pace:
    """The phases of one job of ``n`` candidates (see the module's docstring)."""

    def __init__(self, n: int, clock: Callable[[], float] = time.perf_counter):
        self.n = n
        self.clock = clock
        self.started = clock()
        self.read_s = 0.0  # reading the picture and bringing it to the model's size
        self.sampling_started: float | None = None
        self.first_row: tuple[float, int] | None = None  # (when, cells done) at the first row
        self.last_row: tuple[float, int] | None = None
        self.once_only = False  # the first row paid a conversion or a compile
        self.decode_s = 0.0  # the last preview's decode (one candidate)
        self.paste_s = 0.0  # the last preview's or candidate's paste (one candidate)
        self.decoding_started: float | None = None
        self.decoded_s = 0.0  # the candidates' decode, measured once they are decoded
        self.pasted: list[float] = []

    # -- what happened ----------------------------------------------------------------------

    def read(self) -> None:
        """The picture is read and at the model's size; sampling (with encoding) starts."""
        now = self.clock()
        self.read_s = now - self.started
        self.sampling_started = now

    def row(self, cells_done: int) -> None:
        """A row is sampled: ``cells_done`` cells in all so far."""
        mark = (self.clock(), cells_done)
        if self.first_row is None:
            self.first_row = mark
        self.last_row = mark

    def previewed(self, decode_s: float, paste_s: float) -> None:
        self.decode_s, self.paste_s = decode_s, paste_s

    def decoding(self) -> None:
        """The last row is in: the candidates are being decoded."""
        self.decoding_started = self.clock()

    def pasting(self) -> None:
        """The candidates are decoded (called before the first paste)."""
        if self.decoding_started is not None and not self.pasted and not self.decoded_s:
            self.decoded_s = self.clock() - self.decoding_started

    def candidate_pasted(self, seconds: float) -> None:
        self.pasted.append(seconds)
        self.paste_s = seconds

    # -- what it says -----------------------------------------------------------------------

    @property
    def seconds_per_cell(self) -> float:
        """Seconds a sampled cell takes at the steady pace (previews included); 0: unknown."""
        if self.first_row is None or self.last_row is None:
            return 0.0
        (first_at, first_cells), (last_at, last_cells) = self.first_row, self.last_row
        if last_cells > first_cells:
            return (last_at - first_at) / (last_cells - first_cells)
        if self.once_only or self.sampling_started is None or first_cells <= 0:
            return 0.0  # one row that also paid a compile: no pace to tell
        return (first_at - self.sampling_started) / first_cells

    @property
    def encode_s(self) -> float:
        """The first row's time beyond the steady pace: encoding the picture (0 when the first
        row also paid a conversion or a compile, which the next run does not)."""
        rate = self.seconds_per_cell
        if self.once_only or self.first_row is None or self.sampling_started is None:
            return 0.0
        first_at, first_cells = self.first_row
        return max(0.0, first_at - self.sampling_started - first_cells * rate)

    def finish_s(self) -> float:
        """Decoding and pasting every candidate, as the previews measured them."""
        return self.n * (self.decode_s + self.paste_s)

    def eta_sampling(self, cells_done: int, cells_total: int) -> float:
        """Seconds left while sampling: the cells left at the pace, then decode and paste."""
        rate = self.seconds_per_cell
        if rate <= 0 and cells_done > 0 and self.sampling_started is not None:
            rate = (self.clock() - self.sampling_started) / cells_done
        if rate <= 0:
            return math.inf
        return rate * (cells_total - cells_done) + self.finish_s()

    def eta_decoding(self) -> float:
        return self.finish_s()

    def eta_pasting(self) -> float:
        """Seconds left while pasting: the candidates left at the last paste's time."""
        return (self.n - len(self.pasted)) * self.paste_s

    def overhead_s(self) -> float:
        """What a run costs besides sampling its cells: reading, encoding, decoding, pasting
        (no conversion or compile: the next run does not pay them again)."""
        decoded = self.decoded_s or self.n * self.decode_s
        pasted = sum(self.pasted) if self.pasted else self.n * self.paste_s
        return self.read_s + self.encode_s + decoded + pasted
