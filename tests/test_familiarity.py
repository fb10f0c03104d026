"""model.inference.familiarity and its status-bar hint: how far a picture lies from what the model
knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QSettings
from PySide6.QtGui import QImage

from benchmarks.familiarity import NATURAL, photo_texture, portrait, sky_and_hills
from model import bundle as bundle_io
from model.data import scenes
from model.inference import familiarity
from studio import engine as messages
from studio.document import Document
from studio.engine import Engine
from studio.familiarity_hint import FAR_BADGE, FAR_HINT, FamiliarityHint
from studio.session import Session
from studio.widgets.canvas import to_qimage
from studio.widgets.main_window import MainWindow
from tests.helpers import tiny_bundle

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    "v1 dVAE": ROOT / "resources/models/v1/default-2026-11-25.dalle.safetensors",
    "default VQ": ROOT / "resources/models/default.dalle.safetensors",
}
IMPORTED_CARD = {
    "stage": "imported",
    "name": "DALL·E Mega (imported)",
    "imported": {"from": "dalle import mega"},
    "example_captions": ["a red circle"],  # even a scenes-like caption: imported knows photos
}


@pytest.fixture(scope="module", params=list(SHIPPED), ids=list(SHIPPED))
def shipped(request):
    path = SHIPPED[request.param]
    if not path.exists():
        pytest.skip(f"{path.name} is not installed")
    bundle = bundle_io.load(path, torch.device("cpu"))
    return bundle, familiarity.reference_psnr(bundle)


# -- which models know scenes ---------------------------------------------------------------


def test_scenes_models_are_told_from_imported_and_other_models():
    for path in SHIPPED.values():
        if path.exists():
            assert familiarity.knows_scenes(bundle_io.read_card(path)), path.name
    assert familiarity.knows_scenes({"example_captions": ["two blue squares on a red background"]})
    assert not familiarity.knows_scenes(IMPORTED_CARD)
    assert not familiarity.knows_scenes({"example_captions": ["an avocado armchair at sunset"]})
    assert not familiarity.knows_scenes({"name": "no captions"})
    assert not familiarity.knows_scenes({"example_captions": []})


# -- the measure ----------------------------------------------------------------------------


class Exact(torch.nn.Module):
    """A tokenizer that draws back exactly what it read, except ``wrong`` pixels columns from
    ``from_column`` on."""

    def __init__(self, factor: int = 4, from_column: int | None = None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # its device
        self.config = type("Config", (), {"factor": factor})()
        self.from_column = from_column

    def encode(self, images):
        return images

    def decode(self, tokens):
        out = tokens.clone()
        if self.from_column is not None:
            out[..., self.from_column :] = 1 - out[..., self.from_column :]
        return out


def test_the_typical_cell_is_the_median_cell_and_padding_is_left_out():
    images = torch.rand(2, 3, 16, 16)
    assert familiarity.typical_cell_psnr(Exact(), images).tolist() == [100.0, 100.0]
    # the right 6 columns redrawn wrong: 2 of 4 cell columns err, so the median is half bad
    wrong = familiarity.typical_cell_psnr(Exact(from_column=10), images)
    assert (wrong < 100).all()
    # ... unless they are edge padding beside a 10 px wide picture: left out
    padded = familiarity.typical_cell_psnr(Exact(from_column=12), images, content=(10, 16))
    assert padded.tolist() == [100.0, 100.0]
    # a colour cast over the whole picture is not a block
    cast = Exact()
    cast.decode = lambda tokens: (tokens - 0.04).clamp_min(-1)
    assert familiarity.typical_cell_psnr(cast, images).tolist() == [100.0, 100.0]


def test_far_means_more_than_the_margin_below_the_reference():
    margin = familiarity.FAR_BELOW_DB
    assert familiarity.Familiarity(40.0, 40.0 + margin + 0.1).far
    assert not familiarity.Familiarity(40.0, 40.0 + margin).far
    assert familiarity.Familiarity(50.0, 40.0).below_db == -10.0


def test_scenes_are_near_and_natural_pictures_far(shipped):
    bundle, reference = shipped
    size = bundle.config.vae.image_size
    for split in ("train", "heldout"):
        for index in range(8):
            picture, _ = scenes.render_scene(99, index, size, split)
            measured = familiarity.measure(bundle, picture, reference)
            assert not measured.far, (split, index, measured)
    opened = scenes.render_scene(98, 0, 256)[0]  # a scene saved larger, opened as a file is
    assert not familiarity.measure(bundle, opened, reference).far
    blank = Image.new("RGB", (256, 256), (255, 255, 255))  # the studio's new document
    assert not familiarity.measure(bundle, blank, reference).far
    for draw in (sky_and_hills, photo_texture, portrait):
        measured = familiarity.measure(bundle, draw(), reference)
        assert measured.far, (draw.__name__, measured)
        assert measured.below_db > familiarity.FAR_BELOW_DB + 5  # not a near miss


def test_the_reference_is_the_bundles_own_and_the_same_each_time(shipped):
    bundle, reference = shipped
    assert familiarity.reference_psnr(bundle) == reference
    # scenes at the model's size sit near it; the margin leaves them room
    scenes_there = familiarity.scene_images(bundle.config.vae.image_size, 16, seed=5)
    values = familiarity.typical_cell_psnr(bundle.vae, scenes_there)
    assert values.median() > reference - 2
    assert familiarity.measure(bundle, sky_and_hills()).reference_db == reference


def test_every_drawn_picture_is_measured_far_by_both_bundles(shipped):
    bundle, reference = shipped
    for name, draw in NATURAL.items():
        assert familiarity.measure(bundle, draw(), reference).far, name


# -- on the engine's worker -----------------------------------------------------------------


def answers_to(engine: Engine) -> list:
    """The engine's Familiar messages from now on."""
    answers: list = []
    engine.message.connect(
        lambda message: answers.append(message) if isinstance(message, messages.Familiar) else None
    )
    return answers


