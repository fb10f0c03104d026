"""Settings lists the installed models (issue 32): the embedded one, the models folder's bundles
with their cards' headlines and sizes, a broken file with its reason; a click on a row and OK
switch the session's model, and a bundle kept elsewhere still opens through "Other file…"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox, QPushButton

from model.bundle import save
from model.bundle.upscaler_files import shipped_upscaler_path
from studio import catalog
from studio.widgets import settings as settings_module
from studio.widgets.model_list import IN_USE, open_models_folder
from tests.helpers import tiny_bundle
from tests.test_widgets import default_or_tiny_bundle as default_or_tiny_bundle  # fixtures
from tests.test_widgets import window as window

BROKEN_REASON = "not a safetensors file: only 5 bytes long"


def named_bundle(path: Path, name: str, seed: int) -> Path:
    bundle = tiny_bundle(seed)
    bundle.card = {**bundle.card, "name": name}
    save(bundle, path)
    return path


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """A models folder with two tiny bundles, a broken one and a file that is no bundle."""
    models = tmp_path / "models"
    models.mkdir()
    named_bundle(models / "beta.dalle.safetensors", "tiny beta", seed=2)
    named_bundle(models / "alpha.dalle.safetensors", "tiny alpha", seed=1)
    (models / "broken.dalle.safetensors").write_bytes(b"oops!")
    (models / "notes.txt").write_text("not a model")
    monkeypatch.setenv("DALLE_STUDIO_MODELS", str(models))
    return models


def test_installed_models_list_the_embedded_one_the_folder_and_a_broken_file(folder, tmp_path):
    (folder / "a-folder.dalle.safetensors").mkdir()  # named like a bundle, but no file
    models = catalog.installed_models()
    default = catalog.default_bundle_path()
    assert [model.path for model in models] == [
        default,
        folder / "alpha.dalle.safetensors",
        folder / "beta.dalle.safetensors",
        folder / "a-folder.dalle.safetensors",  # what cannot be used comes last
        folder / "broken.dalle.safetensors",
    ]
    embedded, alpha, beta, not_a_file, broken = models
    assert (embedded.choice, embedded.place) == ("", "embedded")
    assert embedded.headline == catalog.read_card(default)["name"]
    assert (alpha.headline, beta.headline) == ("tiny alpha", "tiny beta")
    assert (
        alpha.choice == str(folder / "alpha.dalle.safetensors") and alpha.place == "models folder"
    )
    assert alpha.size == (folder / "alpha.dalle.safetensors").stat().st_size
    assert alpha.memory == catalog.memory_to_load(alpha.path)[0] and not alpha.problem
    assert broken.problem == BROKEN_REASON and broken.size == 5 and broken.memory is None
    assert broken.headline == "broken.dalle.safetensors"
    assert not_a_file.problem == "not a file" and not_a_file.size is None

    outside = named_bundle(tmp_path / "outside.dalle.safetensors", "tiny outside", seed=3)
    missing = str(tmp_path / "gone.dalle.safetensors")
    again = str(folder / "alpha.dalle.safetensors")  # listed once
    listed = catalog.installed_models(missing, str(outside), again)
    assert [model.path.name for model in listed[3:]] == [
        "outside.dalle.safetensors",
        "a-folder.dalle.safetensors",
        "broken.dalle.safetensors",
        "gone.dalle.safetensors",
    ]
    assert listed[3].headline == "tiny outside" and listed[3].place == "elsewhere"
    assert listed[-1].problem == "no such file" and listed[-1].size is None
    assert catalog.installed_model(str(folder / "beta.dalle.safetensors")) == beta
    assert catalog.installed_model(str(outside)) == listed[3]
    assert catalog.installed_model("") == embedded


def answering(monkeypatch, *answers):
    """Settings' exec runs each of ``answers`` in turn on the dialog (one per opening); each
    returns whether to press OK."""
    queue = list(answers)

    def exec_(dialog):
        return QDialog.DialogCode.Accepted if queue.pop(0)(dialog) else QDialog.DialogCode.Rejected

    monkeypatch.setattr(settings_module.SettingsDialog, "exec", exec_)
    return queue


def click_row(qtbot, dialog, row: int) -> None:
    view = dialog.models
    rect = view.visualItemRect(view.item(row))
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def wait_loaded(qtbot, session) -> None:
    qtbot.waitUntil(lambda: session.model_state != "loading", timeout=60_000)
    assert session.model_state == "loaded", session.load_error


def test_a_click_on_a_row_and_ok_switch_the_model_and_it_is_marked_after(
    window, folder, qtbot, monkeypatch
):
    session = window.session
    beta = str(folder / "beta.dalle.safetensors")
    seen = {}

    def choose_beta(dialog):
        rows = dialog.models.rows()
        seen["rows"] = rows
        assert [choice for choice, _ in rows][1:] == [
            str(folder / name)
            for name in ("alpha", "beta", "broken")
            for name in [name + ".dalle.safetensors"]
        ]
        assert IN_USE in rows[0][1] and not any(IN_USE in text for _, text in rows[1:])
        size = catalog.size_text(Path(beta).stat().st_size)
        assert rows[2][1].startswith("tiny beta\nbeta.dalle.safetensors · ")
        assert f" · {size} on disk · loading needs about " in rows[2][1]
        assert BROKEN_REASON in rows[3][1]
        assert not dialog.models.item(3).flags() & Qt.ItemFlag.ItemIsEnabled
        click_row(qtbot, dialog, 3)  # a broken file is nothing to choose
        assert dialog.bundle.text() == ""
        click_row(qtbot, dialog, 2)
        assert dialog.bundle.text() == beta
        assert dialog.card.toPlainText().startswith("Name: tiny beta")
        return True

    def marked(dialog):
        rows = dialog.models.rows()
        seen["marked"] = [IN_USE in text for _, text in rows]
        seen["selected"] = dialog.models.currentRow()
        seen["bold"] = dialog.models.item(2).font().bold()
        return False

    answering(monkeypatch, choose_beta, marked)
    window.open_settings()
    wait_loaded(qtbot, session)
    assert session.model_path == beta and session.card["name"] == "tiny beta"
    assert session.model_name and window.settings.value("bundle") == beta
    window.open_settings()
    assert seen["marked"] == [False, False, True, False]
    assert seen["selected"] == 2 and seen["bold"]


def test_a_bundle_elsewhere_opens_through_other_file_and_stays_listed(
    window, folder, tmp_path, qtbot, monkeypatch
):
    outside = named_bundle(tmp_path / "outside.dalle.safetensors", "tiny outside", seed=3)
    broken = folder / "broken.dalle.safetensors"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: (str(outside), ""))
    seen = {}

    def other_file(dialog):
        button = next(b for b in dialog.findChildren(QPushButton) if b.text() == "Other file…")
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        rows = dialog.models.rows()  # before the broken file, as a reopened list has it
        assert [choice for choice, _ in rows][3:] == [str(outside), str(broken)]
        assert "tiny outside" in rows[3][1] and f"in {tmp_path}" in rows[3][1]
        assert dialog.models.currentRow() == 3
        assert dialog.bundle.text() == str(outside)
        assert dialog.card.toPlainText().startswith("Name: tiny outside")
        dialog.bundle.setText(str(tmp_path / "typed.dalle.safetensors"))  # no row lists it
        assert dialog.models.selectedItems() == []
        dialog.bundle.setText(str(outside))
        return True

    def reopened(dialog):
        seen["rows"] = dialog.models.rows()
        seen["selected"] = dialog.models.currentRow()
        return False

    answering(monkeypatch, other_file, reopened)
    window.open_settings()
    wait_loaded(qtbot, window.session)
    assert window.session.card["name"] == "tiny outside"
    window.open_settings()
    assert [choice for choice, _ in seen["rows"]][3:] == [str(outside), str(broken)]
    assert IN_USE in seen["rows"][3][1] and seen["selected"] == 3


def test_a_double_click_chooses_and_confirms(folder, qtbot):
    dialog = settings_module.SettingsDialog("cpu", "")
    qtbot.addWidget(dialog)
    view = dialog.models
    point = view.visualItemRect(view.item(1)).center()
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)  # a real one's
    qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)  # first press
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert dialog.values() == ("cpu", str(folder / "alpha.dalle.safetensors"))


def test_open_models_folder_shows_it(folder, qtbot, monkeypatch):
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    dialog = settings_module.SettingsDialog("cpu", "")
    qtbot.addWidget(dialog)
    button = next(b for b in dialog.findChildren(QPushButton) if b.text() == "Open models folder")
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert [Path(url.toLocalFile()) for url in opened] == [folder]


def test_a_models_folder_that_cannot_be_made_lists_nothing_and_says_why(
    tmp_path, qtbot, monkeypatch
):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DALLE_STUDIO_MODELS", str(blocker / "models"))
    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warned.append(text))
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: pytest.fail("opened"))
    dialog = settings_module.SettingsDialog("cpu", "")  # Settings still opens
    qtbot.addWidget(dialog)
    assert [choice for choice, _ in dialog.models.rows()] == [""]
    assert settings_module.UpscalerBox("auto").count() == 3  # Off, Auto, Choose a file…
    dialog._open_folder()
    assert len(warned) == 1 and "\n" not in warned[0]
    assert warned[0].startswith(f"cannot make the models folder {blocker / 'models'}: ")


def test_no_file_manager_says_where_the_folder_is(folder, monkeypatch):
    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warned.append(text))
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: False)
    assert (
        open_models_folder()
        == warned[0]
        == (f"no file manager opened the models folder; it is {folder}")
    )


def test_the_upscaler_choice_lists_the_folders_upscalers(folder, qtbot):
    shipped = folder / "anime.upscaler.safetensors"
    shutil.copyfile(shipped_upscaler_path(), shipped)
    (folder / "bad.upscaler.safetensors").write_bytes(b"\0" * 3)
    box = settings_module.UpscalerBox(str(shipped))
    qtbot.addWidget(box)
    items = [(box.itemText(i), box.itemData(i)) for i in range(box.count())]
    name = catalog.installed_upscalers()[0].headline
    assert name.startswith("realesr-animevideov3-x4")
    assert items[2] == (name, str(shipped))
    assert items[3][1] == str(folder / "bad.upscaler.safetensors")
    assert "only 3 bytes long" in items[3][0] and not box.model().item(3).isEnabled()
    assert box.currentIndex() == 2 and box.choice() == str(shipped)
    assert len(items) == 5  # Off, Auto, the two files, Choose a file…
