"""Settings: device and model bundle (kept with QSettings by the main window)."""

from __future__ import annotations

import json

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from studio.engine import BUNDLE_SUFFIX, available_devices, default_bundle_path, read_card


def card_text(path: str) -> str:
    """The card of the bundle at ``path`` (header only), or why it cannot be read."""
    if not path:
        path = str(default_bundle_path())
    try:
        return json.dumps(read_card(path), indent=2, ensure_ascii=False)
    except (ValueError, OSError) as error:
        return f"Cannot read this bundle: {error}"


class SettingsDialog(QDialog):
    def __init__(self, device: str, bundle: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.device = QComboBox()
        self.device.addItems(available_devices())
        if self.device.findText(device) >= 0:
            self.device.setCurrentText(device)
        self.bundle = QLineEdit(bundle)
        self.bundle.setPlaceholderText(f"embedded default ({default_bundle_path().name})")
        browse = QPushButton("Open…")
        browse.clicked.connect(self._browse)
        self.card = QPlainTextEdit(readOnly=True)
        self.card.setMinimumHeight(160)
        self.bundle.textChanged.connect(lambda text: self.card.setPlainText(card_text(text)))
        self.card.setPlainText(card_text(bundle))
        row = QHBoxLayout()
        row.addWidget(self.bundle, 1)
        row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Model bundle", row)
        form.addRow("Model card", self.card)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model bundle", self.bundle.text(), f"Model bundles (*{BUNDLE_SUFFIX})"
        )
        if path:
            self.bundle.setText(path)

    def values(self) -> tuple[str, str]:
        return self.device.currentText(), self.bundle.text().strip()
