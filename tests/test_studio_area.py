"""The working area in the studio: the document's rectangle on the area's grid, the session's
choice and the model's default, the engine completing in the area (kept pixels bit for bit), the
upscaler setting, the area in history and projects, and the canvas's frame and handle."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from model.geometry import Area, working_area
from studio import engine as studio_engine
from studio import project
from studio.document import Document
from studio.engine import Engine, Job, SamplingOptions
from studio.session import Session
from studio.widgets import area_frame
from studio.widgets.canvas import Canvas
from tests.helpers import tiny_bundle

SIZE, FACTOR = 32, 8  # the tiny bundle's model


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def document(width=151, height=97, choice="whole") -> Document:
    doc = Document(picture(width, height))
    doc.set_model_geometry(SIZE, FACTOR)
    doc.set_area_choice(choice)
    return doc


# -- the document -----------------------------------------------------------------------------


def test_whole_is_the_rectangle_of_the_whole_pictures_grid():
    doc = document()
    cell = doc.set_rectangle_from_pixel(100, 70)
    assert doc.area.is_whole and doc.area_offset == (0, 0)
    assert cell == doc.geometry.cell_at(100, 70)
    assert doc.rectangle_pixels()[:2] == doc.geometry.pixel_of(cell)
    assert doc.masked_cells == doc.geometry.masked_count(cell)


@pytest.mark.parametrize("choice", ["auto", 60])
def test_the_rectangle_snaps_on_the_areas_grid(choice):
    doc = document(choice=choice)
    cell = doc.set_rectangle_from_pixel(130, 80)
    expected = working_area((151, 97), (130, 80), SIZE, choice)
    assert doc.area == expected and not expected.is_whole
    grid = expected.geometry(SIZE, FACTOR)
    assert cell == grid.cell_at(130 - expected.left, 80 - expected.top)
    x, y, w, h = doc.rectangle_pixels()
    gx, gy = grid.pixel_of(cell)
    assert (x, y) == (expected.left + gx, expected.top + gy)
    assert expected.left <= x <= 130 and expected.top <= y <= 80  # snapped up-left, inside
    assert (w, h) == (151 - x, 97 - y)
    # fewer picture pixels per cell than on the whole picture's grid: more cells to sample
    assert doc.masked_cells == grid.masked_count(cell)
    assert doc.masked_cells > doc.geometry.masked_count(doc.geometry.cell_at(x, y))


def test_a_side_too_short_for_the_rectangle_grows_to_hold_it_and_the_choice_stays():
    doc = document(choice=40)
    doc.set_rectangle_from_pixel(90, 60)  # a 61x37 rectangle
    assert doc.area_choice == 40
    assert doc.area.width >= 61 and doc.area.height >= 37
    x, y, _, _ = doc.rectangle_pixels()
    assert x >= doc.area.left and y >= doc.area.top


def test_changing_the_choice_places_the_users_corner_again_without_drift():
    doc = document()
    first = doc.set_rectangle_from_pixel(127, 83)
    for choice in ["auto", 70, "whole", "auto", "whole"]:
        doc.set_area_choice(choice)
    assert doc.cell == first and doc.area.is_whole
    doc.set_area_choice("auto")
    auto = (doc.cell, doc.area_offset)
    doc.set_area_choice(70)
    doc.set_area_choice("auto")
    assert (doc.cell, doc.area_offset) == auto
    with pytest.raises(ValueError, match="whole, auto or a side"):
        doc.set_area_choice("half")
    with pytest.raises(ValueError, match="whole, auto or a side"):
        doc.set_area_choice(0)


# -- the session and the engine ----------------------------------------------------------------


@pytest.fixture
def make_session(qtbot, bundle):
    engines = []

    def make(image: np.ndarray) -> Session:
        engine = Engine()  # the real sampler, on the tiny model
        engine.set_bundle(bundle)
        engines.append(engine)
        session = Session(engine)
        session.set_document(Document(image))
        return session

    yield make
    for engine in engines:
        engine.shutdown()


def test_the_models_default_area_and_the_users_choice(make_session, bundle):
    session = make_session(picture(151, 97))
    assert session.default_area == "whole"  # the tiny model is trained on scenes here
    assert session.area == "whole" and session.document.area_choice == "whole"
    session.engine.knows_scenes = False  # as an imported photo model
    assert session.default_area == "auto"
    session.set_area_choice(80)
    assert session.area == 80 and session.document.area_choice == 80
    session.set_area_choice(None)
    assert session.area == "auto" and session.document.area_choice == "auto"


@pytest.mark.parametrize("choice,size", [("auto", (151, 97)), (70, (97, 151)), (45, (83, 61))])
def test_a_generation_in_an_area_keeps_every_other_pixel(make_session, qtbot, choice, size):
    image = picture(*size, seed=3)
    session = make_session(image.copy())
    session.set_area_choice(choice)
    session.set_options(n=2, seed=5)
    session.set_caption("a red circle")
    doc = session.document
    doc.set_rectangle_from_pixel(size[0] - 30, size[1] - 25)
    area = doc.area
    assert not area.is_whole
    x, y, _, _ = doc.rectangle_pixels()
    with qtbot.waitSignal(session.finished, timeout=60_000):
        job = session.generate()
    assert job.area == area and job.cell == doc.cell
    outside = np.ones(image.shape[:2], bool)
    outside[y:, x:] = False
    assert len(doc.candidates) == 2
    for candidate in doc.candidates:
        assert candidate.shape == image.shape
        assert np.array_equal(candidate[outside], image[outside])  # bit for bit
        assert not np.array_equal(candidate[y:, x:], image[y:, x:])
    entries = [doc.history[i] for i in doc.candidate_entries]
    assert {(e.cell, e.area) for e in entries} == {(doc.cell, (area.left, area.top))}


def test_the_engine_upscales_in_the_area_and_says_so(bundle, monkeypatch):
    from model.inference import completion as completion_module

    drawn = []
    upscale = completion_module.upscale
    monkeypatch.setattr(
        completion_module, "upscale", lambda *a, **k: drawn.append(1) or upscale(*a, **k)
    )
    monkeypatch.setattr(studio_engine, "PREVIEW_ALWAYS_S", 60.0)  # a live preview every row
    engine = Engine()
    engine.set_bundle(bundle)
    engine.set_upscaler("auto")  # the shipped Real-ESRGAN
    image = picture(161, 123, seed=4)
    area = working_area((161, 123), (121, 93), SIZE, "auto")  # 80 px: 2.5 px per model px
    cell = area.geometry(SIZE, FACTOR).cell_at(121 - area.left, 93 - area.top)
    job = Job(image, cell, "a red circle", SamplingOptions(n=1, seed=2), area=area)
    said: list = []
    final = engine.run_job_blocking(job, said.append)
    assert isinstance(final, studio_engine.Finished), final
    phases = [m.phase for m in said if isinstance(m, studio_engine.Phase)]
    assert "upscaling" in phases and "pasting" not in phases
    rows = [m for m in said if isinstance(m, studio_engine.RowDecoded)]
    assert len(rows) > 1 and all(r.preview is not None for r in rows)
    assert len(drawn) == 1  # the final candidate only: the live rows stay at the model's size
    gx, gy = area.geometry(SIZE, FACTOR).pixel_of(cell)
    x, y = area.left + gx, area.top + gy
    outside = np.ones(image.shape[:2], bool)
    outside[y:, x:] = False
    assert np.array_equal(final.candidates[0][outside], image[outside])
    engine.set_upscaler("off")
    said.clear()
    engine.run_job_blocking(Job(image, cell, "a red circle", job.options, area=area), said.append)
    assert "pasting" in [m.phase for m in said if isinstance(m, studio_engine.Phase)]
    engine.shutdown()


def test_an_upscaler_file_that_cannot_be_read_fails_the_job_in_one_line(bundle, tmp_path):
    engine = Engine()
    engine.set_bundle(bundle)
    for path, words in [
        (tmp_path / "none.upscaler.safetensors", "no such upscaler file"),
        (tmp_path / "bad.upscaler.safetensors", "upscaler"),
    ]:
        if "bad" in path.name:
            path.write_bytes(b"not a safetensors file")
        engine.set_upscaler(str(path))
        job = Job(picture(60, 50), (2, 2), "a red circle", SamplingOptions(n=1, seed=1))
        final = engine.run_job_blocking(job, lambda m: None)
        assert isinstance(final, studio_engine.Failed)
        assert words in final.message and "\n" not in final.message
    engine.shutdown()


# -- history and projects ------------------------------------------------------------------------


def test_the_area_round_trips_through_a_project_and_old_projects_read(tmp_path):
    doc = document(choice=60)
    doc.set_rectangle_from_pixel(130, 80)
    area, cell = doc.area_offset, doc.cell
    result = picture(151, 97, seed=9)
    doc.start_generation()
    doc.finish_generation([result], "a fox", cell, 7, SamplingOptions(n=1), area=area)
    path = project.save(doc, tmp_path / "a.dstudio")
    loaded = project.load(path)
    (entry,) = [e for e in loaded.history.values() if not e.is_original]
    assert (entry.cell, entry.area) == (cell, area)
    assert (loaded.cell, loaded.area_offset) == (cell, area)
    assert loaded.rectangle_pixels() == doc.rectangle_pixels()
    # a project written before areas: no "area" anywhere, every entry on the whole picture
    whole = document()
    whole.set_rectangle_from_pixel(100, 70)
    whole.start_generation()
    whole.finish_generation([result], "a fox", whole.cell, 7, SamplingOptions(n=1))
    old = project.save(whole, tmp_path / "old.dstudio")
    _strip_areas(old)
    again = project.load(old)
    assert all(e.area is None for e in again.history.values())
    assert again.area.is_whole and again.cell == whole.cell


def _strip_areas(path) -> None:
    def strip(manifest) -> None:
        manifest.pop("area", None)
        for item in manifest["history"]:
            item.pop("area", None)

    _edit_manifest(path, strip)


# -- the canvas ----------------------------------------------------------------------------------


def test_the_frame_says_the_scale_and_its_handle_sets_a_side(qtbot, make_session):
    session = make_session(picture(640, 400))
    canvas = Canvas(session)
    qtbot.addWidget(canvas)
    canvas.resize(700, 480)
    canvas.set_document(session.document)
    canvas.show()
    session.set_area_choice("auto")
    doc = session.document
    doc.set_rectangle_from_pixel(560, 340)  # auto: an 160 px square
    assert doc.area == Area((640, 400), 480, 240)
    assert area_frame.scale_label(doc) == "working area 160×160 px · model sees 1 px per 5.0 px"
    handle = canvas.mapFromScene(QPointF(480, 240))
    assert area_frame.handle_at(canvas, doc, QPointF(handle))
    target = canvas.mapFromScene(QPointF(340, 100))  # a 300 px square
    viewport = canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=handle)
    qtbot.mouseMove(viewport, target)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=target)
    assert isinstance(session.area_choice, int) and abs(session.area_choice - 300) <= 3
    assert doc.area.left == 640 - session.area_choice
    # dragged past the rectangle: the side never drops below what holds it
    corner = canvas.mapFromScene(QPointF(doc.area.left, doc.area.top))
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=corner)
    end = canvas.mapFromScene(QPointF(630, 390))
    qtbot.mouseMove(viewport, end)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=end)
    x, y, w, h = doc.rectangle_pixels()
    assert session.area_choice >= max(w, h) and doc.area.left <= x and doc.area.top <= y
    assert "cells" in canvas.rectangle_label()
    assert canvas.grab().width() > 0  # draws the frame without error


# -- Settings › Upscaler ---------------------------------------------------------------------------


def test_the_upscaler_setting_is_chosen_remembered_and_reaches_the_engine(
    qtbot, tmp_path, monkeypatch
):
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QDialog, QFileDialog

    from studio.widgets import settings as settings_module
    from studio.widgets.main_window import MainWindow

    chosen = str(tmp_path / "x4plus.upscaler.safetensors")
    box = settings_module.UpscalerBox("auto")
    qtbot.addWidget(box)
    assert box.choice() == "auto" and box.currentText().startswith("Auto")
    answers = [(chosen, ""), ("", "")]  # a file, then a cancelled dialog
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: answers.pop(0))
    for _ in range(2):
        index = box.findText(settings_module.CHOOSE_UPSCALER)
        box.activated.emit(index)
        assert box.choice() == chosen and box.currentText() == "x4plus.upscaler.safetensors"
    box.activated.emit(box.findData("off"))
    assert box.choice() == "off"

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    engine = Engine()
    window = MainWindow(Session(engine), settings, autosave_folder=tmp_path)
    qtbot.addWidget(window)
    window.ask_before_close = False
    assert engine.upscaler == "auto"  # the default: the shipped Real-ESRGAN
    monkeypatch.setattr(window.session.engine, "load", lambda *args: None)

    def accept(dialog):
        assert dialog.upscaler.choice() == engine.upscaler  # the dialog shows the one in use
        dialog.upscaler._show(chosen)
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(settings_module.SettingsDialog, "exec", accept)
    window.open_settings()
    assert engine.upscaler == chosen == settings.value("upscaler")
    again = MainWindow(Session(Engine()), settings, autosave_folder=tmp_path)
    qtbot.addWidget(again)
    again.ask_before_close = False
    assert again.session.upscaler == chosen  # remembered
    engine.shutdown()
    again.session.engine.shutdown()


def test_the_journal_keeps_each_entrys_area_and_a_bad_area_is_one_line(qapp, tmp_path):
    from studio import autosave

    saver = autosave.Autosaver(tmp_path)
    doc = document(choice="auto")
    saver.watch(doc)
    doc.set_rectangle_from_pixel(130, 80)
    area = doc.area_offset
    doc.start_generation()
    doc.finish_generation([picture(151, 97, 5)], "a fox", doc.cell, 1, None, area=area)
    doc.start_generation()  # a second run, journaled after the base autosave
    doc.finish_generation([picture(151, 97, 6)], "a fox", doc.cell, 2, None, area=area)
    recovered, _ = autosave.recover(tmp_path)
    areas = sorted((e.seed, e.area) for e in recovered.history.values() if not e.is_original)
    assert areas == [(1, area), (2, area)]

    path = project.save(doc, tmp_path / "bad.dstudio")
    _edit_manifest(path, lambda m: m["history"][1].__setitem__("area", [-3, "x"]))
    with pytest.raises(project.ProjectError, match=r"history\[1\] area left") as raised:
        project.load(path)
    assert "\n" not in str(raised.value)


def _edit_manifest(path, change) -> None:
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
