"""Hostile input for the importers, generated here: small files in the released formats whose
names, shapes, strides or containers claim gigabytes, or nest, repeat and overflow.

``dalle import rudalle | openai-dvae | mini`` on each must end as every case of
tests/test_hostile.py does: one line on stderr naming the file and the problem, exit status 2,
peak RSS growth under ``MAX_GROWTH_MB`` (the input is judged from names, shapes, dtypes and sizes
before a tensor is materialised, widened or made contiguous) and nothing written: the output,
``out/new/a/b/...``, would be three folders deep, and not even they may be left behind.

The cases run in ONE subprocess (torch imported once) calling ``model.cli.main`` per case, with
tests/test_hostile.py's measures (``listing``, ``peak_rss_mb``). DALL·E Mini's cases run against a
tiny preset (``dalle_mega.PRESETS``, as tests/test_import_mega.py does), so that a broken file
further on is reached, except ``mini-stride0``, whose files declare the real Mini's shapes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
import sys
import types
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
MAX_GROWTH_MB = 300  # peak RSS over the baseline (torch imported, a first case run), any case
ZIP_BOMB = object()  # a marker: the VQGAN checkpoint as a zip bomb
HUGE_TEXT_BYTES = 600 * 2**20  # a sparse config.json / vocab / merges: nothing on disk
PROGRESS, ERROR = "dalle import: ", "dalle import: error: "
Case = tuple[list[str], list[str], str | None]  # argv, fragments of the error, preset


# -- generated inputs ----------------------------------------------------------------------------


def expanded(shape: tuple[int, ...], dtype=torch.float16) -> torch.Tensor:
    """A tensor of ``shape`` over ONE stored value (stride 0): torch.save keeps a few bytes."""
    return torch.zeros(1, dtype=dtype).expand(*shape)


def zip_bomb(path: Path, obj: dict, count: int) -> None:
    """torch.save's archive of ``obj`` (holding one ``torch.zeros(4)``) grown to ``count`` zeros
    whose storage entry is deflated: 4 bytes a value declared, ~1,000 times less on disk."""
    raw = io.BytesIO()
    torch.save(obj, raw)
    source = zipfile.ZipFile(raw)
    with zipfile.ZipFile(path, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):  # the storage's numel and the tensor's size
                assert data.count(b"K\x04") == 2, "one tensor of 4 values expected"
                data = data.replace(b"K\x04", b"J" + count.to_bytes(4, "little"))
            if not info.filename.endswith("/data/0"):
                archive.writestr(info.filename, data)
                continue
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as storage:
                block = bytes(2**22)
                for start in range(0, 4 * count, len(block)):
                    storage.write(block[: min(len(block), 4 * count - start)])


def rudalle_state(hidden: int, text_positions: int, grid: int, make) -> dict[str, torch.Tensor]:
    """ruDALL-E v3's names and shapes for one layer, each tensor ``make(shape)``."""
    from model.importers.rudalle import expected_shapes

    shapes = expected_shapes(hidden, 1, text_positions + 100, text_positions + 1, 64, grid)
    return {name: make(shape) for name, shape in shapes.items()}


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def sparse_file(path: Path, size: int = HUGE_TEXT_BYTES) -> None:
    with open(path, "wb") as file:
        file.truncate(size)


@contextlib.contextmanager
def fake_modules(*names: str) -> Iterator[dict[str, types.ModuleType]]:
    """Importable stand-ins for ``names`` while pickling (pickle looks its classes up by name)."""
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    sys.modules.update(modules)
    try:
        yield modules
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def pickled_module(path: Path, parameters: dict, cycle: bool = False) -> None:
    """``encoder.pkl`` as torch.save writes a whole ``dall_e.encoder.Encoder``: its __dict__
    with ``_parameters``, ``_buffers`` and ``_modules``; ``cycle`` makes it its own child."""
    with fake_modules("dall_e", "dall_e.encoder") as modules:
        encoder_class = type("Encoder", (), {"__module__": "dall_e.encoder"})
        modules["dall_e.encoder"].Encoder = encoder_class
        encoder = encoder_class()
        encoder.__dict__.update(_parameters=parameters, _buffers={}, _modules={})
        if cycle:
            encoder._modules["blocks"] = encoder
        torch.save(encoder, path)


