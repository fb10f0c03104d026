"""The history panel and the project's entry times (issue 28): an entry's time that no clock can
show is refused by the project's schema and never breaks the panel; starring keeps the panel's
scroll position and selection; a row shows what tells it from its siblings first."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from studio import project
from studio.document import Document, HistoryEntry
from studio.widgets import history as history_panel
from studio.widgets.history import HistoryPanel
from tests.test_hostile_projects import valid_members, write_zip


def picture(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("when", [1e300, 2**70, -1, 1e20])
def test_an_entry_time_no_clock_shows_is_one_line_naming_the_file(tmp_path, when):
    members = valid_members()
    manifest = json.loads(members["manifest.json"])
    manifest["history"][1]["time"] = when
    members["manifest.json"] = json.dumps(manifest).encode()
    path = write_zip(tmp_path / "odd-time.dstudio", members)
    with pytest.raises(project.ProjectError) as error:
        project.load(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "history[1] time" in message and "the year 3000" in message


def test_the_history_panel_shows_an_entry_whose_time_overflows(qtbot):
    """An entry made otherwise than from a project may hold any time: the panel still builds."""
    document = Document(picture())
    for index, when in enumerate((1e300, float("nan"), -1e20)):
        entry = HistoryEntry(id=10 + index, parent=0, image=picture(index), seed=5, time=when)
        document.add_entry(entry)
    panel = HistoryPanel()
    qtbot.addWidget(panel)
    panel.set_document(document)  # an OverflowError here took the slot down
    texts = [panel.items[10 + index].toolTip(0) for index in range(3)]
    assert all("unknown time" in text for text in texts)
    assert "unknown time" in panel.items[10].text(0)


def history_of(count: int) -> Document:
    document = Document(picture())
    document.set_model_geometry(32, 8)
    for round_ in range(count):
        document.set_cell((1, 1))
        document.start_generation()
        candidates = [picture(seed=round_ * 4 + index) for index in range(4)]
        caption = "a very long caption that a narrow panel cuts long before its end " * 2
        document.finish_generation(candidates, caption, (1, 1), 100 + round_, None)
        document.discard_candidates()
    return document


def test_starring_keeps_the_scroll_position_and_the_selection(qtbot):
    document = history_of(8)  # 33 rows: far more than the panel shows
    panel = HistoryPanel()
    qtbot.addWidget(panel)
    panel.resize(260, 160)
    panel.show()
    qtbot.waitExposed(panel)
    panel.set_document(document)
    bar = panel.verticalScrollBar()
    assert bar.maximum() > 0
    bar.setValue(bar.maximum() // 2)
    scrolled = bar.value()
    target = panel.itemAt(10, 10).data(0, 256)  # the row the user right-clicked
    panel.items[target].setSelected(True)
    panel.setCurrentItem(panel.items[target])
    document.set_starred(target, True)
    assert bar.value() == scrolled
    assert [item.data(0, 256) for item in panel.selectedItems()] == [target]
    assert panel.itemAt(10, 10).data(0, 256) == target  # the next right-click hits it again
    assert panel.items[target].text(0).startswith("★ ")


def test_sibling_rows_differ_at_their_start():
    document = history_of(2)
    generated = [entry for entry in document.history.values() if not entry.is_original]
    rows = [history_panel.label(entry) for entry in generated]
    assert len(set(rows)) == len(rows)
    width = 24  # about what a narrow panel shows of a row
    assert len({row[:width] for row in rows}) == len(rows)
    first = generated[0]
    clock = time.strftime("%H:%M:%S", time.localtime(first.time))
    assert rows[0].startswith(f"{clock} · #1 · seed {first.seed} — a very long caption")
