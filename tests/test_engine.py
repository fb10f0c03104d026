"""studio.engine: jobs, live rows, cancel and errors, without widgets."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from model.geometry import Geometry
from model.inference import images as model_images
from model.inference import sampling
from model.networks.precision import resolve_precision
from studio import engine as studio_engine
from studio.document import Document
from studio.engine import Engine, Job, SamplingOptions
from tests.helpers import tiny_bundle, tiny_bundle_file


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def picture(width=48, height=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def run(engine: Engine, job: Job):
    """The job's messages, its phases left out (tests/test_engine_phases.py reads those)."""
    messages = []
    engine.run_job_blocking(
        job, lambda m: None if isinstance(m, studio_engine.Phase) else messages.append(m)
    )
    return messages


@pytest.mark.parametrize("kind", ["dvae", "vq"])
def test_job_streams_rows_then_candidates_pasted_back(kind):
    engine = Engine()
    engine.set_bundle(tiny_bundle(kind=kind))
    image = picture()
    document = Document(image.copy())
    document.set_model_geometry(32, 8)
    cell = document.set_rectangle_from_pixel(20, 20)
    messages = run(
        engine,
        Job(image=image, cell=cell, caption="a red circle", options=SamplingOptions(n=2, seed=3)),
    )
    rows = [m for m in messages if isinstance(m, studio_engine.RowDecoded)]
    final = messages[-1]
    assert isinstance(final, studio_engine.Finished)
    assert len(rows) == 4 - cell[0]  # one decoded preview per rectangle row
    assert [r.rows_done for r in rows] == list(range(1, len(rows) + 1))
    assert final.seed == 3 and len(final.candidates) == 2
    x, y, _, _ = document.rectangle_pixels()
    outside = np.ones(image.shape[:2], bool)
    outside[y:, x:] = False
    # the first row is always previewed; later ones only while decoding is cheap (a cold first
    # decode on a loaded machine may pass PREVIEW_ALWAYS_S: engine.PREVIEW_EVERY)
    assert rows[0].preview is not None
    for result in [r.preview for r in rows if r.preview is not None] + final.candidates:
        assert result.shape == image.shape and result.dtype == np.uint8
        assert np.array_equal(result[outside], image[outside])  # original pixels, bit for bit
    assert not np.array_equal(final.candidates[0][y:, x:], image[y:, x:])


def fake_sampler(rows=3, block: threading.Event | None = None):
    """A sampler that yields instantly (or waits on ``block``) and honours cancel."""

    def sample(bundle, image, plan, caption, options, cancel, precision="fp32", compile=False):
        grid = bundle.config.transformer.grid
        tokens = torch.zeros(options.n, grid, grid, dtype=torch.long)
        for row in range(rows):
            if block is not None:
                block.wait(5)
            if cancel.is_set():
                yield sampling.Cancelled(tokens=tokens, cells_done=row)
                return
            yield sampling.Progress(tokens, row, row + 1, rows, row + 1, rows, 100.0)
        yield sampling.Done(
            tokens, torch.rand(options.n, 3, 32, 32), None, 1, 0.1, 100.0, 1, list(range(options.n))
        )

    return sample


def test_cancel_stops_the_job_and_leaves_the_image(bundle):
    engine = Engine(sampler=fake_sampler(rows=3))
    engine.set_bundle(bundle)
    image = picture()
    document = Document(image.copy())
    job = Job(image=document.image, cell=(1, 1), caption="x")

    def emit(message):
        if isinstance(message, studio_engine.RowDecoded):
            document.show_row(message.preview, message.rows_done, message.rows_total, 1, 1)
            job.cancel.set()  # the user presses Esc after the first row

    document.start_generation()
    result = engine.run_job_blocking(job, emit)
    assert isinstance(result, studio_engine.Cancelled)
    document.end_generation()
    assert np.array_equal(document.image, image)
    assert document.shown_image is document.image


def test_errors_become_messages(bundle, tmp_path):
    engine = Engine()
    no_model = run(engine, Job(image=picture(), cell=(0, 0), caption="x"))
    assert isinstance(no_model[-1], studio_engine.Failed)
    assert "no model" in no_model[-1].message
    engine.set_bundle(bundle)
    bad_option = run(
        engine,
        Job(image=picture(), cell=(0, 0), caption="x", options=SamplingOptions(temperature=0)),
    )
    assert isinstance(bad_option[-1], studio_engine.Failed)
    assert "temperature" in bad_option[-1].message

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore")
        yield  # pragma: no cover

    engine_oom = Engine(sampler=out_of_memory)
    engine_oom.set_bundle(bundle)
    oom = run(engine_oom, Job(image=picture(), cell=(0, 0), caption="x"))
    assert isinstance(oom[-1], studio_engine.Failed)
    assert oom[-1].message.startswith("out of memory") and "\n" not in oom[-1].message


