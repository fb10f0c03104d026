"""Caption box (with Alt+Up/Down history and example captions) and the sampling options."""

from __future__ import annotations

import random
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
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

SEED_MODES = ("random", "fixed", "increment")
MAX_SEED = 2**31 - 1


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


class CaptionPanel(QWidget):
    """Caption, examples, options, Generate and Cancel."""

    generate_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.caption = CaptionEdit()
        self.caption.submitted.connect(self.generate_requested)
        self.caption.textChanged.connect(self._count_tokens)
        self.tokenizer = None
        self.tokens = QLabel()  # "9 / 32 tokens"; says what is cut when the caption is too long
        self.tokens.setWordWrap(True)
        self.examples = QToolButton()
        self.examples.setText("Examples")
        self.examples.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.examples.setMenu(QMenu(self.examples))
        self.generate = QPushButton("Generate")
        self.generate.setToolTip("Generate (Enter in the caption, Ctrl+Enter)")
        self.generate.clicked.connect(self.generate_requested)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("Cancel (Esc)")
        self.cancel.clicked.connect(self.cancel_requested)
        self.cancel.setEnabled(False)

        self.candidates = QSpinBox()
        self.candidates.setRange(1, 16)
        self.candidates.setValue(4)
        self.seed_mode = QComboBox()
        self.seed_mode.addItems(SEED_MODES)
        self.seed = QSpinBox()
        self.seed.setRange(0, MAX_SEED)
        self.seed.setValue(1)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.05, 5.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(1.0)
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 16384)
        self.top_k.setSpecialValueText("off")
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 30.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setValue(1.0)

        row = QHBoxLayout()
        row.addWidget(self.examples)
        row.addStretch(1)
        row.addWidget(self.generate)
        row.addWidget(self.cancel)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed_mode)
        seed_row.addWidget(self.seed, 1)
        form = QFormLayout()
        form.addRow("Candidates", self.candidates)
        form.addRow("Seed", seed_row)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-k", self.top_k)
        form.addRow("Guidance", self.guidance)
        layout = QVBoxLayout(self)
        layout.addWidget(self.caption)
        layout.addWidget(self.tokens)
        layout.addLayout(row)
        layout.addLayout(form)
        layout.addStretch(1)

    def set_tokenizer(self, tokenizer) -> None:
        """The loaded model's tokenizer (None: no model), so the caption's length can be shown."""
        self.tokenizer = tokenizer
        self._count_tokens()

    def _count_tokens(self) -> None:
        if self.tokenizer is None:
            self.tokens.clear()
            return
        text, limit = self.caption.text(), self.tokenizer.text_len
        count = self.tokenizer.length(text)
        if count <= limit:
            self.tokens.setText(f"{count} / {limit} tokens")
            self.tokens.setStyleSheet("color: palette(mid);")
            return
        tail = " ".join(self.tokenizer.kept(text).split()[-4:])
        self.tokens.setText(f"{count} / {limit} tokens: the model reads up to “…{tail}”")
        self.tokens.setStyleSheet("color: #c62828;")

    def set_examples(self, captions: list[str]) -> None:
        menu = self.examples.menu()
        menu.clear()
        for caption in captions:
            menu.addAction(caption, lambda text=caption: self.caption.setText(text))
        self.examples.setEnabled(bool(captions))

    def set_running(self, running: bool) -> None:
        self.generate.setEnabled(not running)
        self.cancel.setEnabled(running)

    def next_seed(self) -> int | None:
        """The seed for the next run per the seed mode (random: None, a fresh one is drawn)."""
        mode = self.seed_mode.currentText()
        if mode == "random":
            return random.randint(0, MAX_SEED)
        return self.seed.value()

    def after_run(self, seed: int) -> None:
        """Show the used seed; increment mode moves on to the next one."""
        if self.seed_mode.currentText() == "increment":
            self.seed.setValue((seed + 1) % MAX_SEED)
        else:
            self.seed.setValue(seed)

    def options(self) -> dict[str, Any]:
        return {
            "n": self.candidates.value(),
            "temperature": round(self.temperature.value(), 4),
            "top_k": self.top_k.value(),
            "guidance": round(self.guidance.value(), 4),
        }
