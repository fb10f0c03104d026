"""The window from a new user's side (issue 28): it fits the screen, Generate is off with a
reason instead of a dialog, Export suggests a name, Help › About says what and whose it is, a
job's phases show with an honest ETA, and a photo on the image-to-image canvas is said to be far
from what the model knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import QFileDialog

from model import bundle as bundle_io
from studio import engine as messages
from studio import naming
from studio.engine import Engine, Job
from studio.familiarity_hint import FAR_HINT
from studio.session import Session, phase_text
from studio.widgets import about
from studio.widgets.main_window import MainWindow
from tests.test_widgets import default_or_tiny_bundle as default_or_tiny_bundle  # fixtures
from tests.test_widgets import picture
from tests.test_widgets import window as window

ROOT = Path(__file__).resolve().parent.parent


def test_the_first_window_fits_the_available_screen(qtbot, tmp_path, default_or_tiny_bundle):
    engine = Engine()
    engine.set_bundle(default_or_tiny_bundle)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)  # no saved geometry
    qtbot.addWidget(win)
    area = (win.screen() or QGuiApplication.primaryScreen()).availableGeometry()
    assert area.height() < 820 or area.width() < 1280, "a screen smaller than the old size"
    assert win.width() <= area.width() and win.height() <= area.height()
    assert area.contains(win.geometry())
    engine.shutdown()


def test_generate_is_off_with_a_reason_until_a_rectangle_is_drawn(window, qtbot):
    document = window.document
    assert document.cell is None
    action, button = window.generate_action, window.caption.generate
    assert not action.isEnabled() and not button.isEnabled()
    assert "drag on the image" in action.toolTip() and action.toolTip() == button.toolTip()
    action.trigger()  # Ctrl+Enter on a disabled action: nothing, and above all no dialog
    window._show_hint("a hint holding the status line")
    window.caption.caption.setFocus()
    qtbot.keyClick(window.caption.caption, Qt.Key.Key_Return)  # Enter says why, in the line
    assert window.errors == []
    assert window.progress_label.isVisible() and "drag on the image" in window.progress_label.text()
    document.set_cell((1, 1))
    assert action.isEnabled() and button.isEnabled()
    assert "drag" not in button.toolTip()
    document.set_cell(None)
    assert not action.isEnabled()


def test_export_suggests_the_caption_and_seed_as_the_name(window, monkeypatch, tmp_path):
    asked = []

    def save_name(parent, title, suggested, *args, **kwargs):
        asked.append(suggested)
        return "", ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_name)
    document = window.document
    document.source_path = str(tmp_path / "Holiday Photo.JPG")
    window.export_png()
    assert Path(asked[-1]).name == "holiday-photo.png"  # the unchanged original
    document.set_cell((1, 1))
    document.start_generation()
    candidates = [picture(seed=1), picture(seed=2)]
    document.finish_generation(candidates, "A red circle, on grass!", (1, 1), 1234, None)
    document.accept_candidate()
    window.export_png()
    assert Path(asked[-1]).name == "a-red-circle-on-grass-seed-1234.png"
    window.export_entry(document.candidate_entries[0] if document.candidate_entries else 2)
    assert Path(asked[-1]).name.endswith("-seed-1234.png")
    assert naming.slug("Кот на крыше / at night") == "кот-на-крыше-at-night"
    assert naming.slug("x" * 200) == "x" * naming.MAX_SLUG


def test_help_about_says_version_model_licences_and_opens_the_logs(window, qtbot, monkeypatch):
    titles = [action.text() for action in window.menuBar().actions()]
    assert titles[-1] == "&Help"
    item = window.menuBar().actions()[-1].menu().actions()[0]
    assert item.text().startswith("&About")
    session = window.session
    session.handle(
        messages.Loaded(
            "m.dalle.safetensors",
            "cpu",
            "scenes 64px",
            {"description": "a small model", "eval": {"headline": {"psnr_db": 30.25}}},
            32,
            8,
        )
    )
    item.trigger()
    dialog = window.findChild(about.AboutDialog)
    assert dialog is not None and dialog.isVisible()
    shown = dialog.label.text()
    for words in (
        f"DALL·E Studio {about.version()}",
        "Model: scenes 64px",
        "a small model",
        "tokenizer PSNR 30.2 dB",
        "DALL·E Studio: MIT",
        "LGPL-3.0",
        "PyTorch: BSD-3-Clause",
        "Real-ESRGAN realesr-animevideov3 (Xintao Wang et al.): BSD-3-Clause",
        str(about.logs_folder(window.autosave_folder)),
    ):
        assert words in shown, words
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    dialog.open_logs.click()
    assert opened == [QUrl.fromLocalFile(str(about.logs_folder(window.autosave_folder)))]
    assert about.logs_folder(window.autosave_folder).is_dir()
    dialog.close()


def test_main_window_did_not_grow():
    lines = (ROOT / "studio/widgets/main_window.py").read_text().count("\n")
    # issue 28 moved menus, status and About beside it; issue 29 its file actions
    assert lines < 600


def test_a_photo_on_the_image_to_image_canvas_is_far(qtbot, tmp_path):
    from benchmarks.familiarity import sky_and_hills

    path = ROOT / "resources/models/default.dalle.safetensors"
    if not path.exists():
        pytest.skip(f"{path.name} is not installed")
    engine = Engine()
    engine.set_bundle(bundle_io.load(path))
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    win.ask_before_close = False
    qtbot.addWidget(win)
    win.show()
    photo = tmp_path / "sky.png"
    sky_and_hills().save(photo)
    try:
        assert win.open_image_to_image(photo)
        qtbot.waitUntil(win.hint_label.isVisible, timeout=60_000)
        assert win.hint_label.text() == FAR_HINT
    finally:
        engine.shutdown()


def test_the_measured_content_leaves_the_paper_out():
    from studio.familiarity_hint import content

    canvas = np.full((100, 100, 3), 255, np.uint8)
    canvas[10:30, 20:70] = 7
    assert content(canvas).shape == (20, 50, 3)
    blank = np.full((8, 8, 3), 255, np.uint8)
    assert content(blank).shape == (8, 8, 3)


def test_the_session_says_each_phase_and_the_bar_follows(window, qtbot):
    session = window.session
    job = Job(image=window.document.image, cell=(1, 1), caption="x")
    session.job = job
    job.id = 7
    window.document.start_generation()
    session.handle(messages.Phase(7, "encoding"))
    assert window.progress_label.text() == "Encoding the picture…"
    assert window.progress.maximum() == 0  # busy: no 0 % while it encodes
    session.handle(messages.RowDecoded(7, None, 2, 2, 9.0, 51.0))
    assert window.progress_label.text() == "Sampling row 2/2 · 9 tokens/s · ETA 51 s"
    session.handle(messages.Phase(7, "decoding", eta_s=30.0))
    assert window.progress_label.text() == "Decoding the candidates… · ETA 30 s"
    assert window.progress.maximum() == 0  # no 100 % while it decodes
    session.handle(messages.Phase(7, "pasting", 1, 4, 12.0))
    assert window.progress_label.text() == "Pasting candidate 2 of 4 into the picture… · ETA 12 s"
    assert (window.progress.value(), window.progress.maximum()) == (1, 4)
    assert phase_text(messages.Phase(7, "reading")) == "Reading the picture…"


def test_the_rectangle_eta_is_the_last_runs_pace_and_overhead(window):
    session: Session = window.session
    window.document.set_cell((1, 1))
    cells = window.document.masked_cells
    assert "ETA" not in window.canvas.rectangle_label()  # no run measured yet
    session.record_speed(100.0, 4, seconds_per_cell=0.5, overhead_s=20.0)
    assert window.canvas.rectangle_label().endswith(f"ETA ~{20 + 0.5 * cells:.0f} s")
    session.record_speed(100.0, 4, seconds_per_cell=0.1, overhead_s=2.0)  # the next run
    assert window.canvas.rectangle_label().endswith(f"ETA ~{2 + 0.1 * cells:.0f} s")
