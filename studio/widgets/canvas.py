"""The canvas: the image, zoom and pan, the token-grid overlay and the rectangle tool.

A view only: it shows ``document.shown_image`` and tells the document where the user put the
rectangle's top-left corner; the document snaps it to a token cell. The rectangle's ETA comes
from the session's speed. Krita/GIMP habits: the wheel zooms around the cursor, Ctrl+0 fits,
Ctrl+1 is 100 %, Space+drag or the middle button pans.

The rectangle tool works as a selection tool does in any editor: the drag starts where the button
is pressed and the region follows it, the release commits it. With the session's "to the corner"
(the default, DALL·E's own rectangle) the region reaches the image's bottom-right corner, so the
drag places only its top-left (the top-left of the press point and the pointer); without it the
drag selects the region from the press point to the pointer. A region that ends inside the
picture shows its bottom-right corner as a handle: dragging it moves the region's end. A click
without a drag (less than the platform's drag distance) places a rectangle, to the corner, only
when there is none; it never moves an existing one. The working area
(the part of the picture the model sees) is a dashed frame around it with its scale; dragging the
frame's top-left handle sets its side (``studio.widgets.area_frame``).

The blue tint marks a region that is about to be regenerated; a result shown there (a candidate,
or an accepted generation from that very cell) is shown in its true colours.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QApplication, QGraphicsScene, QGraphicsView

from model.files import check_pixels
from studio.document import Document
from studio.session import Session
from studio.widgets import area_frame

ZOOM_STEP = 1.25
MIN_ZOOM, MAX_ZOOM = 0.02, 64.0


def to_qimage(image: np.ndarray) -> QImage:
    """(H, W, 3) uint8 -> a QImage that owns its copy of the pixels."""
    image = np.ascontiguousarray(image)
    height, width, _ = image.shape
    return QImage(image.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def qimage_to_array(image: QImage, name: str = "the image") -> np.ndarray:
    """A QImage (clipboard, drop) as (H, W, 3) uint8 RGB. Its size is checked against the
    product's pixel limit before any conversion allocates (raises ImageError), and transparency
    is composited on white, as for image files."""
    check_pixels(image.width(), image.height(), name)
    if image.hasAlphaChannel():
        flat = QImage(image.size(), QImage.Format.Format_RGB888)
        flat.fill(QColor(255, 255, 255))
        painter = QPainter(flat)
        painter.drawImage(0, 0, image)
        painter.end()
        image = flat
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    data = np.frombuffer(image.constBits(), np.uint8, count=stride * height)
    return data.reshape(height, stride)[:, : width * 3].reshape(height, width, 3).copy()


class Canvas(QGraphicsView):
    """Shows a Document; drag with the left button to place the rectangle."""

    zoom_changed = Signal(float)
    hover_changed = Signal(str)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        session.speed_changed.connect(self._repaint)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setBackgroundBrush(QColor(48, 48, 48))
        self.setDragMode(QGraphicsView.DragMode.NoDrag)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._pixmap = self.scene().addPixmap(QPixmap())
        self._pixmap.setTransformationMode(Qt.TransformationMode.FastTransformation)
        self.document: Document | None = None
        self.show_grid = False
        self._space = False
        self._panning: QPointF | None = None
        self._press: QPointF | None = None  # where the left button went down (viewport)
        self._dragging = False  # moved past the drag distance since the press
        self._resizing = False  # the working area's handle is being dragged
        self._ending = False  # the region's bottom-right handle is being dragged
        self._fitted = True

    # -- binding ------------------------------------------------------------------------

    def set_document(self, document: Document) -> None:
        if self.document is not None:
            for signal, slot in self._bindings():
                signal.disconnect(slot)
        self.document = document
        for signal, slot in self._bindings():
            signal.connect(slot)
        self._refresh_image()
        self.fit()

    def _bindings(self):
        document = self.document
        return [
            (document.image_changed, self._refresh_image),
            (document.preview_changed, self._refresh_image),
            (document.candidates_changed, self._refresh_image),
            (document.candidate_index_changed, self._refresh_image),
            (document.rectangle_changed, self.viewport().update),
        ]

    def _repaint(self, *_) -> None:
        self.viewport().update()

    def _refresh_image(self, *_):
        image = self.document.shown_image
        self._pixmap.setPixmap(QPixmap.fromImage(to_qimage(image)))
        self.scene().setSceneRect(QRectF(0, 0, image.shape[1], image.shape[0]))
        self.viewport().update()

    # -- zoom and pan -------------------------------------------------------------------

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, zoom: float) -> None:
        zoom = min(MAX_ZOOM, max(MIN_ZOOM, zoom))
        factor = zoom / self.zoom
        self.scale(factor, factor)
        self._fitted = False
        self.zoom_changed.emit(self.zoom)

    def zoom_in(self) -> None:
        self.set_zoom(self.zoom * ZOOM_STEP)

    def zoom_out(self) -> None:
        self.set_zoom(self.zoom / ZOOM_STEP)

    def fit(self) -> None:
        if self.document is None:
            return
        self.fitInView(self.scene().sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
        self._fitted = True
        self.zoom_changed.emit(self.zoom)

    def actual_size(self) -> None:
        self.resetTransform()
        self._fitted = False
        self.zoom_changed.emit(1.0)

    def resizeEvent(self, event):
        super().resizeEvent(event)
        if self._fitted:
            self.fit()

    def wheelEvent(self, event):
        steps = event.angleDelta().y() / 120
        if steps:
            self.set_zoom(self.zoom * ZOOM_STEP**steps)
        event.accept()

    def keyPressEvent(self, event):
        key = event.key()
        if key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
            return
        document = self.document
        if document is not None and document.candidates:  # staging keys work on the canvas too
            if key == Qt.Key.Key_Left:
                return document.previous_candidate()
            if key == Qt.Key.Key_Right:
                return document.next_candidate()
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                document.accept_candidate()
                return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event):
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.viewport().unsetCursor()
            return
        super().keyReleaseEvent(event)

    # -- rectangle tool -----------------------------------------------------------------

    def mousePressEvent(self, event):
        button = event.button()
        if button == Qt.MouseButton.MiddleButton or (
            button == Qt.MouseButton.LeftButton and self._space
        ):
            self._panning = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if button == Qt.MouseButton.LeftButton and self.document is not None:
            if not self.document.generating and area_frame.end_handle_at(
                self, self.document, event.position()
            ):
                self._ending = True
                return
            if not self.document.generating and area_frame.handle_at(
                self, self.document, event.position()
            ):
                self._resizing = True
                return
            self._press = event.position()
            self._dragging = False
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event):
        if self._panning is not None:
            delta = event.position() - self._panning
            self._panning = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - delta.x())
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - delta.y())
            return
        if self._resizing:
            point = self.mapToScene(event.position().toPoint())
            side = area_frame.side_for(self.document, point.x(), point.y())
            self.session.set_area_choice(side)
            return
        if self._ending:
            point = self.mapToScene(event.position().toPoint())
            self.document.set_end_from_pixel(point.x(), point.y())
            return
        if self._press is not None:
            distance = (event.position() - self._press).manhattanLength()
            if self._dragging or distance >= QApplication.startDragDistance():
                self._dragging = True
                self._place(self._press, event.position())
            return
        if self.document is not None:
            point = self.mapToScene(event.position().toPoint())
            self.hover_changed.emit(f"{int(point.x())}, {int(point.y())}")
            if area_frame.handle_at(self, self.document, event.position()) or (
                area_frame.end_handle_at(self, self.document, event.position())
            ):
                self.viewport().setCursor(Qt.CursorShape.SizeFDiagCursor)
            elif not self._space:
                self.viewport().unsetCursor()
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event):
        if self._panning is not None:
            self._panning = None
            self.viewport().unsetCursor()
            return
        if self._resizing or self._ending:
            self._resizing = self._ending = False
            return
        if self._press is not None:
            press, self._press = self._press, None
            if self._dragging:
                self._place(press, event.position())
            elif self.document.cell is None:
                self._place(press, press)  # a first click places one; later clicks move nothing
            self._dragging = False
            return
        super().mouseReleaseEvent(event)

    def _place(self, press: QPointF, pointer: QPointF) -> None:
        """The region between the press point and the pointer (viewport points): its top-left
        only, to the corner, or both corners (a click without a drag: to the corner)."""
        if self.document.generating:
            return  # the running job's rectangle is fixed
        first, second = self.mapToScene(press.toPoint()), self.mapToScene(pointer.toPoint())
        x, y = min(first.x(), second.x()), min(first.y(), second.y())
        end = None
        if not self.session.to_corner and press != pointer:
            end = (max(first.x(), second.x()), max(first.y(), second.y()))
        self.document.set_rectangle_from_pixel(x, y, end=end)

    # -- overlays -----------------------------------------------------------------------

    def set_show_grid(self, show: bool) -> None:
        self.show_grid = show
        self.viewport().update()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:
        document = self.document
        if document is None:
            return
        if self.show_grid:
            area_frame.draw_grid(painter, document)
        box = document.rectangle_pixels()
        if box is None:
            return
        area_frame.draw(self, painter, document)
        x, y, w, h = box
        if self._tinted():
            painter.fillRect(QRectF(x, y, w, h), QBrush(QColor(80, 160, 255, 40)))
        pen = QPen(QColor(80, 170, 255), 0)
        pen.setWidth(2)
        pen.setCosmetic(True)
        painter.setPen(pen)
        painter.drawRect(QRectF(x, y, w, h))
        area_frame.draw_end_handle(self, painter, document, QColor(80, 170, 255))
        painter.save()
        painter.resetTransform()
        corner = self.mapFromScene(QPointF(x, y))
        label = self.rectangle_label()
        metrics = painter.fontMetrics()
        width = metrics.horizontalAdvance(label) + 10
        box_rect = QRectF(corner.x() + 4, corner.y() + 4, width, metrics.height() + 6)
        painter.fillRect(box_rect, QColor(0, 0, 0, 170))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(box_rect, Qt.AlignmentFlag.AlignCenter, label)
        painter.restore()

    def _tinted(self) -> bool:
        """Tint the region only while it shows what is about to be regenerated: never over a
        candidate, nor over the accepted result of a generation from this very cell."""
        document = self.document
        if document.shown_image is not document.image:
            return False
        entry = document.history.get(document.current_entry)
        if entry is None or entry.is_original:
            return True
        where = (document.cell, document.area_record or (0, 0), document.end)
        return (entry.cell, entry.area or (0, 0), entry.end) != where

    def rectangle_label(self) -> str:
        document = self.document
        cells = document.masked_cells
        text = f"{cells} cells"
        seconds = self.session.estimate_seconds(cells)  # 0: no run measured yet
        if seconds > 0:
            text += " · ETA <1 s" if seconds < 1 else f" · ETA ~{seconds:.0f} s"
        return text
