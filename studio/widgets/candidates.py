"""The staging strip: candidate thumbnails. Left/Right browse, Enter accepts, Esc discards."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QListView, QListWidget, QListWidgetItem

from studio.document import Document
from studio.widgets.canvas import to_qimage

THUMBNAIL = 72


def thumbnail(image, size: int = THUMBNAIL) -> QIcon:
    # subsample first: converting a full-resolution photo to a QImage per thumbnail would stall
    # the GUI thread for tens of milliseconds
    step = max(1, max(image.shape[:2]) // (2 * size))
    pixmap = QPixmap.fromImage(to_qimage(image[::step, ::step])).scaled(
        size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    icon = QIcon(pixmap)
    icon.addPixmap(pixmap, QIcon.Mode.Selected)  # Qt's default tints it with the highlight colour
    return icon


class CandidateStrip(QListWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.setFixedHeight(THUMBNAIL + 36)
        self.setMovement(QListView.Movement.Static)
        self.document: Document | None = None
        self.currentRowChanged.connect(self._row_changed)
        self.itemDoubleClicked.connect(self._double_clicked)

    def set_document(self, document: Document) -> None:
        if self.document is not None:
            self.document.candidates_changed.disconnect(self._rebuild)
            self.document.candidate_index_changed.disconnect(self._index_changed)
        self.document = document
        document.candidates_changed.connect(self._rebuild)
        document.candidate_index_changed.connect(self._index_changed)
        self._rebuild()

    def _rebuild(self) -> None:
        self.blockSignals(True)
        self.clear()
        for index, image in enumerate(self.document.candidates):
            QListWidgetItem(thumbnail(image), f"{index + 1}", self)
        if self.document.candidates:
            self.setCurrentRow(self.document.candidate_index)
        self.blockSignals(False)
        self.setVisible(bool(self.document.candidates))
        if self.document.candidates:
            self.setFocus()

    def _index_changed(self, index: int) -> None:
        if self.currentRow() != index:
            self.blockSignals(True)
            self.setCurrentRow(index)
            self.blockSignals(False)

    def _row_changed(self, row: int) -> None:
        if row >= 0:
            self.document.select_candidate(row)

    def _double_clicked(self, _item: QListWidgetItem) -> None:
        self.accept()

    def accept(self) -> None:
        self.document.accept_candidate()

    def keyPressEvent(self, event):
        key = event.key()
        if key == Qt.Key.Key_Left:
            self.document.previous_candidate()
        elif key == Qt.Key.Key_Right:
            self.document.next_candidate()
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.accept()
        elif key == Qt.Key.Key_Escape:
            self.document.discard_candidates()
        else:
            super().keyPressEvent(event)
