"""File › Import model…: choose what to import and the folder holding its files; see which were
found and, for each one missing, its name and the repository it comes from; see the memory and
disk the conversion and the model need against what this machine has; convert with a progress
bar and Cancel; then use the new model at once.

A view of ``studio.importing`` (the plan and the worker; no torch here). When an import ends the
dialog offers "Use it now": ``use_bundle`` (a model bundle: the window loads it as Settings' OK
does) or ``use_upscaler`` (an upscaler: the window sets it as Settings › Upscaler does); a dVAE
file is not a model to draw with, and the dialog says what it is for instead.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from studio.importing import KINDS, ImportJob, ImportPlan, kinds

FOUND, MISSING, OPTIONAL = "found", "missing", "optional, not found"
MISSING_COLOUR, FOUND_COLOUR = "#b00020", "#1b5e20"
ERROR_STYLE = f"color: {MISSING_COLOUR}"
FINE_STYLE = f"color: {FOUND_COLOUR}"


class ImportDialog(QDialog):
    """See the module. ``models`` is the folder the import writes into."""

    use_bundle = Signal(str)
    use_upscaler = Signal(str)

    def __init__(self, models: Path, parent=None, folder: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Import model")
        self.models = Path(models)
        self.plan: ImportPlan | None = None
        self.job: ImportJob | None = None
        self.written = ""  # the file the last import wrote
        self.errors: list[str] = []  # every error line shown (tests)
        self.last_step = (0, 0)  # the last (step, steps) the import reported

        self.kind = QComboBox()
        for kind in KINDS.values():
            self.kind.addItem(kind.title, kind.key)
        self.folder = QLineEdit(folder)
        self.folder.setPlaceholderText("the folder holding the downloaded files")
        choose = QPushButton("Choose…")
        choose.setAutoDefault(False)
        choose.clicked.connect(self._choose_folder)
        self.dtype = QComboBox()
        self.dtype.setToolTip("the transformer's stored precision: bf16 halves fp32's size")
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(choose)
        form = QFormLayout()
        form.addRow("Import", self.kind)
        form.addRow("From folder", row)
        form.addRow("Precision", self.dtype)

        self.files = QTreeWidget()
        self.files.setHeaderLabels(["File", "Status", "What it is / where to download it"])
        self.files.setRootIsDecorated(False)
        self.files.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.files.setMinimumSize(720, 170)
        self.needs = QLabel()
        self.output = QLabel()
        self.note = QLabel()
        self.error = QLabel()
        self.error.setStyleSheet(ERROR_STYLE)
        self.status = QLabel()
        for label in (self.needs, self.output, self.note, self.error, self.status):
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.PlainText)  # an error may quote '<s>'
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        policy = self.progress.sizePolicy()
        policy.setRetainSizeWhenHidden(True)  # the dialog keeps its layout when it shows
        self.progress.setSizePolicy(policy)
        self.progress.setVisible(False)

        self.import_button = QPushButton("Import")  # never the default: Enter in the folder
        self.import_button.setAutoDefault(False)  # field must not start a conversion
        self.import_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAutoDefault(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button = QPushButton("Use it now")
        self.use_button.setVisible(False)
        self.use_button.clicked.connect(self.use_it)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.use_button, self.import_button, self.cancel_button):
            buttons.addWidget(button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.files, 1)
        for widget in (self.needs, self.output, self.note, self.progress, self.status, self.error):
            layout.addWidget(widget)
        layout.addLayout(buttons)

        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.folder.textChanged.connect(self.refresh)
        self.dtype.currentIndexChanged.connect(self.refresh)
        self._kind_changed()
        self.resize(820, 540)  # room for the files, the needs and the progress without squeezing

    # -- choosing --------------------------------------------------------------------------

    def choose(self, key: str, folder: str | Path = "", dtype: str = "") -> None:
        """Choose a kind, a folder and a precision as the user would (tests, the window)."""
        self.kind.setCurrentIndex(self.kind.findData(key))
        if folder:
            self.folder.setText(str(folder))
        if dtype:
            self.dtype.setCurrentText(dtype)
        self.refresh()

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder with the files", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def _kind_changed(self) -> None:
        kind = KINDS[self.kind.currentData()]
        self.dtype.blockSignals(True)
        self.dtype.clear()
        self.dtype.addItems(list(kind.dtypes))
        self.dtype.setEnabled(bool(kind.dtypes))
        self.dtype.blockSignals(False)
        self.note.setText(kind.note.replace("`", ""))
        self.note.setVisible(bool(kind.note))
        self.refresh()

    def refresh(self) -> None:
        """The files found and missing, the needs and the output for the current choice."""
        if self.running:
            return
        folder = self.folder.text().strip()
        kind = KINDS[self.kind.currentData()]
        self.files.clear()
        self.use_button.setVisible(False)
        self.status.setText("")  # what an earlier import said is not about this folder
        if not folder or not Path(folder).is_dir():
            self.plan = None
            self._list_sources(kind, None)
            self.needs.setText("")
            self.output.setText("")
            self._show_error(f"{folder}: no such folder" if folder else "")
            self.import_button.setEnabled(False)
            return
        self.plan = ImportPlan.of(kind.key, folder, self.dtype.currentText(), self.models)
        self._list_sources(kind, self.plan.scan)
        self._show_needs(self.plan)
        short = self.plan.short_of
        self._show_error(short, log=False)
        self.import_button.setEnabled(self.plan.scan.complete and not short)

    def _list_sources(self, kind, scan) -> None:
        """A row per file: its name, found or missing, and what it is or where it comes from."""
        for source in kind.sources:
            path = scan.found.get(source.role) if scan else None
            if path is not None:
                size = kinds.size_text(path.stat().st_size)
                row = [path.name, f"{FOUND} ({size})", source.what]
            else:
                names = " or ".join(source.names)
                status = OPTIONAL if source.optional else MISSING
                row = [names, status, f"download from {source.repository.address}"]
            item = QTreeWidgetItem(row)
            item.setToolTip(2, f"{source.what}: {source.repository.text}")
            colour = MISSING_COLOUR if path is None and not source.optional else FOUND_COLOUR
            item.setForeground(1, QBrush(QColor(colour)))
            self.files.addTopLevelItem(item)

    def _show_needs(self, plan: ImportPlan) -> None:
        size, needs = kinds.size_text, plan.needs
        ram = "unknown" if plan.free_memory is None else f"{size(plan.free_memory)} available"
        self.needs.setText(
            f"Converting needs about {size(needs.memory)} of memory ({ram}) and "
            f"{size(needs.disk)} of disk ({size(plan.free_disk)} free in the models folder); "
            f"the model needs about {size(needs.model_memory)} of memory to run. "
            f"Based on {needs.basis}."
        )
        taken = " (the usual name is taken: a new one, nothing is replaced)" if plan.renamed else ""
        self.output.setText(f"Writes {plan.out}{taken}")
        weights = plan.scan.found.get("weights")
        command = plan.scan.kind.command.format(
            folder=plan.scan.folder, out=plan.out, file=weights.name if weights else ""
        )
        self.output.setToolTip(f"The same from the command line: {command}")

    def _show_error(self, text: str, log: bool = True) -> None:
        self.error.setText(text)
        self.error.setVisible(bool(text))
        if text and log:
            self.errors.append(text)

    # -- importing -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self) -> None:
        """Import the current plan on a worker (Import's click)."""
        self.refresh()
        if self.plan is None or not self.import_button.isEnabled():
            return
        self.job = ImportJob(self.plan, self)
        self.job.stepped.connect(self._stepped)
        self.job.finished.connect(self._finished)
        self.job.failed.connect(self._failed)
        self.job.cancelled.connect(self._cancelled)
        for widget in (self.kind, self.folder, self.dtype, self.import_button):
            widget.setEnabled(False)
        self._show_error("")
        self.status.setStyleSheet("")
        self.progress.setRange(0, self.job.steps)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.status.setText(f"Importing {self.plan.scan.kind.title}…")
        self.job.start()

    def cancel(self) -> None:
        """Cancel's click: stop the import (the dialog stays), or close the dialog."""
        if self.job is not None:
            self.status.setText("Cancelling after the current step…")
            self.cancel_button.setEnabled(False)
            self.job.cancel()
        else:
            self.reject()

    def _stepped(self, done: int, steps: int, message: str) -> None:
        self.last_step = (done, steps)
        self.progress.setValue(done)
        self.status.setText(f"Step {done} of {steps}: {message}")

    def _ended(self) -> None:
        self.job = None
        for widget in (self.kind, self.folder, self.cancel_button):
            widget.setEnabled(True)
        self.dtype.setEnabled(self.dtype.count() > 0)
        self.cancel_button.setText("Close")

    def _finished(self, path: str) -> None:
        self._ended()
        self.written = path
        self.progress.setValue(self.progress.maximum())
        kind = KINDS[self.kind.currentData()]
        self.refresh()  # the next import gets a new name
        self.output.setText(f"Wrote {path}")
        self.progress.setVisible(True)
        if kind.output == kinds.DVAE:
            self.status.setText(f"Done: {path}. {kind.note.replace('`', '')}.")
        else:
            what = "model" if kind.output == kinds.BUNDLE else "upscaler"
            self.status.setText(f"Done: {path}. Use it now to switch the studio to this {what}.")
            self.use_button.setVisible(True)
            self.use_button.setDefault(True)
        self.status.setStyleSheet(FINE_STYLE)

    def _failed(self, message: str) -> None:
        self._ended()
        self.progress.setVisible(False)
        self.refresh()
        self.status.setText("Nothing was written.")
        self._show_error(message)

    def _cancelled(self) -> None:
        self._ended()
        self.progress.setVisible(False)
        self.refresh()
        self.status.setText("Cancelled: nothing was written.")

    def use_it(self) -> None:
        """Use it now: the window switches to the written model or upscaler, and the dialog
        closes."""
        if not self.written:
            return
        if self.written.endswith(kinds.UPSCALER_SUFFIX):
            self.use_upscaler.emit(self.written)
        else:
            self.use_bundle.emit(self.written)
        self.accept()

    def reject(self) -> None:
        """Closing (Escape, the title bar) while importing cancels the import first."""
        if self.job is not None:
            self.cancel()
            return
        super().reject()
