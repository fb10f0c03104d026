"""File › New scene: a picture from the model's world with its rectangle and caption, one click."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
from PySide6.QtCore import QSettings
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QFileDialog, QMessageBox

from model.bundle import load
from model.data import scenes
from studio import catalog, scene_canvas
from studio.document import Document
from studio.engine import Engine
from studio.session import Session
from studio.widgets.main_window import MainWindow
from tests.helpers import tiny_bundle

IMPORTED_CARD = {
    "stage": "imported",
    "name": "DALL·E Mega (imported)",
    "imported": {"from": "dalle import mega"},
    "example_captions": ["a red circle"],
}


@pytest.fixture(scope="module")
def scenes_bundle():
    """The embedded default bundle (128 px, a 16x16 grid) when it is installed, else the tiny
    one (its card's captions are scene captions too)."""
    path = catalog.default_bundle_path()
    return load(path) if path.exists() else tiny_bundle()


@pytest.fixture
def engine(scenes_bundle):
    engine = Engine()
    engine.set_bundle(scenes_bundle)
    yield engine
    engine.shutdown()


@pytest.fixture
def window(qtbot, tmp_path, engine):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    win.ask_before_close = False
    win.scene_seeds = itertools.count(11)  # deterministic scenes
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def bottom_right_place(engine: Engine) -> tuple[int, int]:
    grid = engine.geometry_size // engine.geometry_factor
    corner = math.ceil(grid * 2 / 3)
    return corner, corner


# -- the scene and its document -------------------------------------------------------------


def test_a_scene_is_drawn_at_the_models_size_from_its_seed(engine):
    size = engine.geometry_size
    picture, caption, cell = engine.new_scene(5)
    assert picture.shape == (size, size, 3) and picture.dtype == np.uint8
    again, caption_again, _ = engine.new_scene(5)
    assert np.array_equal(picture, again) and caption == caption_again  # seeded
    other, _, _ = engine.new_scene(6)
    assert not np.array_equal(picture, other)  # a new scene each seed
    assert cell == bottom_right_place(engine)
    scenes.parse_caption(caption)  # in the scenes' language
    # the caption names another object for the bottom-right place than the one drawn there:
    # the picture as it is does not fit its caption, so Generate has something to redraw
    assert not scenes.score(picture, caption).correct


def test_the_scene_document_is_untitled_unmodified_with_the_rectangle_on_the_grid(engine):
    picture, _, cell = engine.new_scene(3)
    size, factor = engine.geometry_size, engine.geometry_factor
    document = scene_canvas.scene_document(picture, cell, size, factor)
    assert np.array_equal(document.image, picture)
    assert (document.model_size, document.model_factor) == (size, factor)
    assert document.cell == cell
    x, y, w, h = document.rectangle_pixels()
    assert (x, y) == (cell[1] * factor, cell[0] * factor)  # on a cell's corner: snapped
    assert (x + w, y + h) == (size, size)  # to the bottom-right corner
    assert document.geometry.cell_at(x, y) == cell
    assert document.path is None and document.source_path is None
    assert not document.modified  # a fresh scene is not work to lose
    (entry,) = document.history.values()
    assert entry.is_original and document.undo_stack.count() == 0


def test_seeds_are_consecutive_from_a_random_start():
    first, second = scene_canvas.seeds(), scene_canvas.seeds()
    a, b = next(first), next(first)
    assert b == a + 1
    assert next(second) != a  # another window starts elsewhere (1 in 2**31 to collide)


def test_the_scene_canvas_module_imports_no_torch():
    code = "import sys, studio.scene_canvas; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# -- in the window --------------------------------------------------------------------------


def test_the_file_menu_offers_new_scene_with_a_shortcut_of_its_own(window):
    action = window.new_scene_action
    files = window.menuBar().actions()[0].menu()
    assert files.title() == "&File" and files.actions()[0] is action
    assert action.text() == "New &scene"
    assert action.shortcut() == QKeySequence("Ctrl+N")
    others = [a for a in window.actions() if a is not action]
    assert all(QKeySequence("Ctrl+N") not in a.shortcuts() for a in others)
    assert action.isEnabled() and "scenes of coloured shapes" in action.toolTip()
    assert files.toolTipsVisible()


def test_new_scene_makes_the_document_and_fills_the_caption(window, engine):
    window.new_scene_action.trigger()
    picture, caption, cell = engine.new_scene(11)  # the seed the window used
    document = window.document
    assert np.array_equal(document.image, picture)
    assert document.cell == cell == bottom_right_place(engine)
    assert window.caption.caption.text() == caption == window.session.caption
    assert window.windowTitle().startswith("untitled —")
    assert window.progress_label.text().startswith("a scene from this model's world")
    window.new_scene_action.trigger()  # another click, another scene
    assert not np.array_equal(window.document.image, picture)
    assert window.session.caption == engine.new_scene(12)[1]


def test_an_imported_model_gets_it_disabled_and_says_why(window, engine):
    imported = tiny_bundle()
    imported.card = dict(IMPORTED_CARD)
    engine.set_bundle(imported)
    window.session.model_name = IMPORTED_CARD["name"]
    window.session.model_changed.emit()
    action = window.new_scene_action
    assert not action.isEnabled()
    assert action.toolTip() == (
        "only for a model trained on scenes of coloured shapes; DALL·E Mega (imported) was not"
    )
    before = window.document
    assert not window.new_scene()  # even called directly: one line, nothing changes
    assert window.errors[-1] == action.toolTip() and window.document is before


def test_it_waits_for_a_model(qtbot, tmp_path):
    engine = Engine()
    try:
        settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
        win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
        qtbot.addWidget(win)
        assert not win.new_scene_action.isEnabled()
        assert win.new_scene_action.toolTip() == "waits for the model to load"
        win.ask_before_close = False
    finally:
        engine.shutdown()


def test_unsaved_work_is_asked_about_first(window, monkeypatch):
    window.ask_before_close = True
    work = Document(np.zeros((40, 50, 3), np.uint8))
    window.session.set_document(work)
    work.mark_modified()
    answers = iter([QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save,
                    QMessageBox.StandardButton.Discard])  # fmt: skip
    asked = []

    def question(*args, **kwargs):
        asked.append(args[1])
        return next(answers)

    monkeypatch.setattr(QMessageBox, "question", question)
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args: ("", ""))
    caption = window.session.caption
    assert not window.new_scene()  # Cancel: the work stays
    assert window.document is work and work.modified and window.session.caption == caption
    assert not window.new_scene()  # Save, then the save dialog cancelled: still there
    assert window.document is work
    assert window.new_scene()  # Discard
    assert window.document is not work and asked == ["Unsaved changes"] * 3
    assert window.new_scene()  # an untouched scene is replaced without asking
    assert len(asked) == 3


def test_one_click_then_generate_redraws_only_the_rectangle(window, qtbot):
    window.new_scene_action.trigger()
    document = window.document
    scene = document.image.copy()
    x, y, _, _ = document.rectangle_pixels()
    window.session.set_options(n=2)
    with qtbot.waitSignal(document.candidates_changed, timeout=120_000):
        window.generate_action.trigger()
    qtbot.waitUntil(lambda: not window.session.running, timeout=10_000)
    assert not window.errors and len(document.candidates) == 2
    outside = np.ones(scene.shape[:2], bool)
    outside[y:, x:] = False
    for candidate in document.candidates:
        assert np.array_equal(candidate[outside], scene[outside])
    assert document.modified  # now there is work: the next New scene asks first
