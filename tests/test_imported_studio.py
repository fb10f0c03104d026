"""An imported DALL·E Mini bundle in the studio and behind ``dalle serve`` (issue 18, "The app").

The bundle is made by the real importer (``dalle import mini``'s ``import_dalle``) from tiny files
written in the real formats (min-dalle's ``.pt`` state dicts, a BART vocab and merges, dalle-mini's
Flax VQGAN), at the real models' geometry: 256 px, a 16x16 grid of 16 px cells, captions of 64
BART tokens. Its weights are random, so its pictures are noise; every mechanism is the real one:
the session loads it on the engine's worker as Settings does, the sampler is ``sampling.complete``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import model.bundle as bundle_module
import model.device as device_module
from model.config import VQGANConfig
from model.importers import dalle_mega
from model.networks.bart import BartDalle
from model.networks.vqgan import VQGAN
from model.tokenizers.bart_text import BartTokenizer
from studio import catalog
from studio import engine as messages
from studio.document import Document
from studio.engine import Engine, SamplingOptions
from studio.session import Session
from tests.helpers import tiny_bundle_file
from tests.test_import_mega import (
    VQGAN_CONFIG_JSON,
    randomised,
    tiny_bart,
    write_bpe_files,
)
from tests.test_vqgan import _flax_tree, _to_bytes

pytest.importorskip("msgpack")

# DALL·E Mega and Mini's geometry (dalle-mini's VQGAN f16-16384) at a tiny width
TINY_F16 = VQGANConfig(
    resolution=256,
    ch=32,
    ch_mult=(1, 1, 1, 1, 1),  # five levels: 16 px cells
    num_res_blocks=1,
    attn_resolutions=(16,),
    z_channels=32,
    embed_dim=8,
    n_embed=64,
)
TEXT_LEN = 64  # min-dalle's
NAME = "DALL·E Mini (imported)"


def write_bpe(folder: Path) -> tuple[Path, Path]:
    """min-dalle's vocab.json and merges.txt for a tiny BPE (the importers' test writer)."""
    return write_bpe_files(folder)


def make_imported_bundle(folder: Path, seed: int = 0) -> Path:
    """min-dalle's Mini files and dalle-mini's Flax VQGAN for a random tiny model in ``folder``,
    imported into ``folder / tiny-mini.dalle.safetensors`` by ``dalle import mini``'s code."""
    source = folder / "downloads"
    source.mkdir(parents=True)
    names = dalle_mega.MODELS["mini"]
    vocab, merges = write_bpe(source)
    text_vocab = BartTokenizer.from_files(vocab, merges).vocab_size
    config = tiny_bart(text_vocab, grid=TINY_F16.grid, text_len=TEXT_LEN)
    transformer = randomised(BartDalle(config), seed)
    torch.save(transformer.encoder.state_dict(), source / names.encoder)
    torch.save(transformer.decoder.state_dict(), source / names.decoder)
    vocab.rename(source / names.vocab)
    merges.rename(source / names.merges)
    vqgan = randomised(VQGAN(TINY_F16), seed + 1)
    (source / "flax_model.msgpack").write_bytes(_to_bytes(_flax_tree(vqgan.state_dict())))
    values = dataclasses.asdict(TINY_F16)
    del values["norm_eps"], values["value_range"]  # not in dalle-mini's config.json
    flax_config = {**VQGAN_CONFIG_JSON, **values}
    flax_config["ch_mult"] = list(TINY_F16.ch_mult)
    flax_config["attn_resolutions"] = list(TINY_F16.attn_resolutions)
    (source / "config.json").write_text(json.dumps(flax_config))
    out = folder / "tiny-mini.dalle.safetensors"
    return dalle_mega.import_dalle("mini", source, out, dtype="fp32", config=config)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    return make_imported_bundle(tmp_path_factory.mktemp("imported"))


@pytest.fixture
def make_session(qtbot):
    engines = []

    def make() -> Session:
        engine = Engine()
        engines.append(engine)
        session = Session(engine)
        session.set_document(Document(picture()))
        return session

    yield make
    for engine in engines:
        engine.shutdown()