def bpe_files(folder: Path) -> tuple[Path, Path]:
    """min-dalle's vocab.json and merges.txt for a tiny BPE (the importers' test writer)."""
    from tests.test_import_mega import write_bpe_files

    return write_bpe_files(folder)


def vocab_of_short_entries(path: Path, size: int) -> None:
    """A vocab.json just under ``size`` bytes: BART's special tokens, then as many short unique
    tokens as fit, with consecutive ids (the most Python objects a byte can buy)."""
    parts = ['"<s>":0', '"<pad>":1', '"</s>":2', '"<unk>":3']
    used, index = 2 + sum(len(p) + 1 for p in parts), 4
    while used < size - 32:
        parts.append(f'"{index:x}":{index}')
        used += len(parts[-1]) + 1
        index += 1
    path.write_text("{" + ",".join(parts) + "}")


def tiny_mini_preset(vocab: Path, merges: Path):
    from model.tokenizers.bart_text import BartTokenizer
    from tests.test_import_mega import tiny_bart

    return tiny_bart(BartTokenizer.from_files(vocab, merges).vocab_size)


def mini_sources(folder: Path, bpe: tuple[Path, Path]) -> Path:
    """min-dalle's Mini files and dalle-mini's VQGAN, valid, at the tiny preset's sizes."""
    from tests.test_import_mega import write_sources

    write_sources(folder, bpe, tiny_mini_preset(*bpe), which="mini", detoker=False)
    return folder


def msgpack_of_empty_maps(path: Path, count: int) -> None:
    """{"params": [{}, {}, ...]}: one byte a map, each a Python dict (~64 bytes) when read."""
    with open(path, "wb") as file:
        file.write(b"\x81\xa6params\xdd" + count.to_bytes(4, "big"))
        file.write(b"\x80" * count)


def msgpack_of_lists_of_empty_maps(path: Path, lists: int, maps: int) -> None:
    """{"params": [[{}, ...], ...]}: every container short, the whole a few million objects."""
    with open(path, "wb") as file:
        file.write(b"\x81\xa6params\xdd" + lists.to_bytes(4, "big"))
        for _ in range(lists):
            file.write(b"\xdd" + maps.to_bytes(4, "big") + b"\x80" * maps)


def msgpack_nested(path: Path, depth: int) -> None:
    path.write_bytes(b"\x81\xa1a" * depth + b"\x80")


