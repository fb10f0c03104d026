"""Regions anywhere in the studio (issue 31): the region's end on the working area's grid, the
"to the corner" toggle, the canvas's drag and bottom-right handle, the job and engine carrying the
end and the lookahead, and the end in history, projects and the autosave's journal."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from model.geometry import working_area
from studio import autosave, project
from studio.document import Document
from studio.engine import Engine, SamplingOptions
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


# -- the document -----------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["whole", "auto", 80])
def test_the_end_snaps_on_the_areas_grid_and_the_area_follows(choice):
    doc = document(choice=choice)
    doc.set_rectangle_from_pixel(40, 30, end=(90, 70))
    area = doc.area
    side = choice if isinstance(choice, int) else choice
    assert area == working_area((151, 97), (40, 30), SIZE, side, (90, 70), FACTOR)
    geometry = doc.area_geometry
    assert doc.end == geometry.end_cell(90 - area.left, 70 - area.top)
    x, y, w, h = doc.rectangle_pixels()
    assert (x, y) == tuple(np.add(geometry.pixel_of(doc.cell), (area.left, area.top)))
    assert x <= 40 and y <= 30 and x + w >= 90 and y + h >= 70  # it holds what was put
    assert x + w < 151 and y + h < 97  # and ends inside the picture
    assert doc.masked_cells == geometry.plan(doc.cell, doc.end).cells
    assert doc.masked_cells < geometry.masked_count(doc.cell)  # fewer cells than to the corner


def test_an_end_at_the_corner_is_the_corner_and_the_toggle_brings_it_back():
    doc = document(choice="auto")
    doc.set_rectangle_from_pixel(100, 60, end=(151, 97))
    assert doc.end is None and doc.area_far is None
    doc.set_rectangle_from_pixel(100, 60, end=(130, 80))
    assert doc.end is not None and doc.area_record is not None
    doc.set_end_from_pixel(None)  # "to the corner": from the top-left the user put, on the
    area = doc.area  # grid of the area a region to the corner has
    assert doc.end is None and area == working_area((151, 97), (100, 60), SIZE, "auto")
    assert doc.cell == doc.area_geometry.cell_at(100 - area.left, 60 - area.top)
    x, y, w, h = doc.rectangle_pixels()
    assert (x + w, y + h) == (151, 97)


def test_changing_the_area_keeps_the_users_region_without_drift():
    doc = document(choice="auto")
    doc.set_rectangle_from_pixel(60, 40, end=(100, 70))
    first = (doc.cell, doc.end, doc.area)
    for choice in ["whole", 120, "auto"]:
        doc.set_area_choice(choice)
        x, y, w, h = doc.rectangle_pixels()
        assert x <= 60 and y <= 40 and x + w >= 100 and y + h >= 70
    assert (doc.cell, doc.end, doc.area) == first


def test_the_session_toggle_follows_the_region(qtbot, make_session):
    session = make_session(picture(151, 97))
    doc = session.document
    assert session.to_corner  # the default: DALL·E's own rectangle
    doc.set_rectangle_from_pixel(60, 40, end=(100, 70))  # a region read from a file, say
    assert not session.to_corner
    with qtbot.waitSignal(session.to_corner_changed):
        session.set_to_corner(True)
    assert doc.end is None
    opened = Document(picture(151, 97, 1))  # a project opened with a region inside
    opened.set_model_geometry(SIZE, FACTOR)
    opened.set_rectangle_from_pixel(60, 40, end=(100, 70))
    session.set_document(opened)
    assert not session.to_corner and opened.end is not None
    with pytest.raises(ValueError, match="lookahead"):
        session.set_lookahead(0)


# -- a generation through the session -----------------------------------------------------------


@pytest.mark.parametrize("lookahead", [1, 2])
def test_a_region_in_the_middle_keeps_every_other_pixel(make_session, qtbot, lookahead):
    image = picture(151, 97, seed=3)  # odd sizes
    session = make_session(image.copy())
    session.set_area_choice("auto")
    session.set_to_corner(False)
    session.set_lookahead(lookahead)
    session.set_options(n=2, seed=5)
    session.set_caption("a red circle")
    doc = session.document
    doc.set_rectangle_from_pixel(50, 30, end=(95, 65))
    x, y, w, h = doc.rectangle_pixels()
    assert x + w < 151 and y + h < 97
    with qtbot.waitSignal(session.finished, timeout=120_000):
        job = session.generate()
    assert (job.end, job.cell, job.area, job.lookahead) == (
        doc.end,
        doc.cell,
        doc.area,
        lookahead,
    )
    outside = np.ones(image.shape[:2], bool)
    outside[y : y + h, x : x + w] = False
    assert len(doc.candidates) == 2
    for candidate in doc.candidates:
        assert candidate.shape == image.shape
        assert np.array_equal(candidate[outside], image[outside])  # bit for bit
        assert not np.array_equal(candidate[y : y + h, x : x + w], image[y : y + h, x : x + w])
    entries = [doc.history[i] for i in doc.candidate_entries]
    assert {(e.cell, e.area, e.end) for e in entries} == {(doc.cell, doc.area.box, doc.end)}


# -- the canvas ----------------------------------------------------------------------------------


def test_a_drag_selects_a_region_and_its_handle_resizes_it(qtbot, make_session):
    session = make_session(picture(640, 400))
    canvas = Canvas(session)
    qtbot.addWidget(canvas)
    canvas.resize(700, 480)
    canvas.set_document(session.document)
    canvas.show()
    session.set_area_choice("whole")
    doc = session.document
    viewport = canvas.viewport()

    def drag(start, stop) -> None:
        start, stop = canvas.mapFromScene(QPointF(*start)), canvas.mapFromScene(QPointF(*stop))
        qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=start)
        qtbot.mouseMove(viewport, (start + stop) / 2)
        qtbot.mouseMove(viewport, stop)
        qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=stop)

    geometry = doc.area_geometry  # the tiny model's 4x4 grid: cells of 160 px
    drag((300, 200), (200, 120))  # to the corner (the default): the drag places the top-left
    assert doc.cell == geometry.cell_at(200, 120) == (0, 1)
    assert doc.end is None and area_frame.region_end(doc) is None
    x, y, w, h = doc.rectangle_pixels()
    assert (x + w, y + h) == (640, 400)

    session.set_to_corner(False)
    drag((420, 300), (200, 120))  # a selection from corner to corner, either way round
    assert (doc.cell, doc.end) == ((0, 1), geometry.end_cell(420, 300)) == ((0, 1), (2, 3))
    assert doc.rectangle_pixels() == (160, 0, 320, 320)
    handle = canvas.mapFromScene(QPointF(*area_frame.region_end(doc)))
    assert area_frame.end_handle_at(canvas, doc, QPointF(handle))
    assert canvas.grab().width() > 0  # draws the handle without error
    drag((480, 320), (600, 250))  # the handle: the end moves, the top-left stays
    assert (doc.cell, doc.end) == ((0, 1), (2, 4))
    assert doc.rectangle_pixels() == (160, 0, 480, 320)  # to the right edge, not the bottom
    assert doc.masked_cells == 6 and "6 cells" in canvas.rectangle_label()

    session.set_to_corner(True)  # the toggle: back to the corner from the same top-left
    assert (doc.cell, doc.end) == ((0, 1), None)
    assert doc.rectangle_pixels() == (160, 0, 480, 400)
    assert area_frame.region_end(doc) is None
    assert not area_frame.end_handle_at(canvas, doc, QPointF(handle))


# -- history, projects and the journal ----------------------------------------------------------


def test_the_end_round_trips_through_a_project_and_old_projects_read(tmp_path):
    doc = document(choice="auto")
    doc.set_rectangle_from_pixel(60, 40, end=(100, 70))
    cell, end, area = doc.cell, doc.end, doc.area_record
    assert len(area) == 4
    doc.start_generation()
    doc.finish_generation(
        [picture(151, 97, 9)], "a fox", cell, 7, SamplingOptions(n=1), area=area, end=end
    )
    path = project.save(doc, tmp_path / "a.dstudio")
    loaded = project.load(path)
    (entry,) = [e for e in loaded.history.values() if not e.is_original]
    assert (entry.cell, entry.area, entry.end) == (cell, area, end)
    assert (loaded.cell, loaded.end, loaded.area) == (cell, end, doc.area)
    assert loaded.rectangle_pixels() == doc.rectangle_pixels()

    def strip(manifest) -> None:  # a project written before regions anywhere
        manifest.pop("end", None)
        manifest["area"] = manifest["area"][:2]
        for item in manifest["history"]:
            item.pop("end", None)

    _edit_manifest(path, strip)
    old = project.load(path)
    assert all(e.end is None for e in old.history.values())
    assert old.end is None and old.cell == cell
    x, y, w, h = old.rectangle_pixels()
    assert (x + w, y + h) == (151, 97)  # to the corner


def test_the_journal_keeps_each_entrys_end_and_a_bad_end_is_one_line(qapp, tmp_path):
    saver = autosave.Autosaver(tmp_path)
    doc = document(choice="auto")
    saver.watch(doc)
    doc.set_rectangle_from_pixel(60, 40, end=(100, 70))
    area, end = doc.area_record, doc.end
    for seed in (1, 2):
        doc.start_generation()
        doc.finish_generation(
            [picture(151, 97, seed)], "a fox", doc.cell, seed, None, area=area, end=end
        )
    doc.start_generation()  # and one to the corner
    doc.finish_generation([picture(151, 97, 3)], "a fox", doc.cell, 3, None, area=area[:2])
    recovered, _ = autosave.recover(tmp_path)
    kept = sorted((e.seed, e.area, e.end) for e in recovered.history.values() if e.seed)
    assert kept == [(1, area, end), (2, area, end), (3, area[:2], None)]

    path = project.save(doc, tmp_path / "bad.dstudio")
    for bad in ([0, "x"], [3], "corner"):
        _edit_manifest(path, lambda m, bad=bad: m["history"][1].__setitem__("end", bad))
        with pytest.raises(project.ProjectError, match=r"history\[1\] end") as raised:
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
