"""studio.engine, issue 28: cancel reaches the running job; a job says its phases with an ETA."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from studio import engine as studio_engine
from studio.engine import Engine, Job, SamplingOptions
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
        qtbot.waitUntil(lambda: len([m for m in received if not hasattr(m, "rows_done")]) == 2)
        ends = {m.job: type(m).__name__ for m in received if not hasattr(m, "rows_done")}
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
