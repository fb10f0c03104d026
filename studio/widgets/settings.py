"""Settings: device, sampling speed and model bundle (kept with QSettings by the main window)."""

from __future__ import annotations

import json

from PySide6.QtWidgets import (
    QCheckBox,
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

from studio.engine import (
    BUNDLE_SUFFIX,
    available_devices,
    available_precisions,
    default_bundle_path,
    read_card,
)

PRECISION_HELP = (
    "auto: bf16 on a CUDA GPU, int8 weights on x86 CPUs, fp32 elsewhere. "
    "fp32 is the exact reference; bf16 and int8 are faster and sample slightly different images."
)
COMPILE_HELP = (
    "Compile the model's decoding step with torch.compile: sampling is up to about 2x faster, "
    "but the first generation with each number of candidates waits while it compiles "
    "(about 10-20 s). Needs a C++ compiler on CPU; without one it samples as before."
)


def card_text(path: str) -> str:
    """The card of the bundle at ``path`` (header only), or why it cannot be read."""
    if not path:
        path = str(default_bundle_path())
    try:
        return json.dumps(read_card(path), indent=2, ensure_ascii=False)
    except (ValueError, OSError) as error:
        return f"Cannot read this bundle: {error}"


class SettingsDialog(QDialog):
    def __init__(
        self,
        device: str,
        bundle: str,
        parent=None,
        precision: str = "auto",
        compile: bool = False,
    ):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.device = QComboBox()
        self.device.addItems(available_devices())
        if self.device.findText(device) >= 0:
            self.device.setCurrentText(device)
        self.precision = QComboBox()
        self.precision.addItems(available_precisions())
        self.precision.setToolTip(PRECISION_HELP)
        if self.precision.findText(precision) >= 0:
            self.precision.setCurrentText(precision)
        self.compile = QCheckBox("Compile for faster sampling")
        self.compile.setToolTip(COMPILE_HELP)
        self.compile.setChecked(compile)
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
        form.addRow("Precision", self.precision)
        form.addRow("", self.compile)
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

    def speed(self) -> tuple[str, bool]:
        """(precision, compile) as chosen."""
        return self.precision.currentText(), self.compile.isChecked()
