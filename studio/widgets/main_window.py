"""The main window: the views of a Session, their menus, settings and the autosave; its file
actions (dialogs, paste, drop, recent files) are ``studio.widgets.file_actions``.

It owns no generation state: the image, rectangle, candidates and history are the Document's;
the running job, the sampling options, the model and its speed are the Session's. The window binds
its views to their signals and calls their methods. Errors are shown without blocking the loop
and never touch the image.

No lost work: a modified document (``Document.modified``) is autosaved every minute into the
app-data folder and every change to its history is journaled as it happens (``studio.autosave``);
the autosave stays until the work is saved or the user discards it (the close dialog's Discard,
replacing the document with Discard, or declining recovery). Closing, opening another file,
pasting or dropping over modified work asks first.

Undo keys: Ctrl+Z, Ctrl+Shift+Z and Ctrl+Y act on the image's history wherever focus is. The one
exception is the caption box while the user is typing in it: it keeps the keys as long as it has
typing of its own to undo (or redo) since it last took focus or since the last Generate.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QTimer
from PySide6.QtGui import QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QDockWidget,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

from studio import project, scene_canvas, template
from studio.autosave import Autosaver
from studio.catalog import WORLD, default_bundle_path, load_image, one_line
from studio.document import Document
from studio.familiarity_hint import FamiliarityHint
from studio.recent import RecentFiles
from studio.session import Session
from studio.widgets import about, menus, status
from studio.widgets.candidates import CandidateStrip
from studio.widgets.canvas import Canvas
from studio.widgets.caption import CaptionPanel
from studio.widgets.file_actions import FileActions
from studio.widgets.history import HistoryPanel
from studio.widgets.menus import REDO_KEYS, UNDO_KEYS
from studio.widgets.settings import SettingsDialog

log = logging.getLogger(__name__)

AUTOSAVE_MS = 60_000
FIRST_SIZE = (1280, 820)  # the window's size at a first start, on a screen that holds it
TITLE_BAR = 40  # pixels kept free above the window for the window manager's frame


def _matches(event, keys: tuple[QKeySequence, ...]) -> bool:
    combination = QKeySequence(event.keyCombination())
    return any(combination.matches(key) == QKeySequence.SequenceMatch.ExactMatch for key in keys)


class ImageUndoKeys(QObject):
    """Installed on the window's text fields: their own undo does not take Ctrl+Z / Ctrl+Shift+Z
    / Ctrl+Y (the window's actions do), except the caption box's while it has typing to undo."""

    def __init__(self, caption, parent=None):
        super().__init__(parent)
        self.caption = caption

    def eventFilter(self, watched, event) -> bool:
        if event.type() not in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress):
            return False
        undo, redo = _matches(event, UNDO_KEYS), _matches(event, REDO_KEYS)
        if not (undo or redo):
            return False
        if watched is self.caption and self.caption.has_typing(redo=redo):
            return False  # the user is typing: the caption box undoes its own text
        if event.type() == QEvent.Type.KeyPress:
            return True  # the window's Undo/Redo is off (nothing to undo): the field does nothing
        event.ignore()  # not overridden: the shortcut (the window's Undo/Redo) fires
        return True


class MainWindow(FileActions, QMainWindow):
    describe_error = staticmethod(one_line)  # for the file actions

    def __init__(
        self,
        session: Session,
        settings: QSettings | None = None,
        autosave_folder: Path | None = None,
    ):
        super().__init__()
        self.setWindowTitle("DALL·E Studio")
        self.setAcceptDrops(True)
        self.session = session
        self.settings = settings or QSettings()
        self.recent = RecentFiles(self.settings)  # File › Recent and the dialogs' folder
        self.apply_speed_settings()
        self.autosave_folder = autosave_folder
        self.ask_before_close = True
        self.errors: list[str] = []  # every message shown, for tests and the selftest
        self.autosaver = Autosaver(autosave_folder)  # the autosave, its journal, recovery
        self._bound: Document | None = None  # the document the views are bound to
        # (device, bundle) of the model in use while Settings loads another: the settings go
        # back to it if that load fails and the model in use stays
        self._settings_fallback: tuple[str, str] | None = None

        self.canvas = Canvas(session)
        self.strip = CandidateStrip()
        policy = self.strip.sizePolicy()
        policy.setRetainSizeWhenHidden(True)  # the canvas keeps its size: no re-fit, no jump
        self.strip.setSizePolicy(policy)
        self.strip.setVisible(False)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.strip)
        self.setCentralWidget(central)

        self.caption = CaptionPanel(session)
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

        self.scene_seeds = scene_canvas.seeds()  # File › New scene draws the next one
        self.familiarity = FamiliarityHint(session, self)
        status.build(self)
        menus.build(self)
        self._update_recent_menu()
        self.familiarity.changed.connect(self._show_hint)
        session.document_changed.connect(self._document_changed)
        session.model_changed.connect(self._model_changed)
        session.running_changed.connect(self._update_generate)
        self.caption.generate_refused.connect(self._say)
        session.speed_changed.connect(self._speed_changed)
        session.status_changed.connect(self.progress_label.setText)
        session.phase_changed.connect(self._phase)
        session.error.connect(self.show_error)
        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start(AUTOSAVE_MS)
        self._document_changed(session.document)
        self._model_changed()
        self.familiarity.check()
        self.undo_keys = ImageUndoKeys(self.caption.caption, self)
        fields = [self.caption.caption]
        for kind in (QLineEdit, QAbstractSpinBox):
            fields += self.caption.findChildren(kind)
        for field in fields:
            field.installEventFilter(self.undo_keys)
        self._fit_screen()
        geometry = self.settings.value("geometry")
        if geometry:
            self.restoreGeometry(geometry)

    def _fit_screen(self) -> None:
        """The first size: 1280x820 where the screen holds it, else what it holds with room
        for the title bar, centred on the screen's available area (no panel or dock covered)."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            self.resize(*FIRST_SIZE)
            return
        area = screen.availableGeometry()
        width = min(FIRST_SIZE[0], area.width())
        height = min(FIRST_SIZE[1], area.height() - TITLE_BAR)
        self.resize(width, height)
        self.move(area.x() + (area.width() - width) // 2, area.y() + (area.height() - height) // 2)

    @property
    def document(self) -> Document:
        """The session's document (the window keeps none of its own)."""
        return self.session.document

    # -- document -----------------------------------------------------------------------

    def _document_changed(self, document: Document) -> None:
        """The session works on another document: the views follow it."""
        if self._bound is not None:
            for signal, slot in self._document_bindings(self._bound):
                signal.disconnect(slot)
            self.undo_group.removeStack(self._bound.undo_stack)
        self._bound = document
        self.undo_group.addStack(document.undo_stack)
        self.undo_group.setActiveStack(document.undo_stack)
        for signal, slot in self._document_bindings(document):
            signal.connect(slot)
        self.autosaver.watch(document)
        self.canvas.set_document(document)
        self.strip.set_document(document)
        self.history.set_document(document)
        self._update_title()
        self._rectangle_changed()
        self._update_generate()

    def _document_bindings(self, document: Document) -> list:
        return [
            (document.generating_changed, self._generating_changed),
            (document.generating_changed, self._update_generate),
            (document.progress_changed, self._progress),
            (document.rectangle_changed, self._rectangle_changed),
            (document.rectangle_changed, self._update_generate),
            (document.modified_changed, self._update_title),
            (document.candidates_changed, self._candidates_changed),
        ]

    def _update_title(self, *_) -> None:
        name = Path(self.document.path or self.document.source_path or "untitled").name
        star = "*" if self.document.modified else ""
        self.setWindowTitle(f"{name}{star} — DALL·E Studio")

    def _candidates_changed(self) -> None:
        """Candidates accepted or discarded: the staging hint gives way to the standing status."""
        if not self.document.candidates and not self.document.generating:
            self._rectangle_changed()

    def _rectangle_changed(self) -> None:
        self._hint_to_badge()
        document = self.document
        if document.cell is not None:
            area = document.area
            where = "" if area.is_whole else f" of the {area.width}×{area.height} px working area"
            to = "the corner" if document.end is None else f"cell {document.end}"
            self.progress_label.setText(
                f"rectangle from cell {document.cell} to {to}{where} · "
                f"{document.masked_cells} cells"
            )
        else:
            self.progress_label.setText(
                "drag on the image to mark the region to regenerate "
                "(it reaches the bottom-right corner unless “To the corner” is off)"
            )

    # -- session ------------------------------------------------------------------------

    def _model_changed(self) -> None:
        session = self.session
        if session.model_state != "loading" and self._settings_fallback is not None:
            fallback, self._settings_fallback = self._settings_fallback, None
            if session.load_error and session.model_state == "loaded":
                device, bundle = fallback  # the next start loads the model still in use
                self.settings.setValue("device", device)
                self.settings.setValue("bundle", bundle)
        if session.model_state == "loaded":
            self.model_label.setText(f"model: {session.model_name}")
            self.model_label.setToolTip(session.model_path)
        elif session.model_state == "loading":
            self.model_label.setText("model: loading…")
        else:
            self.model_label.setText("model: none")
        if session.device:
            compiled = " · compiled" if session.compile else ""
            self.device_label.setText(f"device: {session.device} · {session.precision}{compiled}")
        self._update_new_scene()
        self._update_generate()

    def _update_generate(self, *_) -> None:
        menus.update_generate(self)

    def _say(self, text: str) -> None:
        """A line on the status bar, in place of the far-from-training hint (its badge stays)."""
        self._hint_to_badge()
        self.progress_label.setText(text)

    def show_about(self) -> None:
        """Help › About (``studio.widgets.about``); deleted when closed, like Settings."""
        dialog = about.AboutDialog(self.session, about.logs_folder(self.autosave_folder), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    def _update_new_scene(self) -> None:
        """New scene is offered only for a model trained on scenes (its card says so)."""
        session = self.session
        offered = session.loaded and session.knows_scenes
        self.new_scene_action.setEnabled(offered)
        if offered:
            tip = f"a new picture from this model's world ({WORLD}), ready to Generate"
        elif not session.loaded:
            tip = "waits for the model to load"
        else:
            name = self.session.model_name or "this model"
            tip = f"only for a model trained on {WORLD}; {name} was not"
        self.new_scene_action.setToolTip(tip)

    def _show_hint(self, text: str) -> None:
        """A new hint (or none) for the picture: the whole line, in place of the status."""
        self.hint_label.setText(text)
        self.hint_label.setToolTip(self.familiarity.detail)
        self.far_badge.setToolTip(self.familiarity.detail if text else "")
        self.hint_label.setVisible(bool(text))
        self.far_badge.setVisible(False)
        self.progress_label.setVisible(not text)

    def _hint_to_badge(self) -> None:
        """The user works on the picture anyway: the status line is theirs again, the badge
        keeps the hint."""
        if self.hint_label.isVisible():
            self.hint_label.setVisible(False)
            self.far_badge.setVisible(True)
            self.progress_label.setVisible(True)

    def _speed_changed(self, tokens_per_s: float) -> None:
        self.speed_label.setText(f"{tokens_per_s:.0f} tokens/s" if tokens_per_s > 0 else "")

    def _generating_changed(self, running: bool) -> None:
        self._hint_to_badge()
        self.progress.setVisible(running)
        self.progress.setRange(0, 0)  # busy until the first row: reading, encoding

    def _progress(self, rows_done: int, rows_total: int, speed: float, eta: float) -> None:
        status.show_row(self, rows_done, rows_total, speed, eta)

    def _phase(self, phase: str, step: int, steps: int) -> None:
        status.show_phase(self, phase, step, steps)

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

    def escape(self) -> None:
        if self.document.generating:
            self.session.cancel()
        else:
            self.document.discard_candidates()

    def accept_candidate(self) -> None:
        self.document.accept_candidate()

    # -- files --------------------------------------------------------------------------

    def open_path(self, path: str | Path) -> bool:
        """Open an image or a project; on any error one dialog, and the document is untouched."""
        path = Path(path)
        try:
            if path.suffix.lower() == project.SUFFIX:
                document = project.load(path)
            else:
                document = Document(load_image(path))
                document.source_path = str(path)
        except (ValueError, OSError) as error:
            self.show_error(one_line(error))
            return False
        if not self.keep_or_discard_work():
            return False
        self.session.set_document(document)
        self._add_recent(str(path))
        return True

    def keep_or_discard_work(self) -> bool:
        """Before the modified document is closed or replaced: Save, Discard or Cancel.
        True when it may go (saved, or discarded: then its autosave goes too)."""
        if self.ask_before_close and self.document.modified:
            answer = QMessageBox.question(
                self,
                "Unsaved changes",
                "Save the project before closing it?",
                QMessageBox.StandardButton.Save
                | QMessageBox.StandardButton.Discard
                | QMessageBox.StandardButton.Cancel,
            )
            if answer == QMessageBox.StandardButton.Save:
                return self.save_project()
            if answer != QMessageBox.StandardButton.Discard:
                return False
        self.autosaver.let_go()
        return True

    def replace_document(self, document: Document) -> bool:
        """Show ``document`` unless the user keeps the current, modified one."""
        if not self.keep_or_discard_work():
            return False
        self.session.set_document(document)
        return True

    def open_image_to_image(self, path: str | Path) -> bool:
        """A new untitled canvas (``studio.template``): the picture at ``path`` in the top half,
        the rectangle on the bottom half and the caption's pattern with its subject selected.
        The picture is read and checked as an opened image is; on any error one dialog, and the
        document is untouched. Like opening, it replaces the document (asking first over
        modified work) and is not an undo step of the document it replaces."""
        session = self.session  # the loaded model's grid (the paper's until one loads)
        try:
            picture = load_image(path)
            made = template.image_to_image(picture, session.geometry_size, session.geometry_factor)
        except (ValueError, OSError) as error:
            self.show_error(one_line(error))
            return False
        if not self.replace_document(made):
            return False
        self.session.set_caption(template.CAPTION)
        self.caption.caption.select_span(*template.subject_span())
        self.caption.caption.setFocus(Qt.FocusReason.OtherFocusReason)
        self.progress_label.setText(
            "type what the picture shows over the selected word, then Generate: "
            "the bottom half is completed from the top"
        )
        return True

    def new_scene(self) -> bool:
        """A new untitled document from the model's world (``studio.scene_canvas``): a scene
        at the model's size, the rectangle on its bottom-right place and the caption to
        complete it with. Like opening, it replaces the document, asking first over modified
        work."""
        session = self.session
        if not (session.loaded and session.knows_scenes):
            self.show_error(self.new_scene_action.toolTip())
            return False
        picture, caption, cell = session.new_scene(next(self.scene_seeds))
        document = scene_canvas.scene_document(
            picture, cell, session.geometry_size, session.geometry_factor
        )
        if not self.replace_document(document):
            return False
        self.session.set_caption(caption)
        self.progress_label.setText(
            "a scene from this model's world: Generate redraws the bottom-right place "
            "to match the caption (edit it to ask for something else)"
        )
        return True

    # -- settings, autosave, close ------------------------------------------------------

    def apply_speed_settings(self) -> None:
        """Hand the saved precision, compile and upscaler choices to the session (a bad
        precision: auto; a missing upscaler file fails the next job with one line)."""
        self.session.set_upscaler(str(self.settings.value("upscaler", "auto") or "auto"))
        precision = str(self.settings.value("precision", "auto"))
        compile = self.settings.value("compile", False, type=bool)
        try:
            self.session.set_precision(precision, compile)
        except ValueError as error:
            log.warning("settings: %s; using auto", error)
            self.session.set_precision("auto", compile)

    def open_settings(self) -> None:
        """The settings dialog. The model reloads when its device or bundle changed, when no
        model is loaded (the last load failed: memory may have been freed since), or when an
        imported model that was converted in place must be read again for the chosen
        precision; otherwise the precision and compile choice apply to the next generation
        without a reload."""
        device = str(self.settings.value("device", "auto"))
        bundle = self._bundle_in_use()
        # Parented for placement, deleted right after: a dialog left to the window's teardown
        # took its connections down with it out of order ("shared QObject was deleted
        # directly", exit 134 on quit).
        session = self.session
        dialog = SettingsDialog(
            device,
            bundle,
            self,
            precision=session.chosen_precision,
            compile=session.compile,
            upscaler=session.upscaler,
        )
        try:
            if not dialog.exec():
                return
            new_device, new_bundle = dialog.values()
            precision, compile = dialog.speed()
            upscaler = dialog.upscaler.choice()
        finally:
            dialog.deleteLater()
        self.settings.setValue("device", new_device)
        self.settings.setValue("bundle", new_bundle)
        self.settings.setValue("precision", precision)
        self.settings.setValue("compile", compile)
        self.settings.setValue("upscaler", upscaler)
        self.apply_speed_settings()  # the device label says it at once
        if (
            (new_device, new_bundle) != (device, bundle)
            or session.model_state == "failed"
            or session.reload_needed()
        ):
            in_use = session.model_state == "loaded" and session.loaded
            self._settings_fallback = (device, bundle) if in_use else None
            session.load(new_bundle, new_device)

    def _bundle_in_use(self) -> str:
        """The bundle the settings show: the model loaded now when it is not the embedded one
        (``dalle-studio --bundle X`` does not write X to the settings), else the saved choice.
        Showing the saved choice instead made OK after a precision change load another model."""
        saved = str(self.settings.value("bundle", "") or "")
        session = self.session
        if session.model_state != "loaded" or not session.model_path:
            return saved
        loaded = Path(session.model_path)
        if loaded == default_bundle_path() or (saved and Path(saved) == loaded):
            return saved
        return str(loaded)

    def autosave(self) -> None:
        """Write the modified document's work to the autosave (timer; also safe to call)."""
        self.autosaver.save(self.document)

    def offer_recovery(self) -> None:
        """Called once at start: a leftover autosave means the last session did not end
        cleanly (``Autosaver.leftover``). An unreadable one is set aside and said once."""
        try:
            recovered = self.autosaver.leftover()
        except project.ProjectError as error:
            self.show_error(str(error))
            return
        if recovered is None:
            return
        document, info = recovered
        answer = QMessageBox.question(
            self,
            "Recover work",
            "DALL·E Studio did not exit cleanly last time. Recover the autosaved work? "
            f"{info.describe()}. (No discards it.)",
        )
        recover = answer == QMessageBox.StandardButton.Yes
        self.autosaver.answered(recover)
        if recover:
            self.session.set_document(document)  # modified; its autosave stays until saved
            self.autosave()

    def terminate(self) -> None:
        """The session ends without the user (SIGTERM: a logout, a shutdown, a `kill`): modified
        work goes to the autosave, which the next start offers back, and the window closes
        without asking. An autosave still awaiting the recovery answer is kept as it is."""
        self.session.drop_job()
        self.autosaver.keep(self.document)
        self.ask_before_close = False
        self.close()

    def closeEvent(self, event):
        if not self.keep_or_discard_work():
            event.ignore()
            return
        self.session.cancel()
        self.autosave_timer.stop()
        self.settings.setValue("geometry", self.saveGeometry())
        self._closed_at = time.time()
        event.accept()
