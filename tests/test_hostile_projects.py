"""Hostile input to the studio, generated: malformed project manifests, zip bombs, image bombs
inside projects, a corrupt autosave, huge or odd clipboard and dropped images.

Each must give one one-line error (a ProjectError or ImageError, or exactly one line in the
window's ``errors``), be refused before its memory is allocated, and write or change nothing:
the window keeps the same document object with the same pixels, and no file appears.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from model.config import SamplingOptions
from studio import project
from studio.document import Document

ROOT = Path(__file__).resolve().parent.parent
PEAK_GROWTH_LIMIT_MB = 200
TOO_MANY = 20_000  # history entries or archive members: more than any real project holds


# -- builders ------------------------------------------------------------------------------


def picture(width=40, height=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` RGB pixels (no real data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def valid_members() -> dict[str, bytes]:
    """The members of a small valid project: an original and two generated entries."""
    document = Document(picture())
    document.set_model_geometry(32, 8)
    document.set_cell((1, 1))
    document.start_generation()
    document.finish_generation([picture(seed=1), picture(seed=2)], "a red circle", (1, 1), 3, None)
    document.accept_candidate()
    with tempfile.TemporaryDirectory() as folder:
        path = project.save(document, Path(folder) / "valid.dstudio")
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def manifest_case(mutate: Callable[[dict], object]) -> Callable[[dict[str, bytes]], dict]:
    """A case that edits the valid manifest (``mutate`` may return a replacement)."""

    def build(members: dict[str, bytes]) -> dict[str, bytes]:
        manifest = json.loads(members["manifest.json"])
        replaced = mutate(manifest)
        manifest = manifest if replaced is None else replaced
        text = json.dumps(manifest) if not isinstance(manifest, bytes) else manifest
        return dict(members, **{"manifest.json": text.encode() if isinstance(text, str) else text})

    return build


def raw_manifest(text: bytes) -> Callable[[dict[str, bytes]], dict]:
    return manifest_case(lambda manifest: text)


def raw_edit(old: bytes, new: bytes) -> Callable[[dict[str, bytes]], dict]:
    """A case that edits the manifest's text (for what json.dumps cannot write)."""

    def build(members: dict[str, bytes]) -> dict[str, bytes]:
        text = members["manifest.json"]
        assert old in text
        return dict(members, **{"manifest.json": text.replace(old, new, 1)})

    return build


def entry(index: int, **fields) -> Callable[[dict], None]:
    def mutate(manifest: dict) -> None:
        manifest["history"][index].update(fields)

    return mutate


def drop(*keys: str) -> Callable[[dict], None]:
    def mutate(manifest: dict) -> None:
        for key in keys:
            del manifest[key]

    return mutate


def drop_entry_key(index: int, key: str) -> Callable[[dict], None]:
    def mutate(manifest: dict) -> None:
        del manifest["history"][index][key]

    return mutate


def setting(**fields) -> Callable[[dict], None]:
    def mutate(manifest: dict) -> None:
        manifest.update(fields)

    return mutate


def cycle(manifest: dict) -> None:
    first, second = manifest["history"][1], manifest["history"][2]
    first["parent"], second["parent"] = second["id"], first["id"]


def two_roots(manifest: dict) -> None:
    manifest["history"][1]["parent"] = None


def duplicate_id(manifest: dict) -> None:
    manifest["history"][2]["id"] = manifest["history"][1]["id"]


def many_entries(manifest: dict) -> None:
    template = manifest["history"][1]
    manifest["history"] += [
        dict(template, id=1000 + i, parent=template["parent"]) for i in range(TOO_MANY)
    ]


def member_case(name: str, data: bytes | None) -> Callable[[dict[str, bytes]], dict]:
    def build(members: dict[str, bytes]) -> dict[str, bytes]:
        members = dict(members)
        if data is None:
            del members[name]
        else:
            members[name] = data
        return members

    return build


WRONG_VALUES = [None, True, -1, 2**70, 1.5, "7", "x" * 20_000, [], [1, 2, 3], {}, {"a": 1}]


