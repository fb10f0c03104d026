"""pytest-qt tests of the studio's widgets (offscreen). Async flows run on the engine's worker."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt
from PySide6.QtGui import QImage

from model.config import SamplingOptions
from studio import catalog
from studio import engine as messages
from studio.document import Document
from studio.engine import Engine
from studio.session import Session
from studio.widgets.canvas import qimage_to_array, to_qimage
from studio.widgets.main_window import MainWindow
from tests.helpers import tiny_bundle, tiny_bundle_file


def picture(width=96, height=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def default_or_tiny_bundle(tmp_path_factory):
    """The embedded default bundle when it is installed, else the tiny test bundle."""
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
    win.session.set_document(Document(picture()))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    engine.shutdown()


def viewport_point(canvas, x: float, y: float) -> QPoint:
    return canvas.mapFromScene(QPointF(x, y))


def canvas_pixels(canvas) -> np.ndarray:
    return qimage_to_array(canvas._pixmap.pixmap().toImage())


def test_dragging_places_a_snapped_rectangle(window, qtbot):
    canvas = window.canvas
    viewport = canvas.viewport()
    assert window.progress_label.text().startswith("drag on the image")  # what to do first
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=viewport_point(canvas, 5, 5))
    qtbot.mouseMove(viewport, viewport_point(canvas, 30, 20))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=viewport_point(canvas, 50, 40))
    document = window.document
    expected = document.geometry.cell_at(5, 5)  # the corner is where the drag started
    assert document.cell == expected
    x, y, w, h = document.rectangle_pixels()
    assert x <= 5 and y <= 5  # snapped to the cell's corner, at or before the press
    assert (x + w, y + h) == (document.width, document.height)  # reaches the bottom-right
    assert f"{document.masked_cells} cells" in canvas.rectangle_label()
    assert window.progress_label.text().endswith(f"{document.masked_cells} cells")


def test_zoom_shortcuts_and_wheel(window, qtbot):
    canvas = window.canvas
    canvas.actual_size()
    assert canvas.zoom == pytest.approx(1.0)
    canvas.set_zoom(3.0)
    assert canvas.zoom == pytest.approx(3.0)
    canvas.fit()
    assert canvas.zoom != pytest.approx(3.0)


def test_ctrl_enter_changes_the_canvas_only_inside_the_rectangle(window, qtbot):
    document = window.document
    original = document.image.copy()
    document.set_rectangle_from_pixel(50, 30)
    x, y, _, _ = document.rectangle_pixels()
    window.caption.caption.setText("a red circle")
    window.caption.candidates.setValue(2)
    window.activateWindow()
    window.canvas.setFocus()
    with qtbot.waitSignal(document.candidates_changed, timeout=60_000):
        qtbot.keyClick(window.canvas, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert len(document.candidates) == 2 and not window.errors
    shown = canvas_pixels(window.canvas)
    outside = np.ones(original.shape[:2], bool)
    outside[y:, x:] = False
    assert np.array_equal(shown[outside], original[outside])
    assert not np.array_equal(shown[y:, x:], original[y:, x:])
    assert np.array_equal(document.image, original)  # nothing is applied before accepting


def stage(document: Document, count=3) -> list[np.ndarray]:
    candidates = [picture(seed=10 + i) for i in range(count)]
    document.start_generation()
    document.finish_generation(candidates, "staged", (1, 1), 9, SamplingOptions(n=count))
    return candidates


def test_candidate_keys_browse_accept_undo_redo(window, qtbot):
    document = window.document
    original = document.image.copy()
    candidates = stage(document)
    strip = window.strip
    assert strip.isVisible() and strip.count() == 3
    qtbot.keyClick(strip, Qt.Key.Key_Right)
    qtbot.keyClick(strip, Qt.Key.Key_Right)
    assert document.candidate_index == 2
    assert np.array_equal(canvas_pixels(window.canvas), candidates[2])
    qtbot.keyClick(strip, Qt.Key.Key_Left)
    assert document.candidate_index == 1
    qtbot.keyClick(strip, Qt.Key.Key_Return)
    assert np.array_equal(document.image, candidates[1]) and not strip.isVisible()
    window.undo_action.trigger()
    assert np.array_equal(document.image, original)
    assert np.array_equal(canvas_pixels(window.canvas), original)
    window.redo_action.trigger()
    assert np.array_equal(document.image, candidates[1])


def test_escape_discards_candidates(window, qtbot):
    document = window.document
    original = document.image.copy()
    stage(document, 2)
    qtbot.keyClick(window.strip, Qt.Key.Key_Escape)
    assert not document.candidates
    assert np.array_equal(canvas_pixels(window.canvas), original)


def test_history_double_click_restores(window, qtbot):
    document = window.document
    original = document.image.copy()
    candidates = stage(document, 2)
    document.accept_candidate()
    history = window.history
    root_item = history.items[min(document.history)]
    assert history.topLevelItemCount() == 1 and root_item.childCount() == 2
    rect = history.visualItemRect(root_item)
    qtbot.mouseClick(history.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert np.array_equal(canvas_pixels(window.canvas), original)  # a click only previews
    assert np.array_equal(document.image, candidates[0])
    qtbot.mouseDClick(
        history.viewport(),
        Qt.MouseButton.LeftButton,
        pos=history.visualItemRect(history.items[min(document.history)]).center(),
    )
    assert np.array_equal(document.image, original)
    document.undo_stack.undo()
    assert np.array_equal(document.image, candidates[0])


def test_errors_are_messages_not_crashes(window, tmp_path):
    before = window.document
    assert window.session.generate() is None  # no rectangle yet
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert not window.open_path(bad)
    assert window.document is before
    assert any("rectangle" in e for e in window.errors)
    assert any("broken.png" in e for e in window.errors)
    window.session.handle(messages.LoadFailed("model bundle x: bad header"))
    assert "bad header" in window.errors[-1]


def test_open_image_and_project_and_swap_rebinds(window, tmp_path):
    image = picture(40, 30, seed=5)
    path = tmp_path / "in.png"
    QImage(to_qimage(image)).save(str(path))
    assert window.open_path(path)
    assert np.array_equal(window.document.image, image)
    old = window.document
    window._save_to(str(tmp_path / "p.dstudio"))
    assert window.open_path(tmp_path / "p.dstudio")
    assert window.document is not old
    old.set_cell((0, 0))  # the old document no longer drives the views
    assert window.document.cell is None
    assert str(tmp_path / "p.dstudio") in window.recent.paths()


def test_a_reopened_project_shows_its_last_caption_and_an_image_keeps_the_typed_one(
    window, tmp_path
):
    document = window.document
    document.remember_caption("a red circle")
    document.remember_caption("a blue square above a green star")
    assert window._save_to(str(tmp_path / "p.dstudio"))
    window.caption.caption.setText("something typed since")
    assert window.open_path(tmp_path / "p.dstudio")
    assert window.caption.caption.text() == "a blue square above a green star"
    assert window.session.caption == "a blue square above a green star"
    image = tmp_path / "in.png"
    QImage(to_qimage(picture(40, 30, seed=5))).save(str(image))
    window.caption.caption.setText("a yellow cross")
    assert window.open_path(image)  # a picture has no captions of its own
    assert window.caption.caption.text() == "a yellow cross"


def test_model_loads_on_the_worker_after_the_window_is_up(qtbot, tmp_path):
    bundle_path = tiny_bundle_file(tmp_path)
    engine = Engine()
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    win.ask_before_close = False
    qtbot.addWidget(win)
    win.show()
    try:
        with qtbot.waitSignal(engine.message, timeout=20_000):
            win.session.load(str(bundle_path), "cpu")
        assert "tiny test bundle" in win.model_label.text()
        assert "cpu" in win.device_label.text()
        assert win.caption.examples.menu().actions()
    finally:
        engine.shutdown()


def test_recovery_is_offered_and_restores_the_autosave(window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    stage(window.document, 1)
    window.document.accept_candidate()
    kept = window.document.image.copy()
    window.autosave()
    window.session.set_document(Document(picture(seed=99)))
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    window.offer_recovery()
    assert np.array_equal(window.document.image, kept)
    assert len(window.document.history) == 2
    assert window.document.modified  # recovered work is not saved anywhere yet


def test_switching_documents_mid_generation_drops_the_job(window, qtbot):
    document = window.document
    document.set_cell((0, 0))
    window.caption.caption.setText("x")
    assert window.session.generate() is not None
    window.session.set_document(Document(picture(seed=3)))
    assert window.session.job is None and not document.generating
    qtbot.wait(200)
    assert not window.document.candidates


def test_settings_dialog_shows_the_bundle_card(qtbot, tmp_path):
    from studio.widgets.settings import SettingsDialog

    path = tiny_bundle_file(tmp_path)
    dialog = SettingsDialog("cpu", str(path))
    qtbot.addWidget(dialog)
    assert "tiny test bundle" in dialog.card.toPlainText()
    assert dialog.values() == ("cpu", str(path))
    assert dialog.speed() == ("auto", False)
    dialog.bundle.setText(str(tmp_path / "missing.dalle.safetensors"))
    assert "Cannot read" in dialog.card.toPlainText()


def test_speed_settings_reach_the_engine_and_a_bad_saved_value_falls_back(qtbot, tmp_path):
    from studio.widgets.settings import SettingsDialog

    dialog = SettingsDialog("cpu", "", precision="int8", compile=True)
    qtbot.addWidget(dialog)
    assert dialog.speed() == ("int8", True)
    dialog.precision.setCurrentText("fp32")
    dialog.compile.setChecked(False)
    assert dialog.speed() == ("fp32", False)

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("precision", "bf16")
    settings.setValue("compile", True)
    engine = Engine()
    window = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    qtbot.addWidget(window)
    assert (engine.precision, engine.compile) == ("bf16", True)
    settings.setValue("precision", "fp8")  # a hand-edited settings file
    window.apply_speed_settings()
    assert (engine.precision, engine.compile) == ("auto", True)
    window.ask_before_close = False
    engine.shutdown()


def test_caption_history_walks_with_alt_up_down(window, qtbot):
    edit = window.caption.caption
    edit.set_history(["first", "second"])
    alt = Qt.KeyboardModifier.AltModifier
    qtbot.keyClick(edit, Qt.Key.Key_Up, alt)
    assert edit.text() == "second"
    qtbot.keyClick(edit, Qt.Key.Key_Up, alt)
    assert edit.text() == "first"
    qtbot.keyClick(edit, Qt.Key.Key_Down, alt)
    qtbot.keyClick(edit, Qt.Key.Key_Down, alt)
    assert edit.text() == ""


def test_caption_box_shows_a_long_caption_whole_and_enter_generates(window, qtbot):
    from PySide6.QtCore import QMimeData

    edit = window.caption.caption
    caption = "a drawing of a pink square at the bottom left with an orange background"
    edit.setText(caption)
    edit.document().adjustSize()
    assert edit.verticalScrollBar().maximum() == 0  # every word is in view
    assert edit.text() == caption
    edit.clear()
    mime = QMimeData()
    mime.setText("a red circle\non the left\n")
    edit.insertFromMimeData(mime)
    assert edit.text() == "a red circle on the left"  # a caption is one line
    with qtbot.waitSignal(window.caption.generate_refused, timeout=1000):  # no rectangle yet
        qtbot.keyClick(edit, Qt.Key.Key_Return)
    window.document.set_cell((1, 1))
    with qtbot.waitSignal(window.caption.generate_requested, timeout=1000):
        qtbot.keyClick(edit, Qt.Key.Key_Return)
    window.session.cancel()
    assert edit.text() == "a red circle on the left"


def test_caption_box_counts_tokens_and_says_what_a_long_caption_loses(window):
    tiny = tiny_bundle()  # 12 text positions
    window.session.handle(
        messages.Loaded("tiny", "cpu", "tiny", {}, 32, 8, "fp32", tokenizer=tiny.tokenizer)
    )
    panel = window.caption
    panel.caption.setText("a red circle")
    assert panel.tokens.text() == f"{tiny.tokenizer.length('a red circle')} / 12 tokens"
    long = "a red circle in the top left and a blue square in the bottom right on a gray field"
    panel.caption.setText(long)
    count = tiny.tokenizer.length(long)
    assert count > 12
    text = panel.tokens.text()
    assert text.startswith(f"{count} / 12 tokens: the model reads up to")
    last_word = tiny.tokenizer.kept(long).split()[-1]
    assert last_word in text and "field" not in text
    window.session.handle(messages.Loaded("tiny", "cpu", "tiny", {}, 32, 8, "fp32"))
    assert panel.tokens.text() == ""  # no tokenizer, no count


def test_middle_button_pans(window, qtbot):
    canvas = window.canvas
    canvas.set_zoom(40.0)
    bar = canvas.horizontalScrollBar()
    assert bar.maximum() > 0
    bar.setValue(bar.maximum() // 2)
    before = bar.value()
    viewport = canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.MiddleButton, pos=QPoint(100, 100))
    qtbot.mouseMove(viewport, QPoint(160, 100))
    qtbot.mouseRelease(viewport, Qt.MouseButton.MiddleButton, pos=QPoint(160, 100))
    assert bar.value() < before
    assert window.document.cell is None  # panning does not move the rectangle


def test_paste_and_drop_open_images(window, qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDropEvent, QGuiApplication

    image = picture(30, 20, seed=7)
    QGuiApplication.clipboard().setImage(to_qimage(image))
    window.paste_image()
    assert np.array_equal(window.document.image, image)
    path = tmp_path / "dropped.png"
    other = picture(24, 24, seed=8)
    to_qimage(other).save(str(path))
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        data,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    assert np.array_equal(window.document.image, other)


def test_compiling_and_converting_messages_explain_the_wait(window):
    session = window.session
    session.job = messages.Job(image=picture(), cell=(0, 0), caption="x", id=99)  # in flight
    session.handle(messages.Compiling(98, 4))  # another job's: ignored
    assert "compiling" not in window.progress_label.text()
    session.handle(messages.Compiling(99, 4))
    assert "compiling the model for 4 rows" in window.progress_label.text()
    session.handle(messages.Converting(99, "int8"))
    assert "converting the model to int8" in window.progress_label.text()
    session.job = None


def test_selected_thumbnails_are_not_tinted(qtbot):
    """A selected candidate or history entry shows its true colours: Qt's default Selected icon
    blends in the highlight colour, which would misstate the very colours an artist compares."""
    from PySide6.QtGui import QIcon

    from studio.widgets.candidates import THUMBNAIL, thumbnail

    icon = thumbnail(picture(seed=3))
    normal = qimage_to_array(icon.pixmap(THUMBNAIL, QIcon.Mode.Normal).toImage())
    selected = qimage_to_array(icon.pixmap(THUMBNAIL, QIcon.Mode.Selected).toImage())
    assert normal.shape == selected.shape
    assert np.array_equal(normal, selected)


def test_the_rectangle_tint_leaves_candidates_in_their_true_colours(window, qtbot):
    gray = np.full((64, 96, 3), 200, np.uint8)
    window.session.set_document(Document(gray))
    document, canvas = window.document, window.canvas
    document.set_cell((0, 0))  # the whole image

    def centre_pixel() -> tuple[int, int, int]:
        canvas.viewport().repaint()
        point = canvas.mapFromScene(QPointF(document.width * 0.6, document.height * 0.6))
        color = canvas.viewport().grab().toImage().pixelColor(point)
        return color.red(), color.green(), color.blue()

    assert centre_pixel() != (200, 200, 200)  # the marked region of the image itself is tinted
    document.set_candidates([gray.copy()])
    assert centre_pixel() == (200, 200, 200)


# -- issue 15 ---------------------------------------------------------------------------------


def new_window(qtbot, tmp_path, bundle, document: Document | None = None) -> MainWindow:
    engine = Engine()
    engine.set_bundle(bundle)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    if document is not None:
        win.session.set_document(document)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    return win


def answer(monkeypatch, button) -> list[str]:
    """Make every QMessageBox.question answer ``button``; returns the questions asked."""
    from PySide6.QtWidgets import QMessageBox

    asked = []

    def question(parent, title, text, *args, **kwargs):
        asked.append(text)
        return button

    monkeypatch.setattr(QMessageBox, "question", question)
    return asked


def test_recovered_work_is_unsaved_and_its_autosave_stays_until_saved_or_discarded(
    window, qtbot, tmp_path, monkeypatch, default_or_tiny_bundle
):
    from PySide6.QtWidgets import QMessageBox

    stage(window.document, 1)
    window.document.accept_candidate()
    saved = str(tmp_path / "work.dstudio")
    assert window._save_to(saved)
    window.document.set_starred(window.document.current_entry, True)
    window.autosave()
    kept = window.document.image.copy()
    autosave = tmp_path / "autosave.dstudio"
    assert autosave.exists()
    window.autosave_timer.stop()  # the app "crashes": nothing clears the autosave

    after_crash = new_window(qtbot, tmp_path, default_or_tiny_bundle)
    answer(monkeypatch, QMessageBox.StandardButton.Yes)
    after_crash.offer_recovery()
    document = after_crash.document
    assert np.array_equal(document.image, kept)
    assert document.path == saved and document.modified
    assert after_crash.windowTitle().startswith("work.dstudio*")
    assert autosave.exists()  # still there until the work is saved or discarded
    asked = answer(monkeypatch, QMessageBox.StandardButton.Cancel)
    after_crash.close()
    assert asked and after_crash.isVisible() and autosave.exists()  # Ctrl+Q asks first
    answer(monkeypatch, QMessageBox.StandardButton.Discard)
    after_crash.close()
    assert not after_crash.isVisible() and not autosave.exists()

    window.document.set_starred(window.document.current_entry, False)  # more work, autosaved
    window.autosave()
    assert autosave.exists()
    assert window._save_to(saved)
    assert not autosave.exists()


def test_declining_recovery_discards_the_autosave_and_nothing_overwrites_it_before(
    qtbot, tmp_path, monkeypatch, default_or_tiny_bundle
):
    from PySide6.QtWidgets import QMessageBox

    from studio import project

    work = Document(picture(seed=4))
    work.mark_modified()
    project.autosave(work, tmp_path)
    before = (tmp_path / "autosave.dstudio").read_bytes()
    window = new_window(qtbot, tmp_path, default_or_tiny_bundle)
    window.document.mark_modified()
    window.autosave()  # the timer fires while the recovery question is still open
    assert (tmp_path / "autosave.dstudio").read_bytes() == before
    answer(monkeypatch, QMessageBox.StandardButton.No)
    window.offer_recovery()
    assert not (tmp_path / "autosave.dstudio").exists()
    window.ask_before_close = False


def test_a_corrupt_autosave_is_set_aside_said_once_and_the_app_goes_on(
    qtbot, tmp_path, monkeypatch, default_or_tiny_bundle
):
    from PySide6.QtWidgets import QMessageBox

    (tmp_path / "autosave.dstudio").write_bytes(b"PK\x03\x04 half a zip")
    window = new_window(qtbot, tmp_path, default_or_tiny_bundle)
    document, pixels = window.document, window.document.image.copy()
    asked = answer(monkeypatch, QMessageBox.StandardButton.Yes)
    window.offer_recovery()
    assert len(window.errors) == 1 and "\n" not in window.errors[0]
    aside = [p.name for p in tmp_path.glob("autosave-corrupt-*.dstudio")]
    assert len(aside) == 1 and aside[0] in window.errors[0]
    assert not (tmp_path / "autosave.dstudio").exists() and not asked
    assert window.document is document and np.array_equal(document.image, pixels)
    window.offer_recovery()  # the next start
    assert len(window.errors) == 1
    window.ask_before_close = False


def test_starring_or_deleting_an_entry_marks_the_project_modified(window, tmp_path):
    stage(window.document, 2)
    window.document.accept_candidate()
    assert window._save_to(str(tmp_path / "p.dstudio"))
    assert "*" not in window.windowTitle()
    window.document.set_starred(window.document.current_entry, True)
    assert window.windowTitle().startswith("p.dstudio*")
    assert window._save_to(str(tmp_path / "p.dstudio"))
    assert "*" not in window.windowTitle()
    other = next(e for e in window.document.children(min(window.document.history)))
    sibling = [e.id for e in window.document.history.values() if e.id not in (other.id,)]
    window.document.delete_entry(max(sibling))
    assert window.windowTitle().startswith("p.dstudio*")


def focus(qtbot, window, widget) -> None:
    window.activateWindow()
    widget.setFocus()
    qtbot.waitUntil(widget.hasFocus, timeout=2000)


def test_ctrl_z_acts_on_the_image_wherever_focus_is_except_while_typing_a_caption(window, qtbot):
    document, caption = window.document, window.caption.caption
    original = document.image.copy()
    control = Qt.KeyboardModifier.ControlModifier
    focus(qtbot, window, caption)
    qtbot.keyClicks(caption, "a red circle")
    candidates = stage(document, 2)  # the strip takes focus
    qtbot.keyClick(window.strip, Qt.Key.Key_Return)
    assert np.array_equal(document.image, candidates[0])
    focus(qtbot, window, caption)  # focus falls back into the caption box
    qtbot.keyClick(caption, Qt.Key.Key_Z, control)
    assert np.array_equal(document.image, original)  # the image, not the caption
    assert caption.text() == "a red circle"
    qtbot.keyClick(caption, Qt.Key.Key_Z, control | Qt.KeyboardModifier.ShiftModifier)
    assert np.array_equal(document.image, candidates[0])
    qtbot.keyClick(caption, Qt.Key.Key_Z, control)
    qtbot.keyClick(caption, Qt.Key.Key_Y, control)
    assert np.array_equal(document.image, candidates[0])
    qtbot.keyClicks(caption, " on blue")  # typing: the keys belong to the caption
    qtbot.keyClick(caption, Qt.Key.Key_Z, control)
    assert caption.text() == "a red circle"
    assert np.array_equal(document.image, candidates[0])
    spin = window.caption.candidates
    focus(qtbot, window, spin)
    qtbot.keyClick(spin, Qt.Key.Key_Z, control)
    assert np.array_equal(document.image, original)


def test_undo_and_redo_are_off_with_nothing_to_do_and_say_what_they_would_do(
    window, qtbot, tmp_path
):
    undo, redo = window.undo_action, window.redo_action
    assert not undo.isEnabled() and not redo.isEnabled()
    spin = window.caption.candidates
    focus(qtbot, window, spin)
    spin.selectAll()
    qtbot.keyClicks(spin, "3")
    assert spin.value() == 3
    qtbot.keyClick(spin, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert spin.value() == 3  # the image has nothing to undo, and the field's own undo is not it
    stage(window.document, 2)
    window.document.accept_candidate()
    assert undo.isEnabled() and undo.text() == "&Undo Accept candidate"
    assert not redo.isEnabled() and redo.text() == "&Redo"
    undo.trigger()
    assert not undo.isEnabled() and redo.isEnabled() and redo.text() == "&Redo Accept candidate"
    redo.trigger()
    assert window._save_to(str(tmp_path / "p.dstudio"))
    assert window.open_path(tmp_path / "p.dstudio")  # undo steps are not kept in a project
    assert not undo.isEnabled() and not redo.isEnabled()


def test_huge_clipboard_and_dropped_images_are_refused_before_converting(window, qtbot):
    from PySide6.QtCore import QMimeData
    from PySide6.QtGui import QDropEvent, QGuiApplication

    document, pixels = window.document, window.document.image.copy()
    huge = QImage(8000, 7000, QImage.Format.Format_Mono)  # 56 MP in 7 MB
    huge.fill(0)
    QGuiApplication.clipboard().setImage(huge)
    window.paste_image()
    data = QMimeData()
    data.setImageData(huge)
    window.dropEvent(
        QDropEvent(
            QPointF(10, 10),
            Qt.DropAction.CopyAction,
            data,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
        )
    )
    assert len(window.errors) == 2
    assert all("8000x7000" in e and "megapixels" in e and "\n" not in e for e in window.errors)
    assert window.document is document and np.array_equal(document.image, pixels)


def test_a_transparent_clipboard_image_is_composited_on_white_like_a_file(window):
    from PySide6.QtGui import QColor, QGuiApplication

    image = QImage(4, 3, QImage.Format.Format_ARGB32)
    image.fill(QColor(200, 10, 10, 0))  # fully transparent red
    QGuiApplication.clipboard().setImage(image)
    window.paste_image()
    assert np.array_equal(window.document.image, np.full((3, 4, 3), 255, np.uint8))


def test_a_decompression_bomb_png_opens_as_one_dialog(window, tmp_path):
    """A 69-byte PNG claiming 30000x30000 (model.files.open_image refuses it from its header)."""
    from tests.test_hostile_projects import png_claiming

    document = window.document
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(30000, 30000))
    assert not window.open_path(bomb)
    assert len(window.errors) == 1 and "bomb.png" in window.errors[0]
    assert "megapixels" in window.errors[0] and window.document is document


def test_accepting_clears_the_status_and_the_tint_and_the_canvas_does_not_jump(window, qtbot):
    document, canvas = window.document, window.canvas
    document.set_cell((0, 0))
    canvas.fit()
    zoom, size = canvas.zoom, canvas.viewport().size()
    window.session.handle(messages.Loaded("m", "cpu", "m", {}, 64, 4))
    candidates = [np.full_like(document.image, 200) for _ in range(2)]
    window.session.job = messages.Job(image=document.image, cell=(0, 0), caption="x", id=7)
    document.start_generation()
    window.session.handle(messages.Finished(7, candidates, 1, 0.5, 10.0))
    assert "Enter accepts" in window.progress_label.text()
    qtbot.wait(50)
    assert canvas.viewport().size() == size and canvas.zoom == pytest.approx(zoom)
    qtbot.keyClick(window.strip, Qt.Key.Key_Return)
    qtbot.wait(50)
    assert "Enter accepts" not in window.progress_label.text()
    assert canvas.viewport().size() == size and canvas.zoom == pytest.approx(zoom)
    canvas.viewport().repaint()
    point = canvas.mapFromScene(QPointF(document.width * 0.6, document.height * 0.6))
    color = canvas.viewport().grab().toImage().pixelColor(point)
    assert (color.red(), color.green(), color.blue()) == (200, 200, 200)  # no tint on a result
    document.set_cell((1, 1))  # a new region to regenerate is marked again
    canvas.viewport().repaint()
    color = canvas.viewport().grab().toImage().pixelColor(point)
    assert (color.red(), color.green(), color.blue()) != (200, 200, 200)


def test_a_drag_puts_the_corner_at_the_press_and_a_click_does_not_move_it(window, qtbot):
    canvas, document = window.canvas, window.document
    viewport = canvas.viewport()
    left = Qt.MouseButton.LeftButton
    qtbot.mousePress(viewport, left, pos=viewport_point(canvas, 41, 31))
    qtbot.mouseMove(viewport, viewport_point(canvas, 70, 50))
    assert document.cell == document.geometry.cell_at(41, 31)  # follows the drag at once
    qtbot.mouseRelease(viewport, left, pos=viewport_point(canvas, 80, 60))
    placed = document.geometry.cell_at(41, 31)
    assert document.cell == placed
    qtbot.mouseClick(viewport, left, pos=viewport_point(canvas, 10, 10))
    assert document.cell == placed  # a click is not a drag
    qtbot.mousePress(viewport, left, pos=viewport_point(canvas, 60, 50))
    qtbot.mouseMove(viewport, viewport_point(canvas, 20, 15))  # dragging up and left
    qtbot.mouseRelease(viewport, left, pos=viewport_point(canvas, 20, 15))
    assert document.cell == document.geometry.cell_at(20, 15)


def test_settings_ok_without_a_change_keeps_the_model(window, monkeypatch):
    from PySide6.QtWidgets import QDialog

    from studio.widgets import settings as settings_module

    loads = []
    monkeypatch.setattr(window.session.engine, "load", lambda *args: loads.append(args))
    monkeypatch.setattr(
        settings_module.SettingsDialog, "exec", lambda self: QDialog.DialogCode.Accepted
    )
    window.open_settings()
    assert loads == []
    monkeypatch.setattr(
        settings_module.SettingsDialog,
        "exec",
        lambda self: (self.precision.setCurrentText("fp32"), QDialog.DialogCode.Accepted)[1],
    )
    window.open_settings()
    assert loads == [] and window.session.engine.precision == "fp32"  # applies to the next run
    assert "fp32" in window.device_label.text() or "model" in window.model_label.text()
    monkeypatch.setattr(
        settings_module.SettingsDialog,
        "exec",
        lambda self: (self.device.setCurrentText("cpu"), QDialog.DialogCode.Accepted)[1],
    )
    window.settings.setValue("device", "auto")
    window.open_settings()
    assert len(loads) == 1


def test_settings_show_the_model_loaded_from_the_command_line(window, monkeypatch, tmp_path):
    """`dalle-studio --bundle X` is not written to the settings: the dialog shows X, and OK after
    a precision change keeps X rather than loading the saved (embedded) model."""
    from PySide6.QtWidgets import QDialog

    from studio.widgets import settings as settings_module

    other = str(tmp_path / "other.dalle.safetensors")
    window.session.model_state, window.session.model_path = "loaded", other
    loads, shown = [], []
    monkeypatch.setattr(window.session.engine, "load", lambda *args: loads.append(args))

    def accept(dialog):
        shown.append(dialog.bundle.text())
        dialog.precision.setCurrentText("bf16")
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(settings_module.SettingsDialog, "exec", accept)
    window.open_settings()
    assert shown == [other]
    assert loads == [] or all(other in map(str, args) for args in loads)
    assert window.settings.value("bundle") == other  # OK keeps what it showed


def test_russian_examples_come_with_their_english_glosses(window):
    """ruDALL-E's card pairs each Russian example caption with a gloss: the settings' card and
    the Examples menu show it; choosing an example puts the caption alone in the box."""
    from studio.widgets.settings import readable_card

    card = {
        "example_captions": ["рыжий кот", "зимний лес"],
        "example_glosses": ["a ginger cat", "a winter forest"],
    }
    text = readable_card(card)
    assert "  • рыжий кот (a ginger cat)" in text and "  • зимний лес (a winter forest)" in text
    uneven = readable_card({**card, "example_glosses": ["a ginger cat"]})
    assert "  • рыжий кот\n" in uneven + "\n" and "(a ginger cat)" not in uneven
    panel = window.caption
    panel.set_examples(card["example_captions"], dict(zip(*card.values(), strict=True)))
    actions = panel.examples.menu().actions()
    assert [a.text() for a in actions] == [
        "рыжий кот  —  a ginger cat",
        "зимний лес  —  a winter forest",
    ]
    actions[1].trigger()
    assert panel.caption.text() == "зимний лес"


def test_the_model_card_reads_as_text_without_the_developers_paths():
    from studio.widgets.settings import card_text

    text = card_text(str(catalog.default_bundle_path()))
    card = catalog.read_card(catalog.default_bundle_path())
    assert card["name"] in text
    assert all(caption in text for caption in card["example_captions"])
    assert "/work/" not in text and "{" not in text and '"' not in text
    assert "scenes64" in text  # the data folder's own name stays


def test_window_geometry_is_restored_at_start(qtbot, tmp_path, default_or_tiny_bundle):
    first = new_window(qtbot, tmp_path, default_or_tiny_bundle)
    first.ask_before_close = False
    first.resize(700, 500)
    first.close()
    second = new_window(qtbot, tmp_path, default_or_tiny_bundle)
    second.ask_before_close = False
    assert (second.width(), second.height()) == (700, 500)


def test_the_data_folder_is_one_level_and_an_old_autosave_is_found(tmp_path, monkeypatch):
    from studio import project

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    nested = tmp_path / "DALL-E Studio" / "DALL-E Studio"
    nested.mkdir(parents=True)
    project.autosave(Document(picture()), nested)
    assert project.data_dir() == tmp_path / "DALL-E Studio"
    assert project.pending_recovery() == tmp_path / "DALL-E Studio" / "autosave.dstudio"


def test_the_option_fields_show_and_set_the_sessions_options(window):
    panel, session = window.caption, window.session
    assert panel.top_p.text() == "off" and session.options.top_p == 1.0
    panel.top_p.setValue(0.9)
    panel.top_k.setValue(40)
    panel.candidates.setValue(2)
    assert (session.options.top_p, session.options.top_k, session.options.n) == (0.9, 40, 2)
    session.set_options(top_p=0.5, temperature=0.75, seed=99)
    assert panel.top_p.value() == 0.5 and panel.seed.value() == 99
    assert panel.temperature.value() == pytest.approx(0.75)
    panel.seed_mode.setCurrentText("increment")
    assert session.seed_mode == "increment"
    session.set_caption("a green triangle")
    assert panel.caption.text() == "a green triangle"
    panel.caption.setText("a red circle")
    assert session.caption == "a red circle"