def picture(width: int = 512, height: int = 384) -> np.ndarray:
    """A landscape: 2x the model's 256 px, so a cell is 32 user pixels, and 12 rows of 16 hold
    the picture (the rest of the square is padding, never sampled)."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x * y) % 251], axis=-1)
    return image.astype(np.uint8)


def load(session: Session, qtbot, path: Path | str | None) -> None:
    with qtbot.waitSignal(
        session.model_changed,
        timeout=60_000,
        check_params_cb=lambda *args: session.model_state != "loading",
    ):
        session.load(None if path is None else str(path), "cpu")


def test_the_session_loads_the_imported_bundle_and_the_rectangle_snaps_to_its_grid(
    make_session, qtbot, imported
):
    session = make_session()
    load(session, qtbot, imported)
    assert session.model_state == "loaded" and session.model_name == NAME
    assert session.model_path == str(imported) and session.device == "cpu"
    assert isinstance(session.tokenizer, BartTokenizer) and session.tokenizer.text_len == 64
    assert session.examples == dalle_mega.EXAMPLE_CAPTIONS
    assert session.precision  # what the device label says the next job samples in
    engine = session.engine
    assert (engine.geometry_size, engine.geometry_factor) == (256, 16)
    document = session.document
    geometry = document.geometry
    assert (geometry.size, geometry.factor, geometry.grid) == (256, 16, 16)
    assert geometry.visible_grid == (12, 16)  # 384 of 512 px: 12 rows hold the picture
    # a drag anywhere in a cell snaps to that cell's corner: 32 user pixels a cell
    cell = document.set_rectangle_from_pixel(100, 130)
    assert cell == (4, 3) and document.rectangle_pixels()[:2] == (96, 128)
    assert document.masked_cells == (12 - 4) * (16 - 3)  # padding rows are not sampled
    assert document.set_rectangle_from_pixel(96, 128) == (4, 3)  # a cell's first pixel
    assert document.set_rectangle_from_pixel(95, 127) == (3, 2)


def test_the_caption_box_counts_bart_tokens(make_session, qtbot, imported):
    from studio.widgets.caption import CaptionPanel

    session = make_session()
    load(session, qtbot, imported)
    panel = CaptionPanel(session)
    qtbot.addWidget(panel)
    tokenizer = session.tokenizer
    # <s> and </s> take two of the 64 positions whatever the caption says: not the user's
    assert panel.tokens.text() == "0 / 62 tokens"
    caption = "a red horse on the beach"
    panel.caption.setText(caption)
    assert session.caption == caption
    assert panel.tokens.text() == f"{tokenizer.length(caption) - 2} / 62 tokens"
    assert tokenizer.length(caption) == len(tokenizer.ids(caption)) > 2
    long = " ".join(["two dogs in the snow"] * 12)
    assert tokenizer.length(long) > 64
    panel.caption.setText(long)
    shown = panel.tokens.text()
    assert shown.startswith(f"{tokenizer.length(long) - 2} / 62 tokens: the model reads up to “…")
    tail = " ".join(tokenizer.kept(long).split()[-4:])
    assert shown.endswith(f"{tail}”") and "#c62828" in panel.tokens.styleSheet()


def test_a_completion_shows_live_rows_keeps_every_outside_pixel_and_adds_history(
    make_session, qtbot, imported, monkeypatch
):
    monkeypatch.setattr(messages, "PREVIEW_ALWAYS_S", 60.0)  # every row, however slow the CPU
    session = make_session()
    load(session, qtbot, imported)
    document = session.document
    original = document.image.copy()
    # an imported photo model completes in the auto working area by default (a 424 px square
    # for this 212x184 px rectangle), its rectangle on the area's grid
    assert session.area == "auto" == document.area_choice
    cell = document.set_rectangle_from_pixel(300, 200)
    assert document.area.box == (88, 0, 512, 384)
    x, y, _, _ = document.rectangle_pixels()
    outside = np.ones(original.shape[:2], bool)
    outside[y:, x:] = False
    session.set_caption("a red horse on the beach")
    session.set_seed_mode("fixed")
    session.set_options(n=2, seed=5, top_k=16, guidance=2.0)
    previews, progress, received = [], [], []
    document.preview_changed.connect(
        lambda: previews.append(document.preview.copy()) if document.preview is not None else None
    )
    document.progress_changed.connect(lambda *args: progress.append(args))
    session.engine.message.connect(received.append)

    with qtbot.waitSignal(session.finished, timeout=120_000):
        assert session.generate() is not None

    rows = document.area_geometry.visible_grid[0] - cell[0]
    assert [p[0] for p in progress] == list(range(1, rows + 1))  # rows done, each row
    assert all(total == rows and eta >= 0 for _, total, _, eta in progress)
    assert progress[-1][3] < progress[0][3] or progress[0][3] < 1  # the ETA counts down
    assert len(previews) == rows
    assert all(np.array_equal(p[outside], original[outside]) for p in previews)
    assert not np.array_equal(previews[0][~outside], original[~outside])
    # the engine's message reaches this slot after the session's (one queued call each)
    qtbot.waitUntil(lambda: any(isinstance(m, messages.Finished) for m in received))
    finished = [m for m in received if isinstance(m, messages.Finished)]
    assert len(finished) == 1 and len(document.candidates) == 2
    for candidate in document.candidates:
        assert candidate.shape == original.shape
        assert np.array_equal(candidate[outside], original[outside])  # bit for bit
    assert np.array_equal(document.image, original)  # nothing applied before accepting

    entries = [document.history[i] for i in document.candidate_entries]
    first = entries[0]
    assert (first.caption, first.seed, first.cell, first.area, first.model) == (
        "a red horse on the beach",
        5,
        cell,
        (88, 0),
        NAME,
    )
    assert first.options.n == 2 and first.options.guidance == 2.0
    assert document.caption_history == ["a red horse on the beach"]
    assert session.seconds_per_cell == finished[0].seconds_per_cell > 0  # the next ETA
    document.select_candidate(1)
    assert document.accept_candidate()
    assert np.array_equal(document.image, document.history[entries[1].id].image)


def test_a_slow_decoder_previews_fewer_rows_but_every_row_moves_the_progress(
    make_session, qtbot, imported, monkeypatch
):
    """DALL·E Mega's VQGAN takes seconds a decode on a CPU: the live rows skip previews rather
    than double the wait. Here every decode counts as slow and sampling as too short for
    another preview: only the first row is shown; the progress and ETA still move each row."""
    monkeypatch.setattr(messages, "PREVIEW_ALWAYS_S", 0.0)
    monkeypatch.setattr(messages, "PREVIEW_EVERY", 1e9)
    session = make_session()
    load(session, qtbot, imported)
    document = session.document
    document.set_rectangle_from_pixel(300, 200)
    session.set_options(n=1)
    rows = []
    session.engine.message.connect(
        lambda m: rows.append(m) if isinstance(m, messages.RowDecoded) else None
    )
    with qtbot.waitSignal(session.finished, timeout=120_000):
        session.generate()
    total = document.area_geometry.visible_grid[0] - document.cell[0]  # the area's rows
    assert total > 2 and [r.rows_done for r in rows] == list(range(1, total + 1))
    assert rows[0].preview is not None and all(r.preview is None for r in rows[1:])
    assert all(np.isfinite(r.eta_s) for r in rows)
    assert len(document.candidates) == 1


def refuse_memory(monkeypatch, free: int) -> None:
    """The machine has ``free`` bytes of memory: for ``model.bundle.load``'s check and the
    studio's."""
    monkeypatch.setattr("model.bundle.checks.available_memory", lambda device: free)
    monkeypatch.setattr(device_module, "available_memory", lambda device: free)


