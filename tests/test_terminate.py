"""SIGTERM (a logout, a shutdown, a `kill`) ends the studio without losing work or leaving files.

Each case runs a window in a fresh process (a second QApplication in one process aborts) with the
handler the app installs, sends the process SIGTERM and checks what is left on disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from studio import project

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCRIPT = """
import os, signal, sys, zipfile
from pathlib import Path
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

app = QApplication([])
from studio import app as studio_app
from studio.engine import Engine
from studio.session import Session
from studio.widgets.main_window import MainWindow

folder, case = Path(sys.argv[1]), sys.argv[2]
engine = Engine()
settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
window = MainWindow(Session(engine), settings, folder)
studio_app.end_gracefully_on_sigterm(window)
app.lastWindowClosed.connect(app.quit)
window.show()
window.offer_recovery()
window.document.remember_caption("a caption the user typed")  # unsaved work
original = zipfile.ZipFile.writestr

def writestr_then_terminate(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the save
    return original(self, *args, **kwargs)

def act():
    if case == "idle":
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        zipfile.ZipFile.writestr = writestr_then_terminate
        window._save_to(str(folder / "work.dstudio"))
        zipfile.ZipFile.writestr = original

QTimer.singleShot(300, act)
QTimer.singleShot(20_000, lambda: app.exit(3))  # the handler never ran
code = app.exec()
engine.shutdown()
sys.exit(code)
"""


def run_case(folder: Path, case: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), case],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sigterm_keeps_unsaved_work_for_recovery(tmp_path):
    result = run_case(tmp_path, "idle")
    assert result.returncode == 0, result.stderr[-2000:]
    autosave = project.pending_recovery(tmp_path)
    assert autosave is not None, "the unsaved work is gone"
    recovered = project.recover(tmp_path)
    assert recovered.caption_history == ["a caption the user typed"]
    assert recovered.modified
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_sigterm_during_a_save_lets_the_save_finish_and_leaves_no_temporary_file(tmp_path):
    result = run_case(tmp_path, "save")
    assert result.returncode == 0, result.stderr[-2000:]
    saved = tmp_path / "work.dstudio"
    with zipfile.ZipFile(saved) as archive:
        assert archive.testzip() is None
    document = project.load(saved)
    assert document.caption_history == ["a caption the user typed"]
    assert np.array_equal(document.image, np.full((256, 256, 3), 255, np.uint8))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    # saved before the session ended: nothing is left to recover
    assert project.pending_recovery(tmp_path) is None
