"""PySide6 6.12.0 on Python < 3.12 takes a reference to None on every void call and to True on every
``Signal.emit``; the app keeps them alive (``studio.qt_references``) instead of aborting with
"Fatal Python error: none_dealloc".

The app's own entry point runs in a fresh process (a second QApplication in one process aborts):
its ``--selftest`` with the engine loading the bundle on its worker thread while the Qt thread
runs Python in a ``processEvents()`` loop, as a kill test once did, then one completion.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.qt_references import ReferenceKeeper
from tests.helpers import tiny_bundle_file

ROOT = Path(__file__).resolve().parent.parent
# More calls than None (about 110,000 references with the model loaded) and True (about 26,000)
# have references: without the keeper, the process dies long before the loop ends.
CALLS = 400_000

SCRIPT = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal
from studio import app as studio_app

bundle, folder, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
selftest = studio_app.selftest


class Pinger(QObject):
    pinged = Signal()


async def selftest_after_busy_loading(window, bundle, device, folder):
    session = window.session
    session.load(bundle, device)  # torch's lazy imports on the engine's thread...
    pinger = Pinger()
    done = 0
    while done < calls or session.model_state == "loading":  # ...while this one loops
        QCoreApplication.processEvents()  # returns None
        pinger.pinged.emit()  # returns True
        done += 1
    print("looped", done, flush=True)
    return await selftest(window, bundle, device, folder)


studio_app.selftest = selftest_after_busy_loading
argv = ["--selftest", "--bundle", bundle, "--device", "cpu", "--selftest-dir", folder]
sys.exit(studio_app.main(argv))
"""


def test_app_outlives_a_process_events_loop_while_the_engine_loads(tmp_path):
    bundle, out = tiny_bundle_file(tmp_path), tmp_path / "out"
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", SCRIPT, str(bundle), str(out), str(CALLS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    looped = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("looped")]
    assert looped and int(looped[0]) >= CALLS
    assert "selftest: OK" in result.stdout


# a little slack: the test's own frames and ctypes' converters hold a few references too
SLACK = 16
DECREF = ctypes.pythonapi.Py_DecRef
DECREF.argtypes, DECREF.restype = [ctypes.py_object], None


def _drop(value, times: int) -> None:
    """Take ``times`` references to ``value`` away, as a PySide6 void call or emit does."""
    for _ in range(times):
        DECREF(value)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None, True and False are immortal")
def test_keeper_gives_back_every_reference_taken():
    keeper = ReferenceKeeper(["None", "True"], headroom=1_000, period_s=60)
    none_held, true_held = sys.getrefcount(None), sys.getrefcount(True)
    _drop(None, 700)
    _drop(True, 300)
    assert abs(sys.getrefcount(None) - (none_held - 700)) <= SLACK
    assert abs(sys.getrefcount(True) - (true_held - 300)) <= SLACK
    assert abs(keeper.top_up() - 1_000) <= SLACK
    assert sys.getrefcount(None) >= none_held - SLACK
    assert sys.getrefcount(True) >= true_held - SLACK
    assert keeper.top_up() <= SLACK  # nothing taken since
    _drop(None, 5_000)  # more than the reserve held: given back all the same
    assert abs(keeper.top_up() - 5_000) <= SLACK
    assert sys.getrefcount(None) >= none_held - SLACK
