"""Kill -9 at random moments of a scripted studio session; recovery keeps every decision made.

Issue 28's must-show: the real window, session and engine (offscreen, a tiny model) in a fresh
process run generate, accept, star, delete and now and then the minute's whole autosave, in a
loop. The script prints one line after each action has returned ("accepted 7 <sha256>"), so a
line the test reads is a decision the user saw made. The test sends SIGKILL at a random moment,
then recovers the autosave and its journal (``studio.autosave.recover``) in this process and
checks each printed decision: every generated entry not deleted is there with the same pixels,
every accepted one is there, accepted, with the same pixels, every star is set, every deleted
entry is gone; the recovered work also saves and loads as a valid project. 20 kills.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from studio import autosave, project
from tests.helpers import tiny_bundle_file

ROOT = Path(__file__).resolve().parent.parent
KILLS = 20
PARALLEL = 2  # sessions at once
MOST_LINES = 30  # the kill comes after up to this many decisions...
LONGEST_S = 0.5  # ...and up to this long after the last of them
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SCRIPT = """
import asyncio, hashlib, os, random, sys
from pathlib import Path
import numpy as np
os.environ["QT_API"] = "pyside6"
import qasync
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from model.bundle import load
from model.config import SamplingOptions
from model.inference.sampling import generate
from studio.document import Document
from studio.engine import Engine
from studio.session import Session
from studio.widgets.main_window import MainWindow

folder, bundle, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
app = QApplication([])

def say(*words):
    print(*words, flush=True)