def test_a_load_memory_cannot_hold_is_one_line_and_the_model_in_use_stays(
    make_session, qtbot, imported, monkeypatch, tmp_path
):
    session = make_session()
    small = tiny_bundle_file(tmp_path)  # far smaller than the imported one
    load(session, qtbot, small)
    before = session.engine._bundle
    refuse_memory(monkeypatch, 10**6)  # not enough even in the place of the model in use
    errors = []
    session.error.connect(errors.append)
    load(session, qtbot, imported)
    assert len(errors) == 1
    message = errors[0]
    assert "\n" not in message and str(imported) in message
    assert "needs about" in message and "1 MB available" in message
    assert "close other programs or use a smaller model" in message
    assert message.endswith("(still using tiny test bundle)")  # the model in use stays
    assert session.engine._bundle is before and session.model_state == "loaded"
    assert session.model_path == str(small) and session.load_error == message
    assert session.document.geometry.size == 32  # its grid, not the refused one's

    # with nothing loaded before, the same refusal leaves no model
    empty = make_session()
    load(empty, qtbot, imported)
    assert empty.model_state == "failed" and not empty.engine.loaded
    assert "needs about" in empty.load_error and "still using" not in empty.load_error


def test_settings_show_the_refusal_and_keep_the_model_and_its_setting(
    qtbot, tmp_path, imported, monkeypatch
):
    """The window's path: Settings chooses the imported bundle, memory refuses it, the window
    shows the one line as it shows other load errors, the model in use stays and the setting
    goes back to it (the next start loads what works)."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QDialog

    from studio.widgets import settings as settings_module
    from studio.widgets.main_window import MainWindow

    engine = Engine()
    session = Session(engine)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(session, settings, autosave_folder=tmp_path)
    window.ask_before_close = False
    qtbot.addWidget(window)
    try:
        first = tiny_bundle_file(tmp_path)
        load(session, qtbot, first)
        settings.setValue("bundle", str(first))
        assert window.model_label.text() == "model: tiny test bundle"
        refuse_memory(monkeypatch, 10**6)

        def choose(dialog):
            dialog.bundle.setText(str(imported))
            assert "Source: converted with dalle import mini" in dialog.card.toPlainText()
            return QDialog.DialogCode.Accepted

        monkeypatch.setattr(settings_module.SettingsDialog, "exec", choose)
        with qtbot.waitSignal(session.error, timeout=60_000):
            window.open_settings()
        assert len(window.errors) == 1 and "\n" not in window.errors[0]
        assert "needs about" in window.errors[0] and "still using" in window.errors[0]
        assert window.progress_label.text() == window.errors[0]
        assert window.model_label.text() == "model: tiny test bundle"  # still in use
        assert session.model_path == str(first) and engine.loaded
        assert settings.value("bundle") == str(first)
    finally:
        engine.shutdown()


def test_a_model_that_only_fits_in_place_of_the_one_in_use_replaces_it(
    make_session, qtbot, imported, monkeypatch
):
    """Loading DALL·E Mega again (another precision) on a machine that holds one: it does not
    fit beside the model in use, but does in its place, so the engine lets go of that first."""
    session = make_session()
    load(session, qtbot, imported)
    engine = session.engine
    held = catalog.bytes_held(engine._bundle, "cpu")
    needed, _ = catalog.memory_to_load(imported)
    assert held > 0

    def free(device):  # what the model in use occupies comes back when it goes
        return needed - 1 + (0 if engine.loaded else held)

    monkeypatch.setattr("model.bundle.checks.available_memory", free)
    monkeypatch.setattr(device_module, "available_memory", free)
    before = engine._bundle
    load(session, qtbot, imported)
    assert session.model_state == "loaded" and not session.load_error
    assert engine._bundle is not before


def test_an_imported_model_converted_in_place_reloads_for_another_precision(imported):
    """DALL·E Mega converts itself in place (no second copy); int8 cannot be undone, so asking
    for another precision afterwards needs the file again (Settings reloads it)."""
    engine = Engine()
    try:
        loaded = engine._load(imported, "cpu")
        assert isinstance(loaded, messages.Loaded)
        engine.set_speed("int8", False)
        assert not engine.reload_needed()  # not converted yet
        job = messages.Job(
            image=picture(), cell=(10, 12), caption="a dog", options=SamplingOptions(seed=1)
        )
        result = engine.run_job_blocking(job, lambda message: None)
        assert isinstance(result, messages.Finished)
        assert engine._bundle.transformer.precision == "int8"
        assert engine.sampling_precision("cpu") == "int8"
        engine.set_speed("fp32", False)
        assert engine.reload_needed()
        engine.set_speed("int8", False)
        assert not engine.reload_needed()
    finally:
        engine.shutdown()


# -- dalle serve with the imported bundle ---------------------------------------------------------


def test_serve_answers_a_generation_and_an_edit_with_the_imported_bundle(imported):
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from model.serve.service import ModelService
    from tests.test_serve import blob_mask, decode, in_process, multipart, png
    from tests.test_serve import picture as serve_picture

    service = ModelService(bundle_module.load(imported), "tiny-mini", precision="fp32")
    service.release = threading.Event()  # what in_process sets when it stops
    with in_process(service) as (base, _, _):
        models = httpx.get(f"{base}/v1/models", timeout=30).json()["data"]
        assert models[0]["name"] == NAME and models[0]["grid"] == 16
        answer = httpx.post(
            f"{base}/v1/images/generations",
            json={"prompt": "a red horse", "n": 2, "seed": 7, "response_format": "b64_json"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        images = [decode(base64.b64decode(item["b64_json"])) for item in answer.json()["data"]]
        assert [im.size for im in images] == [(256, 256)] * 2
        assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))

        image, mask = serve_picture(), blob_mask()
        body, headers = multipart(
            {"prompt": "a yellow sun", "n": "2", "response_format": "b64_json", "seed": "3"},
            {"image": png(image), "mask": png(mask)},
        )
        answer = httpx.post(f"{base}/v1/images/edits", content=body, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        marked = np.asarray(mask)[..., 3] == 0
        source = np.asarray(image)
        for item in answer.json()["data"]:
            result = decode(base64.b64decode(item["b64_json"]))
            assert result.size == image.size and result.mode == "RGB"
            pixels = np.asarray(result)
            assert np.array_equal(pixels[~marked], source[~marked])  # bit for bit
            assert not np.array_equal(pixels[marked], source[marked])
        assert (
            "of the 16x16 cells" in answer.headers["X-DALLE-Studio-Note"]
        )  # a region, not to the corner


def test_the_settings_card_of_an_imported_bundle_names_its_source_and_licence(imported):
    from studio.widgets.settings import card_text

    text = card_text(str(imported))
    assert f"Name: {NAME}" in text
    assert "Source: converted with dalle import mini" in text
    assert "kuprel/min-dalle" in text and "dalle-mini/vqgan_imagenet_f16_16384" in text
    assert "Licence:" in text and "Apache-2.0" in text and "MIT" in text
    assert "Image tokenizer: VQGAN f16 16x16 of 64 codes at 256 px" in text
    assert "Weights stored in: fp32" in text
    card = catalog.read_card(imported)
    for name, digest in card["imported"]["files"].items():
        assert f"{name} {digest[:16]}…" in text
    assert "Memory: loading needs about" in text
    assert "{" not in text and '"' not in text