def make_inputs(root: Path) -> dict[str, Case]:
    """Write every hostile input under ``root``; case name -> (argv, expected fragments of the
    one-line error, the DALL·E Mini preset to run under: "tiny" or None for the real one)."""
    inputs = root / "inputs"
    inputs.mkdir()
    out = root / "out" / "new" / "a" / "b"
    cases: dict[str, Case] = {}

    # ruDALL-E: a transformer file, and the two files beside it (read after it, or only hashed)
    from benchmarks.random_rudalle import write_bpe

    bpe = inputs / "bpe.model"
    write_bpe(bpe, size=100)  # the 100 BPE ids rudalle_state declares

    def rudalle_case(name: str, state: dict, expected: list[str], vqgan=None) -> None:
        folder = inputs / name
        folder.mkdir()
        torch.save(state, folder / "pytorch_model_v3.bin")
        (folder / "bpe.model").write_bytes(bpe.read_bytes())
        checkpoint = folder / "vqgan.gumbelf8-sber.model.ckpt"
        if vqgan is None:
            checkpoint.write_bytes(b"not read: the transformer is refused first")
        elif vqgan is ZIP_BOMB:  # 600 MB of weights in 600 KB; torch's mmap refuses it
            zip_bomb(
                checkpoint, {"state_dict": {"encoder.conv_in.weight": torch.zeros(4)}}, 150_000_000
            )
        else:
            torch.save({"state_dict": vqgan}, checkpoint)
        args = [
            "import",
            "rudalle",
            "--from",
            str(folder),
            "--out",
            str(out / "r.dalle.safetensors"),
        ]
        named = "pytorch_model_v3.bin" if vqgan is None else checkpoint.name
        cases[f"rudalle-{name}"] = (args, [named, *expected], None)

    dense = lambda shape: torch.zeros(shape, dtype=torch.float16)  # noqa: E731
    # issue 28 #4: 9 KB of stride-0 tensors declaring a 128x128 grid after 4,000 text positions
    rudalle_case("stride0", rudalle_state(16, 4000, 128, expanded), ["declares"])
    rudalle_case("tables", rudalle_state(16, 4000, 128, dense), ["attention tables"])
    rudalle_case("60000-text", rudalle_state(16, 60_000, 8, dense), ["attention tables"])
    conv = rudalle_state(16, 8, 8, dense)
    conv["transformer.conv_mask"] = expanded((72, 72), torch.float32)  # (8 + 64)^2 from 1 value
    rudalle_case("stride0-mask", conv, ["transformer.conv_mask", "declares"])
    # a valid tiny transformer, then the Sber VQGAN's 90M parameters over one value each
    from model.importers.rudalle_vqgan import SBER_GUMBEL_F8
    from model.networks.vqgan import VQGAN

    with torch.device("meta"):
        sber = {k: v.shape for k, v in VQGAN(SBER_GUMBEL_F8).state_dict().items()}
    small = rudalle_state(16, 8, 8, dense)
    vqgan = {k: expanded(shape, torch.float32) for k, shape in sber.items()}
    rudalle_case("stride0-vqgan", small, ["encoder.conv_in.weight", "declares"], vqgan)
    flat = {k: torch.zeros(shape[:1]) for k, shape in sber.items()}
    rudalle_case("1d-vqgan", small, ["encoder.conv_in.weight", "rank 4"], flat)
    rudalle_case("zip-bomb-vqgan", small, ["compressed"], vqgan=ZIP_BOMB)

    # OpenAI's dVAE: encoder.pkl hostile, decoder.pkl never reached
    decoder = inputs / "decoder.pkl"
    torch.save({"blocks.output.conv.w": torch.zeros(2, 2)}, decoder)

    def dvae_case(name: str, write: Callable[[Path], None], expected: list[str]) -> None:
        encoder = inputs / name / "encoder.pkl"
        encoder.parent.mkdir()
        write(encoder)
        args = ["import", "openai-dvae", "--encoder", str(encoder), "--decoder", str(decoder),
                "--out", str(out / "vae.safetensors")]  # fmt: skip
        cases[f"dvae-{name}"] = (args, ["encoder.pkl", *expected], None)

    huge = int(1.5e9)
    dvae_case("expanded", lambda p: torch.save({"w": expanded((huge,))}, p), ["declares"])
    dvae_case("expanded-2**40", lambda p: torch.save({"w": expanded((2**40,))}, p), ["declares"])
    dvae_case(
        "expanded-legacy",
        lambda p: torch.save({"w": expanded((huge,))}, p, _use_new_zipfile_serialization=False),
        ["declares"],
    )
    dvae_case(
        "module-expanded",
        lambda p: pickled_module(p, {"blocks.input.w": expanded((huge,), torch.float32)}),
        ["declares"],
    )
    dvae_case("module-cycle", lambda p: pickled_module(p, {}, cycle=True), ["itself"])
    dvae_case("zip-bomb", lambda p: zip_bomb(p, {"w": torch.zeros(4)}, 150_000_000), ["compressed"])

    # DALL·E Mini: valid tiny sources, one file replaced per case
    bpe_pair = bpe_files(inputs / "bpe")
    valid = mini_sources(inputs / "mini-valid", bpe_pair)

    def mini_case(name: str, file: str, write, expected: list[str], preset="tiny") -> None:
        folder = inputs / f"mini-{name}"
        folder.mkdir()
        for source in valid.iterdir():
            if source.name != file:
                (folder / source.name).write_bytes(source.read_bytes())
        write(folder / file)
        args = ["import", "mini", "--from", str(folder), "--out", str(out / "m.dalle.safetensors")]
        cases[f"mini-{name}"] = (args, [file, *expected], preset)

    def text(data: str) -> Callable[[Path], None]:
        return lambda path: path.write_text(data)

    config = json.loads((valid / "config.json").read_text())
    digits = json.dumps({**config, "n_embed": 0}).replace(
        '"n_embed": 0', '"n_embed": ' + "7" * 5000
    )
    mini_case("deep-config", "config.json", text(deep_json()), ["nested"])
    mini_case("digits-config", "config.json", text(digits), ["digits"])
    mini_case("huge-config", "config.json", sparse_file, ["600 MB"])
    mini_case("deep-vocab", "vocab_mini.json", text(deep_json()), ["nested"])
    mini_case("huge-vocab", "vocab_mini.json", sparse_file, ["600 MB"])
    mini_case("huge-merges", "merges_mini.txt", sparse_file, ["600 MB"])
    from model.files import MAX_TEXT_BYTES

    many = lambda path: vocab_of_short_entries(path, MAX_TEXT_BYTES)  # noqa: E731
    mini_case("vocab-under-the-cap", "vocab_mini.json", many, ["vocab and merges disagree"])
    encoder = torch.load(valid / "encoder_mini.pt", weights_only=True)

    def flat_embedding(path: Path) -> None:
        torch.save({**encoder, "embed_tokens.weight": torch.zeros(7)}, path)

    mini_case("1d-embed", "encoder_mini.pt", flat_embedding, ["embed_tokens.weight", "rank"])
    mini_case(
        "empty-maps",
        "flax_model.msgpack",
        lambda p: msgpack_of_empty_maps(p, 24 * 2**20),
        ["max_array_len"],
    )
    mini_case(
        "lists-of-empty-maps",
        "flax_model.msgpack",
        lambda p: msgpack_of_lists_of_empty_maps(p, 240, 100_000),
        ["objects"],
    )
    mini_case("nested-maps", "flax_model.msgpack", lambda p: msgpack_nested(p, 100_000), ["deep"])
    ext_lies = b"\x81\xa6params\xc9" + (2**31 - 2).to_bytes(4, "big") + b"\x01" + b"\0" * 64
    mini_case("ext-lies", "flax_model.msgpack", lambda p: p.write_bytes(ext_lies), ["ends early"])

    # the real Mini's shapes over one stored value each: 0.4B parameters in a few hundred KB
    def stride0_mini(role: str) -> Callable[[Path], None]:
        from model.networks.bart import MINI, BartDalle

        def write(path: Path) -> None:
            with torch.device("meta"):
                model = BartDalle(MINI)
            half = getattr(model, role)
            torch.save(
                {k: expanded(v.shape, torch.float32) for k, v in half.state_dict().items()}, path
            )

        return write

    mini_case("stride0", "encoder_mini.pt", stride0_mini("encoder"), ["declares"], preset=None)
    stride0 = inputs / "mini-stride0"
    stride0_mini("decoder")(stride0 / "decoder_mini.pt")
    # the VQGAN the real Mini reads: 16384 codes on a 16x16 grid
    real = {**config, "n_embed": 16384, "resolution": 256, "ch_mult": [1, 1, 2, 2, 4]}
    real["attn_resolutions"] = [16]
    (stride0 / "config.json").write_text(json.dumps(real))
    return cases