def generated_manifests() -> Iterator[tuple[str, Callable]]:
    """Every known field of the manifest and of an entry replaced by every wrong kind of value
    (some replacements are valid: those must load, the rest must be one ProjectError)."""
    for key in ("format", "image", "size", "current_entry", "cell", "geometry", "saved"):
        for index, value in enumerate(WRONG_VALUES):
            yield f"manifest.{key}={index}", manifest_case(setting(**{key: value}))
    for key in ("caption_history", "source_path", "autosave_of", "history"):
        for index, value in enumerate(WRONG_VALUES):
            yield f"manifest.{key}={index}", manifest_case(setting(**{key: value}))
    fields = ("id", "parent", "file", "caption", "cell", "seed", "options", "time", "model")
    for key in (*fields, "starred", "accepted"):
        for index, value in enumerate(WRONG_VALUES):
            yield f"entry.{key}={index}", manifest_case(entry(1, **{key: value}))


NAMED_CASES: list[tuple[str, Callable]] = [
    ("not json", raw_manifest(b"{not json")),
    ("a list", raw_manifest(b"[]")),
    ("a number", raw_manifest(b"3")),
    ("bad utf-8", raw_manifest(b'{"format": "\xff\xfe"}')),
    ("deep nesting", raw_manifest(b"[" * 200_000 + b"]" * 200_000)),
    ("deep nesting in a caption", raw_edit(b'"a red circle"', b"[" * 100_000 + b"]" * 100_000)),
    ("huge integer", raw_manifest(b'{"format": ' + b"9" * 10_000 + b"}")),
    ("NaN", manifest_case(entry(1, time=float("nan")))),
    ("Infinity", manifest_case(entry(1, time=float("inf")))),
    ("1e999", raw_edit(b'"time": ', b'"time": 1e999, "was": ')),
    ("history []", manifest_case(setting(history=[]))),
    ("no history", manifest_case(drop("history"))),
    ("no image", manifest_case(drop("image"))),
    ("no current_entry", manifest_case(drop("current_entry"))),
    ("no format", manifest_case(drop("format"))),
    ("entry without id", manifest_case(drop_entry_key(1, "id"))),
    ("entry without parent", manifest_case(drop_entry_key(1, "parent"))),
    ("entry without file", manifest_case(drop_entry_key(1, "file"))),
    ("string id", manifest_case(entry(1, id="2"))),
    ("boolean id", manifest_case(entry(1, id=True))),
    ("missing parent", manifest_case(entry(1, parent=999))),
    ("cycle", manifest_case(cycle)),
    ("two roots", manifest_case(two_roots)),
    ("duplicate id", manifest_case(duplicate_id)),
    ("current_entry unknown", manifest_case(setting(current_entry=999))),
    ("current_entry string", manifest_case(setting(current_entry="1"))),
    ("cell out of grid", manifest_case(setting(cell=[4, 0]))),
    ("cell negative", manifest_case(setting(cell=[0, -1]))),
    ("cell of three", manifest_case(setting(cell=[0, 1, 2]))),
    ("geometry zero factor", manifest_case(setting(geometry={"size": 32, "factor": 0}))),
    ("geometry not dividing", manifest_case(setting(geometry={"size": 32, "factor": 5}))),
    ("huge caption", manifest_case(entry(1, caption="x" * 1_000_000))),
    ("huge caption history", manifest_case(setting(caption_history=["x"] * 100_000))),
    ("negative seed", manifest_case(entry(1, seed=-5))),
    ("options of a list", manifest_case(entry(1, options={"n": [1] * 10}))),
    ("top-p of 0", manifest_case(entry(1, options={"top_p": 0}))),
    ("top-p above 1", manifest_case(entry(1, options={"top_p": 1.5}))),
    ("no candidates", manifest_case(entry(1, options={"n": 0}))),
    ("temperature as text", manifest_case(entry(1, options={"temperature": "hot"}))),
    ("fractional top-k", manifest_case(entry(1, options={"top_k": 2.5}))),
    ("too many entries", manifest_case(many_entries)),
    ("file not in archive", manifest_case(entry(1, file="history/none.png"))),
    ("image not in archive", manifest_case(setting(image="../../etc/passwd"))),
    ("size disagrees", manifest_case(setting(size=[41, 30]))),
    ("entry of another size", member_case("history/2.png", project._png(picture(30, 40)))),
    ("entry not a png", member_case("history/2.png", b"GIF89a not really")),
    ("image missing", member_case("image.png", None)),
    ("manifest missing", member_case("manifest.json", None)),
]


