"""``dalle import realesrgan``: Real-ESRGAN's released weights as an ``.upscaler.safetensors``.

Two formats: the official PyTorch ``.pth`` (``RealESRGAN_x4plus.pth``, ``realesr-animevideov3
.pth`` from the project's GitHub releases: a dict whose ``params_ema``, else ``params``, is the
state dict), read by ``safe_pickle`` (an allow-list unpickler: nothing in the file runs, its size
bounded before a byte is read); and the ncnn ``.param`` + ``.bin`` conversions
(``model/importers/ncnn.py``). Either becomes our own RRDBNet or SRVGGNetCompact
(``model/networks/upscaler.py``), its names and shapes checked against the net built on the meta
device before any tensor is converted, and is written with its card (source, scale, architecture,
licence, each source file's SHA-256) by ``model.bundle.upscaler_files.save_upscaler``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from model.bundle.upscaler_files import SUFFIX, save_upscaler
from model.importers.common import Progress, sha256
from model.importers.limits import check_tensors
from model.importers.ncnn import NcnnError, read_ncnn
from model.importers.safe_pickle import UnsafePickle, load_modules
from model.networks.upscaler import (
    RRDBNetConfig,
    SRVGGConfig,
    Upscaler,
    UpscalerConfig,
    build_upscaler,
)

MAX_PTH_BYTES = 512 * 2**20  # RealESRGAN_x4plus.pth is 64 MB
SOURCE = "Real-ESRGAN (Wang et al. 2021), github.com/xinntao/Real-ESRGAN"
LICENCE_LINE = "BSD-3-Clause, Copyright (c) 2021, Xintao Wang (Real-ESRGAN's LICENSE)"
LICENCE = """BSD 3-Clause License

Copyright (c) 2021, Xintao Wang
All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of conditions
   and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials provided
   with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors may be used to
   endorse or promote products derived from this software without specific prior written
   permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


# -- the official .pth ---------------------------------------------------------------------------


def _infer_pth_config(path: Path, state: dict[str, torch.Tensor]) -> UpscalerConfig:
    """The net a state dict's names and shapes describe."""

    def shape(name: str) -> tuple[int, ...]:
        tensor = state.get(name)
        if tensor is None:
            raise ValueError(f"{path}: no {name} in its weights")
        return tuple(tensor.shape)

    if "conv_first.weight" in state:
        feat, folded = shape("conv_first.weight")[:2]
        blocks = {int(m[1]) for n in state if (m := re.match(r"body\.(\d+)\.rdb1\.conv1\.", n))}
        fold = {3: 1, 12: 2, 48: 4}.get(folded)
        if fold is None or not blocks:
            raise ValueError(f"{path}: conv_first takes {folded} channels; not an RRDBNet")
        return RRDBNetConfig(
            scale={1: 4, 2: 2, 4: 1}[fold],
            num_feat=feat,
            num_block=max(blocks) + 1,
            num_grow_ch=shape("body.0.rdb1.conv1.weight")[0],
            out_ch=shape("conv_last.weight")[0],
        )
    convs = [
        int(match[1])
        for name, tensor in state.items()
        if (match := re.fullmatch(r"body\.(\d+)\.weight", name)) and tensor.dim() == 4
    ]
    convs.sort()
    if not convs:
        raise ValueError(f"{path}: neither an RRDBNet (conv_first) nor an SRVGGNetCompact (body.0)")
    if "body.1.weight" not in state:
        raise ValueError(
            f"{path}: an SRVGGNetCompact without PReLU weights (relu/leakyrelu) is not supported"
        )
    last = shape(f"body.{convs[-1]}.weight")[0]
    scale = round((last / 3) ** 0.5)
    if 3 * scale * scale != last:
        raise ValueError(f"{path}: its last convolution gives {last} channels, not 3 s^2")
    return SRVGGConfig(scale=scale, num_feat=shape("body.0.weight")[0], num_conv=len(convs) - 2)


