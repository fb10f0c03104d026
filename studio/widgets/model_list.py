"""Settings' list of installed models (``catalog.installed_models``): the embedded model, the
models folder's bundles and a bundle chosen elsewhere, each with its card's headline, its size
and the memory loading it needs; the model in use is marked, a file that cannot be read says why.
A click on a row (or the arrow keys) chooses that model; a double click (or Enter) chooses it
and confirms Settings.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QWidget,
)

from studio.catalog import (
    InstalledModel,
    installed_model,
    installed_models,
    models_folder,
    models_folder_path,
    one_line,
    same_model,
    size_text,
)

IN_USE = "  ✓ in use"  # after the headline of the model Settings opened with
VISIBLE_ROWS = 4  # rows the list shows before it scrolls: the card below needs the room
CHOICE_ROLE = Qt.ItemDataRole.UserRole
ENABLED = Qt.ItemFlag.ItemIsEnabled


def row_text(model: InstalledModel, in_use: bool) -> str:
    """Two lines: the headline (and the in-use mark), then file, size, memory and place; or the
    file and why it cannot be used."""
    if model.problem:
        return f"{model.path.name}  ⚠\ncannot be used: {model.problem}"
    facts = [model.path.name if model.place != "embedded" else "embedded with the app"]
    if model.size is not None:
        facts.append(f"{size_text(model.size)} on disk")
    if model.memory is not None:
        facts.append(f"loading needs about {size_text(model.memory)}")
    if model.place == "elsewhere":
        facts.append(f"in {model.path.parent}")
    return model.headline + (IN_USE if in_use else "") + "\n" + " · ".join(facts)


def open_models_folder(parent: QWidget | None = None) -> str:
    """Show the user's models folder in the system's file manager (made first when missing);
    "" when it opened, else the one line the user was shown."""
    try:
        folder = models_folder()
    except OSError as error:
        problem = f"cannot make the models folder {models_folder_path()}: {one_line(error)}"
    else:
        if QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
            return ""
        problem = f"no file manager opened the models folder; it is {folder}"
    QMessageBox.warning(parent, "Models folder", problem)
    return problem


class ModelList(QListWidget):
    """One row per installed model; ``chosen`` carries the settings value of a clicked row and
    ``confirmed`` follows a double click or Enter on one."""

    chosen = Signal(str)
    confirmed = Signal()

    def __init__(self, in_use: str, parent=None):
        super().__init__(parent)
        self.in_use = in_use
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setAlternatingRowColors(True)
        self.setWordWrap(True)  # a long headline or reason wraps rather than scrolls sideways
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.setSpacing(2)
        self.setToolTip(
            f"The embedded model and the bundles in your models folder ({models_folder_path()}); "
            "click one to use it"
        )
        for model in installed_models(in_use):
            self._add(model)
        self.currentItemChanged.connect(self._current_changed)  # a click, or the arrow keys
        self.itemActivated.connect(self._activated)
        self.select_choice(in_use)
        rows = min(self.count(), VISIBLE_ROWS)
        self.setMinimumHeight(rows * self.sizeHintForRow(0) + 2 * self.frameWidth())

    def showEvent(self, event) -> None:
        """From the top, the chosen row in sight: selecting it while the dialog was still
        being laid out scrolled the rows above it away."""
        super().showEvent(event)
        self.scrollToTop()
        if self.currentItem() is not None:
            self.scrollToItem(self.currentItem())

    def _add(self, model: InstalledModel) -> QListWidgetItem:
        in_use = same_model(model.choice, self.in_use)
        item = QListWidgetItem(row_text(model, in_use))
        item.setData(CHOICE_ROLE, model.choice)
        item.setToolTip(str(model.path) + (f"\n{model.problem}" if model.problem else ""))
        if in_use:
            font = item.font()
            font.setBold(True)
            item.setFont(font)
        row = self.count()
        if model.problem:  # listed so the user sees it, but nothing to choose
            item.setFlags(item.flags() & ~ENABLED)
        else:  # before the files that cannot be used, as installed_models orders them
            unusable = (i for i in range(1, row) if not self.item(i).flags() & ENABLED)
            row = next(unusable, row)
        self.insertItem(row, item)
        return item

    def rows(self) -> list[tuple[str, str]]:
        """(settings value, text) of each row, top to bottom."""
        return [(self.item(i).data(CHOICE_ROLE), self.item(i).text()) for i in range(self.count())]

    def row_of(self, choice: str) -> int:
        """The row that lists ``choice``, or -1."""
        for index in range(self.count()):
            if same_model(self.item(index).data(CHOICE_ROLE), choice):
                return index
        return -1

    def select_choice(self, choice: str) -> None:
        """Select the row of ``choice`` (a typed path that no row lists: none)."""
        index = self.row_of(choice)
        self.blockSignals(True)
        if index >= 0 and self.item(index).flags() & ENABLED:
            self.setCurrentRow(index)
        else:
            self.clearSelection()
            self.setCurrentItem(None)
        self.blockSignals(False)

    def include(self, path: str) -> None:
        """A bundle opened with "Other file…": its row (added when no row lists it), selected."""
        if self.row_of(path) < 0:
            self._add(installed_model(path))
        self.select_choice(path)

    def _current_changed(self, item: QListWidgetItem | None) -> None:
        if item is not None and item.flags() & ENABLED:
            self.chosen.emit(item.data(CHOICE_ROLE))

    def _activated(self, item: QListWidgetItem) -> None:
        if item.flags() & ENABLED:
            self.chosen.emit(item.data(CHOICE_ROLE))
            self.confirmed.emit()
