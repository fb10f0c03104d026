"""The main window: wires the document, the engine and the views together.

It owns no state of its own beyond the window: the image, rectangle, candidates and history are
the Document's; the model is the Engine's. Every engine message is handled on the Qt thread (the
engine's signal is queued here from its worker). Errors are shown without blocking the loop and
never touch the image.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from studio import engine as messages
from studio import project
from studio.document import Document
from studio.engine import IMAGE_SUFFIXES, Engine, Job
from studio.widgets.candidates import CandidateStrip
from studio.widgets.canvas import Canvas
from studio.widgets.caption import CaptionPanel
from studio.widgets.history import HistoryPanel
from studio.widgets.settings import SettingsDialog

log = logging.getLogger(__name__)

AUTOSAVE_MS = 60_000
MAX_RECENT = 10
IMAGE_FILTER = "Images (" + " ".join(f"*{s}" for s in IMAGE_SUFFIXES) + ")"
PROJECT_FILTER = f"DALL·E Studio projects (*{project.SUFFIX})"


def qimage_to_array(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    data = np.frombuffer(image.constBits(), np.uint8, count=stride * height)
    return data.reshape(height, stride)[:, : width * 3].reshape(height, width, 3).copy()


class MainWindow(QMainWindow):
    def __init__(
        self, engine: Engine, settings: QSettings | None = None, autosave_folder: Path | None = None
    ):
        super().__init__()
        self.setWindowTitle("DALL·E Studio")
        self.setAcceptDrops(True)
        self.engine = engine
        self.settings = settings or QSettings()
        self.apply_speed_settings()
        self.autosave_folder = autosave_folder
        self.ask_before_close = True
        self.errors: list[str] = []  # every message shown, for tests and the selftest
        self.model_name = ""
        self.job: Job | None = None
        self._autosaved_at = -1
        self.document: Document | None = None

        self.canvas = Canvas()
        self.strip = CandidateStrip()
        self.strip.setVisible(False)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.strip)
        self.setCentralWidget(central)

        self.caption = CaptionPanel()
        self.caption.generate_requested.connect(self.generate)
        self.caption.cancel_requested.connect(self.cancel)
        self.history = HistoryPanel()
        self.history.export_requested.connect(self.export_entry)
        for title, widget in (("Caption", self.caption), ("History", self.history)):
            dock = QDockWidget(title, self)
            dock.setObjectName(title)
            dock.setWidget(widget)
            dock.setFeatures(
                QDockWidget.DockWidgetFeature.DockWidgetMovable
                | QDockWidget.DockWidgetFeature.DockWidgetFloatable
            )
            self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)

        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.progress_label = QLabel()
        self.device_label = QLabel("device: —")
        self.model_label = QLabel("model: loading…")
        self.speed_label = QLabel("")
        status = self.statusBar()
        status.addWidget(self.progress_label)
        status.addWidget(self.progress)
        for label in (self.speed_label, self.model_label, self.device_label):
            status.addPermanentWidget(label)

        self._build_actions()
        engine.message.connect(self.on_message)
        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start(AUTOSAVE_MS)
        self.set_document(Document())
        self.resize(1280, 820)

    # -- actions ------------------------------------------------------------------------

    def _action(self, menu, text, slot, *shortcuts) -> QAction:
        action = QAction(text, self)
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
        action.triggered.connect(slot)
        menu.addAction(action)
        self.addAction(action)  # shortcuts work while the menu bar is hidden too
        return action

    def _build_actions(self) -> None:
        bar = self.menuBar()
        files = bar.addMenu("&File")
        self._action(files, "&Open image…", self.open_image_dialog, QKeySequence.StandardKey.Open)
        self._action(files, "Open &project…", self.open_project_dialog, "Ctrl+Shift+O")
        self.recent_menu = files.addMenu("Open &recent")
        self._action(files, "&Save project", self.save_project, QKeySequence.StandardKey.Save)
        self._action(files, "Save project &as…", self.save_project_as, "Ctrl+Shift+S")
        self._action(files, "&Export PNG…", self.export_png, "Ctrl+Shift+E")
        self._action(files, "&Paste image", self.paste_image, QKeySequence.StandardKey.Paste)
        files.addSeparator()
        self._action(files, "Se&ttings…", self.open_settings, "Ctrl+,")
        self._action(files, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        edit = bar.addMenu("&Edit")
        self.undo_action = self._action(edit, "&Undo", self._undo, "Ctrl+Z")
        self.redo_action = self._action(edit, "&Redo", self._redo, "Ctrl+Shift+Z", "Ctrl+Y")
        view = bar.addMenu("&View")
        self._action(view, "&Fit", self.canvas.fit, "Ctrl+0")
        self._action(view, "&100 %", self.canvas.actual_size, "Ctrl+1")
        self._action(
            view,
            "Zoom &in",
            lambda: self.canvas.set_zoom(self.canvas.zoom * 1.25),
            "Ctrl++",
            "Ctrl+=",
        )
        self._action(
            view, "Zoom &out", lambda: self.canvas.set_zoom(self.canvas.zoom / 1.25), "Ctrl+-"
        )
        self.grid_action = self._action(view, "Token &grid", self.canvas.set_show_grid, "Ctrl+G")
        self.grid_action.setCheckable(True)
        run = bar.addMenu("&Generate")
        self.generate_action = self._action(
            run, "&Generate", self.generate, "Ctrl+Return", "Ctrl+Enter"
        )
        self._action(run, "&Cancel / discard", self.escape, "Esc")
        self._action(run, "&Accept candidate", self.accept_candidate, "Ctrl+Shift+Return")
        self._update_recent_menu()

    def _undo(self) -> None:
        self.document.undo_stack.undo()

    def _redo(self) -> None:
        self.document.undo_stack.redo()

    # -- document -----------------------------------------------------------------------

    def set_document(self, document: Document) -> None:
        if self.job is not None:  # its results belong to the image being left: drop them
            self.engine.cancel()
            self.job = None
        if self.document is not None:
            if self.document.generating:
                self.document.end_generation()
            self.document.generating_changed.disconnect(self._generating_changed)
            self.document.progress_changed.disconnect(self._progress)
            self.document.rectangle_changed.disconnect(self._rectangle_changed)
            self.document.modified_changed.disconnect(self._update_title)
        if self.engine.loaded:
            document.set_model_geometry(self.engine.geometry_size, self.engine.geometry_factor)
        self.document = document
        document.generating_changed.connect(self._generating_changed)
        document.progress_changed.connect(self._progress)
        document.rectangle_changed.connect(self._rectangle_changed)
        document.modified_changed.connect(self._update_title)
        self.canvas.set_document(document)
        self.strip.set_document(document)
        self.history.set_document(document)
        self.caption.caption.set_history(document.caption_history)
        self._update_title()
        self._rectangle_changed()

    def _update_title(self, *_) -> None:
        name = Path(self.document.path or self.document.source_path or "untitled").name
        star = "*" if not self.document.undo_stack.isClean() else ""
        self.setWindowTitle(f"{name}{star} — DALL·E Studio")

    def _rectangle_changed(self) -> None:
        document = self.document
        if document.cell is not None:
            self.progress_label.setText(
                f"rectangle from cell {document.cell} · {document.masked_cells} cells"
            )
        else:
            self.progress_label.setText(
                "drag on the image to mark the region to regenerate "
                "(it reaches the bottom-right corner)"
            )

    # -- engine messages ----------------------------------------------------------------

    def load_model(self, bundle: str | None, device: str) -> None:
        self.model_label.setText("model: loading…")
        self.engine.load(bundle or None, device)

    def on_message(self, message) -> None:
        if isinstance(message, messages.Loaded):
            self.model_name = message.name
            self.model_label.setText(f"model: {message.name}")
            self.model_label.setToolTip(message.path)
            compiled = " · compiled" if self.engine.compile else ""
            self.device_label.setText(f"device: {message.device} · {message.precision}{compiled}")
            self.document.set_model_geometry(message.size, message.factor)
            self.caption.set_examples([str(c) for c in message.card.get("example_captions", [])])
            self.caption.set_tokenizer(message.tokenizer)
        elif isinstance(message, messages.LoadFailed):
            self.model_label.setText("model: none")
            self.show_error(message.message)
        elif self.job is None or getattr(message, "job", None) != self.job.id:
            return  # a stale message from a job the user already left
        elif isinstance(message, messages.RowDecoded):
            self.document.show_row(
                message.preview,
                message.rows_done,
                message.rows_total,
                message.tokens_per_s,
                message.eta_s,
            )
        elif isinstance(message, messages.Compiling):
            self.progress_label.setText(
                f"compiling the model for {message.batch} rows at once "
                "(once per number of candidates, 10–20 s)…"
            )
        elif isinstance(message, messages.Finished):
            job, self.job = self.job, None
            options = dict(self._job_options(job), seconds=round(message.seconds, 2))
            self.document.finish_generation(
                message.candidates,
                job.caption,
                job.cell,
                message.seed,
                options,
                self.model_name,
                previewed=message.previewed,
            )
            self.caption.after_run(message.seed)
            self.caption.caption.set_history(self.document.caption_history)
            self._speed(message.tokens_per_s, job.n)
            self.progress_label.setText(
                f"{len(message.candidates)} candidates in {message.seconds:.1f} s — "
                "←/→ browse, Enter accepts, Esc discards"
            )
        elif isinstance(message, messages.Failed):
            self.job = None
            self.document.end_generation()
            self.show_error(message.message)
        elif isinstance(message, messages.Cancelled):
            self.job = None
            self.document.end_generation()
            self.progress_label.setText("cancelled — the image is unchanged")

    def _speed(self, tokens_per_s: float, n: int) -> None:
        self.speed_label.setText(f"{tokens_per_s:.0f} tokens/s")
        if tokens_per_s > 0:
            self.canvas.eta_per_cell = n / tokens_per_s
            self.canvas.viewport().update()

    @staticmethod
    def _job_options(job: Job) -> dict:
        return {
            "n": job.n,
            "temperature": job.temperature,
            "top_k": job.top_k,
            "guidance": job.guidance,
        }

    def _generating_changed(self, running: bool) -> None:
        self.caption.set_running(running)
        self.progress.setVisible(running)
        self.progress.setValue(0)

    def _progress(self, rows_done: int, rows_total: int, speed: float, eta: float) -> None:
        self.progress.setMaximum(rows_total)
        self.progress.setValue(rows_done)
        self.progress_label.setText(
            f"row {rows_done}/{rows_total} · {speed:.0f} tokens/s · ETA {eta:.0f} s"
        )
        self.speed_label.setText(f"{speed:.0f} tokens/s")

    def show_error(self, text: str) -> None:
        """Show ``text`` without blocking the event loop (and keep it for the log)."""
        log.warning("%s", text)
        self.errors.append(text)
        self.progress_label.setText(text)
        box = QMessageBox(
            QMessageBox.Icon.Warning, "DALL·E Studio", text, QMessageBox.StandardButton.Ok, self
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    # -- generation ---------------------------------------------------------------------

    def generate(self) -> Job | None:
        document = self.document
        if document.generating:
            return None
        if not self.engine.loaded:
            self.show_error("no model is loaded yet: wait for it, or open one in Settings")
            return None
        if document.cell is None:
            self.show_error("drag a rectangle on the image first: it will be regenerated")
            return None
        document.discard_candidates()
        options = self.caption.options()
        job = Job(
            image=document.image,
            cell=document.cell,
            caption=self.caption.caption.text(),
            n=options["n"],
            temperature=options["temperature"],
            top_k=options["top_k"],
            guidance=options["guidance"],
            seed=self.caption.next_seed(),
        )
        document.start_generation()
        self.job = self.engine.submit(job)
        self.progress_label.setText("generating…")
        return self.job

    def cancel(self) -> None:
        if self.job is not None:
            self.engine.cancel()

    def escape(self) -> None:
        if self.document.generating:
            self.cancel()
        else:
            self.document.discard_candidates()

    def accept_candidate(self) -> None:
        self.document.accept_candidate()

    # -- files --------------------------------------------------------------------------

    def open_path(self, path: str | Path) -> bool:
        path = Path(path)
        try:
            if path.suffix.lower() == project.SUFFIX:
                document = project.load(path)
            else:
                document = Document(messages.load_image(path))
                document.source_path = str(path)
        except (ValueError, OSError) as error:
            self.show_error(messages.one_line(error))
            return False
        self.set_document(document)
        self._add_recent(str(path))
        return True

    def open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open image", self._last_folder(), f"{IMAGE_FILTER};;{PROJECT_FILTER}"
        )
        if path:
            self.open_path(path)

    def open_project_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open project", self._last_folder(), PROJECT_FILTER
        )
        if path:
            self.open_path(path)

    def save_project(self) -> bool:
        if not self.document.path:
            return self.save_project_as()
        return self._save_to(self.document.path)

    def save_project_as(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save project", self._last_folder(), PROJECT_FILTER
        )
        if not path:
            return False
        if not path.endswith(project.SUFFIX):
            path += project.SUFFIX
        return self._save_to(path)

    def _save_to(self, path: str) -> bool:
        try:
            project.save(self.document, path)
        except OSError as error:
            self.show_error(f"could not save {path}: {messages.one_line(error)}")
            return False
        self.document.path = path
        self.document.undo_stack.setClean()
        self._add_recent(path)
        self._update_title()
        return True

    def export_png(self) -> None:
        self._export(self.document.image)

    def export_entry(self, entry_id: int) -> None:
        self._export(self.document.history[entry_id].image)

    def _export(self, image: np.ndarray) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export PNG", self._last_folder(), "PNG (*.png)"
        )
        if not path:
            return
        if not path.lower().endswith(".png"):
            path += ".png"
        try:
            project.export_png(image, path)
        except OSError as error:
            self.show_error(f"could not export {path}: {messages.one_line(error)}")

    def paste_image(self) -> None:
        image = QGuiApplication.clipboard().image()
        if image.isNull():
            self.show_error("the clipboard holds no image")
            return
        document = Document(qimage_to_array(image))
        self.set_document(document)

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event):
        data = event.mimeData()
        if data.hasUrls():
            for url in data.urls():
                if url.isLocalFile():
                    self.open_path(url.toLocalFile())
                    break
        elif data.hasImage():
            self.set_document(Document(qimage_to_array(QImage(data.imageData()))))
        event.acceptProposedAction()

    def _last_folder(self) -> str:
        recent = self._recent()
        return str(Path(recent[0]).parent) if recent else ""

    def _recent(self) -> list[str]:
        value = self.settings.value("recent_files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def _add_recent(self, path: str) -> None:
        recent = [p for p in self._recent() if p != path]
        self.settings.setValue("recent_files", [path, *recent][:MAX_RECENT])
        self._update_recent_menu()

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self._recent():
            self.recent_menu.addAction(path, lambda p=path: self.open_path(p))
        self.recent_menu.setEnabled(bool(self._recent()))

    # -- settings, autosave, close ------------------------------------------------------

    def apply_speed_settings(self) -> None:
        """Hand the saved precision and compile choice to the engine (a bad value: auto)."""
        precision = str(self.settings.value("precision", "auto"))
        compile = self.settings.value("compile", False, type=bool)
        try:
            self.engine.set_speed(precision, compile)
        except ValueError as error:
            log.warning("settings: %s; using auto", error)
            self.engine.set_speed("auto", compile)

    def open_settings(self) -> None:
        dialog = SettingsDialog(
            self.settings.value("device", "auto"),
            self.settings.value("bundle", ""),
            self,
            precision=self.engine.precision,
            compile=self.engine.compile,
        )
        if dialog.exec():
            device, bundle = dialog.values()
            precision, compile = dialog.speed()
            self.settings.setValue("device", device)
            self.settings.setValue("bundle", bundle)
            self.settings.setValue("precision", precision)
            self.settings.setValue("compile", compile)
            self.apply_speed_settings()
            self.load_model(bundle, device)

    def autosave(self) -> None:
        stamp = self.document.undo_stack.index() + 1000 * len(self.document.history)
        if stamp == self._autosaved_at or self.document.generating:
            return
        try:
            project.autosave(self.document, self.autosave_folder)
            self._autosaved_at = stamp
        except OSError as error:
            log.warning("autosave failed: %s", error)

    def offer_recovery(self) -> None:
        """Called once at start: a leftover autosave means the last session crashed."""
        path = project.pending_recovery(self.autosave_folder)
        if path is None:
            return
        answer = QMessageBox.question(
            self,
            "Recover work",
            "DALL·E Studio did not exit cleanly last time. Recover the autosaved project?",
        )
        if answer == QMessageBox.StandardButton.Yes:
            try:
                self.set_document(project.recover(self.autosave_folder))
            except project.ProjectError as error:
                self.show_error(str(error))
                return
        project.clear_autosave(self.autosave_folder)

    def closeEvent(self, event):
        if self.ask_before_close and not self.document.undo_stack.isClean():
            answer = QMessageBox.question(
                self,
                "Unsaved changes",
                "Save the project before closing?",
                QMessageBox.StandardButton.Save
                | QMessageBox.StandardButton.Discard
                | QMessageBox.StandardButton.Cancel,
            )
            if answer == QMessageBox.StandardButton.Cancel or (
                answer == QMessageBox.StandardButton.Save and not self.save_project()
            ):
                event.ignore()
                return
        self.cancel()
        self.autosave_timer.stop()
        project.clear_autosave(self.autosave_folder)  # a clean exit: nothing to recover
        self.settings.setValue("geometry", self.saveGeometry())
        self._closed_at = time.time()
        event.accept()