def received(qtbot, engine: Engine, image: np.ndarray, request: int = 7):
    with qtbot.waitSignal(engine.message, timeout=60_000) as signal:
        assert engine.measure_familiarity(image, request) is not None
    return signal.args[0]


def test_the_engine_measures_a_scenes_model_on_its_worker_and_skips_imported_ones(qtbot):
    path = SHIPPED["default VQ"]
    engine = Engine()
    try:
        engine.set_bundle(bundle_io.load(path) if path.exists() else tiny_bundle())
        assert engine.knows_scenes
        message = received(qtbot, engine, np.asarray(sky_and_hills()))
        assert isinstance(message, messages.Familiar) and message.request == 7
        assert message.far == (path.exists())  # the tiny random model knows nothing
        assert message.far_below_db == familiarity.FAR_BELOW_DB
        imported = tiny_bundle()
        imported.card = dict(IMPORTED_CARD)
        engine.set_bundle(imported)
        assert not engine.knows_scenes
        assert engine.measure_familiarity(np.asarray(sky_and_hills()), 8) is None  # no cost
    finally:
        engine.shutdown()


def test_the_hint_follows_the_picture_and_drops_answers_about_a_picture_left(qtbot):
    path = SHIPPED["default VQ"]
    if not path.exists():
        pytest.skip(f"{path.name} is not installed")
    engine = Engine()
    engine.set_bundle(bundle_io.load(path))
    try:
        session = Session(engine)
        hint = FamiliarityHint(session)
        with qtbot.waitSignal(hint.changed, timeout=60_000) as signal:
            session.set_document(Document(np.asarray(sky_and_hills())))
        assert signal.args == [FAR_HINT] and "dB" in hint.detail
        assert "File › New scene" in FAR_HINT and "README" in FAR_HINT
        assert "README: Real weights" in hint.detail
        assert "\n" not in FAR_HINT  # one line
        answers = answers_to(engine)
        scene = np.asarray(scenes.render_scene(3, 0, 64)[0])
        session.set_document(Document(scene))
        assert hint.text == ""  # at once: the last picture's hint is not this one's
        qtbot.waitUntil(lambda: any(a.request == hint._request for a in answers), timeout=60_000)
        assert hint.text == ""
        # a stale answer (an earlier picture's) changes nothing
        hint._received(messages.Familiar(hint._request - 1, 10.0, 49.0, 14.0, True))
        assert hint.text == ""
    finally:
        engine.shutdown()


# -- in the window --------------------------------------------------------------------------


@pytest.fixture
def window(qtbot, tmp_path):
    path = SHIPPED["default VQ"]
    if not path.exists():
        pytest.skip(f"{path.name} is not installed")
    engine = Engine()
    engine.set_bundle(bundle_io.load(path))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    win.ask_before_close = False
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    engine.shutdown()


def save_picture(folder: Path, image: Image.Image, name: str) -> Path:
    path = folder / name
    assert QImage(to_qimage(np.asarray(image))).save(str(path))
    return path


def test_the_status_bar_says_a_far_picture_is_far_until_the_user_works_on_it(
    window, qtbot, tmp_path
):
    path = save_picture(tmp_path, sky_and_hills(), "sky.png")
    assert window.open_path(path)
    qtbot.waitUntil(window.hint_label.isVisible, timeout=60_000)
    assert window.hint_label.text() == FAR_HINT
    assert not window.far_badge.isVisible()  # not twice
    assert not window.progress_label.isVisible()  # the line is the hint's
    assert "dB" in window.hint_label.toolTip() and "Real weights" in window.hint_label.toolTip()
    assert window.statusBar().width() <= window.width()  # the long line never widens the window
    # the whole line fits a 1280 px window beside the longest shipped model's name
    window.resize(1280, 800)
    window.model_label.setText("model: scenes 128px, VQ tokens (v2, 2026-12-05)")
    qtbot.waitUntil(lambda: window.width() == 1280)
    qtbot.wait(50)
    needed = window.hint_label.fontMetrics().horizontalAdvance(FAR_HINT)
    assert needed <= window.hint_label.contentsRect().width()

    window.document.set_rectangle_from_pixel(160, 120)  # working on it gives the line back
    assert not window.hint_label.isVisible() and window.progress_label.isVisible()
    assert window.progress_label.text().startswith("rectangle from cell")
    assert window.far_badge.isVisible() and window.far_badge.text() == FAR_BADGE
    assert window.far_badge.toolTip() == window.hint_label.toolTip()

    answers = answers_to(window.session.engine)
    scene = save_picture(tmp_path, scenes.render_scene(4, 1, 128)[0], "scene.png")
    assert window.open_path(scene)
    assert not window.far_badge.isVisible() and not window.hint_label.isVisible()
    qtbot.waitUntil(lambda: bool(answers), timeout=60_000)
    qtbot.wait(50)  # the hint's own slot has run too
    assert not answers[-1].far
    assert not window.far_badge.isVisible() and not window.hint_label.isVisible()


def test_an_imported_model_gets_no_hint_and_costs_nothing(window, qtbot, monkeypatch):
    imported = tiny_bundle()
    imported.card = dict(IMPORTED_CARD)
    engine = window.session.engine
    engine.set_bundle(imported)
    asked = []
    monkeypatch.setattr(
        engine,
        "_measure_familiarity",
        lambda *args: asked.append(args),  # never called
    )
    window.session.model_changed.emit()
    window.session.set_document(Document(np.asarray(sky_and_hills())))
    qtbot.wait(200)
    assert asked == [] and not window.hint_label.isVisible() and not window.far_badge.isVisible()
