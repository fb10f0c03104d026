"""The recent files: the projects and images opened or saved last, newest first, kept in the app's
QSettings (``recent_files``). No widgets: the window's File › Recent menu shows ``paths``."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

MAX_RECENT = 10
KEY = "recent_files"


class RecentFiles:
    """The recent files in ``settings`` (see the module's docstring)."""

    def __init__(self, settings: QSettings):
        self.settings = settings

    def paths(self) -> list[str]:
        value = self.settings.value(KEY, [])
        if isinstance(value, str):  # a single path may come back as a string
            value = [value]
        return [str(v) for v in (value or [])]

    def add(self, path: str) -> None:
        """``path`` first, once; the oldest beyond ``MAX_RECENT`` go."""
        recent = [p for p in self.paths() if p != path]
        self.settings.setValue(KEY, [path, *recent][:MAX_RECENT])

    def last_folder(self) -> str:
        """The newest recent file's folder: where the file dialogs open; "" when none."""
        recent = self.paths()
        return str(Path(recent[0]).parent) if recent else ""
