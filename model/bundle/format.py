"""A bundle's file format: the safetensors header read and bounded, the metadata's format, and
the stored tensors' names, shapes and kinds compared with what the config builds. Nothing here
reads a weight (``model.bundle.io`` does) or knows a model kind (``model.bundle.kinds``)."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

FORMAT = "dalle-studio/1"
SUFFIX = ".dalle.safetensors"
DEFAULT_BUNDLE_NAME = "default" + SUFFIX
METADATA_KEYS = ("format", "config", "tokenizer", "card")
PREFIXES = ("vae", "transformer", "reranker")

# The JSON header: a bundle's is tens of KB (the default's 39 KB; an imported DALL·E Mega with its
# 50k-token BPE a few MB). Parsing 16 MB of hostile JSON stays within a couple of hundred MB.
MAX_HEADER_BYTES = 16 * 2**20
MAX_TENSORS = 65_536  # DALL·E Mega has about 1,000; ruDALL-E XL about 600
MAX_RANK = 8  # dimensions of one tensor
# attention tables (not weights, so not paid for by the file) up to this much or 4x the file
MIN_TABLE_BUDGET = 256 * 2**20
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64",
    "U64": "uint64", "F64": "float64",
}  # fmt: skip
# dtypes a model loaded by assignment keeps (its weights are the file's tensors, not copies)
ASSIGNED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
NAMES_SHOWN = 5  # how many offending tensor names an error lists


class BundleError(ValueError):
    """A bundle that cannot be read, saved or trusted; the message names the file and problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"model bundle {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


# -- where the embedded model lives ---------------------------------------------------------------


def default_bundle_path() -> Path:
    """``resources/models/default.dalle.safetensors``, from source or a PyInstaller build."""
    try:
        root = resources.files("resources")
        if isinstance(root, Path):  # a plain folder: from source, installed, or PyInstaller
            return root / "models" / DEFAULT_BUNDLE_NAME
    except (ModuleNotFoundError, TypeError):
        pass
    # a loader without file-system paths (e.g. a zip): the checkout's layout next to this file
    return Path(__file__).resolve().parents[2] / "resources" / "models" / DEFAULT_BUNDLE_NAME


# -- errors naming tensors ------------------------------------------------------------------------


def few(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


# -- reading the header ---------------------------------------------------------------------------


@dataclass
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Header:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int = 0  # where the data section begins: 8 + the header's length


def existing_file(path: str | os.PathLike | None) -> Path:
    if path is None:
        path = default_bundle_path()
        if not path.is_file():
            raise BundleError(path, "the embedded default model is missing from this installation")
    path = Path(path)
    if not path.exists():
        raise BundleError(path, "no such file")
    if not path.is_file():
        raise BundleError(path, "not a file")
    return path


def read_header(path: str | os.PathLike) -> Header:
    """Parse and check the safetensors header without reading any tensor data."""
    path = existing_file(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise BundleError(path, f"not a safetensors file: only {size} bytes long")
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise BundleError(
                    path,
                    f"not a safetensors file (or not a bundle): its header length field reads "
                    f"{header_len} bytes; a bundle's header is at most {MAX_HEADER_BYTES}",
                )
            if 8 + header_len > size:
                raise BundleError(
                    path,
                    f"truncated or not a safetensors file: the header needs {header_len} bytes "
                    f"but only {size - 8} follow its length field",
                )
            raw = f.read(header_len)
    except OSError as error:
        raise BundleError(path, f"cannot read: {error.strerror or error}") from error
    header = parse_json(path, raw, "not a safetensors file: its header")
    if not isinstance(header, dict):
        raise BundleError(path, "not a safetensors file: its header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BundleError(path, "corrupt header: __metadata__ is not a map of strings")
    if len(header) > MAX_TENSORS:
        raise BundleError(
            path,
            f"corrupt header: it lists {len(header)} tensors; a bundle has at most {MAX_TENSORS}",
        )
    data_len = size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _tensor_entry(path, name, entry, data_len)
    return Header(metadata=metadata, tensors=tensors, data_start=8 + header_len)


def _tensor_entry(path: Path, name: str, entry: Any, data_len: int) -> TensorEntry:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise BundleError(path, f"corrupt header: malformed entry for tensor {name}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise BundleError(path, f"corrupt header: tensor {name} has unknown dtype {dtype!r:.40}")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_RANK
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise BundleError(
            path,
            f"corrupt header: tensor {name} has shape {shape!r:.60}; expected a list of at most "
            f"{MAX_RANK} non-negative integers",
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise BundleError(
            path, f"corrupt header: impossible data_offsets {offsets!r:.60} for tensor {name}"
        )
    begin, end = offsets
    if end > data_len:
        raise BundleError(
            path,
            f"truncated: tensor {name} needs bytes up to {end} of the data section "
            f"but the file holds only {data_len}",
        )
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise BundleError(
            path, f"corrupt header: tensor {name} of shape {shape} does not fit its bytes"
        )
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def parse_json(path: Path, text: str | bytes, what: str) -> Any:
    """JSON from a bundle, any failure one BundleError: ``what`` names the part ("its card")."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(path, f"{what} is not JSON ({error})") from None
    except RecursionError:
        raise BundleError(path, f"{what} is nested too deeply to be read") from None


def check_format(path: Path, metadata: Mapping[str, str]) -> None:
    fmt = metadata.get("format")
    if fmt is None:
        raise BundleError(path, "no 'format' in its metadata: not a DALL·E Studio bundle")
    if fmt != FORMAT:
        raise BundleError(
            path, f"unknown format {fmt!r}: this version of DALL·E Studio reads {FORMAT!r}"
        )
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise BundleError(path, f"missing metadata: {', '.join(missing)}")


def check_tensors(path: Path, header: Header, expected: Mapping[str, torch.Tensor]) -> None:
    """Names, shapes and kinds of the stored tensors against ``expected`` (meta tensors will do:
    nothing is read or allocated)."""
    missing = expected.keys() - header.tensors.keys()
    if missing:
        raise BundleError(path, f"missing tensors ({len(missing)}): {few(missing)}")
    extra = header.tensors.keys() - expected.keys()
    if extra:
        raise BundleError(path, f"unexpected tensors ({len(extra)}): {few(extra)}")
    wrong = []
    for name, tensor in expected.items():
        entry = header.tensors[name]
        if entry.shape != tuple(tensor.shape):
            wrong.append(f"{name} (expected {list(tensor.shape)}, got {list(entry.shape)})")
        elif tensor.is_floating_point() != (entry.dtype in FLOAT_DTYPES):
            wrong.append(f"{name} (expected {tensor.dtype}, got {entry.dtype})")
    if wrong:
        raise BundleError(path, f"wrong shape or dtype: {few(wrong)}")


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, TORCH_DTYPES[name], None)
    if dtype is None:  # e.g. U16 on a torch older than 2.3
        raise ValueError(f"this torch cannot hold {name} tensors")
    return dtype
