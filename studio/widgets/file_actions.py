"""The main window's file actions: the Open, Save and Export dialogs, paste, drag and drop,
the File › Recent menu (the recent files are ``studio.recent``) and File › Import model…
(``studio.widgets.import_dialog``) with its "Use it now".

``FileActions`` is a mixin of ``MainWindow``: its methods are the window's, and they use the
window's ``session``, ``settings``, ``document``, ``autosaver``, ``recent``, ``recent_menu`` and its
``open_path``, ``open_image_to_image``, ``replace_document``, ``show_error`` and
``describe_error`` (the one-line description of an error); "Use it now" after an import uses
its ``_bundle_in_use``, ``_settings_fallback`` and ``apply_speed_settings``, as Settings' OK
does. It imports neither the engine nor torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog

from model.files import IMAGE_SUFFIXES, ImageError
from studio import naming, project
from studio.catalog import models_folder
from studio.document import Document
from studio.widgets.canvas import qimage_to_array
from studio.widgets.import_dialog import ImportDialog

IMAGE_FILTER = "Images (" + " ".join(f"*{s}" for s in IMAGE_SUFFIXES) + ")"
PROJECT_FILTER = f"DALL·E Studio projects (*{project.SUFFIX})"


class FileActions:
    """Open, save, export, paste and drop for ``MainWindow`` (a mixin: see the module)."""

    def open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open image", self._last_folder(), f"{IMAGE_FILTER};;{PROJECT_FILTER}"
        )
        if path:
            self.open_path(path)

    def image_to_image_dialog(self) -> None:
        # the folder of the last picture used so (pictures are not recent files: opening one
        # from that menu would not remake the template), else the recent files' folder
        folder = str(self.settings.value("template_folder", "") or self._last_folder())
        path, _ = QFileDialog.getOpenFileName(
            self, "Image-to-image: picture for the top half", folder, IMAGE_FILTER
        )
        if path and self.open_image_to_image(path):
            self.settings.setValue("template_folder", str(Path(path).parent))

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
            self.show_error(f"could not save {path}: {self.describe_error(error)}")
            return False
        self.document.path = path
        self.document.mark_saved()
        self.autosaver.saved()  # the work is in the project now
        self._add_recent(path)
        self._update_title()
        return True

    def export_png(self) -> None:
        self._export(self.document.image, naming.export_name(self.document))

    def export_entry(self, entry_id: int) -> None:
        name = naming.export_name(self.document, entry_id)
        self._export(self.document.history[entry_id].image, name)

    def _export(self, image: np.ndarray, name: str) -> None:
        """Ask where to write ``image``, suggesting ``name`` in the last folder used."""
        source = self.document.source_path
        folder = self._last_folder() or (str(Path(source).parent) if source else "")
        suggested = str(Path(folder) / name) if folder else name
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", suggested, "PNG (*.png)")
        if not path:
            return
        if not path.lower().endswith(".png"):
            path += ".png"
        try:
            project.export_png(image, path)
        except OSError as error:
            self.show_error(f"could not export {path}: {self.describe_error(error)}")

    def import_model_dialog(self) -> ImportDialog:
        """File › Import model… (one dialog at a time; it stays open while it imports)."""
        dialog = getattr(self, "import_dialog", None)
        if dialog is None:
            folder = str(self.settings.value("import_folder", "") or "")
            dialog = ImportDialog(models_folder(), self, folder)
            dialog.use_bundle.connect(self.use_bundle)
            dialog.use_upscaler.connect(self.use_upscaler)
            dialog.folder.textChanged.connect(self._remember_import_folder)
            self.import_dialog = dialog
        dialog.show()
        dialog.raise_()
        return dialog

    def _remember_import_folder(self, folder: str) -> None:
        self.settings.setValue("import_folder", folder)

    def use_bundle(self, bundle: str) -> None:
        """Switch to ``bundle`` as Settings' OK does: saved as the model in use and loaded on the
        saved device; a load that fails keeps the model in use (``_settings_fallback``)."""
        device = str(self.settings.value("device", "auto"))
        previous = self._bundle_in_use()
        self.settings.setValue("bundle", bundle)
        session = self.session
        in_use = session.model_state == "loaded" and session.loaded
        self._settings_fallback = (device, previous) if in_use else None
        session.load(bundle, device)

    def use_upscaler(self, upscaler: str) -> None:
        """Use the upscaler file ``upscaler`` from the next job on (Settings › Upscaler's
        choice, saved)."""
        self.settings.setValue("upscaler", upscaler)
        self.apply_speed_settings()

    def paste_image(self) -> None:
        image = QGuiApplication.clipboard().image()
        if image.isNull():
            self.show_error("the clipboard holds no image")
            return
        self._open_qimage(image, "the clipboard's image")

    def _open_qimage(self, image: QImage, name: str) -> bool:
        try:
            pixels = qimage_to_array(image, name)
        except ImageError as error:
            self.show_error(str(error))
            return False
        return self.replace_document(Document(pixels))

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
            self._open_qimage(QImage(data.imageData()), "the dropped image")
        event.acceptProposedAction()

    def _last_folder(self) -> str:
        return self.recent.last_folder()

    def _add_recent(self, path: str) -> None:
        self.recent.add(path)
        self._update_recent_menu()

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        paths = self.recent.paths()
        for path in paths:
            self.recent_menu.addAction(path, lambda p=path: self.open_path(p))
        self.recent_menu.setEnabled(bool(paths))
