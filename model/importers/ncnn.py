"""Reading Real-ESRGAN's ncnn conversions (``NAME.param`` text + ``NAME.bin`` blobs) into our
``model.networks.upscaler`` modules.

The ``.param`` file is text: the magic ``7767517``, ``layer_count blob_count``, then one line per
layer: ``type name bottom_count top_count bottoms... tops... key=value...``, where a key below
-23300 holds an array (``-23310=1,2.000000e-01`` is key 10: count, then values). The ``.bin`` file
is every layer's weights, back to back in layer order, as ncnn's ``ModelBinFromDataReader::load``
reads them: a Convolution's weights (``load(weight_data_size, 0)``) start with a 4-byte tag,
0x01306B47 for fp16 (then the values, padded to 4 bytes), 0 for fp32, 0x000D4B38 for int8;
its bias and a PReLU's slopes (``load(n, 1)``) are raw fp32 with no tag.

Both files are untrusted: the text is bounded in size, layer and blob counts, bottoms and tops,
array lengths; each blob's size is checked against the bytes left in the ``.bin`` before it is
read, and the file must end exactly where the last blob does. The layers must then be the
sequence one of the two nets converts to (Convolution, PReLU, PixelShuffle, Interp, ...), each
with the shape the mapped module has, or the import is refused naming the layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.networks.upscaler import (
    RRDBNetConfig,
    SRVGGConfig,
    Upscaler,
    UpscalerConfig,
    build_upscaler,
)

MAGIC = 7767517
MAX_PARAM_BYTES = 4 * 2**20  # RealESRGAN x4plus's is 116 KB
MAX_BIN_BYTES = 512 * 2**20  # its .bin is 33 MB (fp16); fp32 would be 67 MB
MAX_LAYERS = 20_000  # x4plus has 999
MAX_BLOBS = 40_000
MAX_EDGES = 64  # bottoms or tops of one layer (a Split of x4plus has 8)
MAX_ARRAY = 64
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056  # "raw data with extra scaling": plain fp32 values
# layers a Real-ESRGAN conversion holds; those with weights are read below
KNOWN_TYPES = {
    "Input", "Split", "Convolution", "PReLU", "PixelShuffle", "Interp", "BinaryOp", "Eltwise",
    "Concat",
}  # fmt: skip
INTERP_NEAREST, INTERP_BICUBIC = 1, 3
ACT_NONE, ACT_RELU, ACT_LEAKY = 0, 1, 2


class NcnnError(ValueError):
    """A file that is not a Real-ESRGAN ncnn conversion this reader takes (the message names
    the file and the problem)."""


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, int | float | list]
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # "weight", "bias", "slope"
    fp16: set[str] = field(default_factory=set)  # which of them the file stores as fp16

    def param(self, key: int, default: int | float | list = 0) -> int | float | list:
        return self.params.get(key, default)


# -- the .param text -----------------------------------------------------------------------------


def _number(text: str, where: str) -> int | float:
    try:
        return float(text) if re.search(r"[.eE]", text) else int(text)
    except ValueError:
        raise NcnnError(f"{where}: {text[:20]!r} is not a number") from None


def _parse_params(items: list[str], where: str) -> dict[int, int | float | list]:
    params: dict[int, int | float | list] = {}
    for item in items:
        key_text, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"-?\d{1,6}", key_text):
            raise NcnnError(f"{where}: {item[:30]!r} is not key=value")
        key = int(key_text)
        if key <= -23300:  # an array: count, then the values
            values = value.split(",")
            count = _number(values[0], where)
            if not isinstance(count, int) or not 0 <= count <= MAX_ARRAY:
                raise NcnnError(f"{where}: an array of {values[0][:12]} values")
            if len(values) != count + 1:
                raise NcnnError(
                    f"{where}: array {key} says {count} values, holds {len(values) - 1}"
                )
            params[-key - 23300] = [_number(v, where) for v in values[1:]]
        else:
            params[key] = _number(value, where)
    return params


def read_param(path: Path) -> list[Layer]:
    """The layers of an ncnn ``.param`` file, every count and name checked."""
    size = path.stat().st_size
    if size > MAX_PARAM_BYTES:
        raise NcnnError(f"{path}: {size:,} bytes; an ncnn .param is at most {MAX_PARAM_BYTES:,}")
    try:
        lines = path.read_text(encoding="ascii").split("\n")
    except UnicodeDecodeError:
        raise NcnnError(f"{path}: not an ncnn .param file (not text)") from None
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0].strip() != str(MAGIC):
        raise NcnnError(f"{path}: not an ncnn .param file (no {MAGIC} magic on its first line)")
    counts = lines[1].split() if len(lines) > 1 else []
    if len(counts) != 2 or not all(c.isdigit() for c in counts):
        raise NcnnError(f"{path}: line 2 must be 'layer_count blob_count'")
    layer_count, blob_count = int(counts[0]), int(counts[1])
    if not (0 < layer_count <= MAX_LAYERS and 0 < blob_count <= MAX_BLOBS):
        raise NcnnError(
            f"{path}: {layer_count} layers and {blob_count} blobs; at most "
            f"{MAX_LAYERS} and {MAX_BLOBS}"
        )
    if len(lines) - 2 != layer_count:
        raise NcnnError(f"{path}: says {layer_count} layers but holds {len(lines) - 2}")
    layers, blobs = [], set()
    for number, line in enumerate(lines[2:], start=3):
        where = f"{path} line {number}"
        words = line.split()
        if len(words) < 4 or not words[2].isdigit() or not words[3].isdigit():
            raise NcnnError(f"{where}: expected 'type name bottoms tops ...'")
        kind, name, n_in, n_out = words[0], words[1], int(words[2]), int(words[3])
        if n_in > MAX_EDGES or n_out > MAX_EDGES or len(words) < 4 + n_in + n_out:
            raise NcnnError(f"{where}: {n_in} bottoms and {n_out} tops")
        bottoms, tops = words[4 : 4 + n_in], words[4 + n_in : 4 + n_in + n_out]
        unknown = [b for b in bottoms if b not in blobs]
        if unknown:
            raise NcnnError(f"{where}: {name} reads blob {unknown[0]!r}, which no layer made")
        blobs.update(tops)
        if len(blobs) > blob_count:
            raise NcnnError(f"{path}: more blobs than the {blob_count} its header says")
        params = _parse_params(words[4 + n_in + n_out :], where)
        layers.append(Layer(kind, name, bottoms, tops, params))
    return layers


# -- the .bin blobs ------------------------------------------------------------------------------


class _Blobs:
    """The ``.bin`` bytes, read front to back; each read checked against what is left."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        if size > MAX_BIN_BYTES:
            raise NcnnError(f"{path}: {size / 2**20:,.0f} MB; at most {MAX_BIN_BYTES / 2**20:,.0f}")
        self.data = path.read_bytes()
        self.offset = 0

    def take(self, nbytes: int, what: str) -> memoryview:
        left = len(self.data) - self.offset
        if nbytes > left:
            raise NcnnError(
                f"{self.path}: {what} needs {nbytes:,} bytes at offset {self.offset:,}, but only "
                f"{left:,} are left (truncated, or not this .param's .bin)"
            )
        view = memoryview(self.data)[self.offset : self.offset + nbytes]
        self.offset += nbytes
        return view

    def raw(self, count: int, what: str) -> np.ndarray:  # ModelBin::load(w, 1): fp32, no tag
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> tuple[np.ndarray, str]:  # load(w, 0)
        (tag,) = np.frombuffer(self.take(4, what + "'s storage tag"), dtype="<u4")
        if tag == TAG_FP16:
            padded = (2 * count + 3) // 4 * 4  # ncnn aligns the half values to 4 bytes
            values = np.frombuffer(self.take(padded, what), dtype="<f2")[:count]
            return values.astype(np.float32), "fp16"
        if tag == 0 or tag == TAG_FP32_SCALED:
            return self.raw(count, what), "fp32"
        if tag == TAG_INT8:
            raise NcnnError(f"{self.path}: {what} is stored as int8; only fp32 and fp16 are read")
        raise NcnnError(
            f"{self.path}: {what} has storage tag 0x{int(tag):08X}, neither fp32 (0) nor fp16 "
            "(0x01306B47): a quantised file, or not this .param's .bin"
        )


