"""History panel: all generations as a tree; click previews, double-click restores."""

from __future__ import annotations

import time

from PySide6.QtCore import QItemSelectionModel, QSize, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMenu, QTreeWidget, QTreeWidgetItem

from studio.document import Document, HistoryEntry
from studio.widgets.candidates import thumbnail

ICON = 48
ID_ROLE = Qt.ItemDataRole.UserRole


def clock(seconds: float, layout: str = "%Y-%m-%d %H:%M:%S") -> str:
    """``seconds`` since 1970 as local time, or "unknown time" for one no clock shows (a
    project's schema bounds it; an entry made otherwise may still hold anything)."""
    try:
        return time.strftime(layout, time.localtime(seconds))
    except (OverflowError, OSError, ValueError, TypeError):
        return "unknown time"


def label(entry: HistoryEntry) -> str:
    """A row: what tells entries apart first (the run's time, the candidate, the seed), then the
    caption, which a narrow panel cuts at its end. Time and candidate come first: they tell
    every entry apart even in the fixed-seed mode, where the seed repeats."""
    star = "★ " if entry.starred else ""
    if entry.is_original:
        return f"{star}Original"
    parts = [clock(entry.time, "%H:%M:%S")]
    if entry.candidate is not None:
        parts.append(f"#{entry.candidate + 1}")
    if entry.seed is not None:
        parts.append(f"seed {entry.seed}")
    return f"{star}{' · '.join(parts)} — {entry.caption or '(no caption)'}"


def describe(entry: HistoryEntry) -> str:
    if entry.is_original:
        return "Original image"
    options = ", ".join(f"{k} {v}" for k, v in entry.options_dict().items())
    when = clock(entry.time)
    where = f" of the working area from pixel {entry.area}" if entry.area else ""
    to = "the corner" if entry.end is None else f"{entry.end}"
    return (
        f"{entry.caption}\ncells from {entry.cell} to {to}{where} · seed {entry.seed}\n{options}\n"
        f"{when} · {entry.model}"
    )


class HistoryPanel(QTreeWidget):
    export_requested = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setHeaderHidden(True)
        self.setIconSize(QSize(ICON, ICON))
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.itemClicked.connect(self._clicked)
        self.itemDoubleClicked.connect(self._double_clicked)
        self.document: Document | None = None
        self.items: dict[int, QTreeWidgetItem] = {}
        self._icons: dict[int, tuple] = {}  # entry id -> (image it was made from, icon)
        self._shown: tuple[int | None, int] = (None, 0)  # (current entry, entries) last built

    def set_document(self, document: Document) -> None:
        if self.document is not None:
            self.document.history_changed.disconnect(self.rebuild)
        self.document = document
        self._icons = {}
        self._shown = (None, 0)
        document.history_changed.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        """Show the document's history. A star or a delete keeps the scroll position and the
        selection (the next right-click lands where the user looks); a new current entry or
        new entries scroll to the current one."""
        document = self.document
        scrolled = self.verticalScrollBar().value()
        selected = [item.data(0, ID_ROLE) for item in self.selectedItems()]
        focused = self.currentItem().data(0, ID_ROLE) if self.currentItem() else None
        self.clear()
        self.items = {}
        pending = sorted(document.history.values(), key=lambda e: e.id)
        for entry in pending:  # ids grow with time, so parents come before children
            parent = self.items.get(entry.parent)
            item = QTreeWidgetItem([label(entry)])
            icon = self._icons.get(entry.id)
            if icon is None or icon[0] is not entry.image:
                icon = self._icons[entry.id] = (entry.image, thumbnail(entry.image, ICON))
            item.setIcon(0, icon[1])
            item.setToolTip(0, describe(entry))
            item.setData(0, ID_ROLE, entry.id)
            if entry.id == document.current_entry:
                font = item.font(0)
                font.setBold(True)
                item.setFont(0, font)
            if parent is None:
                self.addTopLevelItem(item)
            else:
                parent.addChild(item)
            self.items[entry.id] = item
        self.expandAll()
        if focused in self.items:
            self.setCurrentItem(self.items[focused], 0, QItemSelectionModel.SelectionFlag.NoUpdate)
        for entry_id in selected:
            if entry_id in self.items:
                self.items[entry_id].setSelected(True)
        shown, self._shown = self._shown, (document.current_entry, len(document.history))
        current = self.items.get(document.current_entry)
        if current is not None and (
            shown[0] != document.current_entry or shown[1] < len(document.history)
        ):
            self.scrollToItem(current)
        else:
            self.verticalScrollBar().setValue(scrolled)

    def _clicked(self, item: QTreeWidgetItem) -> None:
        self.document.peek_entry(item.data(0, ID_ROLE))

    def _double_clicked(self, item: QTreeWidgetItem) -> None:
        self.document.restore(item.data(0, ID_ROLE))

    def _menu(self, position) -> None:
        item = self.itemAt(position)
        if item is None:
            return
        entry = self.document.history[item.data(0, ID_ROLE)]
        menu = QMenu(self)
        menu.addAction("Restore", lambda: self.document.restore(entry.id))
        menu.addAction(
            "Unstar" if entry.starred else "Star",
            lambda: self.document.set_starred(entry.id, not entry.starred),
        )
        clipboard = QGuiApplication.clipboard()
        menu.addAction("Copy caption", lambda: clipboard.setText(entry.caption))
        menu.addAction("Copy seed", lambda: clipboard.setText(str(entry.seed)))
        menu.addAction("Export PNG…", lambda: self.export_requested.emit(entry.id))
        delete = menu.addAction("Delete", lambda: self.document.delete_entry(entry.id))
        delete.setEnabled(not entry.is_original)
        menu.exec(self.viewport().mapToGlobal(position))
        menu.deleteLater()  # one menu per right-click: not kept until the window goes
