"""studio.document and studio.project without widgets."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

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
    assert document.masked_cells == 9
    assert document.set_rectangle_from_pixel(0, 0) == (0, 0)
    assert document.rectangle_pixels() == (0, 0, 64, 48)
    assert document.masked_cells == 16


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
    document.finish_generation([a, b], "a red circle", (1, 1), 7, {"n": 2})
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
    document.finish_generation([picture(seed=3)], "x", (0, 0), 1, {})
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
    document.finish_generation([picture(seed=5)], "first", (1, 1), 1, {})
    document.accept_candidate()
    first = document.current_entry
    document.start_generation()
    document.finish_generation([picture(seed=6)], "second", (2, 2), 2, {})
    document.accept_candidate()
    second = document.current_entry
    document.restore(first)
    assert document.current_entry == first
    document.start_generation()
    document.finish_generation([picture(seed=7)], "branch", (1, 2), 3, {})
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
    document.finish_generation([picture(seed=8)], "a", (0, 0), 1, {})
    document.accept_candidate()
    middle = document.current_entry
    document.start_generation()
    document.finish_generation([picture(seed=9)], "b", (0, 0), 1, {})
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
        [picture(seed=10), picture(seed=11)], "cap", (1, 2), 42, {"n": 2, "temperature": 0.9}
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
    document.finish_generation([picture(seed=12)], "kept", (1, 1), 5, {})
    document.accept_candidate()
    project.autosave(document, tmp_path)
    assert project.pending_recovery(tmp_path) is not None  # "crash": nothing cleared it
    recovered = project.recover(tmp_path)
    assert np.array_equal(recovered.image, document.image)
    assert len(recovered.history) == 2 and recovered.path is None
    project.clear_autosave(tmp_path)
    assert project.pending_recovery(tmp_path) is None