def read_bin(path: Path, layers: list[Layer]) -> set[str]:
    """Fill each layer's weights from ``path``; the storage kinds met ({"fp16"}, {"fp32"})."""
    blobs = _Blobs(path)
    storage = set()
    for layer in layers:
        what = f"layer {layer.name}"
        if layer.type == "Convolution":
            out, size = layer.param(0), layer.param(6)
            if layer.param(8) or layer.param(19):
                raise NcnnError(f"{path}: {what} is int8-quantised or has dynamic weights")
            if not (isinstance(out, int) and isinstance(size, int) and 0 < out and 0 < size):
                raise NcnnError(f"{path}: {what} has num_output {out} and weight size {size}")
            layer.weights["weight"], kind = blobs.tagged(size, what + " weights")
            storage.add(kind)
            if kind == "fp16":
                layer.fp16.add("weight")
            if layer.param(5):
                layer.weights["bias"] = blobs.raw(out, what + " bias")
        elif layer.type == "PReLU":
            count = layer.param(0)
            if not (isinstance(count, int) and 0 < count):
                raise NcnnError(f"{path}: {what} has {count} slopes")
            layer.weights["slope"] = blobs.raw(count, what + " slopes")
        elif layer.type not in KNOWN_TYPES:
            raise NcnnError(
                f"{layer.type} layer {layer.name}: not a layer Real-ESRGAN's conversions hold"
            )
    if blobs.offset != len(blobs.data):
        raise NcnnError(
            f"{path}: {len(blobs.data) - blobs.offset:,} bytes left after the last weights "
            "(not this .param's .bin)"
        )
    return storage


