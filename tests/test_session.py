"""studio.session: the app's main workflow on the session alone, without a window.

The engine runs on its worker thread with a fake sampler (no transformer call) and the tiny
bundle's dVAE decoding the live rows; its messages come back through the queued signal, as in
the app.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from model.inference import sampling
from studio import engine as messages
from studio import project
from studio import session as session_module
from studio.document import Document
from studio.engine import Engine, SamplingOptions
from studio.session import MAX_SEED, Session
from tests.helpers import tiny_bundle

ROWS_FROM = 1  # the rectangle's top row in these tests: rows 1, 2 and 3 of the 4x4 grid


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def picture(width=48, height=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def row_by_row(block: threading.Event | None = None, fail: str | None = None):
    """A sampler that writes a new code into each rectangle row (so every live preview differs
    from the one before), waits on ``block`` before each row, honours cancel, and ends with the
    job's own seed; ``fail`` raises that error instead."""

    def sample(bundle, image, plan, caption, options, cancel, precision="fp32", compile=False):
        if fail:
            raise RuntimeError(fail)
        grid = bundle.config.transformer.grid
        tokens = torch.zeros(options.n, grid, grid, dtype=torch.long)
        rows = range(plan.row, grid)
        for done, row in enumerate(rows, 1):
            if block is not None:
                block.wait(5)
            if cancel.is_set():
                yield sampling.Cancelled(tokens=tokens, cells_done=done - 1)
                return
            tokens[:, row] = 5 * done
            yield sampling.Progress(tokens.clone(), row, done, len(rows), done, len(rows), 100.0)
        images = torch.rand(options.n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        order = list(range(options.n))
        yield sampling.Done(tokens, images, None, options.seed, 0.1, 100.0, 1, order)

    return sample


@pytest.fixture
def make_session(qtbot, bundle):
    engines = []

    def make(sampler=None, image=None) -> Session:
        engine = Engine(sampler=sampler or row_by_row())
        engine.set_bundle(bundle)
        engines.append(engine)
        session = Session(engine)
        session.set_document(Document(picture() if image is None else image))
        return session

    yield make
    for engine in engines:
        engine.shutdown()


def run(session: Session, qtbot) -> messages.Job:
    with qtbot.waitSignal(session.finished, timeout=20_000):
        job = session.generate()
        assert job is not None
    return job


def outside(document: Document) -> np.ndarray:
    x, y, _, _ = document.rectangle_pixels()
    mask = np.ones((document.height, document.width), bool)
    mask[y:, x:] = False
    return mask


def test_generate_live_rows_candidates_accept_undo_and_the_history_entry(
    make_session, qtbot, tmp_path
):
    session = make_session()
    document = session.document
    original = document.image.copy()
    session.handle(messages.Loaded("tiny.dalle", "cpu", "tiny test bundle", {}, 32, 8))
    document.set_cell((ROWS_FROM, 1))
    session.set_caption("a red circle")
    session.set_seed_mode("fixed")
    session.set_options(n=3, temperature=0.8, top_p=0.9, seed=11)
    previews, running, speeds = [], [], []
    document.preview_changed.connect(
        lambda: previews.append(document.preview.copy()) if document.preview is not None else None
    )
    session.running_changed.connect(running.append)
    session.speed_changed.connect(speeds.append)
    finished = []
    session.engine.message.connect(
        lambda m: finished.append(m) if isinstance(m, messages.Finished) else None
    )

    job = run(session, qtbot)

    assert job.caption == "a red circle" and job.cell == (ROWS_FROM, 1)
    assert job.options == SamplingOptions(n=3, temperature=0.8, top_p=0.9, seed=11)
    assert len(previews) == 4 - ROWS_FROM  # one live preview per rectangle row
    assert all(not np.array_equal(a, b) for a, b in zip(previews, previews[1:], strict=False))
    keep = outside(document)
    assert all(np.array_equal(p[keep], original[keep]) for p in previews)
    assert running == [True, False] and not session.running and not document.generating
    assert len(document.candidates) == 3 and document.preview is None
    assert np.array_equal(document.image, original)  # nothing applied before accepting
    assert "3 candidates" in session.status
    assert speeds == [100.0]
    # the next rectangle's ETA: this job's wall-clock time per cell, decoding included (the
    # engine's message reaches this test's slot after the session's: one queued call each)
    qtbot.waitUntil(lambda: len(finished) == 1)
    assert session.seconds_per_cell == finished[0].seconds_per_cell > 0

    entries = [document.history[i] for i in document.candidate_entries]
    first = entries[0]
    assert (first.caption, first.seed, first.cell) == ("a red circle", 11, (ROWS_FROM, 1))
    assert first.model == "tiny test bundle"
    assert first.options == SamplingOptions(n=3, temperature=0.8, top_p=0.9)  # seed: the entry's
    assert (first.seconds, first.candidate) == (0.1, 0)
    assert first.options_dict() == {  # as the project file writes them
        "n": 3,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 0.9,
        "guidance": 1.0,
        "seconds": 0.1,
        "candidate": 0,
    }
    assert document.caption_history == ["a red circle"]

    document.select_candidate(1)
    assert document.accept_candidate()
    assert np.array_equal(document.image, document.history[entries[1].id].image)
    assert entries[1].accepted and document.current_entry == entries[1].id
    document.undo_stack.undo()
    assert np.array_equal(document.image, original)
    document.undo_stack.redo()

    reopened = project.load(project.save(document, tmp_path / "p.dstudio"))
    assert reopened.history[first.id].options == first.options  # top_p in the project file


def test_cancel_leaves_the_image_unchanged(make_session, qtbot):
    gate = threading.Event()
    session = make_session(row_by_row(block=gate))
    document = session.document
    original = document.image.copy()
    document.set_cell((ROWS_FROM, 0))
    assert session.generate() is not None and session.running
    with qtbot.waitSignal(session.running_changed, timeout=20_000):
        session.cancel()
        gate.set()
    assert session.status == "cancelled — the image is unchanged"
    assert np.array_equal(document.image, original) and document.shown_image is document.image
    assert not document.candidates and not document.generating and len(document.history) == 1


def test_a_stale_message_from_an_old_job_is_ignored(make_session, qtbot):
    gate = threading.Event()
    session = make_session(row_by_row(block=gate))
    document = session.document
    document.set_cell((ROWS_FROM, 0))
    job = session.generate()
    stale = job.id + 100
    session.handle(messages.RowDecoded(stale, picture(), 1, 3, 10.0, 1.0))
    session.handle(messages.Finished(stale, [picture()], 5, 0.1, 10.0))
    session.handle(messages.Failed(stale, "not this job's"))
    assert document.preview is None and not document.candidates
    assert session.job is job and document.generating

    other = Document(picture(seed=1))
    session.set_document(other)  # the user leaves the image: the job's results are stale too
    assert session.job is None and not document.generating
    gate.set()
    qtbot.wait(300)
    assert not other.candidates and other.preview is None and not other.generating
    assert len(document.history) == 1 and len(other.history) == 1


def test_running_is_the_documents_generating(make_session):
    """One fact: the session runs a job exactly while its document generates, and
    running_changed follows the document the session works on, not one it left."""
    session = make_session()
    first, said = session.document, []
    session.running_changed.connect(said.append)
    first.start_generation()
    assert session.running and said == [True]
    first.end_generation()
    assert not session.running and said == [True, False]
    other = Document(picture(seed=1))
    session.set_document(other)
    first.start_generation()  # the document left says nothing to the session
    assert not session.running and said == [True, False]
    other.start_generation()
    assert session.running and said == [True, False, True]


def test_an_engine_error_becomes_one_line_on_the_error_signal(make_session, qtbot):
    session = make_session(row_by_row(fail="the sampler broke\nwith a traceback"))
    document = session.document
    original = document.image.copy()
    errors = []
    session.error.connect(errors.append)
    assert session.generate() is None  # no rectangle yet
    assert errors == ["drag a rectangle on the image first: it will be regenerated"]
    document.set_cell((0, 0))
    with qtbot.waitSignal(session.error, timeout=20_000) as blocker:
        session.generate()
    assert blocker.args == ["the sampler broke"]
    assert not session.running and not document.generating
    assert np.array_equal(document.image, original) and not document.candidates

    unloaded = Session(Engine())
    unloaded.error.connect(errors.append)
    unloaded.document.set_cell((0, 0))
    assert unloaded.generate() is None and "no model is loaded" in errors[-1]
    unloaded.handle(messages.LoadFailed("model bundle x: bad header"))
    assert errors[-1] == "model bundle x: bad header" and unloaded.model_state == "failed"
    unloaded.engine.shutdown()


def test_option_changes_emit_options_changed(make_session, qtbot):
    session = make_session()
    seen = []
    session.options_changed.connect(seen.append)
    with qtbot.waitSignal(session.options_changed) as blocker:
        session.set_options(top_p=0.5)
    assert blocker.args[0].top_p == 0.5 and session.options.top_p == 0.5
    session.set_options(top_p=0.5)  # no change, no signal
    assert len(seen) == 1
    for bad, message in (({"top_p": 0.0}, "top-p"), ({"n": 0}, "candidates")):
        with pytest.raises(ValueError, match=message):
            session.set_options(**bad)
    assert session.options.top_p == 0.5 and len(seen) == 1
    captions = []
    session.caption_changed.connect(captions.append)
    session.set_caption("a blue square")
    session.set_caption("a blue square")
    assert captions == ["a blue square"]
    with pytest.raises(ValueError, match="seed mode"):
        session.set_seed_mode("lucky")


def test_seed_modes_behave_as_before(make_session, qtbot, monkeypatch):
    session = make_session()
    session.document.set_cell((2, 2))
    session.set_options(seed=7)

    session.set_seed_mode("fixed")
    assert run(session, qtbot).options.seed == 7
    assert session.options.seed == 7  # the field shows the seed used
    assert run(session, qtbot).options.seed == 7

    session.set_seed_mode("increment")
    assert run(session, qtbot).options.seed == 7
    assert session.options.seed == 8  # the field moves on to the next one
    assert run(session, qtbot).options.seed == 8
    session.set_options(seed=MAX_SEED)
    run(session, qtbot)
    assert session.options.seed == 1  # wraps within the field's range, as before

    session.set_seed_mode("random")
    monkeypatch.setattr(session_module.random, "randint", lambda low, high: 12345)
    assert run(session, qtbot).options.seed == 12345
    assert session.options.seed == 12345  # the field shows the drawn seed, to reuse it
    monkeypatch.undo()
    seeds = {run(session, qtbot).options.seed for _ in range(3)}
    assert all(0 <= seed <= MAX_SEED for seed in seeds) and len(seeds) > 1
