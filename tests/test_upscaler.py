"""model/networks/upscaler.py and model/bundle/upscaler_files.py: the tiled upscale (equal to the
untiled run, bounded per tile, cancellable), the .upscaler.safetensors files and the shipped
upscaler."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.bundle.upscaler_files import (
    FORMAT,
    load_upscaler,
    read_upscaler_card,
    save_upscaler,
    shipped_upscaler_path,
)
from model.networks.upscaler import (
    RRDBNetConfig,
    SRVGGConfig,
    UpscaleCancelled,
    build_upscaler,
    largest_tile,
    tile_working_bytes,
    upscale,
)

TINY_SRVGG = SRVGGConfig(num_feat=8, num_conv=4)  # receptive field: 6 convolutions, 6 px
TINY_RRDB = RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4)


def tiny(config, seed: int = 0):
    torch.manual_seed(seed)
    upscaler = build_upscaler(config).eval()
    with torch.no_grad():  # weights large enough that the far context matters
        for parameter in upscaler.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return upscaler


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def untiled(upscaler, pixels: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
        out = upscaler(x)[0].clamp(0, 1)
    return out.permute(1, 2, 0).numpy()  # float, to compare with a tolerance


@pytest.mark.parametrize("output_scale", [0, 3])
def test_tiles_with_an_overlap_covering_the_field_equal_the_whole_picture(output_scale):
    upscaler = tiny(SRVGGConfig(num_feat=8, num_conv=4, output_scale=output_scale))
    pixels = picture(37, 53)  # odd sides: partial tiles on the right and at the bottom
    whole = untiled(upscaler, pixels)
    tiled = upscale(pixels, upscaler, tile=16, overlap=8)
    s = upscaler.scale
    assert tiled.shape == (37 * s, 53 * s, 3) and tiled.dtype == np.uint8
    # the same values up to float rounding, then to the nearest of 256 levels
    assert np.abs(tiled / 255.0 - whole).max() <= 0.5 / 255 + 1e-5
    # without the overlap the tiles' edges show (the check above can fail)
    seams = upscale(pixels, upscaler, tile=16, overlap=0)
    assert np.abs(seams / 255.0 - whole).max() > 4 / 255


def test_rrdbnet_tiles_differ_from_the_whole_picture_by_little():
    upscaler = tiny(TINY_RRDB)
    pixels = picture(40, 44)
    whole = untiled(upscaler, pixels)
    tiled = upscale(pixels, upscaler, tile=16, overlap=12)
    # RRDBNet's field (20 convolutions here, 350 in x4plus) is wider than the overlap; measured
    # 0.5 level plus rounding at overlap 12 for this net
    assert np.abs(tiled / 255.0 - whole).max() <= 2 / 255


def test_pil_input_and_pixel_unshuffle_nets_of_any_size():
    upscaler = tiny(RRDBNetConfig(scale=2, num_feat=8, num_block=1, num_grow_ch=4))
    assert upscaler.multiple == 2
    image = Image.fromarray(picture(21, 15))  # odd sides: padded to even, cropped back
    result = upscale(image, upscaler, tile=8, overlap=4)
    assert result.shape == (42, 30, 3)
    with pytest.raises(ValueError, match="uint8 array H x W x 3"):
        upscale(np.zeros((4, 4), np.uint8), upscaler)


def test_every_tile_the_net_sees_is_bounded_whatever_the_picture(monkeypatch):
    upscaler = tiny(TINY_SRVGG)
    seen = []
    forward = upscaler.forward
    monkeypatch.setattr(upscaler, "forward", lambda x: seen.append(x.shape) or forward(x))
    for height, width in ((20, 20), (90, 130)):
        seen.clear()
        upscale(picture(height, width), upscaler, tile=24, overlap=6)
        assert max(h * w for *_, h, w in seen) <= (24 + 2 * 6) ** 2
    # the bound depends on the tile only: (tile + 2 overlap)^2 * 4 bytes * (11 F + 3 + 3 * 48)
    assert tile_working_bytes(upscaler, 24, 6) == (24 + 12) ** 2 * 4 * (11 * 8 + 3 + 3 * 48)
    # with no tile named, the largest within the budget
    assert tile_working_bytes(upscaler, largest_tile(upscaler, 6, 2**20), 6) <= 2**20
    assert tile_working_bytes(upscaler, largest_tile(upscaler, 6, 2**20) + 8, 6) > 2**20


def test_cancel_stops_between_tiles_and_progress_counts_them():
    upscaler = tiny(TINY_SRVGG)
    cancel = threading.Event()
    calls = []

    def progress(done, total):
        calls.append((done, total))
        cancel.set()

    with pytest.raises(UpscaleCancelled):
        upscale(picture(40, 40), upscaler, tile=16, overlap=4, cancel=cancel, progress=progress)
    assert calls == [(1, 9)]  # 3 x 3 tiles; stopped before the second


# -- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TINY_SRVGG, TINY_RRDB], ids=["srvgg", "rrdb"])
def test_a_saved_upscaler_loads_as_it_was(tmp_path, config):
    upscaler = tiny(config)
    path = tmp_path / "a.upscaler.safetensors"
    dtypes = {name: torch.float16 for name in upscaler.net.state_dict()}
    save_upscaler(upscaler, path, {"name": "tiny"}, dtypes)
    loaded, card = load_upscaler(path)
    assert card == {"name": "tiny"} and loaded.config == config
    for name, tensor in upscaler.net.state_dict().items():  # fp16 storage: rounded once
        assert torch.equal(loaded.net.state_dict()[name], tensor.half().float())
    assert read_upscaler_card(path) == {"name": "tiny"}


def _rewrite_header(path: Path, change) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h: h["__metadata__"].update(format="dalle-studio/1"), "not an upscaler file"),
        (
            lambda h: h["__metadata__"].update(config=json.dumps({"arch": "Swin"})),
            "config.arch is 'Swin'",
        ),
        (
            lambda h: h["__metadata__"].update(
                config=json.dumps({"arch": "SRVGGNetCompact", "num_feat": 100000})
            ),
            r"config.num_feat is 100000; expected an integer 1..512",
        ),
        (
            lambda h: h["__metadata__"].update(
                config=json.dumps({"arch": "SRVGGNetCompact", "num_feat": 8, "num_conv": 5})
            ),
            "missing tensors",
        ),
        (lambda h: h["body.0.weight"].update(shape=[8, 3, 3, 1]), "does not fit its bytes"),
    ],
)
def test_a_damaged_upscaler_file_is_refused_in_one_line(tmp_path, change, message):
    path = tmp_path / "a.upscaler.safetensors"
    save_upscaler(tiny(TINY_SRVGG), path, {})
    _rewrite_header(path, change)
    with pytest.raises(ValueError, match=message) as error:
        load_upscaler(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_an_upscaler_file_beyond_the_parameter_bound_is_refused_before_reading(
    tmp_path, monkeypatch
):
    import model.bundle.upscaler_files as files

    path = tmp_path / "a.upscaler.safetensors"
    upscaler = tiny(TINY_SRVGG)
    save_upscaler(upscaler, path, {})
    count = sum(p.numel() for p in upscaler.parameters())
    monkeypatch.setattr(files, "MAX_PARAMETERS", count - 1)
    monkeypatch.setattr(files, "read_tensors", None)  # never reached
    with pytest.raises(ValueError, match=f"holds {count:,} parameters; an upscaler has at most"):
        load_upscaler(path)


def test_non_finite_weights_are_refused(tmp_path):
    upscaler = tiny(TINY_SRVGG)
    with torch.no_grad():
        upscaler.net.body[0].bias[0] = float("nan")
    path = tmp_path / "a.upscaler.safetensors"
    save_upscaler(upscaler, path, {})
    with pytest.raises(ValueError, match="non-finite weights"):
        load_upscaler(path)


# -- the shipped one ------------------------------------------------------------------------------


def test_the_shipped_upscaler_loads_with_its_card_and_licence():
    path = shipped_upscaler_path()
    assert path.is_file() and path.stat().st_size < 20 * 2**20
    upscaler, card = load_upscaler()
    assert (upscaler.config.arch, upscaler.scale, card["scale"]) == ("SRVGGNetCompact", 4, 4)
    assert card["architecture"] == "SRVGGNetCompact" and card["stage"] == "upscaler"
    assert "BSD 3-Clause License" in card["licence_text"] and "Xintao Wang" in card["licence_text"]
    assert card["imported"]["licence"].startswith("BSD-3-Clause, Copyright (c) 2021, Xintao Wang")
    files = card["imported"]["files"]
    assert set(files) == {"realesr-animevideov3-x4.param", "realesr-animevideov3-x4.bin"}
    assert all(len(digest) == 64 for digest in files.values())
    # its card beside it carries the same notice, word for word
    from model.importers.realesrgan import LICENCE

    assert card["licence_text"] == LICENCE
    assert LICENCE.strip() in (path.parent / "UPSCALER_CARD.md").read_text(encoding="utf-8")
    # the installer ships it: pyproject's package-data takes resources/models/*.safetensors
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"models/*.safetensors"' in text and path.parent.name == "models"
    meta_format = json.loads(
        path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]]
    )
    assert meta_format["__metadata__"]["format"] == FORMAT


# -- dalle upscale --------------------------------------------------------------------------------


def _upscaler_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.upscaler.safetensors"
    save_upscaler(tiny(TINY_SRVGG), path, {"name": "tiny"})
    return path


def test_dalle_upscale_writes_the_tiled_result(tmp_path, capsys):
    from model.cli import main

    pixels = picture(30, 41)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    path = _upscaler_file(tmp_path)
    out = tmp_path / "sub" / "out.png"
    args = ["upscale", "--image", str(tmp_path / "in.png"), "--out", str(out)]
    assert main([*args, "--upscaler", str(path), "--tile", "16"]) == 0
    written = np.asarray(Image.open(out))
    upscaler, _ = load_upscaler(path)
    assert np.array_equal(written, upscale(pixels, upscaler, tile=16, overlap=20))


@pytest.mark.parametrize("case", ["same", "dotted", "symlink", "not-png", "too-large", "bundle"])
def test_dalle_upscale_refuses_in_one_line_and_leaves_the_picture(tmp_path, capsys, case):
    from model.cli import main

    image = tmp_path / "in.png"
    size = (2000, 1600) if case == "too-large" else (12, 10)  # x4: 51 megapixels
    Image.new("RGB", size, "red").save(image)
    before = image.read_bytes()
    out = {
        "same": image,
        "dotted": tmp_path / "sub" / ".." / "in.png",
        "symlink": tmp_path / "link.png",
        "not-png": tmp_path / "out.jpg",
        "too-large": tmp_path / "out.png",
        "bundle": tmp_path / "out.png",
    }[case]
    if case == "symlink":
        out.symlink_to(image)
    (tmp_path / "sub").mkdir()
    args = ["upscale", "--image", str(image), "--out", str(out)]
    if case == "bundle":
        bundle = tmp_path / "model.dalle.safetensors"
        bundle.write_bytes(shipped_upscaler_path().read_bytes()[:8] + b"{}")
        args += ["--upscaler", str(bundle)]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    same = "is the same file as --image"
    message = {
        "same": same,
        "dotted": same,
        "symlink": same,
        "not-png": "name a .png file",
        "too-large": "2000x1600 upscaled x4 would be 51 megapixels",
        "bundle": "model.dalle.safetensors",
    }[case]
    assert message in error[0]
    assert image.read_bytes() == before and not (tmp_path / "out.png").exists()


def test_dalle_upscale_overwrite_replaces_the_picture_when_asked(tmp_path):
    from model.cli import main

    image = tmp_path / "in.png"
    Image.fromarray(picture(9, 11)).save(image)
    path = _upscaler_file(tmp_path)
    args = ["upscale", "--image", str(image), "--out", str(image), "--upscaler", str(path)]
    assert main([*args, "--overwrite"]) == 0
    assert Image.open(image).size == (44, 36)