def zip_bombs(folder: Path, members: dict[str, bytes]) -> Iterator[tuple[str, Path]]:
    # the bomb: a manifest of 1.5 GB of spaces (valid JSON) in a file of 1.5 MB
    bomb = write_zip(folder / "bomb.dstudio", {k: v for k, v in members.items() if k != "x"})
    yield "manifest of 1.5 GB", append_zeros(bomb, "manifest.json", 1536 * 2**20, b" ", True)
    # a manifest above the bound that barely compresses
    noise = np.random.default_rng(0).integers(0, 16, 40 * 2**20, dtype=np.uint8)
    digits = b'{"x": "' + bytes(noise + ord("a")) + b'"}'
    yield (
        "manifest above 16 MB",
        write_zip(folder / "big.dstudio", dict(members, **{"manifest.json": digits})),
    )
    # the same manifest with its declared size forged down to 100 bytes
    forged = folder / "forged.dstudio"
    write_zip(forged, dict(members, **{"manifest.json": digits}))
    yield "declared size forged", forge_declared_size(forged, "manifest.json", 100)
    # a PNG member inflating to 400 MB (more than the largest image the studio opens)
    png = write_zip(folder / "png.dstudio", {k: v for k, v in members.items() if k != "x"})
    yield "png member of 400 MB", append_zeros(png, "history/2.png", 400 * 2**20, replace=True)
    # more members than any project has
    crowd = dict(members)
    crowd.update({f"extra/{i}": b"" for i in range(TOO_MANY)})
    yield "too many members", write_zip(folder / "crowd.dstudio", crowd, zipfile.ZIP_STORED)