# -- mapping onto our modules --------------------------------------------------------------------


def _conv(layer: Layer, act: int, slope: float = 0.0) -> tuple:
    return ("Convolution", layer.param(0), layer.param(1), act, round(slope, 4))


def _signature(layer: Layer) -> tuple:
    """What of a layer decides its arithmetic (names and wiring aside)."""
    if layer.type == "Convolution":
        act = layer.param(9)
        slope = (layer.param(10, [0.0]) or [0.0])[0] if act == ACT_LEAKY else 0.0
        return _conv(layer, act, slope)
    if layer.type == "PReLU":
        return ("PReLU", layer.param(0))
    if layer.type == "Interp":
        return ("Interp", layer.param(0), round(float(layer.param(1)), 4))
    if layer.type == "Eltwise":
        coeffs = [round(float(c), 4) for c in layer.param(1, [])]
        return ("Eltwise", layer.param(0), tuple(coeffs))
    if layer.type in ("BinaryOp", "PixelShuffle"):
        return (layer.type, layer.param(0))
    return (layer.type,)


def _expected(config: UpscalerConfig, interp: tuple | None) -> list[tuple]:
    """The layer signatures (Split and Input left out) ``config``'s net converts to."""
    c = config.num_feat
    if isinstance(config, SRVGGConfig):
        act = {"prelu": [("PReLU", c)], "relu": [], "leakyrelu": []}[config.act_type]
        fused = {"prelu": (0, 0.0), "relu": (ACT_RELU, 0.0), "leakyrelu": (ACT_LEAKY, 0.1)}
        conv = ("Convolution", c, 3, *fused[config.act_type])
        sig = [conv, *act] * (config.num_conv + 1)
        s = config.scale
        sig += [("Convolution", config.out_ch * s * s, 3, 0, 0.0), ("PixelShuffle", s)]
        sig += [("Interp", INTERP_NEAREST, float(s)), ("BinaryOp", 0)]
    else:
        g = config.num_grow_ch
        leaky = ("Convolution", g, 3, ACT_LEAKY, 0.2)
        rdb = [leaky, ("Concat",), leaky, ("Concat",), leaky, ("Concat",), leaky, ("Concat",)]
        rdb += [("Convolution", c, 3, 0, 0.0), ("Eltwise", 1, (0.2, 1.0))]
        rrdb = rdb * 3 + [("Eltwise", 1, (0.2, 1.0))]
        up = [("Interp", INTERP_NEAREST, 2.0), ("Convolution", c, 3, ACT_LEAKY, 0.2)]
        sig = [("Convolution", c, 3, 0, 0.0), *rrdb * config.num_block]
        sig += [("Convolution", c, 3, 0, 0.0), ("BinaryOp", 0), *up, *up]
        sig += [("Convolution", c, 3, ACT_LEAKY, 0.2), ("Convolution", config.out_ch, 3, 0, 0.0)]
    return sig + ([interp] if interp else [])


