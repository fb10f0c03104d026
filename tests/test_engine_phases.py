"""studio.engine, issue 28: cancel reaches the running job; a job says its phases with an ETA."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from model.inference import sampling
from studio import engine as studio_engine
from studio.engine import Engine, Job, SamplingOptions
from studio.pace import Pace
from tests.helpers import tiny_bundle
from tests.test_engine import fake_sampler, picture


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def test_cancel_flags_the_running_job_not_only_the_newest(qtbot, bundle):
    gate = threading.Event()
    engine = Engine(sampler=fake_sampler(rows=3, block=gate))
    engine.set_bundle(bundle)
    received = []
    engine.message.connect(received.append)
    try:
        running = engine.submit(Job(image=picture(), cell=(0, 0), caption="first"))
        queued = engine.submit(Job(image=picture(), cell=(0, 0), caption="second"))
        engine.cancel()
        assert running.cancel.is_set() and queued.cancel.is_set()
        gate.set()
        ends_of = (studio_engine.Cancelled, studio_engine.Finished, studio_engine.Failed)
        qtbot.waitUntil(lambda: len([m for m in received if isinstance(m, ends_of)]) == 2)
        ends = {m.job: type(m).__name__ for m in received if isinstance(m, ends_of)}
        assert ends == {running.id: "Cancelled", queued.id: "Cancelled"}
    finally:
        engine.shutdown()


def test_cancel_of_one_job_leaves_the_others(bundle):
    engine = Engine(sampler=fake_sampler(rows=2))
    engine.set_bundle(bundle)
    first = Job(image=picture(), cell=(0, 0), caption="a")
    second = Job(image=picture(), cell=(0, 0), caption="b")
    engine._live += [first, second]
    engine.cancel(second)
    assert second.cancel.is_set() and not first.cancel.is_set()
    messages = []
    engine.run_job_blocking(first, messages.append)
    assert isinstance(messages[-1], studio_engine.Finished)
    assert [live is second for live in engine._live] == [True]  # the finished one left


class Clock:
    """A clock a test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pace_is_the_steady_rows_and_the_eta_counts_decoding_and_pasting():
    clock = Clock()
    pace = Pace(4, clock)
    clock.now += 5  # reading a 48 MP picture
    pace.read()
    clock.now += 4 + 1  # encoding it, then the first row of 4 cells
    pace.row(4)
    pace.previewed(decode_s=2.0, paste_s=5.0)  # a preview of one candidate
    clock.now += 1 + 7  # the second row and its preview
    pace.row(8)
    assert pace.seconds_per_cell == pytest.approx(2.0)  # (1 + 7) s / 4 cells
    assert pace.encode_s == pytest.approx(5 - 4 * 2.0, abs=1e-9) or pace.encode_s == 0.0
    # 4 cells left at 2 s, then decode and paste 4 candidates at 2 + 5 s each
    assert pace.eta_sampling(8, 12) == pytest.approx(8 + 28)
    assert pace.eta_decoding() == pytest.approx(28)
    pace.decoding()
    clock.now += 6
    pace.pasting()
    pace.candidate_pasted(4.0)
    assert pace.eta_pasting() == pytest.approx(3 * 4.0)
    assert pace.decoded_s == pytest.approx(6)


def test_a_first_row_that_compiled_is_not_the_pace():
    clock = Clock()
    pace = Pace(1, clock)
    pace.read()
    pace.once_only = True  # the engine said Compiling
    clock.now += 30  # the compile and the first row of 4 cells
    pace.row(4)
    clock.now += 1
    pace.row(8)
    assert pace.seconds_per_cell == pytest.approx(0.25)
    assert pace.encode_s == 0.0 and pace.overhead_s() < 1  # the compile is not paid again


def slow_first_row(first_s: float, rows: int = 4):
    """A sampler of a 4x4 grid whose first row waits ``first_s`` (a compile), the others
    10 ms; it honours cancel like ``fake_sampler``."""

    def sample(bundle, image, plan, caption, options, cancel, **kwargs):
        grid = bundle.config.transformer.grid
        tokens = torch.zeros(options.n, grid, grid, dtype=torch.long)
        for row in range(rows):
            time.sleep(first_s if row == 0 else 0.01)
            done = (row + 1) * grid
            yield sampling.Progress(tokens, row, row + 1, rows, done, rows * grid, 100.0)
        images = torch.rand(options.n, 3, 32, 32)
        yield sampling.Done(tokens, images, None, 1, 0.1, 100.0, 1, list(range(options.n)))

    return sample


def test_a_job_says_its_phases_in_order_and_measures_the_steady_pace(bundle):
    engine = Engine(sampler=slow_first_row(1.5))
    engine.set_bundle(bundle)
    job = Job(image=picture(), cell=(0, 0), caption="x", options=SamplingOptions(n=2))
    engine.run_job_blocking(job, lambda m: None)  # warm: a first decode is slower
    messages = []
    job = Job(image=picture(), cell=(0, 0), caption="x", options=SamplingOptions(n=2))
    engine.run_job_blocking(job, messages.append)
    kinds = [getattr(m, "phase", type(m).__name__) for m in messages]
    assert kinds == ["reading", "encoding"] + ["RowDecoded"] * 4 + ["decoding"] + [
        "pasting"
    ] * 2 + ["Finished"]
    pasting = [m for m in messages if getattr(m, "phase", "") == "pasting"]
    assert [(m.step, m.steps) for m in pasting] == [(0, 2), (1, 2)]
    rows = [m for m in messages if isinstance(m, studio_engine.RowDecoded)]
    assert all(np.isfinite(row.eta_s) for row in rows[1:])
    # the steady pace, not the first row's wait (which put 1.5 s or more in the old ETA)
    assert rows[1].eta_s < 0.75
    finished = messages[-1]
    cells = 16  # the whole 4x4 grid
    assert finished.seconds_per_cell < 1.5 / cells  # the wall time a cell would be more
    assert 0 <= finished.overhead_s < finished.wall_seconds
