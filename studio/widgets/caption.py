"""Caption box (with Alt+Up/Down history and example captions) and the sampling options.

A view of the session: every field shows the session's caption, options and seed mode and writes
its changes back; Generate and Cancel call the session.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QTextCursor, QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from model.config import SamplingOptions
from studio.session import MAX_LOOKAHEAD, MAX_SEED, SEED_MODES, Session

GENERATE_TIP = "Generate the rectangle from the caption (Enter in the caption, Ctrl+Enter)"
TOP_P_STEP = 0.05


class CaptionEdit(QPlainTextEdit):
    """The caption box. It wraps over three lines, so a long caption is read whole in a narrow
    dock. A caption is one line: Enter generates, and pasted line breaks become spaces.
    Alt+Up / Alt+Down walk the caption history.

    Its own undo covers only the typing since it last took focus or since the last Generate
    (``has_typing``); outside that, Ctrl+Z and the redo keys belong to the image's history (the
    main window routes them)."""

    submitted = Signal()
    LINES = 3

    def __init__(self, parent=None):
        super().__init__(parent)
        self.history: list[str] = []
        self._position = 0
        self.setPlaceholderText("Describe the region to regenerate…  (Enter)")
        self.setTabChangesFocus(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        margins = 2 * (self.document().documentMargin() + self.frameWidth())
        self.setFixedHeight(int(self.fontMetrics().lineSpacing() * self.LINES + margins) + 2)

    def text(self) -> str:
        return self.toPlainText()

    def has_typing(self, redo: bool = False) -> bool:
        """True while the box has typing of its own to undo (or, ``redo``, to redo)."""
        document = self.document()
        return document.isRedoAvailable() if redo else document.isUndoAvailable()

    def forget_typing(self) -> None:
        """The text so far is settled (focus came back, or it was generated from)."""
        self.document().clearUndoRedoStacks()

    def focusInEvent(self, event):
        # back from another window or a menu, the user is still typing where they left off
        if event.reason() not in (
            Qt.FocusReason.ActiveWindowFocusReason,
            Qt.FocusReason.PopupFocusReason,
        ):
            self.forget_typing()
        super().focusInEvent(event)

    def setText(self, text: str) -> None:
        self.setPlainText(" ".join(text.splitlines()))
        self.moveCursor(QTextCursor.MoveOperation.End)

    def select_span(self, start: int, end: int) -> None:
        """Select characters ``start`` to ``end``: typing replaces them (a template's blank)."""
        cursor = self.textCursor()
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        self.setTextCursor(cursor)

    def set_history(self, history: list[str]) -> None:
        self.history = list(history)
        self._position = len(self.history)

    def insertFromMimeData(self, source):
        self.insertPlainText(" ".join(source.text().splitlines()))

    def keyPressEvent(self, event):
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.forget_typing()
            self.submitted.emit()
            return
        if event.modifiers() & Qt.KeyboardModifier.AltModifier and self.history:
            if key == Qt.Key.Key_Up:
                self._position = max(0, self._position - 1)
                self.setText(self.history[self._position])
                return
            if key == Qt.Key.Key_Down:
                self._position = min(len(self.history), self._position + 1)
                inside = self._position < len(self.history)
                self.setText(self.history[self._position] if inside else "")
                return
        super().keyPressEvent(event)


class TopPBox(QDoubleSpinBox):
    """Top-p in (0, 1]; 1, the top of the range, reads "off" as top-k's 0 does."""

    OFF = "off"

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setDecimals(2)
        self.setRange(0.01, 1.0)  # (0, 1]: 0 would keep no token at all
        self.setSingleStep(TOP_P_STEP)
        self.setValue(1.0)

    def textFromValue(self, value: float) -> str:
        return self.OFF if value >= 1.0 else super().textFromValue(value)

    def valueFromText(self, text: str) -> float:
        return 1.0 if text.strip() == self.OFF else super().valueFromText(text)

    def validate(self, text: str, position: int):
        typed = text.strip()
        if typed == self.OFF:
            return QValidator.State.Acceptable, text, position
        if typed and self.OFF.startswith(typed):
            return QValidator.State.Intermediate, text, position
        return super().validate(text, position)


AREA_TIP = (
    "The part of the picture the model sees, scaled to its size: the whole picture, an area "
    "picked from the rectangle's size (auto), or a side in pixels (drag the dashed frame's "
    "top-left corner on the canvas)"
)


TO_CORNER_TIP = (
    "On: the region reaches the picture's bottom-right corner (DALL·E's own rectangle) and a "
    "drag places its top-left. Off: a drag selects the region from corner to corner, as a "
    "selection tool does; its bottom-right handle resizes it"
)
LOOKAHEAD_TIP = (
    "Candidates sampled for each one kept: the model scores how well each fits the kept "
    "picture right of and below the region, and the best are kept (1: off)"
)


class AreaBox(QComboBox):
    """The working area choice: the model's default, auto, whole, or the side dragged on the
    canvas (shown as its own item while chosen)."""

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.setToolTip(AREA_TIP)
        self._fill()
        self.activated.connect(lambda index: session.set_area_choice(self.itemData(index)))
        session.area_changed.connect(self._fill)
        session.model_changed.connect(self._fill)

    def _fill(self, *_) -> None:
        session = self.session
        choices: list[tuple[str, object]] = [
            (f"Model default ({session.default_area})", None),
            ("Auto", "auto"),
            ("Whole picture", "whole"),
        ]
        if isinstance(session.area_choice, int):
            choices.append((f"{session.area_choice} px square", session.area_choice))
        self.blockSignals(True)
        self.clear()
        for text, data in choices:
            self.addItem(text, data)
        self.setCurrentIndex([data for _, data in choices].index(session.area_choice))
        self.blockSignals(False)


class CaptionPanel(QWidget):
    """Caption, examples, options, Generate and Cancel, bound to a Session."""

    generate_requested = Signal()
    generate_refused = Signal(str)  # Enter while Generate is off: why (for the status line)
    cancel_requested = Signal()

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self.blocked = ""  # why Generate is off besides a running job ("" when it is not)
        self.caption = CaptionEdit()
        self.caption.submitted.connect(self._submitted)
        self.caption.textChanged.connect(self._caption_edited)
        self.tokens = QLabel()  # "9 / 32 tokens"; says what is cut when the caption is too long
        self.tokens.setWordWrap(True)
        self.examples = QToolButton()
        self.examples.setText("Examples")
        self.examples.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.examples.setMenu(QMenu(self.examples))
        self.generate = QPushButton("Generate")
        self.generate.setToolTip(GENERATE_TIP)
        self.generate.clicked.connect(self.generate_requested)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Cancel (Esc)")
        self.cancel.clicked.connect(self.cancel_requested)
        self.cancel.setEnabled(False)
        self.generate_requested.connect(session.generate)
        self.cancel_requested.connect(session.cancel)
        self._build_options()
        self._lay_out()
        self._show_options(session.options)
        self._show_seed_mode(session.seed_mode)
        self._show_model()
        self._show_caption_history()
        self.caption.setText(session.caption)
        session.caption_changed.connect(self._show_caption)
        session.options_changed.connect(self._show_options)
        session.seed_mode_changed.connect(self._show_seed_mode)
        session.model_changed.connect(self._show_model)
        session.running_changed.connect(self.set_running)
        session.document_changed.connect(self._show_caption_history)
        session.finished.connect(self._show_caption_history)

    def _build_options(self) -> None:
        session = self.session
        self.candidates = QSpinBox()
        self.candidates.setRange(1, 16)
        self.candidates.valueChanged.connect(lambda n: session.set_options(n=n))
        self.seed_mode = QComboBox()
        self.seed_mode.addItems(SEED_MODES)
        self.seed_mode.currentTextChanged.connect(session.set_seed_mode)
        self.seed = QSpinBox()
        self.seed.setRange(0, MAX_SEED)
        self.seed.valueChanged.connect(lambda seed: session.set_options(seed=seed))
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.05, 5.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.valueChanged.connect(
            lambda value: session.set_options(temperature=round(value, 4))
        )
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 16384)
        self.top_k.setSpecialValueText("off")
        self.top_k.valueChanged.connect(lambda k: session.set_options(top_k=k))
        self.top_p = TopPBox()
        self.top_p.setToolTip("Sample only from the most likely tokens that make up this share")
        self.top_p.valueChanged.connect(lambda p: session.set_options(top_p=round(p, 4)))
        self.area = AreaBox(session)
        self.to_corner = QCheckBox("To the corner")
        self.to_corner.setToolTip(TO_CORNER_TIP)
        self.to_corner.setChecked(session.to_corner)
        self.to_corner.toggled.connect(session.set_to_corner)
        session.to_corner_changed.connect(self.to_corner.setChecked)
        self.lookahead = QSpinBox()
        self.lookahead.setRange(1, MAX_LOOKAHEAD)
        self.lookahead.setToolTip(LOOKAHEAD_TIP)
        self.lookahead.setValue(session.lookahead)
        self.lookahead.valueChanged.connect(session.set_lookahead)
        session.lookahead_changed.connect(self.lookahead.setValue)
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 30.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.valueChanged.connect(
            lambda value: session.set_options(guidance=round(value, 4))
        )

    def _lay_out(self) -> None:
        row = QHBoxLayout()
        row.addWidget(self.examples)
        row.addStretch(1)
        row.addWidget(self.generate)
        row.addWidget(self.cancel)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed_mode)
        seed_row.addWidget(self.seed, 1)
        sampling_row = QHBoxLayout()
        sampling_row.addWidget(self.top_k, 1)
        sampling_row.addWidget(QLabel("Top-p"))
        sampling_row.addWidget(self.top_p, 1)
        form = QFormLayout()
        form.addRow("Candidates", self.candidates)
        form.addRow("Seed", seed_row)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-k", sampling_row)
        form.addRow("Guidance", self.guidance)
        area_row = QHBoxLayout()
        area_row.addWidget(self.area, 1)
        area_row.addWidget(self.to_corner)
        form.addRow("Working area", area_row)
        form.addRow("Lookahead", self.lookahead)
        layout = QVBoxLayout(self)
        layout.addWidget(self.caption)
        layout.addWidget(self.tokens)
        layout.addLayout(row)
        layout.addLayout(form)
        layout.addStretch(1)

    # -- from the session ---------------------------------------------------------------

    def _show_options(self, options: SamplingOptions) -> None:
        """Show ``options`` without writing them back (a field rounds to its decimals)."""
        values = {
            self.candidates: options.n,
            self.seed: options.seed if options.seed is not None else 0,
            self.temperature: options.temperature,
            self.top_k: options.top_k,
            self.top_p: options.top_p,
            self.guidance: options.guidance,
        }
        for field, value in values.items():
            field.blockSignals(True)
            field.setValue(value)
            field.blockSignals(False)

    def _show_seed_mode(self, mode: str) -> None:
        self.seed_mode.setCurrentText(mode)

    def _show_caption(self, caption: str) -> None:
        if caption != self.caption.text():
            self.caption.setText(caption)

    def _caption_edited(self) -> None:
        self.session.set_caption(self.caption.text())
        self._count_tokens()

    def _show_caption_history(self, *_) -> None:
        self.caption.set_history(self.session.document.caption_history)

    def _show_model(self) -> None:
        self.set_examples(self.session.examples, self.session.glosses)
        self._count_tokens()

    def _count_tokens(self) -> None:
        tokenizer = self.session.tokenizer
        if tokenizer is None:
            self.tokens.clear()
            return
        # the positions every caption takes whatever it says (DALL·E Mega's <s> and </s>; none
        # for ours) are not the user's: an empty box reads "0 / 62 tokens", not "2 / 64"
        reserved = tokenizer.length("")
        text, limit = self.caption.text(), tokenizer.text_len - reserved
        count = tokenizer.length(text) - reserved
        if count <= limit:
            self.tokens.setText(f"{count} / {limit} tokens")
            self.tokens.setStyleSheet("color: palette(mid);")
            return
        tail = " ".join(tokenizer.kept(text).split()[-4:])
        self.tokens.setText(f"{count} / {limit} tokens: the model reads up to “…{tail}”")
        self.tokens.setStyleSheet("color: #c62828;")

    def set_examples(self, captions: list[str], glosses: dict[str, str] | None = None) -> None:
        """The Examples menu: each caption, with its English gloss beside it when the model's
        card gives one (ruDALL-E's Russian captions); choosing one sets the caption alone."""
        menu = self.examples.menu()
        menu.clear()
        glosses = glosses or {}
        for caption in captions:
            label = f"{caption}  —  {glosses[caption]}" if caption in glosses else caption
            action = menu.addAction(label, lambda text=caption: self.caption.setText(text))
            if caption in glosses:
                action.setToolTip(glosses[caption])
        menu.setToolTipsVisible(bool(glosses))
        self.examples.setEnabled(bool(captions))

    def _submitted(self) -> None:
        if self.blocked:
            self.generate_refused.emit(self.blocked)
        else:
            self.generate_requested.emit()

    def set_generate_blocked(self, reason: str) -> None:
        """Generate is off while ``reason`` holds ("" : on), the reason as its tooltip."""
        self.blocked = reason
        self.generate.setEnabled(not reason and not self.session.running)
        self.generate.setToolTip(reason or GENERATE_TIP)

    def set_running(self, running: bool) -> None:
        self.generate.setEnabled(not running and not self.blocked)
        self.cancel.setEnabled(running)
        self.area.setEnabled(not running)  # the running job's area is fixed, as its rectangle
        self.to_corner.setEnabled(not running)
        self.lookahead.setEnabled(not running)
        if running:
            self.caption.forget_typing()  # generated from: Ctrl+Z is the image's again