# -- the runner (in the subprocess) ---------------------------------------------------------------


def run_cases(root: str, names: list[str] | None = None) -> None:
    """Run every case (or ``names``) in this process; print one JSON report on stdout."""
    import logging

    from model.cli import main
    from model.importers import dalle_mega
    from tests.test_hostile import listing, peak_rss_mb

    workspace = Path(root)
    cases = make_inputs(workspace)
    tiny = tiny_mini_preset(*bpe_files(workspace / "bpe-for-preset"))
    logging.disable(logging.CRITICAL)
    with contextlib.redirect_stderr(io.StringIO()):  # every reader imported: the baseline
        main(["import", "mini", "--from", str(workspace / "nowhere"), "--out", "x.safetensors"])
    baseline = peak_rss_mb()
    report: dict = {}
    for name, (args, expected, preset) in cases.items():
        if names is not None and name not in names:
            continue
        before = listing(workspace)
        stderr = io.StringIO()
        with (
            pytest.MonkeyPatch.context() as patch,
            contextlib.redirect_stderr(stderr),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            if preset == "tiny":
                patch.setitem(dalle_mega.PRESETS, "mini", tiny)
            try:
                code = main(args)
            except BaseException as error:  # noqa: BLE001 - reported per case, not fatal here
                code = f"raised {type(error).__name__}: {str(error)[:200]}"
        # progress ("dalle import: hashing ...") is not an error line; anything else is
        lines = [
            line
            for line in stderr.getvalue().splitlines()
            if line.strip() and not (line.startswith(PROGRESS) and not line.startswith(ERROR))
        ]
        report[name] = {
            "code": code,
            "stderr": "\n".join(lines),
            "expected": expected,
            "changed": before != listing(workspace),
            "out_exists": (workspace / "out").exists(),
            "peak_mb": peak_rss_mb(),
        }
    print(json.dumps({"baseline_mb": baseline, "cases": report}))


# -- the tests -----------------------------------------------------------------------------------


def run_subprocess(root: Path, names: list[str] | None = None) -> dict:
    code = (
        f"from tests.test_hostile_importers import run_cases; run_cases({str(root)!r}, {names!r})"
    )
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


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_subprocess(tmp_path_factory.mktemp("hostile-importers"))


def case_names() -> list[str]:
    return [
        *(f"rudalle-{n}" for n in ("stride0", "tables", "60000-text", "stride0-mask")),
        *(f"rudalle-{n}" for n in ("stride0-vqgan", "1d-vqgan", "zip-bomb-vqgan")),
        *(f"dvae-{n}" for n in ("expanded", "expanded-2**40", "expanded-legacy")),
        *(f"dvae-{n}" for n in ("module-expanded", "module-cycle", "zip-bomb")),
        *(f"mini-{n}" for n in ("deep-config", "digits-config", "huge-config", "deep-vocab")),
        *(f"mini-{n}" for n in ("huge-vocab", "huge-merges", "vocab-under-the-cap")),
        *(f"mini-{n}" for n in ("1d-embed", "empty-maps")),
        *(f"mini-{n}" for n in ("lists-of-empty-maps", "nested-maps", "ext-lies", "stride0")),
    ]


CASES = case_names()


def test_the_listed_cases_are_the_generated_ones(tmp_path):
    assert sorted(make_inputs(tmp_path)) == sorted(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_hostile_import_is_one_line_exit_2_and_writes_nothing(report, name):
    result = report["cases"][name]
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"]
    line = lines[0]
    assert result["code"] == 2, line
    assert line.startswith(ERROR), line
    for fragment in result["expected"]:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert not result["out_exists"], "the output's folders were created and left"
    assert not result["changed"], "a file was written or changed"


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_hostile_import_is_refused_before_allocating(report, name):
    growth = report["cases"][name]["peak_mb"] - report["baseline_mb"]
    assert growth < MAX_GROWTH_MB, f"peak RSS grew {growth:.0f} MB"


# -- a full disk while the result is written --------------------------------------------------


def disk_full(kind: str) -> Callable[..., None]:
    """A ``save_file`` that writes part of the file, then fails as a full disk does: safetensors
    raises its own SafetensorError (measured on a 1 MB tmpfs), a Python writer OSError."""
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"\0" * 4096)
        if kind == "safetensors":
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save_file


def dvae_sources(folder: Path) -> tuple[Path, Path]:
    """A tiny dVAE's halves saved as state dicts in the released naming (read_half takes them)."""
    from model.config import DVAEConfig
    from model.networks.dvae import DVAE

    vae = DVAE(DVAEConfig(image_size=16, n_groups=2, n_hid=8, vocab_size=16, n_init=8))
    folder.mkdir()
    paths = folder / "encoder.pkl", folder / "decoder.pkl"
    torch.save(vae.encoder.state_dict(), paths[0])
    torch.save(vae.decoder.state_dict(), paths[1])
    return paths


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
@pytest.mark.parametrize("family", ["mini", "openai-dvae"])
def test_a_full_disk_is_one_line_exit_2_and_leaves_nothing(
    tmp_path, monkeypatch, capsys, family, kind
):
    import model.bundle.io
    import model.bundle.tokenizer_files
    from model.cli import main
    from model.importers import dalle_mega

    out = tmp_path / "out" / "new" / "a" / "b"
    if family == "openai-dvae":
        encoder, decoder = dvae_sources(tmp_path / "src")
        target = out / "vae.safetensors"
        args = ["openai-dvae", "--encoder", str(encoder), "--decoder", str(decoder)]
        monkeypatch.setattr(model.bundle.tokenizer_files, "save_file", disk_full(kind))
    else:
        bpe = bpe_files(tmp_path / "bpe")
        source = mini_sources(tmp_path / "src", bpe)
        monkeypatch.setitem(dalle_mega.PRESETS, "mini", tiny_mini_preset(*bpe))
        target = out / "m.dalle.safetensors"
        args = ["mini", "--from", str(source)]
        monkeypatch.setattr(model.bundle.io, "save_file", disk_full(kind))
    assert main(["import", *args, "--out", str(target)]) == 2
    errors = [
        line
        for line in capsys.readouterr().err.splitlines()
        if not line.startswith(PROGRESS) or line.startswith(ERROR)
    ]
    assert len(errors) == 1 and errors[0].startswith(ERROR), errors
    assert str(target) in errors[0] and "No space left on device" in errors[0], errors[0]
    assert not (tmp_path / "out").exists()  # no temporary file, no folder made for it


# -- the limits themselves, past the generated cases -----------------------------------------


def test_json_nested_past_the_limit_is_refused_before_python_recursion_would(tmp_path):
    from model.files import MAX_JSON_DEPTH, read_json

    path = tmp_path / "config.json"
    path.write_text(deep_json(MAX_JSON_DEPTH))
    assert read_json(path, "config") is not None
    path.write_text(deep_json(MAX_JSON_DEPTH + 1))  # far under Python's recursion limit
    with pytest.raises(ValueError, match=r"config\.json: the config is nested too deeply"):
        read_json(path, "config")
    path.write_text('{"n_embed": -' + "9" * 31 + "}")
    with pytest.raises(ValueError, match="an integer of 31 digits"):
        read_json(path, "config")


def test_modules_shared_down_many_levels_are_refused_not_walked(tmp_path):
    """A diamond 60 levels deep is 2**60 paths: refused after MAX_MODULES, without recursion."""
    from model.importers.safe_pickle import MAX_MODULES, UnsafePickle, _stub, state_dict

    module_class = _stub("dall_e.encoder.Encoder")
    below = None
    for _ in range(60):
        module = module_class()
        children = {} if below is None else {"a": below, "b": below}
        module.__dict__.update(_parameters={"w": torch.zeros(1)}, _buffers={}, _modules=children)
        below = module
    with pytest.raises(UnsafePickle, match=f"more than {MAX_MODULES:,} modules"):
        state_dict(below)


def test_flax_arrays_past_their_budget_are_refused(tmp_path):
    import numpy as np

    from model.importers.flax_msgpack import read_flax_msgpack
    from tests.test_vqgan import _to_bytes

    path = tmp_path / "flax_model.msgpack"
    path.write_bytes(_to_bytes({"a": np.zeros(100, np.float32), "b": np.zeros(100, np.float32)}))
    assert set(read_flax_msgpack(path, max_array_bytes=800)) == {"a", "b"}
    with pytest.raises(ValueError, match=r"flax_model\.msgpack: its arrays come to more than 799"):
        read_flax_msgpack(path, max_array_bytes=799)
