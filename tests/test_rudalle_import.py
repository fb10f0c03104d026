"""``dalle import rudalle`` end to end at a tiny size: ruDALL-E's own ``DalleModel`` saved as its
``pytorch_model_v3.bin`` is, a Lightning checkpoint of a gumbel VQGAN and a youtokentome
``bpe.model``, converted by the CLI into a bundle that loads, predicts what ``DalleModel`` predicts
and completes a bottom-right rectangle keeping every other pixel.

The layout's own parity (full pass, KV cache, chunked prefill, forced completion) is
tests/test_rudalle.py; the VQGAN's and the Lightning reader's, tests/test_vqgan_gumbel.py; the
tokenizer's, tests/test_yttm.py. This file checks that the importer puts them together.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.bundle import load, read_card
from model.config import VQGANConfig
from model.importers.rudalle_import import import_rudalle
from model.networks.vqgan import VQGAN
from model.tokenizers.yttm_text import RudallePrompt
from tests.test_rudalle import (
    BPE_IDS,
    GRID,
    HEADS,
    IMAGE_CODES,
    TEXT_POSITIONS,
    assert_close,
    cells,
    our_text,
    reference_logits,
    rudalle_model,
    rudalle_text,
)
from tests.test_vqgan_gumbel import write_lightning

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from random_rudalle import write_bpe  # noqa: E402

# a gumbel VQGAN whose grid is the tiny transformer's: f8 at 96 px is 12x12
VQ = VQGANConfig(
    resolution=GRID * 8,
    ch=32,
    ch_mult=(1, 1, 2, 4),
    num_res_blocks=1,
    attn_resolutions=(GRID,),
    z_channels=32,
    embed_dim=32,
    n_embed=IMAGE_CODES,
    quantize="gumbel",
    value_range="-1,1",
)


@pytest.fixture(scope="module")
def rudalle_code():
    from tests.test_rudalle import load_rudalle_code

    return load_rudalle_code()


def write_sources(folder: Path, reference, name: str = "pytorch_model_v3.bin") -> VQGAN:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(), folder / name)  # buffers (the masks) included, as saved
    torch.manual_seed(4)
    vqgan = VQGAN(VQ).eval()
    with pytest.MonkeyPatch.context():
        write_lightning(folder, vqgan.state_dict(), era="1.6")
    write_bpe(folder / "bpe.model", size=BPE_IDS)
    return vqgan


@pytest.fixture(scope="module")
def imported(rudalle_code, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rudalle")
    reference = rudalle_model(rudalle_code, depth=2, seed=3)
    vqgan = write_sources(folder / "src", reference)
    out = folder / "tiny.dalle.safetensors"
    import_rudalle(folder / "src", out, dtype="fp32", heads=HEADS, vqgan=VQ)
    return reference, vqgan, out


def test_the_bundle_predicts_what_dalle_model_predicts(imported):
    reference, _vqgan, out = imported
    bundle = load(out)
    assert bundle.config.text_kind == "yttm" and isinstance(bundle.tokenizer, RudallePrompt)
    assert bundle.config.transformer.layout == "rudalle" and bundle.config.vae.quantize == "gumbel"
    assert bundle.tokenizer.text_len == TEXT_POSITIONS - 1
    text, image = rudalle_text(), cells()
    with torch.no_grad():
        ours = bundle.transformer(bundle.transformer.stream(our_text(text), image))
    theirs = reference_logits(reference, text, image)
    assert_close(ours.image, theirs[:, TEXT_POSITIONS - 1 : -1, BPE_IDS + TEXT_POSITIONS :])


def test_the_bundle_encodes_a_caption_as_dalle_model_reads_it(imported):
    _reference, _vqgan, out = imported
    bundle = load(out)
    ids = bundle.tokenizer.encode(["кот"])[0]
    assert ids[0] == 2 and 3 in ids.tolist()  # BOS ... EOS
    end = ids.tolist().index(3)
    pads = ids[end + 1 :]
    assert torch.equal(pads, BPE_IDS + torch.arange(end + 1, TEXT_POSITIONS - 1))


def test_the_vqgan_comes_through_unchanged(imported):
    _reference, vqgan, out = imported
    bundle = load(out)
    pictures = torch.rand(
        2, 3, VQ.resolution, VQ.resolution, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        assert torch.equal(bundle.vae.encode(pictures), vqgan.encode(pictures))
        codes = vqgan.encode(pictures)
        assert torch.equal(bundle.vae.decode(codes), vqgan.decode(codes))


def test_the_card_names_sources_licence_and_hashes(imported):
    _reference, _vqgan, out = imported
    card = read_card(out)
    imported_ = card["imported"]
    assert imported_["from"] == "dalle import rudalle" and imported_["version"] == "v3"
    assert set(imported_["files"]) == {
        "pytorch_model_v3.bin",
        "vqgan.gumbelf8-sber.model.ckpt",
        "bpe.model",
    }
    assert all(len(digest) == 64 for digest in imported_["files"].values())
    assert "not stated" in imported_["licence"]["weights"]
    assert len(card["example_captions"]) == len(card["example_glosses"]) >= 3
    assert all(any("а" <= ch <= "я" for ch in c) for c in card["example_captions"])


def test_dalle_complete_keeps_every_pixel_outside_the_rectangle(imported, tmp_path):
    from model.cli import main

    _reference, _vqgan, out = imported
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (VQ.resolution, VQ.resolution, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "in.png")
    code = main([
        "complete", "--bundle", str(out), "--image", str(tmp_path / "in.png"), "--from", "7,8",
        "--caption", "Рыжий кот", "--seed", "1", "--out", str(tmp_path / "out.png"),
    ])  # fmt: skip
    assert code == 0
    result = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert result.shape == picture.shape
    cell = VQ.resolution // GRID
    kept = np.ones(picture.shape[:2], dtype=bool)
    kept[7 * cell :, 8 * cell :] = False  # --from 7,8: row 7, column 8
    assert np.array_equal(result[kept], picture[kept])
    assert not np.array_equal(result[~kept], picture[~kept])


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda f: (f / "pytorch_model_v3.bin").rename(f / "pytorch_model_v2.bin"),
         "pytorch_model_v2.bin is a v2 checkpoint"),
        (lambda f: (f / "bpe.model").unlink(), "lacks bpe.model"),
        (lambda f: (f / "vqgan.gumbelf8-sber.model.ckpt").unlink(), "lacks vqgan.gumbelf8-sber"),
        (lambda f: (f / "pytorch_model_v3.bin").write_bytes(b"junk"), "pytorch_model_v3.bin"),
        (lambda f: write_bpe(f / "bpe.model", size=BPE_IDS + 5), "not this model's caption BPE"),
    ],
    ids=["v2-only", "no-bpe", "no-vqgan", "garbage", "other-bpe"],
)  # fmt: skip
def test_bad_sources_are_one_line_errors_and_write_nothing(rudalle_code, tmp_path, setup, words):
    reference = rudalle_model(rudalle_code, depth=2, seed=3)
    write_sources(tmp_path / "src", reference)
    setup(tmp_path / "src")
    out = tmp_path / "out.dalle.safetensors"
    with pytest.raises(ValueError) as error:
        import_rudalle(tmp_path / "src", out, dtype="fp32", heads=HEADS, vqgan=VQ)
    message = str(error.value)
    assert words in message and "\n" not in message
    assert not out.exists() and list(tmp_path.glob("*.dalle.safetensors*")) == []


def test_memory_and_disk_too_small_are_refused_before_reading(rudalle_code, tmp_path, monkeypatch):
    reference = rudalle_model(rudalle_code, depth=2, seed=3)
    write_sources(tmp_path / "src", reference)
    out = tmp_path / "out.dalle.safetensors"
    monkeypatch.setattr("model.device.available_memory", lambda device: 10**3)
    with pytest.raises(ValueError, match=r"converting needs about .* 1 KB available"):
        import_rudalle(tmp_path / "src", out, dtype="fp32", heads=HEADS, vqgan=VQ)
    monkeypatch.undo()
    full = type("Usage", (), {"free": 10})
    monkeypatch.setattr("shutil.disk_usage", lambda path: full)
    with pytest.raises(ValueError, match="free; the bundle needs about"):
        import_rudalle(tmp_path / "src", out, dtype="fp32", heads=HEADS, vqgan=VQ)
    assert not out.exists()


def test_v2_is_refused_by_version(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ValueError, match="only v3 checkpoints"):
        import_rudalle(tmp_path / "src", tmp_path / "x.dalle.safetensors", version="v2")


def test_the_cli_says_what_is_missing(tmp_path, capsys):
    from model.cli import main

    (tmp_path / "src").mkdir()
    code = main(
        [
            "import",
            "rudalle",
            "--from",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "x.dalle.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "has neither pytorch_model_v3.bin nor pytorch_model.bin" in err
