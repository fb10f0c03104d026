"""Say what the model knows: a status-bar hint when the picture is far from its training data.

Every picture the session opens (and the picture again whenever the model changes) is measured
on the engine's worker (``Engine.measure_familiarity``: the tokenizer's reconstruction of it
against the model's own scenes, ``model.inference.familiarity``), so the Qt thread never waits. A
model that does not know scenes (an imported DALL·E Mega, ruDALL-E) is not measured at all.

What is measured is the picture's content: the image without its blank white margins
(``content``). A template's canvas (File › New from template) is mostly white paper around the
user's photo, and measured whole its typical cell was a flat white one: a photo there got no
warning (issue 28: 43 dB against a 47 dB reference, the photo alone 20 dB).

``FamiliarityHint`` is state, no widgets: ``changed`` carries the hint line ("" for none) and
``detail`` the figures behind it; the window shows them. An answer about a picture the session
has since left is dropped.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal

from studio import catalog, messages
from studio.document import Document
from studio.template import FILL

# the line fits the status bar of a 1280 px window beside the longest shipped model's name
FAR_HINT = (
    f"Far from what this model knows ({catalog.WORLD}): expect blocks. "
    "Try File › New scene, or real weights (README)"
)
FAR_EXPLAINED = (
    f"This picture is far from what this model was trained on ({catalog.WORLD}): a "
    "completion of it comes out in blocks of flat colour. File › New scene gives a picture it "
    "knows; for photos, import real weights (README: Real weights)."
)
FAR_BADGE = "⚠ far from this model's world"  # what stays once the user works on the picture


def content(image: np.ndarray) -> np.ndarray:
    """``image`` (H, W, 3) without its blank margins: the smallest box holding every pixel that
    is not the paper's white (``template.FILL``); a blank image is measured whole."""
    inked = (image != FILL).any(axis=2)
    if not inked.any():
        return image
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    return np.ascontiguousarray(image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


class FamiliarityHint(QObject):
    """The hint for the session's picture and model (see the module's docstring)."""

    changed = Signal(str)  # the hint line; "" when there is none

    def __init__(self, session, parent: QObject | None = None):
        super().__init__(parent)
        self.session = session
        self.text = ""
        self.detail = ""  # the hint explained and the figures, for a tooltip
        self._request = 0  # the number of the latest picture asked about
        session.document_changed.connect(self._document_changed)
        session.model_changed.connect(self.check)
        session.familiar.connect(self._received)

    def _document_changed(self, document: Document) -> None:
        self._set("", "")  # the last picture's hint says nothing of this one
        self.check()

    def check(self) -> None:
        """Measure the session's picture against the model now loaded (nothing to measure: no
        hint)."""
        session = self.session
        self._request += 1
        if not (session.loaded and session.knows_scenes):
            self._set("", "")
            return
        session.measure_familiarity(content(session.document.image), self._request)

    def _received(self, message) -> None:
        if not isinstance(message, messages.Familiar) or message.request != self._request:
            return
        detail = (
            f"Its typical token cell is redrawn at {message.typical_db:.0f} dB, this model's "
            f"own scenes at {message.reference_db:.0f} dB (far: more than "
            f"{message.far_below_db:.0f} dB below)."
        )
        if message.far:
            detail = f"{FAR_EXPLAINED}\n{detail}"
        self._set(FAR_HINT if message.far else "", detail)

    def _set(self, text: str, detail: str) -> None:
        self.detail = detail
        if text != self.text:
            self.text = text
            self.changed.emit(text)
