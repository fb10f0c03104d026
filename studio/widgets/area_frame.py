"""The working area on the canvas: its frame, its scale label and the handle that resizes it.

The model sees a square part of the picture reaching its bottom-right corner (the working area,
``model.geometry.working_area``), scaled to the model's size. The canvas draws it as a dashed
frame around the rectangle, with how many picture pixels one model pixel stands for ("model sees
1 px per 3.1 px"), and a handle at its top-left corner: dragging the handle sets the area's side
in pixels, never so short that the area no longer holds the rectangle nor shorter than the
model's size (the picture would be scaled up into the model, which adds no detail). Pure
drawing and arithmetic: the canvas owns the mouse, the session the choice.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen

from studio.document import Document

HANDLE_PX = 10  # the handle's side on screen, in viewport pixels
FRAME_COLOUR = QColor(255, 196, 64)


def scale_label(document: Document) -> str:
    """What the frame says: the area and how the model sees it."""
    area = document.area
    per = area.pixels_per_model_pixel(document.model_size)
    where = "whole picture" if area.is_whole else f"working area {area.width}×{area.height} px"
    return f"{where} · model sees 1 px per {per:.1f} px"


def area_rect(document: Document) -> QRectF:
    """The working area in picture pixels."""
    area = document.area
    return QRectF(area.left, area.top, area.width, area.height)


def side_for(document: Document, x: float, y: float) -> int:
    """The side a handle dragged to picture point (x, y) gives the area: the square anchored at
    the bottom-right corner through that point, at least the rectangle's longer side and the
    model's size (as far as the picture reaches), at most the picture's longer side."""
    width, height = document.width, document.height
    side = round(max(width - x, height - y))
    box = document.rectangle_pixels()
    needed = max(box[2], box[3]) if box else 1
    needed = max(needed, min(document.model_size, max(width, height)))
    return int(min(max(side, needed), max(width, height)))


def handle_at(view, document: Document, point: QPointF) -> bool:
    """True when viewport ``point`` lies on the area's handle (shown only with a rectangle)."""
    if document.cell is None:
        return False
    corner = view.mapFromScene(QPointF(document.area.left, document.area.top))
    return abs(point.x() - corner.x()) <= HANDLE_PX and abs(point.y() - corner.y()) <= HANDLE_PX


def region_end(document: Document) -> tuple[int, int] | None:
    """The region's bottom-right corner in picture pixels (exclusive), when it ends inside the
    picture; None when it reaches the corner (or there is no region)."""
    box = document.rectangle_pixels()
    if box is None or document.end is None:
        return None
    x, y, w, h = box
    return x + w, y + h


def end_handle_at(view, document: Document, point: QPointF) -> bool:
    """True when viewport ``point`` lies on the region's bottom-right handle."""
    end = region_end(document)
    if end is None:
        return False
    corner = view.mapFromScene(QPointF(*end))
    return abs(point.x() - corner.x()) <= HANDLE_PX and abs(point.y() - corner.y()) <= HANDLE_PX


def draw_end_handle(view, painter: QPainter, document: Document, colour: QColor) -> None:
    """The region's bottom-right handle, on screen, when the region ends inside the picture."""
    end = region_end(document)
    if end is None:
        return
    painter.save()
    painter.resetTransform()
    corner = view.mapFromScene(QPointF(*end))
    handle = QRectF(corner.x() - HANDLE_PX / 2, corner.y() - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX)
    painter.fillRect(handle, colour)
    painter.setPen(QColor(0, 0, 0))
    painter.drawRect(handle)
    painter.restore()


def draw(view, painter: QPainter, document: Document) -> None:
    """The frame (in scene coordinates) and, on screen, its handle and scale label."""
    frame = area_rect(document)
    pen = QPen(FRAME_COLOUR, 0)
    pen.setWidth(2)
    pen.setCosmetic(True)
    pen.setStyle(Qt.PenStyle.DashLine)
    painter.setPen(pen)
    painter.drawRect(frame)
    painter.save()
    painter.resetTransform()
    corner = view.mapFromScene(frame.topLeft())
    handle = QRectF(corner.x() - HANDLE_PX / 2, corner.y() - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX)
    painter.fillRect(handle, FRAME_COLOUR)
    painter.setPen(QColor(0, 0, 0))
    painter.drawRect(handle)
    label = scale_label(document)
    metrics = painter.fontMetrics()
    box = QRectF(
        corner.x() + HANDLE_PX,
        corner.y() + 4,
        metrics.horizontalAdvance(label) + 10,
        metrics.height() + 6,
    )
    rectangle = document.rectangle_pixels()
    if rectangle is not None:  # below the rectangle's own label when the two corners meet
        top = view.mapFromScene(QPointF(rectangle[0], rectangle[1]))
        if abs(top.y() - corner.y()) < 2 * box.height() and abs(top.x() - corner.x()) < box.width():
            box.moveTop(top.y() + box.height() + 8)
    right = view.viewport().width() - 4  # a small area near the right edge: the label stays in
    if box.right() > right:
        box.moveRight(right)
    painter.fillRect(box, QColor(0, 0, 0, 170))
    painter.setPen(FRAME_COLOUR)
    painter.drawText(box, Qt.AlignmentFlag.AlignCenter, label)
    painter.restore()


def draw_grid(painter: QPainter, document: Document) -> None:
    """The token grid of the working area (the rectangle's cells are on it)."""
    geometry, area = document.area_geometry, document.area
    painter.setPen(QPen(QColor(255, 255, 255, 70), 0))
    for index in range(geometry.grid + 1):
        x, y, _, _ = geometry.cell_rect((index, index))
        if x <= area.width:
            painter.drawLine(
                QPointF(area.left + x, area.top), QPointF(area.left + x, document.height)
            )
        if y <= area.height:
            painter.drawLine(
                QPointF(area.left, area.top + y), QPointF(document.width, area.top + y)
            )
