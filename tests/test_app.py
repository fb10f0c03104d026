"""The whole app in a subprocess: ``--selftest`` (a second QApplication in-process would abort)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from studio.catalog import default_bundle_path
from tests.helpers import tiny_bundle_file

ROOT = Path(__file__).resolve().parent.parent


def test_selftest_runs_one_completion_and_saves(tmp_path):
    default = default_bundle_path()
    bundle = default if default.exists() else tiny_bundle_file(tmp_path)
    out = tmp_path / "out"
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        OMP_NUM_THREADS="2",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio.app",
            "--selftest",
            "--bundle",
            str(bundle),
            "--device",
            "cpu",
            "--selftest-dir",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "selftest: OK" in result.stdout
    assert (out / "selftest.png").stat().st_size > 1000
    with zipfile.ZipFile(out / "selftest.dstudio") as archive:
        assert "manifest.json" in archive.namelist()


def test_missing_bundle_fails_with_a_message(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "studio.app",
            "--selftest",
            "--device",
            "cpu",
            "--bundle",
            str(tmp_path / "nothing.dalle.safetensors"),
            "--selftest-dir",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "nothing.dalle.safetensors" in result.stderr


QUIT_AFTER_SETTINGS = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

app = QApplication(sys.argv[:1])
from studio import app as studio_app
from studio.widgets.main_window import MainWindow

accept = sys.argv[1] == "ok"


def answer():
    dialog = app.activeModalWidget()
    if dialog is None:
        QTimer.singleShot(20, answer)
        return
    dialog.accept() if accept else dialog.reject()


def drive():
    windows = [w for w in app.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
    if not windows:  # the timer may come due while the app still imports torch
        QTimer.singleShot(50, drive)
        return
    window = windows[0]
    QTimer.singleShot(50, answer)
    window.open_settings()
    QTimer.singleShot(200, window.close)  # Ctrl+Q


QTimer.singleShot(300, drive)
sys.exit(studio_app.main(["--device", "cpu", "--bundle", sys.argv[2]]))
"""


def test_quitting_after_the_settings_dialog_exits_cleanly(tmp_path):
    """Settings (OK or Cancel) then Ctrl+Q once ended in 'shared QObject was deleted directly',
    heap corruption and exit 134, in 5 of 6 tries: run it several times, each in a fresh app."""
    bundle = tiny_bundle_file(tmp_path)
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        OMP_NUM_THREADS="1",
    )
    for choice in ("ok", "cancel", "ok", "cancel"):
        result = subprocess.run(
            [sys.executable, "-c", QUIT_AFTER_SETTINGS, choice, str(bundle)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (choice, result.returncode, result.stderr[-2000:])
        assert "deleted directly" not in result.stderr
