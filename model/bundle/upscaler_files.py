"""Upscaler files (``NAME.upscaler.safetensors``): one net of ``model.networks.upscaler`` and its
card.

Like a bundle (``model/bundle/``) and the image tokenizer files: the net's state dict under the
released checkpoints' own names (``body.0.weight``, ``conv_first.weight``, ...), stored in the
precision it came in (the ncnn conversions' fp16 weights stay fp16: half the size, nothing
lost), and as metadata its ``format``, its config as JSON (``"arch"`` says which net) and its card
as JSON (source, scale, architecture, licence, each source file's SHA-256). Such a file is
untrusted input: it is read through the bundle's own checks (a bounded header; the config's
every field bounded; the stored names and shapes compared with the net built on the meta device
before a byte of weights is read; finite weights), and every failure is one ValueError naming the
file. The weights are computed in float32 whatever their storage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from model.bundle import BundleError, check_tensors, parse_json, read_header, read_tensors
from model.files import atomic_path
from model.networks.upscaler import Upscaler, build_upscaler, config_from_dict, config_to_dict

FORMAT = "dalle-studio-upscaler/1"
SUFFIX = ".upscaler.safetensors"
SHIPPED_NAME = "realesr-animevideov3-x4" + SUFFIX  # chosen in benchmarks/README.md
STORED_DTYPES = (torch.float32, torch.float16)
MAX_PARAMETERS = 100_000_000  # RealESRGAN_x4plus has 16.7M: a bound on what a load allocates


def shipped_upscaler_path() -> Path:
    """The upscaler the app ships (resources/models/)."""
    return Path(str(resources.files("resources") / "models" / SHIPPED_NAME))


def save_upscaler(
    upscaler: Upscaler,
    path: str | Path,
    card: dict,
    dtypes: Mapping[str, torch.dtype] | torch.dtype = torch.float32,
) -> Path:
    """``upscaler`` and its card as one file at ``path``, atomically; each weight stored as
    ``dtypes`` says (one dtype, or one per name: float32, or float16 for what came as fp16)."""
    state = upscaler.net.state_dict()
    if not isinstance(dtypes, Mapping):
        dtypes = dict.fromkeys(state, dtypes)
    wrong = {dtypes.get(name) for name in state} - set(STORED_DTYPES)
    if wrong:
        raise ValueError(f"an upscaler is stored as float32 or float16, not {wrong.pop()}")
    tensors = {
        name: tensor.detach().to("cpu", dtypes[name]).contiguous() for name, tensor in state.items()
    }
    meta = {
        "format": FORMAT,
        "config": json.dumps(config_to_dict(upscaler.config)),
        "card": json.dumps(card),
    }
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=meta)
    return Path(path)


def read_upscaler_card(path: str | Path) -> dict:
    """The card of an upscaler file, from its header alone."""
    path = Path(path)
    try:
        header = read_header(path)
        _check_format(header.metadata)
        card = parse_json(path, header.metadata.get("card", "{}"), "its card")
    except BundleError as error:
        raise ValueError(f"upscaler {path}: {error.problem}") from None
    except ValueError as error:
        raise ValueError(f"upscaler {path}: {error}") from None
    if not isinstance(card, dict):
        raise ValueError(f"upscaler {path}: its card is not a JSON object")
    return card


def _check_format(meta: dict) -> None:
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise ValueError(f"format {fmt!r:.60}, expected {FORMAT!r} (not an upscaler file)")


def load_upscaler(path: str | Path | None = None, device="cpu") -> tuple[Upscaler, dict]:
    """An upscaler file (default: the shipped one) as a float32 net in eval mode, and its card.
    Every failure is one ValueError naming the file (FileNotFoundError when there is none)."""
    path = Path(path) if path is not None else shipped_upscaler_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such upscaler file")
    try:
        header = read_header(path)
        meta = header.metadata
        _check_format(meta)
        if "config" not in meta:
            raise ValueError("no config in its metadata")
        count = sum(math.prod(entry.shape) for entry in header.tensors.values())
        if count > MAX_PARAMETERS:
            raise ValueError(
                f"holds {count:,} parameters; an upscaler has at most {MAX_PARAMETERS:,}"
            )
        config = config_from_dict(parse_json(path, meta["config"], "its config"))
        with torch.device("meta"):
            shapes = build_upscaler(config).net.state_dict()
        check_tensors(path, header, shapes)
        wrong = [n for n, e in header.tensors.items() if e.dtype not in ("F32", "F16")]
        if wrong:
            raise ValueError(f"{wrong[0]} is {header.tensors[wrong[0]].dtype}; expected F32/F16")
        card = parse_json(path, meta.get("card", "{}"), "its card")
        if not isinstance(card, dict):
            raise ValueError("its card is not a JSON object")
        tensors = read_tensors(path, header)
    except BundleError as error:
        raise ValueError(f"upscaler {path}: {error.problem}") from None
    except ValueError as error:
        raise ValueError(f"upscaler {path}: {error}") from None
    upscaler = build_upscaler(config)
    upscaler.net.load_state_dict({name: t.float() for name, t in tensors.items()})
    return upscaler.to(device).eval(), card