def append_zeros(
    path: Path, name: str, size: int, fill: bytes = b"\0", replace: bool = False
) -> Path:
    """Write member ``name`` of ``size`` bytes of ``fill`` into the zip at ``path``, streamed
    (never whole in memory); ``replace`` drops the member of that name that was there."""
    with zipfile.ZipFile(path) as source:
        kept = {n: source.read(n) for n in source.namelist() if not (replace and n == name)}
    chunk = fill * 2**20
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for kept_name, data in kept.items():
            archive.writestr(kept_name, data)
        with archive.open(name, "w", force_zip64=True) as member:
            for _ in range(size // len(chunk)):
                member.write(chunk)
    return path


def forge_declared_size(path: Path, name: str, size: int) -> Path:
    """Rewrite the uncompressed size ``name`` declares (local header and central directory)."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(encoded)] == encoded:
                data[start + offset : start + offset + 4] = struct.pack("<I", size)
            start += 4
    path.write_bytes(bytes(data))
    return path


def image_bombs(members: dict[str, bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    yield "30000x30000 entry", dict(members, **{"history/2.png": png_claiming(30000, 30000)})
    yield "30000x30000 image", dict(members, **{"image.png": png_claiming(30000, 30000)})
    yield "over 50 MP entry", dict(members, **{"history/2.png": png_claiming(8000, 7000)})
    yield "zero pixels", dict(members, **{"history/2.png": png_claiming(0, 0)})
    # every image under the limit alone, together 25 x 49 MP: more than a project may hold
    manifest = json.loads(members["manifest.json"])
    big = png_claiming(7000, 7000)
    crowd = dict(members, **{"image.png": big})
    template = manifest["history"][1]
    manifest["size"] = [7000, 7000]
    for i in range(25):
        name = f"history/big{i}.png"
        crowd[name] = big
        manifest["history"].append(dict(template, id=100 + i, file=name))
    for item in manifest["history"][:3]:
        crowd[item["file"]] = big
    crowd["manifest.json"] = json.dumps(manifest).encode()
    yield "25 x 49 MP", crowd


def hostile_projects(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every hostile project file, written into ``folder``."""
    members = valid_members()
    cases = [*NAMED_CASES, *generated_manifests()]
    for index, (name, build) in enumerate(cases):
        yield name, write_zip(folder / f"case{index}.dstudio", build(copy.deepcopy(members)))
    for index, (name, bomb) in enumerate(image_bombs(members)):
        yield name, write_zip(folder / f"bomb{index}.dstudio", bomb, zipfile.ZIP_STORED)
    yield from zip_bombs(folder, members)
    not_zip = folder / "not-a-zip.dstudio"
    not_zip.write_bytes(b"PK\x03\x04 truncated")
    yield "truncated zip", not_zip
    (folder / "folder.dstudio").mkdir(exist_ok=True)
    yield "a folder", folder / "folder.dstudio"


# -- the checks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> list[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("hostile")
    return list(hostile_projects(folder))


MUST_FAIL = {name for name, _ in NAMED_CASES}


def test_every_hostile_project_is_one_line_error_and_writes_nothing(hostile):
    folder = hostile[0][1].parent
    before = sorted(p.name for p in folder.iterdir())
    failed, loaded = set(), set()
    for name, path in hostile:
        try:
            document = project.load(path)
        except project.ProjectError as error:
            message = str(error)
            assert "\n" not in message and len(message) < 400, (name, message)
            assert path.name in message, (name, message)  # names the file
            failed.add(name)
            continue
        # a replacement that is valid after all (a float `saved`): a whole, usable document
        assert document.history and document.current_entry in document.history, name
        assert document.image.dtype == np.uint8, name
        loaded.add(name)
    assert MUST_FAIL <= failed, sorted(MUST_FAIL - failed)
    assert all(name in failed for name, _ in hostile if "MP" in name or "bomb" in name)
    assert "manifest.history=2" in failed and "entry.id=5" in failed  # -1 and "7"
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
    assert len(failed) > 5 * len(loaded)


def test_hostile_projects_are_refused_before_memory_is_allocated(hostile):
    """Peak memory of a fresh process that opens every hostile project, above what its imports
    take: a bomb that were read or decoded would add gigabytes."""
    folder = hostile[0][1].parent
    script = f"""
import resource, sys
from pathlib import Path
from studio import project
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = total = 0
for path in sorted(Path({str(folder)!r}).iterdir()):
    total += 1
    try:
        project.load(path)
    except project.ProjectError:
        errors += 1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(errors, total, (peak - base) // 1024)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    errors, total, growth_mb = map(int, result.stdout.split())
    assert total == len(hostile) and errors > total // 2
    assert growth_mb < PEAK_GROWTH_LIMIT_MB, f"peak grew {growth_mb} MB"


def test_entry_options_from_before_top_p_and_with_it_both_open(tmp_path):
    """Projects saved before the studio recorded top-p open as they did (the default top-p);
    new ones keep it. The options load typed; saved again, the file holds the same options and
    loads to equal entries."""
    before = {"n": 4, "temperature": 1.0, "top_k": 0, "guidance": 1.0, "seconds": 2.5}
    after = dict(before, top_p=0.9, candidate=1)
    cases = (("before", before, 1.0, None), ("after", after, 0.9, 1))
    for name, options, top_p, candidate in cases:
        build = manifest_case(entry(1, options=options))
        document = project.load(write_zip(tmp_path / f"{name}.dstudio", build(valid_members())))
        [edited] = [item for item in document.history.values() if item.seconds == 2.5]
        assert edited.options == SamplingOptions(n=4, top_p=top_p), name
        assert edited.candidate == candidate, name
        saved = project.save(document, tmp_path / f"{name}-again.dstudio")
        with zipfile.ZipFile(saved) as archive:
            written = json.loads(archive.read("manifest.json"))["history"]
        assert dict(options, top_p=top_p) in [item["options"] for item in written], name
        again = project.load(saved)
        assert {i: fields(e) for i, e in again.history.items()} == {
            i: fields(e) for i, e in document.history.items()
        }, name


def fields(entry) -> dict:
    """An entry's fields but its pixels (compared on their own elsewhere)."""
    return {key: value for key, value in vars(entry).items() if key != "image"}


# -- through the window ---------------------------------------------------------------------


@pytest.fixture
def window(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from studio.engine import Engine
    from studio.session import Session
    from studio.widgets.main_window import MainWindow

    engine = Engine()
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(Session(engine), settings, autosave_folder=tmp_path / "data")
    win.ask_before_close = False
    win.session.set_document(Document(picture()))
    qtbot.addWidget(win)
    yield win
    engine.shutdown()


def assert_refused_once(window, document: Document, pixels: np.ndarray, errors: int) -> None:
    assert len(window.errors) == errors + 1, window.errors[errors:]
    assert "\n" not in window.errors[-1]
    assert window.document is document and np.array_equal(document.image, pixels)


def test_the_window_shows_each_hostile_project_as_one_line_and_keeps_its_document(window, hostile):
    document, pixels = window.document, window.document.image.copy()
    folder = hostile[0][1].parent
    before = sorted(p.name for p in folder.iterdir())
    for name, path in hostile:
        if name.startswith(("manifest.", "entry.")) and not name.endswith(("=0", "=5")):
            continue  # a sample of the generated ones: the rest is the same code path
        count = len(window.errors)
        opened = window.open_path(path)
        if opened:  # a replacement that is valid after all: back to the document under test
            window.session.set_document(document)
            continue
        assert_refused_once(window, document, pixels, count)
    assert sorted(p.name for p in folder.iterdir()) == before


def corrupt_autosaves(members: dict[str, bytes]) -> Iterator[tuple[str, Callable[[Path], None]]]:
    def writer(data: bytes) -> Callable[[Path], None]:
        return lambda path: path.write_bytes(data)

    def zipped(build: Callable) -> Callable[[Path], None]:
        return lambda path: write_zip(path, build(copy.deepcopy(members)))

    yield "garbage", writer(b"\x00\x01 not a project")
    yield "empty", writer(b"")
    yield "half a zip", writer(b"PK\x03\x04" + b"\0" * 40)
    yield "bad manifest", zipped(raw_manifest(b"{"))
    yield "cycle", zipped(manifest_case(cycle))
    yield "image bomb", zipped(member_case("history/2.png", png_claiming(30000, 30000)))
    yield "a folder", lambda path: path.mkdir()


def test_a_corrupt_autosave_of_any_kind_is_set_aside_and_said_once(window, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a))
    folder = window.autosave_folder
    folder.mkdir(exist_ok=True)
    document, pixels = window.document, window.document.image.copy()
    for name, write in corrupt_autosaves(valid_members()):
        write(folder / "autosave.dstudio")
        count = len(window.errors)
        window.offer_recovery()
        assert_refused_once(window, document, pixels, count)
        assert not (folder / "autosave.dstudio").exists(), name
        window.offer_recovery()  # the next start: nothing more is said
        assert len(window.errors) == count + 1, name
    kept = list(folder.glob("autosave-corrupt-*.dstudio"))
    assert len(kept) == len(list(corrupt_autosaves(valid_members())))  # every one kept
    assert not asked  # never offered as if it could be recovered


def test_huge_and_odd_clipboard_images(window, qtbot):
    from PySide6.QtCore import QMimeData, QPointF, Qt
    from PySide6.QtGui import QColor, QDropEvent, QGuiApplication, QImage

    clipboard = QGuiApplication.clipboard()
    document, pixels = window.document, window.document.image.copy()
    huge = [
        QImage(8000, 7000, QImage.Format.Format_Mono),  # 56 MP in 7 MB
        QImage(60000, 1000, QImage.Format.Format_Mono),  # 60 MP, a long strip
        QImage(7100, 7100, QImage.Format.Format_Mono),  # just over 50 MP
    ]
    for image in huge:
        image.fill(0)
        count = len(window.errors)
        clipboard.setImage(image)
        window.paste_image()
        assert_refused_once(window, document, pixels, count)
        assert "megapixels" in window.errors[-1]
        count = len(window.errors)
        data = QMimeData()
        data.setImageData(image)
        drop = QDropEvent(
            QPointF(5, 5),
            Qt.DropAction.CopyAction,
            data,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
        )
        window.dropEvent(drop)
        assert_refused_once(window, document, pixels, count)
    count = len(window.errors)
    clipboard.clear()
    window.paste_image()  # nothing on the clipboard
    assert_refused_once(window, document, pixels, count)
    odd = {
        QImage.Format.Format_Indexed8: None,
        QImage.Format.Format_Grayscale16: None,
        QImage.Format.Format_RGBA64: QColor(10, 20, 30, 0),
        QImage.Format.Format_ARGB32_Premultiplied: QColor(10, 20, 30, 128),
    }
    for kind, color in odd.items():
        image = QImage(5, 3, kind)
        if kind == QImage.Format.Format_Indexed8:
            image.setColorTable([QColor(1, 2, 3).rgb()])
        image.fill(color if color is not None else 0)
        clipboard.setImage(image)
        window.paste_image()
        opened = window.document.image
        assert opened.shape == (3, 5, 3) and opened.dtype == np.uint8, kind
        if color is not None and color.alpha() == 0:
            assert (opened == 255).all(), kind  # transparent: white, as from a file
        window.session.set_document(document)