def read_pth(path: Path) -> tuple[Upscaler, dict[str, torch.dtype]]:
    """The net an official ``.pth`` holds, and each weight's stored dtype (fp16 stays fp16,
    anything else is kept as fp32)."""
    try:
        obj = load_modules(path, [], MAX_PTH_BYTES)
    except UnsafePickle as error:
        raise ValueError(f"{path}: refused: {error}") from None
    if isinstance(obj, dict) and isinstance(obj.get("params_ema"), dict):
        obj = obj["params_ema"]  # the generator's moving average: what the project releases
    elif isinstance(obj, dict) and isinstance(obj.get("params"), dict):
        obj = obj["params"]
    if not (
        isinstance(obj, dict) and obj and all(isinstance(t, torch.Tensor) for t in obj.values())
    ):
        raise ValueError(f"{path}: holds no params_ema, params or state dict of tensors")
    check_tensors(path, obj, "a Real-ESRGAN state dict")  # no view that multiplies when copied
    state = {name.removeprefix("module."): tensor for name, tensor in obj.items()}
    config = _infer_pth_config(path, state)
    with torch.device("meta"):
        shapes = build_upscaler(config).net.state_dict()
    missing, extra = shapes.keys() - state.keys(), state.keys() - shapes.keys()
    if missing or extra:
        which = f"missing {sorted(missing)[0]}" if missing else f"unexpected {sorted(extra)[0]}"
        raise ValueError(f"{path}: not a {config.arch}'s weights ({which})")
    for name, tensor in shapes.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{path}: {name} is {list(state[name].shape)}, expected {list(tensor.shape)}"
            )
        if not state[name].is_floating_point() or not torch.isfinite(state[name]).all():
            raise ValueError(f"{path}: {name} is not finite floating point")
    upscaler = build_upscaler(config)
    upscaler.net.load_state_dict({name: t.float() for name, t in state.items()})
    half = torch.float16
    stored = {name: half if t.dtype == half else torch.float32 for name, t in state.items()}
    return upscaler.eval(), stored


# -- either format -------------------------------------------------------------------------------


def _sources(files: Sequence[str | Path]) -> tuple[str, list[Path]]:
    """("pth", [file]) or ("ncnn", [param, bin]) from what the user named."""
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    suffixes = sorted(p.suffix.lower() for p in paths)
    if suffixes == [".pth"] or suffixes == [".pt"]:
        return "pth", paths
    if suffixes == [".param"]:  # its .bin beside it, as the releases ship them
        weights = paths[0].with_suffix(".bin")
        if not weights.is_file():
            raise ValueError(f"{paths[0]}: no {weights.name} beside it; name both files")
        return "ncnn", [paths[0], weights]
    if suffixes == [".bin", ".param"]:
        param = next(p for p in paths if p.suffix.lower() == ".param")
        return "ncnn", [param, next(p for p in paths if p is not param)]
    names = ", ".join(p.name for p in paths)
    raise ValueError(f"{names}: expected one .pth, or an ncnn .param and its .bin")


def import_realesrgan(
    files: Sequence[str | Path], out: str | Path, progress: Progress | None = None
) -> Path:
    """Convert Real-ESRGAN weights (``files``: one ``.pth``, or a ``.param`` and its ``.bin``)
    into ``out``. Raises ValueError with one line naming the problem; writes nothing unless
    everything converted."""
    say = progress or (lambda message: None)
    out = Path(out)
    if not out.name.endswith(SUFFIX):
        raise ValueError(f"{out}: name a {SUFFIX} file")
    kind, paths = _sources(files)
    say(f"reading {', '.join(p.name for p in paths)}")
    if kind == "pth":
        upscaler, dtypes = read_pth(paths[0])
        kinds = set(dtypes.values())
        storage = (
            "fp16"
            if kinds == {torch.float16}
            else "fp32"
            if torch.float16 not in kinds
            else "mixed"
        )
    else:
        try:
            upscaler, storage, dtypes = read_ncnn(*paths)
        except NcnnError as error:
            raise ValueError(str(error)) from None
    config = upscaler.config
    card = {
        "stage": "upscaler",
        "name": f"{paths[0].stem} (Real-ESRGAN, imported)",
        "architecture": config.arch,
        "scale": upscaler.scale,
        "parameters": sum(p.numel() for p in upscaler.parameters()),
        "imported": {
            "from": f"realesrgan-{kind}",
            "source": SOURCE,
            "storage": storage,
            "files": {p.name: sha256(p, say=say) for p in paths},
            "licence": LICENCE_LINE,
        },
        "licence_text": LICENCE,  # BSD-3-Clause: the notice travels with the weights
    }
    say(f"writing {out} ({config.arch}, x{upscaler.scale}, {storage})")
    save_upscaler(upscaler, out, card, dtypes)
    return out
