"""Help › About: the version, the model in use and its card's headline, the licences, and the
folder of the logs with a button that opens it (what a bug report needs)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import PySide6
from PySide6.QtCore import Qt, QUrl, qVersion
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from studio import project
from studio.catalog import TORCH_VERSION, measured_figures

DISTRIBUTION = "dalle-studio"  # pyproject.toml's name
LICENCES = (
    ("DALL·E Studio", "MIT"),
    ("the embedded model (trained here on generated scenes)", "MIT"),
    ("Qt and PySide6", "LGPL-3.0"),
    ("PyTorch", "BSD-3-Clause"),
    ("the shipped upscaler, Real-ESRGAN realesr-animevideov3 (Xintao Wang et al.)", "BSD-3-Clause"),
)


def version() -> str:
    """The installed version; a frozen build without package metadata says so."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (no package metadata)"


def logs_folder(folder: Path | None = None) -> Path:
    """Where ``studio.app`` writes studio.log: the app's data folder (or a selftest's)."""
    return (folder or project.data_dir()) / "logs"


def model_lines(session) -> list[str]:
    """The model in use, its card's headline and, for an imported model, its weights' licence."""
    if session.model_state != "loaded":
        return [f"Model: {'loading…' if session.model_state == 'loading' else 'none loaded'}"]
    card = session.card
    lines = [f"Model: {session.model_name}"]
    if card.get("description"):
        lines.append(str(card["description"]))
    if figures := measured_figures(card):
        lines.append(f"Measured: {figures}")
    licence = card.get("imported", {}).get("licence")
    if isinstance(licence, dict):
        lines += [f"Its {part} licence: {terms}" for part, terms in licence.items()]
    elif licence:
        lines.append(f"Its licence: {licence}")
    return lines


def text(session, logs: Path) -> str:
    """Everything the dialog says, as plain text (also what a test reads)."""
    lines = [
        f"DALL·E Studio {version()}",
        f"PySide6 {PySide6.__version__} (Qt {qVersion()}) · PyTorch {TORCH_VERSION}",
        "",
        *model_lines(session),
        "",
        "Licences:",
        *(f"  • {what}: {licence}" for what, licence in LICENCES),
        "",
        f"Logs: {logs}",
    ]
    return "\n".join(lines)


class AboutDialog(QDialog):
    def __init__(self, session, logs: Path, parent=None):
        super().__init__(parent)
        self.setWindowTitle("About DALL·E Studio")
        self.logs = logs
        self.label = QLabel(text(session, logs))
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_logs = QPushButton("Open the logs folder")
        self.open_logs.setToolTip(str(logs))
        self.open_logs.clicked.connect(self.show_logs)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(self.open_logs)
        layout.addWidget(buttons)

    def show_logs(self) -> bool:
        """Open the logs folder in the desktop's file manager (made first if it is not yet)."""
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the file manager says it is missing; the path is in the text to copy
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.logs)))
