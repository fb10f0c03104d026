"""Hostile input of every class, generated here: bundles, images, batch CSVs and arguments.

Every case must end in one line on stderr naming the problem, exit status 2, bounded memory (the
input is refused before anything of its claimed size is allocated) and nothing written or changed.

The cases run in ONE subprocess (torch is imported once) that calls ``model.cli.main`` in-process
per case and records the exit status, stderr, the peak RSS and the workspace's listing before and
after; the parametrized tests below read its report. A fresh process makes the peak RSS a fair
measure: the baseline is taken after torch's import and a first case.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MAX_GROWTH_MB = 300  # peak RSS over the baseline, for any hostile case
# header-only probes of 10,000 rows, each bundle loaded once per case: a few seconds per case
ROWS = 10_000


# -- generated inputs ----------------------------------------------------------------------------


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def bmp_claiming(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming ``width`` x ``height``, with no pixels after it."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def photo_png(width: int = 60, height: int = 45, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def other_format(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(buffer, format=kind)
    return buffer.getvalue()


def raw_bundle(header: object, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def bundle_with(source: Path, target: Path, sections=None, **metadata) -> None:
    """``source`` with its config sections updated by ``sections`` and metadata keys replaced."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
    if sections is not None:
        parsed = json.loads(meta["config"])
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(parsed.get(section), dict):
                parsed[section].update(values)
            else:
                parsed[section] = values
        meta["config"] = json.dumps(parsed)
    meta.update(metadata)
    save_file(load_file(source), target, metadata=meta)


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def make_inputs(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Write every hostile input under ``root``; returns case name -> (argv, expected fragments
    of the one-line error). ``root/out`` is the output every case names: it must never appear."""
    from tests.helpers import tiny_bundle_file
    from tests.test_bundle import forged

    inputs = root / "inputs"
    inputs.mkdir()
    tiny = tiny_bundle_file(inputs)
    out = root / "out"
    (inputs / "photo.png").write_bytes(photo_png())
    cases: dict[str, tuple[list[str], list[str]]] = {}

    # bundles: generate with each
    def bundle_case(name: str, expected: list[str], data: bytes | None = None, **edit):
        path = inputs / f"{name}.dalle.safetensors"
        if data is not None:
            path.write_bytes(data)
        elif edit:
            bundle_with(tiny, path, **edit)
        args = ["generate", "--bundle", str(path), "--caption", "x", "--out", str(out / "a.png")]
        cases[f"bundle-{name}"] = (args, [path.name, *expected])

    bundle_case(
        "depth", ["transformer.depth", "1000000"], sections={"transformer": {"depth": 10**6}}
    )
    bundle_case("dim", ["transformer.dim", "20000"], sections={"transformer": {"dim": 20_000}})
    bundle_case(
        "heads0", ["transformer.heads", "at least 1"], sections={"transformer": {"heads": 0}}
    )
    bundle_case("null", ["transformer", "JSON object"], sections={"transformer": None})
    bundle_case("string", ["vae.n_hid", "integer"], sections={"vae": {"n_hid": "8"}})
    bundle_case("bool", ["text.text_len", "integer"], sections={"text": {"text_len": True}})
    bundle_case("float", ["transformer.grid", "integer"], sections={"transformer": {"grid": 4.0}})
    bundle_case("vocab", ["vae.vocab_size"], sections={"vae": {"vocab_size": 2**40}})
    bundle_case("big-in-bounds", ["transformer.blocks"], sections={"transformer": {"dim": 2048}})
    for key in ("config", "card", "tokenizer"):
        bundle_case(f"deep-{key}", [key], **{key: deep_json()})
    bundle_case("deep-header", ["nested too deeply"], data=raw_bundle(deep_json().encode()))
    bundle_case("header-lies", ["truncated"], data=(10**6).to_bytes(8, "little") + b"{}")
    bundle_case(
        "header-huge", ["header length field"], data=(2**40).to_bytes(8, "little") + b"{" * 64
    )
    entry = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    many = {f"t{i}": entry for i in range(70_000)}
    bundle_case("many-tensors", ["70000 tensors"], data=raw_bundle(many))
    bundle_case(
        "entry-lies",
        ["tensor w", "does not fit"],
        data=raw_bundle(
            {"w": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 8]}}, b"0" * 8
        ),
    )
    whole = tiny.read_bytes()
    bundle_case("truncated", ["truncated"], data=whole[: len(whole) // 2])
    bundle_case("garbage", ["not a safetensors file"], data=os.urandom(4096))
    tables = forged(inputs / "tables.dalle.safetensors", grid=128, text_len=2048)
    cases["bundle-tables"] = (
        ["generate", "--bundle", str(tables), "--caption", "x", "--out", str(out / "a.png")],
        [tables.name, "attention tables"],
    )

    # images: complete each
    def image_case(name: str, data: bytes | None, expected: list[str], suffix=".png"):
        path = inputs / f"{name}{suffix}"
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        args = ["complete", "--bundle", str(tiny), "--image", str(path), "--from", "1,1",
                "--caption", "x", "--out", str(out)]  # fmt: skip
        cases[f"image-{name}"] = (args, [path.name, *expected])

    image_case("png-bomb", png_claiming(30_000, 30_000), ["megapixels"])
    image_case("png-11000", png_claiming(11_000, 11_000), ["121 megapixels"])
    image_case("png16-bomb", png_claiming(20_000, 20_000, bit_depth=16, colour=0), ["megapixels"])
    image_case("bmp-bomb", bmp_claiming(30_000, 30_000), ["megapixels"], suffix=".bmp")
    image_case("jpeg-bomb", jpeg_claiming(30_000, 30_000), ["megapixels"], suffix=".jpg")
    image_case("jpeg-tall", jpeg_claiming(60_000, 1_000), ["60 megapixels"], suffix=".jpg")
    image_case("truncated", photo_png()[:300], ["not a readable image"])
    image_case("gif-as-png", other_format("GIF"), ["a GIF image"])
    image_case("tiff-as-png", other_format("TIFF"), ["a TIFF image"])
    image_case("text-as-png", b"this is not a picture", ["not a readable image"])
    image_case("empty", b"", ["not a readable image"])
    image_case("folder", None, ["is a folder"])
    image_case("zero-width", png_claiming(0, 100), [])

    # batch CSVs
    def csv_case(name: str, data: bytes, expected: list[str], out_path: Path = out):
        path = inputs / f"{name}.csv"
        path.write_bytes(data)
        args = ["complete", "--bundle", str(tiny), "--batch", str(path), "--out", str(out_path)]
        named = [] if out_path != out else [path.name]  # a bad --out is named, not the CSV
        cases[f"csv-{name}"] = (args, [*named, *expected])

    csv_case("bom-empty-caption", "\ufeffimage,caption,row,col\nphoto.png, ,1,1\n".encode(),
             ["line 2", "caption is empty"])  # fmt: skip
    csv_case("invalid-utf8", b"photo.png,ok,1,1\nphoto.png,caf\xe9,1,1\n", ["line 2", "UTF-8"])
    csv_case("empty-caption", b"photo.png,ok,1,1\nphoto.png,,1,1\n", ["line 2", "empty"])
    csv_case("too-many-columns", b"photo.png,ok,1,1,9\n", ["line 1", "5 fields"])
    csv_case("too-few-columns", b"photo.png,ok\n", ["line 1", "2 fields"])
    csv_case("cell-not-int", b"photo.png,ok,1.5,1\n", ["line 1", "integers"])
    csv_case("cell-negative", b"photo.png,ok,-2,1\n", ["line 1", "negative"])
    csv_case("cell-outside", b"photo.png,ok,99,1\n", ["line 1", "outside the 4x4"])
    csv_case("cell-padding", b"photo.png,ok,3,0\n", ["line 1", "padding"])
    csv_case("missing-image", b"photo.png,ok,1,1\nnowhere.png,ok,1,1\n", ["line 2", "no such"])
    csv_case("nul", b"photo.png,o\x00k,1,1\n", ["line 1"])
    csv_case("empty", b"", ["no jobs"])
    csv_case("png-out", b"photo.png,ok,1,1\n", ["batch.png", "folder"], out / "batch.png")
    (inputs / "bomb.png").write_bytes(png_claiming(30_000, 30_000))
    csv_case("rows-of-one-bomb", b"bomb.png,a caption,1,1\n" * ROWS, ["line 1", "megapixels"])
    csv_case(
        "rows-then-a-bad-one",
        b"photo.png,a caption,1,1\n" * ROWS + b"photo.png,a caption,1,x\n",
        [f"line {ROWS + 1}", "integers"],
    )
    csv_case(
        "rows-then-a-bomb",
        b"photo.png,a caption,1,1\n" * ROWS + b"bomb.png,a caption,1,1\n",
        [f"line {ROWS + 1}", "megapixels"],
    )

    # arguments
    base = ["generate", "--bundle", str(tiny), "--caption", "x", "--out", str(out / "a.png")]
    photo = str(inputs / "photo.png")
    complete = ["complete", "--bundle", str(tiny), "--image", photo, "--caption", "x",
                "--out", str(out)]  # fmt: skip
    surrogate = b"a red \xff heart".decode("utf-8", "surrogateescape")  # as argv brings it
    arguments = {
        "n-huge": (base + ["--n", "10000"], ["--n", "10000", "at most 64"]),
        "n-zero": (base + ["--n", "0"], ["at least 1"]),
        "n-negative": (base + ["--n", "-3"], ["at least 1"]),
        "n-word": (base + ["--n", "many"], ["--n", "many"]),
        "seed-2**64": (base + ["--seed", str(2**64)], ["seed", str(2**64)]),
        "seed-negative": (base + ["--seed", "-1"], ["seed", "-1"]),
        "guidance-nan": (base + ["--guidance", "nan"], ["guidance", "nan"]),
        "guidance-inf": (base + ["--guidance", "inf"], ["guidance", "inf"]),
        "guidance-negative": (base + ["--guidance", "-1"], ["guidance"]),
        "temperature-tiny": (base + ["--temperature", "1e-45"], ["temperature", "1e-45"]),
        "temperature-nan": (base + ["--temperature", "nan"], ["temperature", "nan"]),
        "temperature-inf": (base + ["--temperature", "inf"], ["temperature", "inf"]),
        "temperature-zero": (base + ["--temperature", "0"], ["temperature"]),
        "top-p-nan": (base + ["--top-p", "nan"], ["top-p", "nan"]),
        "top-p-inf": (base + ["--top-p", "inf"], ["top-p"]),
        "top-p-zero": (base + ["--top-p", "0"], ["top-p"]),
        "top-k-negative": (base + ["--top-k", "-1"], ["top-k"]),
        "device-tpu": (base + ["--device", "tpu"], ["'tpu'", "expected"]),
        "device-cuda-99": (base + ["--device", "cuda:99"], ["cuda:99"]),
        "caption-invalid-utf8": (
            [
                "generate",
                "--bundle",
                str(tiny),
                "--caption",
                surrogate,
                "--out",
                str(out / "a.png"),
            ],
            ["caption", "UTF-8"],
        ),
        "caption-empty": (
            ["generate", "--bundle", str(tiny), "--caption", " ", "--out", str(out / "a.png")],
            ["caption is empty"],
        ),
        "out-jpg": (
            ["generate", "--bundle", str(tiny), "--caption", "x", "--out", str(out / "a.jpg")],
            ["a.jpg", "png"],
        ),
        "from-negative": (
            complete + ["--from", "-1,3"],
            ["--from", "must not be negative", "-1,3"],
        ),
        "from-px-negative": (complete + ["--from-px", "-5,2"], ["--from-px", "-5,2"]),
        "from-one-number": (complete + ["--from", "3"], ["--from", "two integers"]),
        "from-and-from-px": (complete + ["--from", "1,1", "--from-px", "1,1"], ["exactly one"]),
        "feather-negative": (complete + ["--from", "1,1", "--feather", "-1"], ["--feather"]),
        "unknown-option": (base + ["--frobnicate"], ["--frobnicate"]),
    }
    cases.update({f"argument-{name}": case for name, case in arguments.items()})
    return cases


# -- the runner (in the subprocess) ---------------------------------------------------------------


def listing(root: Path) -> list[tuple[str, int, int, int]]:
    """Every path under ``root`` with its size, mode and modification time: a write changes it."""
    entries = []
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        entries.append((str(path.relative_to(root)), info.st_size, info.st_mode, info.st_mtime_ns))
    return entries


def peak_rss_mb() -> float:
    import resource

    scale = 1024 if sys.platform != "darwin" else 1  # kB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_cases(root: str) -> None:
    """Run every case in this process; print one JSON report on stdout."""
    import contextlib
    import logging

    import torch  # noqa: F401 - imported before the baseline

    from model.cli import main

    workspace = Path(root)
    cases = make_inputs(workspace)
    logging.disable(logging.CRITICAL)  # warnings are not the error line under test
    report = {}
    baseline = None
    for name, (args, expected) in cases.items():
        before = listing(workspace)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(args)
            except BaseException as error:  # noqa: BLE001 - reported per case, not fatal here
                code = f"raised {type(error).__name__}: {str(error)[:200]}"
        report[name] = {
            "code": code,
            "stderr": stderr.getvalue(),
            "expected": expected,
            "changed": before != listing(workspace),
            "out_exists": (workspace / "out").exists(),
            "peak_mb": peak_rss_mb(),
        }
        if baseline is None:  # after torch's import and a first bundle load
            baseline = peak_rss_mb()
    print(json.dumps({"baseline_mb": baseline, "cases": report}))


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    code = f"from tests.test_hostile import run_cases; run_cases({str(root)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def case_names() -> list[str]:
    # the names only; the inputs themselves are generated in the subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return list(make_inputs(Path(folder)))


CASES = case_names()


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(report, name):
    result = report["cases"][name]
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1, result["stderr"]
    line = lines[0]
    assert result["code"] == 2, line
    assert ": error: " in line, line
    for fragment in result["expected"]:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not result["out_exists"], "the output folder was created"
    assert not result["changed"], "a file was written or changed"


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_hostile_input_is_refused_before_allocating(report, name):
    growth = report["cases"][name]["peak_mb"] - report["baseline_mb"]
    assert growth < MAX_GROWTH_MB, f"peak RSS grew {growth:.0f} MB"


def test_every_class_of_hostile_input_is_generated():
    kinds = {name.split("-")[0] for name in CASES}
    assert kinds == {"bundle", "image", "csv", "argument"}
    assert len(CASES) > 60


def test_no_writer_follows_a_planted_symlink(tmp_path):
    """Every writer of model/ (bundles, dVAEs, checkpoints, reports, datasets, CLI results): a
    symlink at the old predictable temporary name or at the target redirects nothing."""
    import torch

    from model.bundle import save
    from model.bundle.tokenizer_files import save_vae
    from model.cli import main
    from model.config import PRESETS, DVAEConfig
    from model.data.scenes import write_scenes
    from model.evaluation.eval_report import write_json
    from model.networks.dvae import DVAE
    from model.training.trainer import atomic_torch_save
    from tests.helpers import tiny_bundle, tiny_bundle_file

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    targets = {
        "m.dalle.safetensors": lambda p: save(tiny_bundle(), p),
        "vae.safetensors": lambda p: save_vae(DVAE(DVAEConfig(**PRESETS["tiny"]["vae"])), p, {}),
        "checkpoint.pt": lambda p: atomic_torch_save({"step": 1}, p),
        "eval.json": lambda p: write_json({"a": 1}, p),
    }
    for name, write in targets.items():
        for planted in (f".{name}.tmp", f"{name}.tmp", f".{name}.{os.getpid()}.tmp"):
            (out / planted).symlink_to(victim)
        (out / name).symlink_to(victim)
        write(out / name)
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name in ("000000.png", "000000.txt", "000000.json"):
        (scenes / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
        (scenes / name).symlink_to(victim)
    write_scenes(scenes, 1, size=32, workers=1)
    assert not (scenes / "000000.txt").is_symlink()
    bundle = tiny_bundle_file(tmp_path)
    (out / ".a.png.tmp").symlink_to(victim)
    (out / "a.png").symlink_to(victim)
    assert main(["generate", "--bundle", str(bundle), "--caption", "x", "--quiet",
                 "--out", str(out / "a.png")]) == 0  # fmt: skip
    assert not (out / "a.png").is_symlink()
    assert victim.read_text() == "keep me"
    assert torch.load(out / "checkpoint.pt", weights_only=True) == {"step": 1}