def test_load_reports_bad_and_missing_bundles(tmp_path):
    engine = Engine()
    bad = tmp_path / "bad.dalle.safetensors"
    bad.write_bytes(b"garbage")
    result = engine._load(bad, "cpu")
    assert (
        isinstance(result, studio_engine.LoadFailed) and "bad.dalle.safetensors" in result.message
    )
    missing = engine._load(tmp_path / "none.dalle.safetensors", "cpu")
    assert isinstance(missing, studio_engine.LoadFailed)
    assert not engine.loaded


def test_load_on_the_worker_emits_loaded(qtbot, tmp_path):
    path = tiny_bundle_file(tmp_path)
    engine = Engine()
    try:
        with qtbot.waitSignal(engine.message, timeout=20_000) as blocker:
            engine.load(path, "cpu")
        loaded = blocker.args[0]
        assert isinstance(loaded, studio_engine.Loaded)
        assert (loaded.size, loaded.factor, loaded.device) == (32, 8, "cpu")
        assert loaded.card["example_captions"]
        assert engine.loaded
    finally:
        engine.shutdown()


def test_submit_streams_through_the_signal(qtbot, bundle):
    engine = Engine(sampler=fake_sampler(rows=2))
    engine.set_bundle(bundle)
    received = []
    engine.message.connect(received.append)
    try:
        with qtbot.waitSignal(
            engine.message,
            timeout=10_000,
            check_params_cb=lambda m: isinstance(m, studio_engine.Finished),
        ):
            engine.submit(
                Job(image=picture(), cell=(2, 2), caption="x", options=SamplingOptions(n=3))
            )
        kinds = [getattr(m, "phase", type(m).__name__) for m in received]
        assert kinds == ["reading", "encoding", "RowDecoded", "RowDecoded", "decoding"] + [
            "pasting"
        ] * 3 + ["Finished"]
        assert len(received[-1].candidates) == 3
    finally:
        engine.shutdown()


def test_cancel_through_the_engine_before_and_during_a_job(qtbot, bundle):
    gate = threading.Event()
    engine = Engine(sampler=fake_sampler(rows=3, block=gate))
    engine.set_bundle(bundle)
    try:
        with qtbot.waitSignal(
            engine.message,
            timeout=10_000,
            check_params_cb=lambda m: isinstance(m, studio_engine.Cancelled),
        ):
            engine.submit(Job(image=picture(), cell=(0, 0), caption="x"))
            engine.cancel()
            gate.set()
    finally:
        engine.shutdown()


def test_jobs_sample_in_the_chosen_precision(bundle):
    seen = []

    def recording(bundle, image, plan, caption, options, cancel, precision, compile):
        seen.append((precision, compile))
        yield from fake_sampler(rows=1)(bundle, image, plan, caption, options, cancel)

    engine = Engine(sampler=recording)
    engine.set_bundle(bundle)
    run(engine, Job(image=picture(), cell=(0, 0), caption="x"))
    engine.set_speed("fp32", True)
    run(engine, Job(image=picture(), cell=(0, 0), caption="x"))
    assert seen == [("auto", False), ("fp32", True)]  # auto by default, as the CLI and eval
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        engine.set_speed("fp8", False)
    assert (engine.precision, engine.compile) == ("fp32", True)


def test_loaded_reports_the_precision_auto_resolves_to(tmp_path):
    engine = Engine()
    engine.set_speed("auto", False)
    loaded = engine._load(tiny_bundle_file(tmp_path), "cpu")
    assert isinstance(loaded, studio_engine.Loaded)
    assert loaded.precision == resolve_precision("auto", "cpu") != "auto"
    engine.set_speed("bf16", False)
    assert engine._load(tiny_bundle_file(tmp_path), "cpu").precision == "bf16"
    engine.shutdown()


