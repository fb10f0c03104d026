"""The recent files (``studio.recent``): newest first, once each, at most MAX_RECENT, kept in the
QSettings they were given."""

from __future__ import annotations

from PySide6.QtCore import QSettings

from studio.recent import MAX_RECENT, RecentFiles


def test_recent_files_newest_first_once_each_and_bounded(tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    recent = RecentFiles(settings)
    assert recent.paths() == [] and recent.last_folder() == ""
    for index in range(MAX_RECENT + 2):
        recent.add(str(tmp_path / f"folder{index}" / "p.dstudio"))
    recent.add(str(tmp_path / "folder5" / "p.dstudio"))  # opened again: first, not twice
    paths = recent.paths()
    assert len(paths) == MAX_RECENT and paths[0] == str(tmp_path / "folder5" / "p.dstudio")
    assert paths.count(paths[0]) == 1 and str(tmp_path / "folder0" / "p.dstudio") not in paths
    assert recent.last_folder() == str(tmp_path / "folder5")
    settings.sync()
    again = RecentFiles(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    assert again.paths() == paths  # kept in the settings file


def test_a_single_recent_file_read_back_as_text_is_one_path(tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("recent_files", "/pictures/one.png")
    assert RecentFiles(settings).paths() == ["/pictures/one.png"]
