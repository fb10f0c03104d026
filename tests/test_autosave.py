"""Every change to a document's history is on disk before its slot returns (issue 28): the
journal beside the whole-project autosave, replayed on recovery. A star set 9 s before a kill -9
used to be gone: the autosave runs once a minute."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings

from model.config import SamplingOptions
from studio import autosave, project
from studio.autosave import Autosaver, RecoveryInfo, encode_line, read_journal
from studio.document import Document
from studio.engine import Engine
from studio.session import Session
from studio.widgets.main_window import MainWindow


def picture(width=40, height=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def stage(document: Document, count: int, seed: int) -> list[int]:
    """A finished generation of ``count`` candidates; their history ids."""
    document.start_generation()
    document.finish_generation(
        [picture(seed=seed + i) for i in range(count)],
        f"caption {seed}",
        (1, 1),
        seed,
        SamplingOptions(n=count, top_p=0.9, seed=seed),
        seconds=1.5,
    )
    return list(document.candidate_entries)


def state(document: Document) -> dict:
    """Everything recovery must bring back: each entry's fields and pixels, the image."""
    entries = {
        i: (
            *(e.parent, e.caption, e.cell, e.seed, e.options, e.seconds, e.candidate),
            *(e.starred, e.accepted, e.image.tobytes()),
        )
        for i, e in document.history.items()
    }
    return {
        "entries": entries,
        "current": document.current_entry,
        "image": document.image.tobytes(),
    }


def session_of_decisions(document: Document) -> None:
    """Generate, accept, star, unstar, delete, restore, undo and redo: every kind of change."""
    first = stage(document, 3, seed=10)
    document.select_candidate(1)
    document.accept_candidate()
    document.set_starred(first[1], True)
    document.set_starred(first[2], True)
    document.set_starred(first[2], False)
    document.delete_entry(first[0])
    second = stage(document, 2, seed=20)  # branches from the accepted image
    document.accept_candidate()
    document.restore(first[1])
    document.undo_stack.undo()  # back to second[0]
    document.undo_stack.undo()
    document.undo_stack.redo()
    document.set_starred(second[1], True)
    document.delete_entry(second[0])  # the current entry: its parent becomes current


@pytest.fixture
def window_in(qtbot):
    made = []

    def make(folder: Path) -> MainWindow:
        settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
        engine = Engine()
        win = MainWindow(Session(engine), settings, autosave_folder=folder)
        win.autosave_timer.stop()  # the minute never comes: only the journal can keep the work
        win.ask_before_close = False
        qtbot.addWidget(win)
        made.append(engine)
        return win

    yield make
    for engine in made:
        engine.shutdown()


def test_a_kill_between_autosaves_loses_no_decision(window_in, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    window = window_in(tmp_path)
    document = Document(picture(seed=1))
    document.source_path = str(tmp_path / "harbour.png")
    window.session.set_document(document)
    session_of_decisions(window.document)
    expected = state(window.document)
    # kill -9: nothing else runs; the next start finds the autosave and its journal
    after = window_in(tmp_path)
    asked = []
    monkeypatch.setattr(
        QMessageBox,
        "question",
        lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.Yes,
    )
    after.offer_recovery()
    assert state(after.document) == expected
    assert after.document.modified
    (text,) = asked  # what is recovered, and from when
    assert "“harbour.png”: 3 history entries, 2 starred, 1 accepted; autosaved at " in text
    assert "later changes up to " in text


def test_recovery_says_one_change_in_the_singular():
    info = RecoveryInfo("a.png", 4, 0, 1, autosaved=0.0, journaled=60.0, changes=1)
    assert ", with 1 later change up to " in info.describe()


def test_no_change_rewrites_the_whole_project(qapp, tmp_path, monkeypatch):
    saver = Autosaver(tmp_path)
    document = Document(picture(seed=2))
    saver.watch(document)
    ids = stage(document, 4, seed=30)  # the first change writes the base autosave
    writes = []
    original = project.save
    monkeypatch.setattr(project, "save", lambda *a, **k: writes.append(a) or original(*a, **k))
    for entry_id in ids:
        document.set_starred(entry_id, True)
    document.accept_candidate()
    document.delete_entry(ids[3])
    assert writes == []
    assert len(read_journal(saver.journal_path)) == 6
    # the accepted candidate's pixels were written with the generation, not again
    assert sorted(p.name for p in saver.journal_folder.glob("*.png")) == []
    saver.save(document)  # the minute's whole autosave empties the journal
    assert len(writes) == 1 and not saver.journal_path.exists()
    document.set_starred(ids[1], False)
    second = stage(document, 2, seed=40)
    names = sorted(p.name for p in saver.journal_folder.glob("*.png"))
    assert names == [f"entry-{i}.png" for i in second]
    recovered, info = autosave.recover(tmp_path)
    assert state(recovered) == state(document)
    assert (info.entries, info.stars, info.accepted, info.changes) == (5, 2, 1, 2)


def test_a_torn_or_damaged_line_ends_the_replay_and_keeps_what_came_before(qapp, tmp_path):
    saver = Autosaver(tmp_path)
    document = Document(picture(seed=3))
    saver.watch(document)
    ids = stage(document, 3, seed=50)
    document.set_starred(ids[0], True)
    kept = state(document)
    document.set_starred(ids[1], True)
    whole = saver.journal_path.read_bytes()
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 2
    for damaged in (
        lines[0] + lines[1][:-7],  # cut short by the kill
        lines[0] + lines[1].replace(b'"starred":true', b'"starred":tru3'),  # a flipped byte
        lines[0] + b"0000dead " + lines[1][9:],  # a wrong checksum
    ):
        saver.journal_path.write_bytes(damaged)
        recovered, info = autosave.recover(tmp_path)
        assert state(recovered) == kept and info.changes == 1
    saver.journal_path.write_bytes(whole)
    assert state(autosave.recover(tmp_path)[0]) == state(document)


def test_a_kill_between_a_whole_autosave_and_the_journals_reset_recovers_the_same(qapp, tmp_path):
    saver = Autosaver(tmp_path)
    document = Document(picture(seed=4))
    saver.watch(document)
    ids = stage(document, 3, seed=60)
    document.accept_candidate()
    saver.save(document)  # these entries' pixels are in the autosave, not in the journal
    document.restore(ids[1])  # a line naming an entry of the autosave as the image...
    document.set_starred(ids[1], True)
    document.delete_entry(ids[1])  # ...which a later line drops
    session_of_decisions(document)
    journal = tmp_path / "before-reset"
    shutil.copytree(saver.journal_folder, journal)
    document.mark_modified()
    saver.save(document)  # the whole autosave holds every line's change now...
    shutil.rmtree(saver.journal_folder)
    shutil.copytree(journal, saver.journal_folder)  # ...and the kill came before the reset
    recovered, info = autosave.recover(tmp_path)
    assert info.changes == len(read_journal(saver.journal_path)) > 5
    assert state(recovered) == state(document)


def test_lines_check_themselves(tmp_path):
    path = tmp_path / "journal.log"
    records = [{"time": 1.0, "entries": [], "dropped": [i]} for i in range(3)]
    path.write_bytes(b"".join(encode_line(r) for r in records) + b"garbage without a newline")
    assert read_journal(path) == records
    path.write_bytes(b"\n" + encode_line(records[0]))  # an empty first line is not a record
    assert read_journal(path) == []