def digest(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()

async def until(condition):
    while not condition():
        await asyncio.sleep(0.005)

async def main():
    engine = Engine()
    settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(Session(engine), settings, folder)
    window.autosave_timer.stop()  # the minute's autosave comes at random below instead
    window.show()
    session = window.session
    # loaded and sampled once on this thread: torch's lazy imports on the engine's thread
    # can abort in PySide6's import hook ("none_dealloc") while the loop runs
    model = load(bundle)
    for _ in generate(model, "a red circle", SamplingOptions(n=1)):
        pass
    engine.set_bundle(model)
    picture = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    session.set_document(Document(picture))
    document = window.document
    document.set_model_geometry(engine.geometry_size, engine.geometry_factor)
    document.set_rectangle_from_pixel(32, 24)
    session.set_caption("a red circle in the top left")
    window.caption.candidates.setValue(3)
    say("ready")
    while True:
        if session.generate() is None:
            say("could not generate", window.errors)
            sys.exit(4)
        await until(lambda: not document.generating and document.candidates)
        made = list(document.candidate_entries)
        for entry_id in made:
            say("generated", entry_id, digest(document.history[entry_id].image))
        document.select_candidate(rng.randrange(len(made)))
        chosen = made[document.candidate_index]
        document.accept_candidate()
        say("accepted", chosen, digest(document.history[chosen].image))
        others = [entry_id for entry_id in made if entry_id != chosen]
        star = rng.choice(others + [chosen])
        document.set_starred(star, True)
        say("starred", star)
        doomed = [entry_id for entry_id in others if entry_id != star]
        document.delete_entry(doomed[0])
        say("deleted", doomed[0])
        if rng.random() < 0.3:
            window.autosave()
            say("autosaved")

if sys.version_info >= (3, 12):
    asyncio.run(main(), loop_factory=qasync.QEventLoop)
else:
    qasync.run(main())
"""


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def killed_session(folder: Path, bundle: Path, seed: int) -> list[list[str]]:
    """Run the script and SIGKILL it at a random moment: after a random number of its lines
    (0 to ``MOST_LINES``: anywhere in the session, however fast the machine) and a random
    delay up to ``LONGEST_S`` (anywhere inside an action). Its printed lines."""
    folder.mkdir()
    rng = random.Random(seed)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(folder), str(bundle), str(seed)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline()]
        assert lines[0].strip() == "ready", lines[0] + process.stderr.read()[-3000:]
        for _ in range(rng.randrange(MOST_LINES + 1)):
            lines.append(process.stdout.readline())
        time.sleep(rng.uniform(0, LONGEST_S))
        process.send_signal(signal.SIGKILL)
        out = process.stdout.read()  # through the same buffer as readline (not communicate)
        err = process.stderr.read()
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    (folder / "session.log").write_text(f"seed {seed}\n{out}\n--- stderr\n{err}")  # for a failure
    lines = [line.split() for line in "".join(lines[1:]).splitlines() + out.splitlines()]
    assert all(words[0] in ("generated", "accepted", "starred", "deleted", "autosaved")
               for words in lines), out  # fmt: skip
    return lines


def deleting(lines: list[list[str]]) -> int | None:
    """The entry the script was deleting when the kill came (it prints "starred S", then
    deletes the first of the round's candidates neither accepted nor starred): that delete may
    have been made durable before its line was printed, so the entry may be gone or not."""
    if not lines or lines[-1][0] != "starred":
        return None
    last_accept = max(i for i, words in enumerate(lines) if words[0] == "accepted")
    made = []
    for words in reversed(lines[:last_accept]):
        if words[0] != "generated":
            break
        made.insert(0, int(words[1]))
    chosen, star = int(lines[last_accept][1]), int(lines[-1][1])
    return next(e for e in made if e not in (chosen, star))


def check_recovery(folder: Path, lines: list[list[str]]) -> int:
    """Every printed decision in the recovered work; the number of decisions checked."""
    generated = {int(w[1]): w[2] for w in lines if w[0] == "generated"}
    accepted = {int(w[1]): w[2] for w in lines if w[0] == "accepted"}
    starred = {int(w[1]) for w in lines if w[0] == "starred"}
    deleted = {int(w[1]) for w in lines if w[0] == "deleted"}
    in_flight = deleting(lines)
    recovered = autosave.recover(folder)
    if recovered is None:
        assert not lines, "decisions were made, but there is nothing to recover"
        return 0
    document, info = recovered
    history = document.history
    for entry_id, sha in generated.items():
        if entry_id not in deleted and entry_id != in_flight:
            assert entry_id in history, f"generated entry {entry_id} lost"
            assert digest(history[entry_id].image) == sha, f"entry {entry_id}'s pixels differ"
    for entry_id, sha in accepted.items():
        assert entry_id in history and history[entry_id].accepted, f"accepted {entry_id} lost"
        assert digest(history[entry_id].image) == sha, f"accepted {entry_id}'s pixels differ"
    for entry_id in starred:
        assert entry_id in history and history[entry_id].starred, f"star on {entry_id} lost"
    for entry_id in deleted:
        assert entry_id not in history, f"deleted entry {entry_id} is back"
    if accepted and lines[-1][0] in ("accepted", "starred", "deleted"):
        # nothing after the last accept changed the image (a new generation had not finished)
        last = max(accepted, key=lambda i: [w[:2] for w in lines].index(["accepted", str(i)]))
        assert digest(document.image) == accepted[last]
    assert info.stars >= len(starred - deleted) and info.accepted >= len(accepted)
    saved = project.save(document, folder / "recovered.dstudio")
    assert len(project.load(saved).history) == len(history)  # a valid project
    return len(generated) + len(accepted) + len(starred) + len(deleted)


def test_kill_9_at_random_moments_loses_no_accepted_candidate_or_star(tmp_path, capsys):
    bundle = tiny_bundle_file(tmp_path)
    seeds = [random.randrange(2**31) for _ in range(KILLS)]
    started = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        runs = list(
            pool.map(
                lambda item: killed_session(tmp_path / f"run-{item[0]}", bundle, item[1]),
                enumerate(seeds),
            )
        )
    checked = []
    for i, lines in enumerate(runs):
        folder = tmp_path / f"run-{i}"
        try:
            checked.append(check_recovery(folder, lines))
        except AssertionError as failure:  # the session's seed and what it logged, to replay it
            logged = (folder / "session.log").read_text()[-4000:]
            raise AssertionError(f"{failure}\n{logged}") from None
    accepted = sum(w[0] == "accepted" for lines in runs for w in lines)
    stars = sum(w[0] == "starred" for lines in runs for w in lines)
    with capsys.disabled():
        print(
            f"\n{KILLS} kills (seeds {seeds}), {sum(checked)} decisions checked "
            f"({accepted} accepts, {stars} stars), 0 lost, "
            f"{time.perf_counter() - started:.0f} s"
        )
    assert sum(1 for n in checked if n) >= KILLS // 2  # most kills came after decisions
