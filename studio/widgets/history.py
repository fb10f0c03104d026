"""History panel: all generations as a tree; click previews, double-click restores."""

from __future__ import annotations

import time

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMenu, QTreeWidget, QTreeWidgetItem

from studio.document import Document, HistoryEntry
from studio.widgets.candidates import thumbnail

ICON = 48
ID_ROLE = Qt.ItemDataRole.UserRole


def describe(entry: HistoryEntry) -> str:
    if entry.is_original:
        return "Original image"
    options = ", ".join(f"{k} {v}" for k, v in entry.options.items())
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.time))
    return (
        f"{entry.caption}\ncells from {entry.cell} · seed {entry.seed}\n{options}\n"
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

    def set_document(self, document: Document) -> None:
        if self.document is not None:
            self.document.history_changed.disconnect(self.rebuild)
        self.document = document
        self._icons = {}
        document.history_changed.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        document = self.document
        self.clear()
        self.items = {}
        pending = sorted(document.history.values(), key=lambda e: e.id)
        for entry in pending:  # ids grow with time, so parents come before children
            parent = self.items.get(entry.parent)
            label = "Original" if entry.is_original else entry.caption or "(no caption)"
            if entry.starred:
                label = "★ " + label
            if not entry.is_original:
                label += f"  · seed {entry.seed}"
            item = QTreeWidgetItem([label])
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
        current = self.items.get(document.current_entry)
        if current is not None:
            self.scrollToItem(current)

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
