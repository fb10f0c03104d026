"""File › Import model… (studio/widgets/import_dialog.py, studio/importing.py) driven on tiny files
in the released formats (the importers' test writers): every file found, imported into the
models folder and loaded by "Use it now"; a missing file named with its repository and Import
off; a hostile file refused in one line with nothing written; Cancel midway with nothing written
and the dialog usable again; an upscaler set as the studio's upscaler."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QSettings, Qt

from model.bundle import load
from model.bundle.upscaler_files import load_upscaler
from model.importers import dalle_mega, kinds
from studio import catalog
from studio.engine import Engine
from studio.session import Session
from studio.widgets.import_dialog import MISSING, ImportDialog
from studio.widgets.main_window import MainWindow
from tests.helpers import tiny_bundle
from tests.test_import_mega import (  # noqa: F401 (fixtures)
    Payload,
    bpe_files,
    text_vocab,
    tiny_preset,
    write_sources,
)
from tests.test_upscaler import tiny

pytest.importorskip("msgpack")
WAIT_MS = 60_000


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("DALLE_STUDIO_MODELS", str(folder))
    assert catalog.models_folder() == folder and folder.is_dir()  # made on demand
    return folder


@pytest.fixture
def mega_files(tmp_path, bpe_files, tiny_preset) -> Path:  # noqa: F811
    folder = tmp_path / "downloads"
    write_sources(folder, bpe_files, tiny_preset)
    return folder


@pytest.fixture
def window(qtbot, tmp_path, models):
    engine = Engine()
    engine.set_bundle(tiny_bundle())
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    win.ask_before_close = False
    qtbot.addWidget(win)
    yield win
    engine.shutdown()


def rows(dialog: ImportDialog) -> list[list[str]]:
    tree = dialog.files
    return [
        [tree.topLevelItem(i).text(c) for c in range(3)] for i in range(tree.topLevelItemCount())
    ]


def import_and_wait(qtbot, dialog: ImportDialog) -> None:
    qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton)
    assert dialog.running
    qtbot.waitUntil(lambda: not dialog.running, timeout=WAIT_MS)


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_every_file_found_imports_into_the_models_folder_and_use_it_now_switches(
    qtbot, window, models, mega_files
):
    dialog = window.import_model_dialog()
    assert window.findChild(ImportDialog) is dialog
    dialog.choose("mega", mega_files, "fp32")
    listed = rows(dialog)
    assert [row[0] for row in listed] == [
        "encoder.pt", "decoder.pt", "vocab.json", "merges.txt",
        "flax_model.msgpack", "config.json", "detoker.pt",
    ]  # fmt: skip
    assert all(row[1].startswith("found") for row in listed), listed
    assert dialog.import_button.isEnabled()
    # the figures are the files' own: fp32 halves kept fp32, plus the VQGAN, on disk
    sizes = {p.name: p.stat().st_size for p in mega_files.iterdir()}
    halves = sizes["encoder.pt"] + sizes["decoder.pt"]
    assert dialog.plan.needs.disk == halves // 4 * 4 + sizes["flax_model.msgpack"]
    assert "the files' sizes" in dialog.needs.text() and "free in the models folder" in (
        dialog.needs.text()
    )
    out = models / "dalle-mega-fp32.dalle.safetensors"
    assert str(out) in dialog.output.text()
    assert f"dalle import mega --from {mega_files} --out {out}" in dialog.output.toolTip()

    import_and_wait(qtbot, dialog)
    assert dialog.errors == [] and files_in(models) == [out.name]
    assert dialog.progress.value() == dialog.progress.maximum()
    assert dialog.last_step[0] == dialog.last_step[1]  # the importer said as many lines as planned
    bundle = load(out)  # loadable, and the files' model
    assert bundle.card["imported"]["from"] == "dalle import mega"
    # the next import of the same would not replace it
    assert dialog.plan.out.name == "dalle-mega-fp32-2.dalle.safetensors"

    assert dialog.use_button.isVisible()
    qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)
    session = window.session
    qtbot.waitUntil(
        lambda: session.model_state == "loaded" and session.model_path == str(out),
        timeout=WAIT_MS,
    )
    assert window.settings.value("bundle") == str(out)
    assert "DALL·E Mega" in window.model_label.text()
    assert not dialog.isVisible()


def test_a_missing_file_is_listed_with_its_repository_and_import_is_off(
    qtbot, models, mega_files, tmp_path
):
    dialog = ImportDialog(models)
    qtbot.addWidget(dialog)
    (mega_files / "merges.txt").unlink()
    (mega_files / "detoker.pt").unlink()
    dialog.choose("mega", mega_files)
    listed = {row[0]: row for row in rows(dialog)}
    assert listed["merges.txt"][1] == MISSING
    assert "kuprel/min-dalle" in listed["merges.txt"][2]
    assert listed["detoker.pt"][1].startswith("optional")  # optional: Import does not wait on it
    assert not dialog.import_button.isEnabled()
    assert "the released files' sizes where a file is missing" in dialog.needs.text()

    empty = tmp_path / "empty"
    empty.mkdir()
    dialog.choose("malevich", empty)
    listed = {row[0]: row for row in rows(dialog)}
    assert "ai-forever/rudalle-Malevich" in listed["pytorch_model_v3.bin"][2]
    assert "shonenkov/rudalle-utils" in listed["vqgan.gumbelf8-sber.model.ckpt"][2]
    assert "shonenkov/rudalle-utils" in listed["bpe.model"][2]
    # before a byte is downloaded: the released files' sizes, the fp16 transformer in bf16
    released = {s.role: s.released_bytes for s in kinds.KINDS["malevich"].sources}
    _, disk = kinds.rudalle_room(released["transformer"], released["vqgan"], 2, mapped=True)
    assert f"{kinds.size_text(disk)} of disk" in dialog.needs.text()
    assert "based on the released files' sizes" in dialog.needs.text().lower()
    assert not dialog.import_button.isEnabled() and files_in(models) == []


def test_a_hostile_file_is_one_line_and_nothing_is_written(qtbot, models, mega_files, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, mega_files / "encoder.pt")
    dialog = ImportDialog(models)
    qtbot.addWidget(dialog)
    dialog.choose("mega", mega_files)
    import_and_wait(qtbot, dialog)
    assert len(dialog.errors) == 1
    error = dialog.errors[0]
    assert "\n" not in error and "encoder.pt" in error and "refused" in error
    assert "weights_only" not in error and "PyTorch 2.6" not in error  # no unsafe advice
    assert dialog.error.text() == error and "Nothing was written" in dialog.status.text()
    assert not marker.exists() and files_in(models) == []
    assert not dialog.use_button.isVisible() and dialog.kind.isEnabled()


def test_cancel_midway_writes_nothing_and_the_dialog_imports_again(
    qtbot, models, mega_files, monkeypatch
):
    cancelled, reached = threading.Event(), threading.Event()
    read_pt = dalle_mega.read_pt

    def held_read(path, role):  # the import waits here, midway, until Cancel was pressed
        if not cancelled.is_set():
            reached.set()
            assert cancelled.wait(WAIT_MS / 1000)
        return read_pt(path, role)

    monkeypatch.setattr(dalle_mega, "read_pt", held_read)
    dialog = ImportDialog(models)
    qtbot.addWidget(dialog)
    dialog.choose("mega", mega_files)
    qtbot.mouseClick(dialog.import_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(reached.is_set, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: dialog.progress.value() > 0, timeout=WAIT_MS)
    assert dialog.progress.value() < dialog.progress.maximum()
    qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    assert dialog.isVisible() or dialog.running  # Cancel stops the import, not the dialog
    cancelled.set()
    qtbot.waitUntil(lambda: not dialog.running, timeout=WAIT_MS)
    assert "Cancelled: nothing was written" in dialog.status.text()
    assert files_in(models) == [] and dialog.errors == []
    assert dialog.import_button.isEnabled() and dialog.kind.isEnabled()

    import_and_wait(qtbot, dialog)  # usable again: the same import now goes through
    assert files_in(models) == ["dalle-mega-bf16.dalle.safetensors"]
    assert load(models / "dalle-mega-bf16.dalle.safetensors").card["imported"]["dtype"] == "bf16"


def test_an_upscaler_is_imported_and_set_as_the_studios_upscaler(qtbot, window, models, tmp_path):
    from model.networks.upscaler import SRVGGConfig

    downloads = tmp_path / "esrgan"
    downloads.mkdir()
    net = tiny(SRVGGConfig(num_feat=8, num_conv=3)).net
    torch.save({"params_ema": net.state_dict()}, downloads / "realesr-animevideov3.pth")
    dialog = window.import_model_dialog()
    dialog.choose("realesrgan", downloads)
    assert rows(dialog)[0][0] == "realesr-animevideov3.pth" and not dialog.dtype.isEnabled()
    import_and_wait(qtbot, dialog)
    out = models / "realesr-animevideov3.upscaler.safetensors"
    upscaler, card = load_upscaler(out)
    assert card["architecture"] == "SRVGGNetCompact" and dialog.last_step == (2, 2)
    qtbot.mouseClick(dialog.use_button, Qt.MouseButton.LeftButton)
    assert window.session.upscaler == str(out) and window.settings.value("upscaler") == str(out)


def test_the_kinds_name_every_repository_the_importers_name():
    """The one list: the importers' error texts and the CLI's help come from it."""
    from model.bundle import SUFFIX
    from model.bundle.upscaler_files import SUFFIX as UPSCALER
    from model.importers import rudalle_import

    assert (kinds.BUNDLE_SUFFIX, kinds.UPSCALER_SUFFIX) == (SUFFIX, UPSCALER)
    assert dalle_mega.MIN_DALLE == kinds.MIN_DALLE.text
    assert dalle_mega.MODELS["mini"].encoder == "encoder_mini.pt"
    assert rudalle_import.TRANSFORMER_FILES == ("pytorch_model_v3.bin", "pytorch_model.bin")
    repositories = {s.repository.name for k in kinds.KINDS.values() for s in k.sources}
    assert repositories == {
        "kuprel/min-dalle", "dalle-mini/vqgan_imagenet_f16_16384",
        "ai-forever/rudalle-Malevich", "shonenkov-AI/rudalle-xl-surrealist",
        "shonenkov/rudalle-utils", "openai/DALL-E", "xinntao/Real-ESRGAN",
    }  # fmt: skip


def test_the_released_sizes_are_the_presets_parameters():
    """The estimate before a download: min-dalle's fp32 halves are the presets' parameters."""
    from model.networks.bart import MEGA, MINI, BartDalle

    for key, config in (("mega", MEGA), ("mini", MINI)):
        with torch.device("meta"):
            model = BartDalle(config)
        sources = {s.role: s.released_bytes for s in kinds.KINDS[key].sources}
        for half in ("encoder", "decoder"):
            count = sum(p.numel() for p in getattr(model, half).parameters())
            assert sources[half] == 4 * count, (key, half)


class Lines:
    """An importer's progress that keeps its lines and counts its ticks."""

    def __init__(self):
        self.lines: list[str] = []
        self.ticks = 0

    def __call__(self, message: str) -> None:
        self.lines.append(message)

    def tick(self) -> None:
        self.ticks += 1


