"""Settings: device, sampling speed, model bundle and upscaler (kept with QSettings by the main
window)."""

from __future__ import annotations

import ntpath
from pathlib import PurePath
from typing import Any

from PySide6.QtCore import Qt
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

from studio.catalog import (
    BUNDLE_SUFFIX,
    UPSCALER_SUFFIX,
    available_devices,
    available_precisions,
    default_bundle_path,
    example_glosses,
    installed_upscalers,
    measured_figures,
    memory_summary,
    models_folder_path,
    read_card,
    same_model,
)
from studio.widgets.model_list import ModelList, open_models_folder

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
    """The card of the bundle at ``path`` (header only) as text a user reads, and the memory its
    loading needs, or why it cannot be read."""
    if not path:
        path = str(default_bundle_path())
    try:
        card = read_card(path)
    except (ValueError, OSError) as error:
        return f"Cannot read this bundle: {error}"
    text = readable_card(card if isinstance(card, dict) else {})
    memory = memory_summary(path)
    return text + (f"\nMemory: {memory}" if memory else "")


CARD_WIDTH_CHARS = 72  # an imported model's sources and licences read a line each
HASH_SHOWN = 16  # hex digits of an input's SHA-256 the card shows: enough to compare by eye


def _folder_name(value: Any) -> str:
    """A folder of whoever built the bundle, by its last part only: a user has no use for the
    folders of another machine (and they are that machine's business)."""
    text = str(value).replace("\\", "/")
    return PurePath(ntpath.splitdrive(text)[1]).name or text


def _training(stage: dict) -> str:
    train = stage.get("train") if isinstance(stage.get("train"), dict) else {}
    parts = []
    if stage.get("steps"):
        batch = train.get("batch_size")
        parts.append(f"{stage['steps']:,} steps" + (f" of {batch}" if batch else ""))
    if stage.get("device"):
        parts.append(f"on {stage['device']}")
    seconds = stage.get("wall_seconds_this_run")
    if isinstance(seconds, int | float) and seconds > 0:
        parts.append(f"in {seconds / 60:.0f} min")
    return " ".join(parts)


def _parameters(count: int) -> str:
    return f"{count / 1e9:.1f} B parameters" if count >= 1e9 else f"{count / 1e6:.1f} M parameters"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _imported(imported: dict[str, Any]) -> list[str]:
    """An imported model's card (``dalle import``): where its weights come from, their licence,
    how they are stored and the SHA-256 of each file it was made from."""
    if not imported:
        return []
    lines = []
    sources = _mapping(imported.get("sources"))
    if sources or imported.get("from"):
        lines.append(
            "Source: "
            + (f"converted with {imported['from']}" if imported.get("from") else "imported")
        )
        lines += [f"  • {part}: {where}" for part, where in sources.items()]
    licence = imported.get("licence")
    if isinstance(licence, dict) and licence:
        lines.append("Licence:")
        lines += [f"  • {part}: {terms}" for part, terms in licence.items()]
    elif licence:
        lines.append(f"Licence: {licence}")
    if imported.get("vqgan"):
        lines.append(f"Image tokenizer: {imported['vqgan']}")
    if imported.get("dtype"):
        lines.append(f"Weights stored in: {imported['dtype']}")
    files = _mapping(imported.get("files"))
    if files:
        lines.append("Made from (SHA-256):")
        for name, digest in files.items():
            lines.append(f"  • {_folder_name(name)} {str(digest)[:HASH_SHOWN]}…")
    return lines


def readable_card(card: dict[str, Any]) -> str:
    """Name, description, data, training, metrics and example captions, one fact a line."""
    lines = [f"Name: {card.get('name') or 'unnamed model'}"]
    if card.get("description"):
        lines.append(f"Description: {card['description']}")
    data = card.get("data") if isinstance(card.get("data"), dict) else {}
    if data:
        count = data.get("pairs") or data.get("images")
        folder = _folder_name(data.get("folder", "")) or "unnamed"
        lines.append(f"Data: {folder}" + (f" ({count:,} caption-image pairs)" if count else ""))
    if training := _training(card):
        lines.append(f"Training: {training}")
    if isinstance(card.get("parameters"), int):
        lines.append(f"Transformer: {_parameters(card['parameters'])}")
    imported = card.get("imported") if isinstance(card.get("imported"), dict) else {}
    lines += _imported(imported)
    vae = card.get("vae") if isinstance(card.get("vae"), dict) else {}
    if training := _training(vae):
        lines.append(f"dVAE training: {training}")
    reranker = card.get("reranker") if isinstance(card.get("reranker"), dict) else {}
    if reranker:
        lines.append(f"Reranker: yes ({_training(reranker) or 'trained'})")
    if figures := measured_figures(card):
        lines.append(f"Measured (dalle eval): {figures}")
    captions = card.get("example_captions")
    if isinstance(captions, list) and captions:
        glosses = example_glosses(card)
        lines.append("Example captions:")
        lines += [
            f"  • {caption}" + (f" ({glosses[caption]})" if caption in glosses else "")
            for caption in captions
        ]
    return "\n".join(lines)


