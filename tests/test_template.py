"""studio.template: the image-to-image (top -> bottom) canvas, on its own and in the window."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PySide6.QtCore import QSettings
from PySide6.QtGui import QImage, QKeySequence
from PySide6.QtWidgets import QFileDialog, QMessageBox

from model.files import MAX_PIXELS
from model.geometry import PAPER_FACTOR, PAPER_SIZE
from studio import catalog, project, template
from studio.document import Document
from studio.engine import Engine
from studio.session import Session
from studio.widgets.canvas import to_qimage
from studio.widgets.main_window import MainWindow
from tests.helpers import tiny_bundle

GRID_16, GRID_32 = (64, 4), (256, 8)  # the embedded model's geometry, the paper's
ODD_SIZES = [(97, 49), (98, 49), (63, 127), (301, 200), (5, 3), (1, 1)]  # 98x49: see test below


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def check_canvas(document: Document, source: np.ndarray) -> tuple[int, int, int, int]:
    """The picture lies, bit for bit, wholly above the rectangle; everything else is white.
    Returns where it lies."""
    x, y, width, height = template.layout(
        source.shape[1], source.shape[0], document.model_size, document.model_factor
    ).picture
    _, kept_rows, _, _ = document.rectangle_pixels()
    assert (width, height) == (source.shape[1], source.shape[0])  # never resampled
    assert y + height <= kept_rows  # no picture pixel in the regenerated rectangle
    assert np.array_equal(document.image[y : y + height, x : x + width], source)
    rest = np.ones(document.image.shape[:2], bool)
    rest[y : y + height, x : x + width] = False
    assert (document.image[rest] == template.FILL).all()
    return x, y, width, height


@pytest.mark.parametrize("geometry", [GRID_16, GRID_32], ids=["grid16", "grid32"])
@pytest.mark.parametrize("size", ODD_SIZES, ids=[f"{w}x{h}" for w, h in ODD_SIZES])
def test_the_picture_fills_the_top_half_and_the_rectangle_is_the_bottom_half(geometry, size):
    source = picture(*size)
    document = template.image_to_image(source, *geometry)
    side = document.width
    assert document.height == side and side % 2 == 0
    assert side >= max(size[0], 2 * size[1])  # the picture fits at its own size
    grid = document.geometry.grid
    assert document.cell == (grid // 2, 0)
    assert document.rectangle_pixels() == (0, side // 2, side, side // 2)  # the bottom half
    # snapped to the grid: its first pixel row maps back to its cell (a re-snap keeps it)
    assert document.geometry.cell_at(0, side // 2) == (grid // 2, 0)
    assert document.masked_cells == grid * grid // 2
    x, y, width, _ = check_canvas(document, source)
    assert abs((side - width) - 2 * x) <= 1  # centred across


def test_an_odd_grid_snaps_to_the_nearest_row_below_the_middle_and_the_picture_stays_above():
    source = picture(301, 200)
    document = template.image_to_image(source, 240, 16)  # 15x15 cells: no row at the middle
    assert document.geometry.grid == 15 and document.cell == (8, 0)
    _, kept_rows, _, _ = document.rectangle_pixels()
    assert kept_rows >= document.height / 2  # the picture keeps its size
    check_canvas(document, source)


def test_the_rectangle_stays_on_the_middle_when_the_model_changes():
    """Built before a model has loaded (the paper's grid), then the model's grid arrives. On a
    98 px side the middle row starts at pixel 49, where 49 * 64/98 / 4 is a hair below 8: the
    re-snap must still find row 8 (Geometry.cell_at's tolerance), not pull the rectangle up over
    the picture."""
    source = picture(98, 49)
    document = template.image_to_image(source, PAPER_SIZE, PAPER_FACTOR)
    assert document.width == 98
    for size, factor in (GRID_16, (32, 8), GRID_32):
        document.set_model_geometry(size, factor)
        assert document.cell == (document.geometry.grid // 2, 0), (size, factor)
        assert document.rectangle_pixels()[1] == 49
        check_canvas(document, source)


def test_a_picture_past_the_pixel_limit_is_scaled_into_a_canvas_within_it(monkeypatch):
    plan = template.layout(12_000, 9_000, *GRID_16)
    assert plan.side * plan.side <= MAX_PIXELS and plan.side <= template.MAX_SIDE + 1
    x, y, width, height = plan.picture
    assert width / height == pytest.approx(12_000 / 9_000, rel=1e-3)
    assert y + height <= plan.kept_rows
    monkeypatch.setattr(template, "MAX_SIDE", 100)  # the same path on a small picture
    document = template.image_to_image(picture(150, 100), *GRID_16)
    assert document.width == 100 and document.cell == (8, 0)
    x, y, width, height = template.layout(150, 100, *GRID_16).picture
    assert (width, height) == (75, 50) and y + height <= 50
    assert (document.image[50:] == template.FILL).all()


def test_the_new_canvas_is_unsaved_untitled_work_whose_history_starts_at_it(tmp_path):
    document = template.image_to_image(picture(40, 30), *GRID_16)
    assert document.modified and document.path is None and document.source_path is None
    assert len(document.history) == 1
    (entry,) = document.history.values()
    assert entry.is_original and np.array_equal(entry.image, document.image)
    assert document.undo_stack.count() == 0  # like opening an image: not an undo step
    reopened = project.load(project.save(document, tmp_path / "t.dstudio"))
    assert np.array_equal(reopened.image, document.image)
    reopened.set_model_geometry(*GRID_16)
    assert reopened.rectangle_pixels() == document.rectangle_pixels()
    with pytest.raises(ValueError, match="uint8"):
        template.image_to_image(np.zeros((4, 4), np.uint8), *GRID_16)


def test_the_caption_hint_names_the_subject_to_replace():
    assert template.CAPTION == "the exact same thing on the top as a sketch on the bottom"
    start, end = template.subject_span()
    assert template.CAPTION[start:end] == template.SUBJECT == "thing"


def test_generating_keeps_the_top_half_bit_for_bit(qtbot):
    """The real sampler on the tiny bundle (a 4x4 grid): every candidate's kept rows are the
    canvas's own pixels, and the bottom half is new."""
    engine = Engine()
    engine.set_bundle(tiny_bundle())
    try:
        session = Session(engine)
        session.set_document(template.image_to_image(picture(45, 21), 32, 8))
        document = session.document
        assert document.cell == (2, 0)
        _, kept_rows, _, _ = document.rectangle_pixels()
        session.set_caption("the exact same red circle on the top as a sketch on the bottom")
        session.set_options(n=2)
        with qtbot.waitSignal(session.finished, timeout=60_000):
            assert session.generate() is not None
        assert len(document.candidates) == 2
        for candidate in document.candidates:
            assert np.array_equal(candidate[:kept_rows], document.image[:kept_rows])
            assert not np.array_equal(candidate[kept_rows:], document.image[kept_rows:])
    finally:
        engine.shutdown()


# -- in the window ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_or_tiny_bundle():
    """The embedded default bundle (a 16x16 grid) when it is installed, else the tiny one."""
    path = catalog.default_bundle_path()
    if path.exists():
        from model.bundle import load

        return load(path)
    return tiny_bundle()


@pytest.fixture
def window(qtbot, tmp_path, default_or_tiny_bundle):
    engine = Engine()
    engine.set_bundle(default_or_tiny_bundle)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    win.ask_before_close = False
    win.session.set_document(Document(picture(96, 64)))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    engine.shutdown()


def saved_picture(folder, width=90, height=61, seed=3) -> tuple[str, np.ndarray]:
    source = picture(width, height, seed)
    path = folder / "cat.png"
    assert QImage(to_qimage(source)).save(str(path))
    return str(path), source


def test_the_menu_action_makes_the_canvas_and_selects_the_captions_subject(
    window, qtbot, tmp_path, monkeypatch
):
    path, source = saved_picture(tmp_path)
    asked = []

    def choose(parent, title, folder, filters):
        asked.extend([filters, folder])
        return path, filters

    monkeypatch.setattr(QFileDialog, "getOpenFileName", choose)
    action = window.image_to_image_action
    assert action.text() == "&Image-to-image (top → bottom)…"
    assert action.shortcut() == QKeySequence("Ctrl+Shift+N")
    others = [a for a in window.actions() if a is not action]
    assert all(QKeySequence("Ctrl+Shift+N") not in a.shortcuts() for a in others)
    action.trigger()

    assert asked and "*.png" in asked[0] and ".dstudio" not in asked[0]  # images only
    document = window.document
    size, factor = window.session.engine.geometry_size, window.session.engine.geometry_factor
    assert (document.model_size, document.model_factor) == (size, factor)
    assert document.cell == (document.geometry.grid // 2, 0)
    check_canvas(document, source)
    assert window.windowTitle().startswith("untitled*")
    assert window.progress_label.text().startswith("type what the picture shows")
    assert window.settings.value("template_folder") == str(tmp_path)  # the next dialog opens there
    action.trigger()
    assert asked[-1] == str(tmp_path)
    document = window.document

    box = window.caption.caption
    assert box.text() == template.CAPTION and window.session.caption == template.CAPTION
    assert box.textCursor().selectedText() == "thing"
    box.setFocus()
    qtbot.keyClicks(box, "cat")  # typing replaces the selected subject
    assert window.session.caption == "the exact same cat on the top as a sketch on the bottom"

    saves = []
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", lambda *args: (saves.append(args), ("", ""))[1]
    )
    assert not window.save_project()  # untitled: saving asks for a name (cancelled here)
    assert saves and document.modified


def test_generate_accept_undo_from_the_template_keeps_the_top_half(window, qtbot, tmp_path):
    path, source = saved_picture(tmp_path, 70, 33)
    assert window.open_image_to_image(path)
    document = window.document
    check_canvas(document, source)
    canvas = document.image.copy()
    _, kept_rows, _, _ = document.rectangle_pixels()
    window.caption.caption.setText("the exact same red circle on the top as a sketch on the bottom")
    window.session.set_options(n=2)
    with qtbot.waitSignal(document.candidates_changed, timeout=120_000):
        window.generate_action.trigger()
    qtbot.waitUntil(lambda: not window.session.running, timeout=10_000)
    assert not window.errors and len(document.candidates) == 2
    for candidate in document.candidates:
        assert np.array_equal(candidate[:kept_rows], canvas[:kept_rows])
    assert document.accept_candidate()
    accepted = document.image.copy()
    assert np.array_equal(accepted[:kept_rows], canvas[:kept_rows])
    window.undo_action.trigger()
    assert np.array_equal(document.image, canvas)  # back to the template's canvas
    assert not document.undo_stack.canUndo()  # and no further: it is where this document began
    window.redo_action.trigger()
    assert np.array_equal(document.image, accepted)


def test_a_bad_picture_is_one_line_like_opening_and_nothing_changes(window, tmp_path):
    before, caption = window.document, window.session.caption
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert not window.open_path(broken)
    assert not window.open_image_to_image(broken)
    assert window.errors[-1] == window.errors[-2]  # the same message as opening it
    assert "broken.png" in window.errors[-1] and "\n" not in window.errors[-1]
    assert not window.open_image_to_image(tmp_path / "missing.png")
    assert "missing.png" in window.errors[-1] and "\n" not in window.errors[-1]
    assert window.document is before and window.session.caption == caption


def test_the_template_module_imports_no_torch():
    code = "import sys, studio.template; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_modified_work_is_asked_about_before_the_template_replaces_it(
    window, tmp_path, monkeypatch
):
    path, _ = saved_picture(tmp_path)
    window.ask_before_close = True
    window.document.mark_modified()
    before = window.document
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Cancel)
    assert not window.open_image_to_image(path)
    assert window.document is before
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    assert window.open_image_to_image(path)
    assert window.document is not before
