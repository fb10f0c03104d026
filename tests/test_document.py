"""studio.document and studio.project without widgets."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import numpy as np
import pytest

from model.config import SamplingOptions
from studio import project
from studio.document import Document


def picture(width=64, height=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def tiny_document(width=64, height=48) -> Document:
    document = Document(picture(width, height))
    document.set_model_geometry(32, 8)  # the tiny test bundle: 4x4 cells
    return document


def test_rectangle_snaps_to_cells_and_reaches_the_bottom_right():
    document = tiny_document(64, 48)  # scale 0.5: one cell is 16x16 user pixels
    assert document.set_rectangle_from_pixel(20, 17) == (1, 1)
    assert document.rectangle_pixels() == (16, 16, 48, 32)
    assert document.masked_cells == 2 * 3  # the padding row below the image is not counted
    assert document.set_rectangle_from_pixel(0, 0) == (0, 0)
    assert document.rectangle_pixels() == (0, 0, 64, 48)
    assert document.masked_cells == 3 * 4


def test_rectangle_outside_the_image_is_clamped():
    document = tiny_document(64, 48)
    assert document.set_rectangle_from_pixel(-50, -3) == (0, 0)
    assert document.set_rectangle_from_pixel(10_000, 10_000) == (2, 3)  # last cell with pixels
    x, y, w, h = document.rectangle_pixels()
    assert w > 0 and h > 0 and x + w == 64 and y + h == 48
    with pytest.raises(ValueError, match="outside"):
        document.set_cell((4, 0))


def test_rectangle_resnaps_when_the_model_changes():
    document = Document(picture(64, 64))
    document.set_rectangle_from_pixel(40, 40)  # paper geometry: cells of 2 user pixels
    assert document.cell == (20, 20)
    document.set_model_geometry(32, 8)
    assert document.cell == (2, 2)


def test_accept_undo_redo():
    document = tiny_document()
    original = document.image.copy()
    document.set_cell((1, 1))
    document.start_generation()
    a, b = picture(seed=1), picture(seed=2)
    document.finish_generation([a, b], "a red circle", (1, 1), 7, SamplingOptions(n=2))
    assert document.shown_image is a
    document.next_candidate()
    assert document.shown_image is b
    document.next_candidate()  # stays on the last
    assert document.candidate_index == 1
    assert document.accept_candidate()
    assert np.array_equal(document.image, b) and not document.candidates
    document.undo_stack.undo()
    assert np.array_equal(document.image, original)
    document.undo_stack.redo()
    assert np.array_equal(document.image, b)
    assert document.undo_stack.count() == 1  # accepting is one step


def test_discard_keeps_the_image():
    document = tiny_document()
    original = document.image.copy()
    document.start_generation()
    document.finish_generation([picture(seed=3)], "x", (0, 0), 1, None)
    document.discard_candidates()
    assert np.array_equal(document.image, original)
    assert document.undo_stack.count() == 0


def test_cancel_leaves_the_image_untouched():
    document = tiny_document()
    original = document.image.copy()
    document.start_generation()
    document.show_row(picture(seed=4), 1, 4, 10.0, 1.0)
    assert document.shown_image is not document.image
    document.end_generation()
    assert document.shown_image is document.image
    assert np.array_equal(document.image, original)


def test_history_branches_from_a_restored_entry():
    document = tiny_document()
    root = document.current_entry
    document.start_generation()
    document.finish_generation([picture(seed=5)], "first", (1, 1), 1, None)
    document.accept_candidate()
    first = document.current_entry
    document.start_generation()
    document.finish_generation([picture(seed=6)], "second", (2, 2), 2, None)
    document.accept_candidate()
    second = document.current_entry
    document.restore(first)
    assert document.current_entry == first
    document.start_generation()
    document.finish_generation([picture(seed=7)], "branch", (1, 2), 3, None)
    document.accept_candidate()
    branch = document.current_entry
    assert document.history[second].parent == first
    assert document.history[branch].parent == first  # both lines are kept
    assert document.lineage(branch) == [root, first, branch]
    assert {e.id for e in document.children(first)} == {second, branch}
    document.undo_stack.undo()  # undo the accept, then the restore
    document.undo_stack.undo()
    assert document.current_entry == second


def test_delete_reattaches_children_and_keeps_the_original():
    document = tiny_document()
    root = document.current_entry
    document.start_generation()
    document.finish_generation([picture(seed=8)], "a", (0, 0), 1, None)
    document.accept_candidate()
    middle = document.current_entry
    document.start_generation()
    document.finish_generation([picture(seed=9)], "b", (0, 0), 1, None)
    child = document.candidate_entries[0]
    document.delete_entry(middle)
    assert document.history[child].parent == root
    document.delete_entry(root)
    assert root in document.history


def test_caption_history_is_unique_and_recent_last():
    document = tiny_document()
    for caption in ["a", "b", "a", "  ", "c"]:
        document.remember_caption(caption)
    assert document.caption_history == ["b", "a", "c"]


def test_project_round_trip_is_bitwise(tmp_path):
    document = tiny_document()
    document.set_cell((1, 2))
    document.start_generation()
    document.finish_generation(
        [picture(seed=10), picture(seed=11)],
        "cap",
        (1, 2),
        42,
        SamplingOptions(n=2, temperature=0.9, top_p=0.8, seed=42),
        seconds=1.5,
    )
    document.accept_candidate()
    document.set_starred(document.current_entry, True)
    path = project.save(document, tmp_path / "p.dstudio")
    with zipfile.ZipFile(path) as archive:
        assert '"dalle-studio-project/1"' in archive.read("manifest.json").decode()
    loaded = project.load(path)
    assert np.array_equal(loaded.image, document.image)
    assert loaded.image.dtype == np.uint8
    assert loaded.history.keys() == document.history.keys()
    for key, entry in document.history.items():
        other = loaded.history[key]
        assert np.array_equal(other.image, entry.image)
        assert (other.parent, other.caption, other.seed, other.cell, other.starred) == (
            entry.parent,
            entry.caption,
            entry.seed,
            entry.cell,
            entry.starred,
        )
        assert other.options == entry.options  # top_p included
    assert loaded.current_entry == document.current_entry
    assert loaded.cell == (1, 2)
    assert loaded.caption_history == ["cap"]
    loaded._add_entry(loaded.current_entry, picture())  # new ids do not collide
    assert len(loaded.history) == len(document.history) + 1


def test_project_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.dstudio"
    bad.write_bytes(b"not a zip")
    with pytest.raises(project.ProjectError, match="bad.dstudio"):
        project.load(bad)
    other = tmp_path / "other.dstudio"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("manifest.json", '{"format": "something/9"}')
    with pytest.raises(project.ProjectError, match="something/9"):
        project.load(other)
    with pytest.raises(project.ProjectError, match="no such file"):
        project.load(tmp_path / "missing.dstudio")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    document = tiny_document()
    target = tmp_path / "p.dstudio"
    project.save(document, target)
    project.save(document, target)
    assert [p.name for p in tmp_path.iterdir()] == ["p.dstudio"]


def test_autosave_recovery(tmp_path):
    assert project.pending_recovery(tmp_path) is None
    document = tiny_document()
    document.start_generation()
    document.finish_generation([picture(seed=12)], "kept", (1, 1), 5, None)
    document.accept_candidate()
    project.autosave(document, tmp_path)
    assert project.pending_recovery(tmp_path) is not None  # "crash": nothing cleared it
    recovered = project.recover(tmp_path)
    assert np.array_equal(recovered.image, document.image)
    assert len(recovered.history) == 2 and recovered.path is None
    project.clear_autosave(tmp_path)
    assert project.pending_recovery(tmp_path) is None


# -- issue 15: no lost work ----------------------------------------------------------------


def accepted_document() -> Document:
    document = tiny_document()
    document.set_cell((1, 1))
    document.start_generation()
    document.finish_generation([picture(seed=20)], "kept", (1, 1), 5, None)
    document.accept_candidate()
    return document


def test_recovered_work_counts_as_unsaved_and_keeps_its_project_path(tmp_path):
    document = accepted_document()
    saved = project.save(document, tmp_path / "work.dstudio")
    document.path = str(saved)
    document.mark_saved()
    document.set_starred(document.current_entry, True)  # then the app crashed
    project.autosave(document, tmp_path)
    recovered = project.recover(tmp_path)
    assert recovered.modified  # the title shows '*' and closing asks
    assert recovered.path == str(saved)  # Save writes back to the project it came from
    assert recovered.history[recovered.current_entry].starred
    assert project.pending_recovery(tmp_path) is not None  # kept until saved or discarded
    untitled = accepted_document()
    project.autosave(untitled, tmp_path)
    assert project.recover(tmp_path).path is None  # never saved: Save asks for a name


def test_every_change_a_project_keeps_marks_it_modified():
    """Stars, deletions, new history entries, accepts, restores and captions are all saved in
    the project, so each must make the document modified (or the change is lost on quit)."""

    def star(d):
        d.set_starred(d.current_entry, True)

    def delete(d):
        d.delete_entry(d.current_entry)

    def generate(d):
        d.start_generation()
        d.finish_generation([picture(seed=30)], "another", (1, 1), 6, None)

    def restore(d):
        d.restore(min(d.history))

    def caption(d):
        d.remember_caption("a caption typed and kept")

    for change in (star, delete, generate, restore, caption, Document.accept_candidate):
        document = accepted_document()
        if change is Document.accept_candidate:
            generate(document)
        document.mark_saved()
        assert not document.modified
        states = []
        document.modified_changed.connect(states.append)
        revision = document.revision
        change(document)
        assert document.modified, change.__name__
        assert states and states[-1] is True, change.__name__
        assert document.revision > revision, change.__name__
    document = accepted_document()
    document.mark_saved()
    document.set_cell((0, 0))  # the rectangle is where the next run goes, not work
    assert not document.modified


def test_a_reopened_project_has_exactly_the_rectangle_it_was_saved_with(tmp_path):
    document = Document(picture(160, 120))
    document.set_model_geometry(64, 4)  # the embedded model: a 16x16 grid
    document.set_cell((5, 8))
    rectangle = document.rectangle_pixels()
    path = project.save(document, tmp_path / "p.dstudio")
    for loaded in (project.load(path), _recovered(document, tmp_path)):
        assert loaded.cell == (5, 8) and loaded.rectangle_pixels() == rectangle
        loaded.set_model_geometry(64, 4)  # the window hands over the loaded model's geometry
        assert loaded.cell == (5, 8) and loaded.rectangle_pixels() == rectangle


def _recovered(document: Document, folder) -> Document:
    project.autosave(document, folder)
    return project.recover(folder)


def test_a_rectangle_from_a_project_without_geometry_is_kept_as_saved(tmp_path):
    document = Document(picture(160, 120))
    document.set_model_geometry(64, 4)
    document.set_cell((5, 8))
    path = project.save(document, tmp_path / "p.dstudio")
    older = tmp_path / "older.dstudio"  # written before projects recorded the geometry
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(older, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "manifest.json":
                manifest = json.loads(data)
                del manifest["geometry"]
                data = json.dumps(manifest).encode()
            target.writestr(name, data)
    loaded = project.load(older)
    loaded.set_model_geometry(64, 4)
    assert loaded.cell == (5, 8)


def test_projects_and_exports_get_normal_permissions_and_the_autosave_stays_private(tmp_path):
    document = accepted_document()
    old = os.umask(0o022)
    try:
        saved = project.save(document, tmp_path / "p.dstudio")
        exported = project.export_png(document.image, tmp_path / "e.png")
        autosaved = project.autosave(document, tmp_path / "data")
    finally:
        os.umask(old)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o644
    assert stat.S_IMODE(exported.stat().st_mode) == 0o644
    assert stat.S_IMODE(autosaved.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "e.png", "p.dstudio"]


def test_a_failed_save_leaves_the_old_project_and_no_temporary_file(tmp_path, monkeypatch):
    document = accepted_document()
    target = project.save(document, tmp_path / "p.dstudio")
    before = target.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(project, "_png", full_disk)
    with pytest.raises(OSError):
        project.save(document, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.dstudio"]


def test_cells_count_only_those_that_hold_image():
    document = tiny_document(64, 32)  # scale 0.5: a 32x16 image in the 32x32 square
    assert document.geometry.grid == 4
    document.set_cell((0, 0))
    assert document.masked_cells == 2 * 4  # the two padding rows below are not counted
    document.set_cell((1, 2))
    assert document.masked_cells == 1 * 2


def test_the_finished_view_selects_the_candidate_the_preview_showed():
    document = tiny_document()
    document.set_cell((1, 1))
    document.start_generation()
    candidates = [picture(seed=40 + i) for i in range(3)]
    document.show_row(candidates[2], 1, 2, 10.0, 1.0)
    document.finish_generation(candidates, "x", (1, 1), 1, None, previewed=2)
    assert document.candidate_index == 2
    assert document.shown_image is candidates[2]