UPSCALER_HELP = (
    "What draws the new region when the model saw the picture smaller than it is: Off (smooth "
    "resizing), Auto (the Real-ESRGAN shipped with the app) or an upscaler file imported with "
    "`dalle import realesrgan` (*.upscaler.safetensors)"
)
UPSCALER_ITEMS = (("Off", "off"), ("Auto (shipped Real-ESRGAN)", "auto"))
CHOOSE_UPSCALER = "Choose a file…"


class UpscalerBox(QComboBox):
    """Off, Auto, the upscaler files of the models folder, the chosen upscaler file when it is
    elsewhere, and an item that chooses another file."""

    def __init__(self, choice: str, parent=None):
        super().__init__(parent)
        self.setToolTip(UPSCALER_HELP)
        self._choice = "auto"
        self._installed = installed_upscalers()
        self._show(choice or "auto")
        self.activated.connect(self._activated)

    def _show(self, choice: str) -> None:
        self._choice = choice
        self.blockSignals(True)
        self.clear()
        for text, data in UPSCALER_ITEMS:
            self.addItem(text, data)
        a_file = choice not in ("off", "auto")
        for upscaler in self._installed:  # the models folder's, by their cards' names
            self._add_file(upscaler.headline, upscaler.choice, upscaler.problem)
            if a_file and same_model(upscaler.choice, choice):
                choice = self._choice = upscaler.choice  # one file, however its path is spelt
        if a_file and self.findData(choice) < 0:
            self._add_file(PurePath(choice).name, choice, "")
        self.addItem(CHOOSE_UPSCALER, None)
        self.setCurrentIndex(self.findData(choice))
        self.blockSignals(False)

    def _add_file(self, text: str, path: str, problem: str) -> None:
        """An upscaler file's item; one that cannot be read is shown greyed with the reason."""
        self.addItem(text + (f" ⚠ {problem}" if problem else ""), path)
        self.setItemData(self.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        if problem:
            self.model().item(self.count() - 1).setEnabled(False)

    def _activated(self, index: int) -> None:
        if self.itemData(index) is not None:
            self._choice = self.itemData(index)
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Open upscaler", str(models_folder_path()), f"Upscalers (*{UPSCALER_SUFFIX})"
        )
        self._show(path or self._choice)  # cancelled: the choice stays

    def choice(self) -> str:
        """ "off", "auto" or the upscaler file's path."""
        return self._choice


class SettingsDialog(QDialog):
    def __init__(
        self,
        device: str,
        bundle: str,
        parent=None,
        precision: str = "auto",
        compile: bool = False,
        upscaler: str = "auto",
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
        self.upscaler = UpscalerBox(upscaler)
        self.models = ModelList(bundle)  # a click chooses; a double click also confirms
        self.bundle = QLineEdit(bundle)
        self.bundle.setPlaceholderText(f"embedded default ({default_bundle_path().name})")
        self.bundle.setToolTip("The chosen model's file: a row above, or any bundle's path")
        browse = QPushButton("Other file…")
        browse.setToolTip(f"Open a model bundle kept elsewhere (*{BUNDLE_SUFFIX})")
        browse.clicked.connect(self._browse)
        folder = QPushButton("Open models folder")
        folder.setToolTip(f"Show {models_folder_path()} in the file manager")
        folder.clicked.connect(self._open_folder)
        self.card = QPlainTextEdit(readOnly=True)
        self.card.setMinimumHeight(200)
        self.card.setMinimumWidth(CARD_WIDTH_CHARS * self.card.fontMetrics().averageCharWidth())
        self.bundle.textChanged.connect(self._show_card)  # a method: no lambda outlives it
        self.models.chosen.connect(self.bundle.setText)
        self.models.confirmed.connect(self.accept)
        self.card.setPlainText(card_text(bundle))
        row = QHBoxLayout()
        row.addWidget(browse)
        row.addWidget(folder)
        row.addStretch(1)
        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow("", self.compile)
        form.addRow("Upscaler", self.upscaler)
        form.addRow("Model", self.models)
        form.addRow("", row)
        form.addRow("File", self.bundle)
        form.addRow("Model card", self.card)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def _show_card(self, path: str) -> None:
        self.card.setPlainText(card_text(path))
        self.models.select_choice(path.strip())  # a typed path that no row lists: none

    def _open_folder(self) -> None:
        open_models_folder(self)

    def _browse(self) -> None:
        start = self.bundle.text() or str(models_folder_path())
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model bundle", start, f"Model bundles (*{BUNDLE_SUFFIX})"
        )
        if path:
            self.models.include(path)  # its row, headline and size, like the installed ones
            self.bundle.setText(path)

    def values(self) -> tuple[str, str]:
        return self.device.currentText(), self.bundle.text().strip()

    def speed(self) -> tuple[str, bool]:
        """(precision, compile) as chosen."""
        return self.precision.currentText(), self.compile.isChecked()