def test_a_compiled_engine_says_when_a_new_batch_size_compiles(bundle):
    engine = Engine(sampler=fake_sampler(rows=1))
    engine.set_bundle(bundle)
    engine.set_speed("fp32", True)
    first = run(
        engine,
        Job(image=picture(), cell=(0, 0), caption="x", options=SamplingOptions(n=3, guidance=2.0)),
    )
    assert isinstance(first[0], studio_engine.Compiling) and first[0].batch == 6
    assert isinstance(first[-1], studio_engine.Finished)
    step = sampling.prepared(bundle.transformer, "fp32", True).decode_step
    step.batches.add(6)  # what a real compiled run at 6 rows leaves behind
    again = run(
        engine,
        Job(image=picture(), cell=(0, 0), caption="x", options=SamplingOptions(n=3, guidance=2.0)),
    )
    assert not any(isinstance(m, studio_engine.Compiling) for m in again)
    engine.set_speed("fp32", False)
    eager = run(
        engine, Job(image=picture(), cell=(0, 0), caption="x", options=SamplingOptions(n=5))
    )
    assert not any(isinstance(m, studio_engine.Compiling) for m in eager)


def test_a_model_converted_in_place_says_so_before_its_first_row_and_only_then():
    """An imported 1B model turns int8 or bf16 in place on its first run (about 10 s): the
    engine says so before sampling starts, and not on later runs."""
    bundle = tiny_bundle()
    bundle.transformer.converts_in_place = True  # as DALL·E Mega's and ruDALL-E's
    engine = Engine()
    engine.set_bundle(bundle)
    engine.set_speed("bf16", False)
    first = run(engine, Job(image=picture(), cell=(2, 2), caption="x"))
    assert first[0] == studio_engine.Converting(first[0].job, "bf16")
    assert isinstance(first[-1], studio_engine.Finished)
    assert bundle.transformer.precision == "bf16"  # converted by the run itself
    again = run(engine, Job(image=picture(), cell=(2, 2), caption="x"))
    assert not any(isinstance(m, studio_engine.Converting) for m in again)
    assert isinstance(again[-1], studio_engine.Finished)
    ours = tiny_bundle()  # our own models sample a copy: nothing to say
    engine.set_bundle(ours)
    plain = run(engine, Job(image=picture(), cell=(2, 2), caption="x"))
    assert not any(isinstance(m, studio_engine.Converting) for m in plain)
    engine.shutdown()


def test_finished_names_the_candidate_the_live_preview_showed(bundle):
    """The live rows decode the first sampled candidate; a reranker may put it anywhere. The
    finished view must select it, so the canvas does not jump to another image."""

    def reranked(bundle, image, plan, caption, options, cancel, precision, compile):
        grid = bundle.config.transformer.grid
        tokens = torch.arange(options.n).view(-1, 1, 1).expand(-1, grid, grid).contiguous()
        yield sampling.Progress(tokens, grid - 1, 1, 1, 1, 1, 100.0)
        order = list(range(options.n))[::-1]  # the reranker liked the last sample best
        images = torch.rand(options.n, 3, 32, 32)
        yield sampling.Done(tokens[order], images[order], None, 1, 0.1, 100.0, 1, order=order)

    engine = Engine(sampler=reranked)
    engine.set_bundle(bundle)
    image = picture()
    messages = run(engine, Job(image=image, cell=(0, 0), caption="x", options=SamplingOptions(n=3)))
    preview, finished = messages[0], messages[-1]
    assert isinstance(finished, studio_engine.Finished)
    assert finished.previewed == 2  # sampled first, ranked last
    pil = Image.fromarray(image)
    geometry = Geometry(pil.width, pil.height, 32, 8)
    with torch.inference_mode():
        sample_0 = bundle.vae.decode(torch.zeros(1, 4, 4, dtype=torch.long))[0]
    expected = model_images.paste_back(pil, sample_0, geometry, (0, 0))
    assert np.array_equal(preview.preview, np.asarray(expected))  # the live rows: sample 0


def test_jobs_sample_only_the_cells_that_hold_image(bundle):
    seen = []

    def recording(bundle, image, plan, caption, options, cancel, precision, compile):
        seen.append((plan.visible_rows, plan.visible_cols))
        yield from fake_sampler(rows=1)(bundle, image, plan, caption, options, cancel)

    engine = Engine(sampler=recording)
    engine.set_bundle(bundle)
    run(engine, Job(image=picture(48, 20), cell=(0, 0), caption="x"))  # 32x13 in the square
    assert seen == [(2, 4)]  # rows 2 and 3 are padding below the image
