"""A writer killed outright (SIGKILL) mid-save leaves ``.NAME.xxxxxxxx.tmp`` beside its target;
the next save into that folder removes it, and nothing else (issue 28)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.files import STALE_TEMP_S, sweep_stale_temps, write_bytes

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")

# a writer that is killed (or waits to be) inside the atomic writer, its temporary file written
WRITER = """
import os, signal, sys, time
from model.files import atomic_write
target, how = sys.argv[1], sys.argv[2]
with atomic_write(target) as handle:
    handle.write(b"half of a save")
    handle.flush()
    print("inside", flush=True)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
"""


def start_writer(target: Path, how: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), how],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "inside"
    return process


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_a_killed_writers_temporary_file_goes_at_the_next_save_of_that_target(tmp_path):
    target = tmp_path / "autosave.dstudio"
    writer = start_writer(target, "kill")
    writer.wait(30)
    (left,) = temps(tmp_path)
    assert left.startswith(".autosave.dstudio.")
    age(tmp_path / left, 2)  # the next save comes a moment later
    write_bytes(target, b"the next save")
    assert temps(tmp_path) == []
    assert target.read_bytes() == b"the next save"


def test_other_targets_leftovers_go_only_when_old(tmp_path):
    young, old = tmp_path / ".a.png.abc12345.tmp", tmp_path / ".b.png.xyz_9876.tmp"
    for path in (young, old):
        path.write_bytes(b"left by a killed writer")
    age(young, 60)
    age(old, STALE_TEMP_S + 60)
    write_bytes(tmp_path / "c.png", b"another file")
    assert temps(tmp_path) == [young.name]


def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    target = tmp_path / "out.png"
    writer = start_writer(target, "wait")
    try:
        (live,) = temps(tmp_path)
        age(tmp_path / live, STALE_TEMP_S + 60)  # old, and of the same target: still held
        assert sweep_stale_temps(tmp_path, "out.png", force=True) == []
        write_bytes(target, b"a concurrent save")
        assert temps(tmp_path) == [live]
    finally:
        writer.kill()
        writer.wait(30)
    # once its writer is dead, the same file is a leftover
    assert sweep_stale_temps(tmp_path, "out.png", force=True) == [live]


def test_nothing_outside_our_naming_is_touched(tmp_path):
    keep = {
        "notes.tmp": "file",
        ".x.tmp": "file",  # no random part
        ".a.png.ABCDEFGH.tmp": "file",  # mkstemp's names are lower case
        ".a.png.abc1234.tmp": "file",  # seven characters
        ".a.png.abcd1234.tmp.bak": "file",
        ".a.png.abcd1234.tmp": "folder",
        ".b.png.abcd1234.tmp": "symlink",
    }
    for name, kind in keep.items():
        path = tmp_path / name
        if kind == "folder":
            path.mkdir()
        elif kind == "symlink":
            path.symlink_to(tmp_path / "notes.tmp")
        else:
            path.write_bytes(b"someone else's")
        age(path, STALE_TEMP_S + 60)
    write_bytes(tmp_path / "a.png", b"a save")
    assert sweep_stale_temps(tmp_path, "a.png", force=True) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "a.png"])
