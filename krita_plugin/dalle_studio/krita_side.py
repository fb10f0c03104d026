"""Krita's side of a Generate, without widgets: the active document checked (8-bit RGBA only),
its selection → the plan, the crop read from the merged image (Krita's BGRA → RGBA), the server
asked (``generate``: on any thread), and each candidate → a new paint layer named after caption
and seed, the first visible and active (the artist's next stroke goes onto it), the others
hidden; a candidate chosen later is shown and made active, or said to be gone when undone. Used
by the docker and by the end-to-end test run in ``kritarunner``. PNGs decode and resize with
QImage.
"""

from __future__ import annotations

from dataclasses import dataclass

from PyQt5.QtCore import Qt
from PyQt5.QtGui import QImage

from . import client, core


class QtCodec:
    """Decoding and resizing with QImage (fast, and in every Krita)."""

    def decode(self, png: bytes) -> tuple[bytes, int, int]:
        image = QImage.fromData(png, "PNG")
        if image.isNull():
            raise core.PluginError("the server's answer is not a PNG image")
        return self._bytes(image), image.width(), image.height()

    def resize(self, rgba: bytes, width: int, height: int, to: tuple[int, int]) -> bytes:
        image = QImage(rgba, width, height, width * 4, QImage.Format_RGBA8888)
        scaled = image.scaled(to[0], to[1], Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
        return self._bytes(scaled)

    @staticmethod
    def _bytes(image: QImage) -> bytes:
        image = image.convertToFormat(QImage.Format_RGBA8888)
        bits = image.constBits()
        bits.setsize(image.sizeInBytes())
        line, stride = image.width() * 4, image.bytesPerLine()
        data = bytes(bits)
        if stride == line:
            return data
        return b"".join(data[row * stride : row * stride + line] for row in range(image.height()))


CODEC = QtCodec()


@dataclass
class Job:
    """One Generate, read from the document: the request to send, and its answer's regions."""

    plan: core.EditPlan
    crop_rgba: bytes
    caption: str
    n: int
    seed: int | None
    guidance: float | None
    model: client.ServerModel

    def request(self) -> client.EditRequest:
        """The edit to send: the crop and its mask as PNGs, the caption and options."""
        image, mask = core.edit_images(self.plan, self.crop_rgba, CODEC)
        return client.EditRequest(
            self.caption, image, mask, self.n, self.seed, self.guidance, self.model.id
        )

    def regions(self, answer: client.Answer) -> list[bytes]:
        """The candidates' region pixels (RGBA, document resolution)."""
        return [core.region_from_answer(self.plan, png, CODEC) for png in answer.pngs]

    def generate(self, server: client.Server) -> tuple[list[bytes], client.Answer]:
        """The whole round trip, blocking (the end-to-end test; the docker sends it with
        Krita's network access instead)."""
        answer = server.edit(self.request())
        return self.regions(answer), answer


def check_document(document) -> tuple[int, int]:
    """The document's size; one line when there is none or it is not 8-bit RGBA."""
    if document is None:
        raise core.PluginError("no document is open: open or create a picture first")
    model, depth = document.colorModel(), document.colorDepth()
    if model != "RGBA" or depth != "U8":
        raise core.PluginError(
            f"the document is {model} {depth}; DALL·E Studio edits 8-bit RGBA documents "
            "(Image › Convert Image Color Space: RGB/Alpha, 8-bit integer)"
        )
    return document.width(), document.height()


def selection_bounds(document) -> tuple[int, int, int, int] | None:
    selection = document.selection()
    if selection is None:
        return None
    return selection.x(), selection.y(), selection.width(), selection.height()


def read_crop(document, plan: core.EditPlan) -> bytes:
    """The crop's RGBA pixels from the document's merged image."""
    crop = plan.crop
    document.refreshProjection()
    bgra = bytes(document.pixelData(crop.x, crop.y, crop.width, crop.height))
    if len(bgra) != crop.width * crop.height * 4:
        raise core.PluginError("Krita gave fewer pixels than the crop: is the document 8-bit RGBA?")
    return core.swap_red_blue(bgra)


def prepare(document, caption, n, seed, guidance, model: client.ServerModel) -> Job:
    """The Job for the document's selection (all on Krita's thread)."""
    if not caption.strip():
        raise core.PluginError("the caption is empty: describe what the region should show")
    size = check_document(document)
    region = core.region_of(selection_bounds(document), size)
    plan = core.plan_edit(region, size, model.image_size)
    return Job(plan, read_crop(document, plan), caption.strip(), n, seed, guidance, model)


def add_layers(document, job: Job, regions: list[bytes], seed: int | None) -> list:
    """One paint layer per candidate at the region's position, above the others; the first
    visible and active, the others hidden. Returns the new nodes. (Each layer is its own undo
    step: Krita 5.1's scripting has no way to group commands into one.)"""
    root, region = document.rootNode(), job.plan.region
    nodes = []
    for number, pixels in enumerate(regions):
        name = core.layer_name(job.caption, seed, number, len(regions))
        node = document.createNode(name, "paintlayer")
        root.addChildNode(node, None)
        node.setPixelData(
            core.swap_red_blue(pixels), region.x, region.y, region.width, region.height
        )
        node.setVisible(number == 0)
        nodes.append(node)
    document.waitForDone()
    if nodes:
        document.setActiveNode(nodes[0])
    document.refreshProjection()
    return nodes


def present(document, node) -> bool:
    """Whether ``node`` is still in the document (an undo removes a candidate's layer)."""
    return document.nodeByUniqueID(node.uniqueId()) is not None


def show_only(document, nodes: list, chosen) -> None:
    """Show the ``chosen`` candidate's layer and make it active, hide the other candidates'.
    A layer no longer in the document (undone): PluginError."""
    if not present(document, chosen):
        raise core.PluginError(
            f"the layer {chosen.name()!r} is no longer in the document (undone?): Generate again"
        )
    for node in nodes:
        node.setVisible(node == chosen)
    document.setActiveNode(chosen)
    document.refreshProjection()