def test_each_importer_says_the_lines_its_progress_bar_plans(tmp_path, mega_files):
    """``kinds.steps`` is each progress bar's length: the importer's own count of lines (Mega
    without detoker.pt, ruDALL-E at a tiny size), and the ticks come between them."""
    (mega_files / "detoker.pt").unlink()
    said = Lines()
    kinds.run(kinds.scan(kinds.KINDS["mega"], mega_files), tmp_path / "a.dalle.safetensors",
              "bf16", said)  # fmt: skip
    assert len(said.lines) == kinds.steps(kinds.scan(kinds.KINDS["mega"], mega_files)) == 10
    assert said.ticks > len(said.lines)  # hashed chunks, halves and tensors between the lines

    from model.importers.rudalle_import import import_rudalle
    from tests.test_rudalle import load_rudalle_code, rudalle_model
    from tests.test_rudalle_import import HEADS, VQ
    from tests.test_rudalle_import import write_sources as write_rudalle

    folder = tmp_path / "rudalle"
    write_rudalle(folder, rudalle_model(load_rudalle_code(), depth=2, seed=3), "pytorch_model.bin")
    (folder / "pytorch_model_v3.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())
    scan = kinds.scan(kinds.KINDS["surrealist"], folder)
    assert scan.complete and scan.found["transformer"].name == "pytorch_model.bin"
    said = Lines()
    out = tmp_path / "s.dalle.safetensors"
    import_rudalle(folder, out, "bf16", heads=HEADS, vqgan=VQ, progress=said,
                   transformer_file=scan.found["transformer"].name)  # fmt: skip
    assert len(said.lines) == kinds.steps(scan)
    assert load(out).card["name"] == "ruDALL-E Surrealist XL (imported)"  # not Malevich beside it


def test_a_dvae_is_imported_and_said_to_be_no_model_to_draw_with(qtbot, models, tmp_path):
    pytest.importorskip("dall_e")
    from tests.test_import_openai_dvae import save_pair

    downloads = tmp_path / "openai"
    downloads.mkdir()
    save_pair(downloads)
    dialog = ImportDialog(models)
    qtbot.addWidget(dialog)
    dialog.choose("openai-dvae", downloads)
    assert "not a model to draw with" in dialog.note.text()
    import_and_wait(qtbot, dialog)
    assert dialog.last_step == (4, 4) and files_in(models) == ["openai-dvae.safetensors"]
    assert "dalle train transformer --vae" in dialog.status.text()
    assert not dialog.use_button.isVisible()


def test_random_bytes_and_a_quoted_token_read_as_one_plain_line(qtbot, models, mega_files):
    """A file of random bytes named like the encoder: a few words, not torch's advice to load it
    with weights_only=False; an error quoting '<s>' is shown as text, not as markup."""
    (mega_files / "encoder.pt").write_bytes(bytes(range(256)) * 800)
    dialog = ImportDialog(models)
    qtbot.addWidget(dialog)
    dialog.choose("mega", mega_files)
    import_and_wait(qtbot, dialog)
    (error,) = dialog.errors
    assert "not a torch file" in error and "weights_only" not in error and "\n" not in error
    assert dialog.error.textFormat() == Qt.TextFormat.PlainText
    dialog.folder.setText(str(mega_files) + "/")
    assert dialog.status.text() == ""  # "Nothing was written." was about the last import


def test_enter_in_the_folder_field_does_not_start_an_import(qtbot, models, mega_files):
    dialog = ImportDialog(models)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.choose("mega", mega_files)
    assert dialog.import_button.isEnabled()
    dialog.folder.setFocus()
    qtbot.keyClick(dialog.folder, Qt.Key.Key_Return)
    assert not dialog.running and files_in(models) == [] and dialog.isVisible()