def _infer(path: Path, layers: list[Layer]) -> tuple[UpscalerConfig, tuple | None]:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    if len(convs) < 3:
        raise NcnnError(f"{path}: {len(convs)} convolutions; not a Real-ESRGAN net")
    first, last = convs[0], layers[-1]
    interp = None
    if last.type == "Interp" and last.param(0) == INTERP_BICUBIC:  # the x2/x3 conversions
        interp = _signature(last)
    in_ch = first.param(6) // max(1, first.param(0) * first.param(1) ** 2)
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    if shuffles:
        scale = shuffles[0].param(0)
        prelus = sum(layer.type == "PReLU" for layer in layers)
        act = (
            "prelu"
            if prelus
            else {ACT_RELU: "relu", ACT_LEAKY: "leakyrelu"}.get(first.param(9), "prelu")
        )
        config: UpscalerConfig = SRVGGConfig(
            scale=scale,
            num_feat=first.param(0),
            num_conv=len(convs) - 2,
            act_type=act,
            in_ch=in_ch,
            out_ch=convs[-1].param(0) // max(1, scale * scale),
        )
    else:
        num_block, remainder = divmod(len(convs) - 6, 15)
        if remainder or num_block < 1:
            raise NcnnError(f"{path}: {len(convs)} convolutions; not an RRDBNet (15 n + 6)")
        config = RRDBNetConfig(
            scale=4,
            num_feat=first.param(0),
            num_block=num_block,
            num_grow_ch=convs[1].param(0),
            in_ch=in_ch,
            out_ch=convs[-1].param(0),
        )
    if interp:
        output = config.scale * interp[2]
        if abs(output - round(output)) > 1e-3 or not 1 <= round(output) < config.scale:
            raise NcnnError(f"{path}: a final resize by {interp[2]} (to x{output:g})")
        config.output_scale = round(output)
    return config, interp


def to_upscaler(param: Path, layers: list[Layer]) -> tuple[Upscaler, dict[str, torch.dtype]]:
    """Our module holding the layers' weights, and each weight's stored dtype (fp16 weights,
    fp32 biases and slopes in the released files); NcnnError when the layers are not the
    sequence the inferred net converts to, or a blob's size is not its module's."""
    config, interp = _infer(param, layers)
    actual = [_signature(layer) for layer in layers if layer.type not in ("Input", "Split")]
    expected = _expected(config, interp)
    for index, (have, want) in enumerate(zip(actual, expected, strict=False)):
        if have != want:
            name = [la for la in layers if la.type not in ("Input", "Split")][index].name
            raise NcnnError(
                f"{param}: layer {name} is {have}; a {config.arch} of this size has {want} there"
            )
    if len(actual) != len(expected):
        raise NcnnError(
            f"{param}: {len(actual)} layers; a {config.arch} of this size converts to "
            f"{len(expected)}"
        )
    with torch.device("meta"):
        shapes = build_upscaler(config).net.state_dict()  # the released checkpoints' names
    names = iter(shapes)
    state: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for layer in layers:
        for kind in ("weight", "bias", "slope"):
            if kind in layer.weights:
                name = next(names)
                shape = shapes[name].shape
                values = layer.weights[kind]
                if values.size != shapes[name].numel():
                    raise NcnnError(
                        f"{param}: layer {layer.name} holds {values.size} {kind} values; "
                        f"{name} has {list(shape)}"
                    )
                state[name] = torch.from_numpy(values.copy()).reshape(shape)
                dtypes[name] = torch.float16 if kind in layer.fp16 else torch.float32
    missing = [name for name in names]
    if missing:
        raise NcnnError(f"{param}: no weights for {missing[0]} (and {len(missing) - 1} more)")
    upscaler = build_upscaler(config)
    upscaler.net.load_state_dict(state)
    return upscaler.eval(), dtypes


def read_ncnn(
    param: str | Path, weights: str | Path
) -> tuple[Upscaler, str, dict[str, torch.dtype]]:
    """The net a ``.param``/``.bin`` pair holds, its weights' storage ("fp16", "fp32" or
    "mixed"), and each state dict entry's stored dtype (to keep it as it came)."""
    param, weights = Path(param), Path(weights)
    for path in (param, weights):
        if not path.is_file():
            raise NcnnError(f"{path}: no such file")
    layers = read_param(param)
    storage = read_bin(weights, layers)
    upscaler, dtypes = to_upscaler(param, layers)
    kind = "fp16" if storage == {"fp16"} else "fp32" if storage == {"fp32"} else "mixed"
    return upscaler, kind, dtypes
