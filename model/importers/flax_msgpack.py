"""Reading a Flax checkpoint (``flax.serialization.to_bytes``, e.g. a transformers
``flax_model.msgpack``) with the ``msgpack`` package alone: no JAX, no Flax, no pickle.

The format (``flax/serialization.py``): the parameter tree is a msgpack map of maps with string
keys, and every array leaf is a msgpack extension:

    ExtType 1 (ndarray)         msgpack of (shape, dtype name, raw C-order bytes)
    ExtType 3 (numpy scalar)    the same, for a 0-d array
    ExtType 2 (complex)         msgpack of (real, imag)

An array over 2**30 bytes is stored as a map ``{"__msgpack_chunked_array__": True, "shape":
{"0": d0, ...}, "chunks": {"0": flat array, ...}}`` (msgpack cannot hold one object over
2**31 - 1 bytes), put back together here.

Every array is checked before it is built: its dtype must be a plain numeric one and its bytes
must be exactly what its shape and dtype declare. Anything else, a truncated file or trailing
bytes is a one-line ValueError naming the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

# A file larger than this is refused before it is read. DALL·E Mega's fp32 Flax checkpoint is
# about 10.4 GB (2.6B parameters); the VQGAN f16-16384 is about 300 MB.
MAX_FILE_BYTES = 16 * 2**30
# msgpack caps one object at 2**31 - 1 bytes, which is why Flax chunks larger arrays
MAX_OBJECT_BYTES = 2**31 - 1
READ_BYTES = 2**20
# The tree's containers: a Flax checkpoint has a few hundred to a few thousand arrays in maps
# of tens of keys, a few levels deep. Each value read becomes a Python object (an empty map is
# one byte in the file and ~64 in memory), so their count is bounded, summed over every map and
# list as each is completed, and so is one container's length, before msgpack allocates it.
MAX_OBJECTS = 1_000_000
MAX_CONTAINER_LEN = 100_000
MAX_DEPTH = 32  # msgpack's own limit is 1024 levels of stack
MAX_KEY_BYTES = 2**16

_NDARRAY, _COMPLEX, _NPSCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"
# dtypes Flax writes for parameters and optimiser state (``arr.dtype.name``); bfloat16 comes
# from JAX (ml_dtypes), which numpy alone does not know
_DTYPES = {
    name: np.dtype(name)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
}
_BFLOAT16 = "bfloat16"


class _Refused(ValueError):
    """A problem already worded for the user, raised from inside msgpack's ext hook."""


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the same sign, exponent and mantissa bits,
    padded with 16 zero bits, so the conversion is exact."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _array(data: bytes, name: str) -> np.ndarray:
    """One ExtType 1 / 3 payload -> a read-only array viewing its bytes (bfloat16 -> float32)."""
    try:
        fields = msgpack.unpackb(data, raw=True)
    except Exception as error:  # msgpack raises several types; the payload is simply bad
        raise _Refused(f"{name}: an array entry is not valid msgpack ({error})") from None
    if not isinstance(fields, (list, tuple)) or len(fields) != 3:
        raise _Refused(f"{name}: an array entry is not (shape, dtype, bytes)")
    shape, dtype_name, buffer = fields
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _Refused(f"{name}: an array has an invalid shape {shape!r}")
    if not isinstance(dtype_name, bytes) or not isinstance(buffer, bytes):
        raise _Refused(f"{name}: an array entry's dtype or data has the wrong type")
    dtype_str = dtype_name.decode("ascii", errors="replace")
    if dtype_str == _BFLOAT16:
        dtype = np.dtype(np.uint16)
    elif dtype_str in _DTYPES:
        dtype = _DTYPES[dtype_str]
    else:
        raise _Refused(f"{name}: an array has unsupported dtype {dtype_str!r}")
    expected = math.prod(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise _Refused(
            f"{name}: an array of shape {tuple(shape)} and dtype {dtype_str} declares "
            f"{expected:,} bytes but holds {len(buffer):,}"
        )
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return _bfloat16_to_float32(array) if dtype_str == _BFLOAT16 else array


class _Budget:
    """Counts what the unpacker builds: objects (via its map and list hooks) and array bytes
    (via its extension hook), refusing the first one past ``max_objects`` / ``max_bytes``."""

    def __init__(self, name: str, max_objects: int, max_bytes: int):
        self.name, self.max_objects, self.max_bytes = name, max_objects, max_bytes
        self.objects = self.bytes = 0

    def count(self, container: Any) -> Any:
        self.objects += len(container) + 1
        if self.objects > self.max_objects:
            raise _Refused(
                f"{self.name}: more than {self.max_objects:,} objects (maps, lists and their "
                "values): not a Flax checkpoint's tree of arrays"
            )
        return container

    def spend(self, array: np.ndarray) -> np.ndarray:
        self.bytes += array.nbytes
        if self.bytes > self.max_bytes:
            raise _Refused(
                f"{self.name}: its arrays come to more than {self.max_bytes:,} bytes, the most "
                "this checkpoint may hold"
            )
        return array


def _ext_hook(name: str, budget: _Budget) -> Callable[[int, bytes], Any]:
    def hook(code: int, data: bytes) -> Any:
        if code == _NDARRAY:
            return budget.spend(_array(data, name))
        if code == _NPSCALAR:
            return budget.spend(_array(data, name))[()]
        if code == _COMPLEX:
            try:
                real, imag = msgpack.unpackb(data)
                return complex(real, imag)
            except Exception:
                raise _Refused(f"{name}: a complex number entry is not (real, imag)") from None
        raise _Refused(f"{name}: unknown msgpack extension type {code} (not a Flax checkpoint?)")

    return hook


def _unchunk(node: dict, name: str, path: str) -> np.ndarray:
    """A chunked array map -> the array, its chunks checked to add up to its shape."""
    shape_map, chunk_map = node.get("shape"), node.get("chunks")
    if set(node) != {_CHUNKED, "shape", "chunks"} or not isinstance(shape_map, dict):
        raise _Refused(f"{name}: chunked array {path!r} is malformed")
    if not isinstance(chunk_map, dict) or not chunk_map:
        raise _Refused(f"{name}: chunked array {path!r} has no chunks")
    try:
        shape = [shape_map[str(i)] for i in range(len(shape_map))]
        chunks = [chunk_map[str(i)] for i in range(len(chunk_map))]
    except KeyError:
        raise _Refused(f"{name}: chunked array {path!r} is not numbered 0..n-1") from None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _Refused(f"{name}: chunked array {path!r} has an invalid shape {shape!r}")
    if not all(isinstance(c, np.ndarray) and c.ndim == 1 for c in chunks):
        raise _Refused(f"{name}: chunked array {path!r} has a chunk that is not a flat array")
    if len({c.dtype for c in chunks}) != 1:
        raise _Refused(f"{name}: chunked array {path!r} mixes dtypes")
    total = sum(c.size for c in chunks)
    if total != math.prod(shape):
        raise _Refused(
            f"{name}: chunked array {path!r} of shape {tuple(shape)} holds {total:,} values"
        )
    return np.concatenate(chunks).reshape(shape)


def _restore(node: Any, name: str, path: str = "", depth: int = 1) -> Any:
    """Check the tree's keys and put chunked arrays back together, depth first."""
    if depth > MAX_DEPTH and isinstance(node, (dict, list)):
        raise _Refused(f"{name}: nested more than {MAX_DEPTH} levels deep at {path[:200]!r}")
    if isinstance(node, dict):
        if _CHUNKED in node:
            return _unchunk(node, name, path or "/")
        restored = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise _Refused(f"{name}: key {key!r} under {path or '/'!r} is not a string")
            restored[key] = _restore(value, name, f"{path}/{key}", depth + 1)
        return restored
    if isinstance(node, list):
        return [_restore(value, name, f"{path}/{i}", depth + 1) for i, value in enumerate(node)]
    return node


def read_flax_msgpack(
    path: str | Path,
    max_bytes: int = MAX_FILE_BYTES,
    max_array_bytes: int | None = None,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, Any]:
    """The tree stored in a Flax msgpack checkpoint: nested dicts with string keys whose leaves
    are numpy arrays (read-only views of the file's bytes: copy one to change it; bfloat16
    arrays are widened to float32, exactly) or the Python scalars Flax stores as they are.

    Raises ValueError, naming the file, for a file over ``max_bytes``, one that is not
    complete, valid msgpack, an array whose bytes do not match its declared shape and dtype, or
    a dtype outside plain numbers; and, as soon as it is read, for a tree of more than
    ``max_objects`` values, a container longer than ``MAX_CONTAINER_LEN``, nesting deeper than
    ``MAX_DEPTH``, or arrays of more than ``max_array_bytes`` in all (default: twice the file,
    bfloat16 widened)."""
    path = Path(path)
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            raise ValueError(
                f"{path}: {size:,} bytes is over the {max_bytes:,}-byte limit for a Flax checkpoint"
            )
        if size == 0:
            raise ValueError(f"{path}: the file is empty")
        # streamed: the file's bytes are not held twice; an object may be as large as the file
        buffer = max(1, min(size, MAX_OBJECT_BYTES))
        budget = _Budget(
            str(path), max_objects, 2 * size if max_array_bytes is None else max_array_bytes
        )
        unpacker = msgpack.Unpacker(
            file,
            raw=False,
            strict_map_key=False,
            ext_hook=_ext_hook(str(path), budget),
            object_hook=budget.count,
            list_hook=budget.count,
            max_buffer_size=buffer,
            read_size=min(READ_BYTES, buffer),
            max_map_len=MAX_CONTAINER_LEN,
            max_array_len=MAX_CONTAINER_LEN,
            max_str_len=MAX_KEY_BYTES,
        )
        try:
            tree = unpacker.unpack()
        except (_Refused, MemoryError):
            raise
        except msgpack.OutOfData:
            raise ValueError(f"{path}: the file ends early (truncated?)") from None
        except msgpack.StackError:
            raise ValueError(f"{path}: nested too deeply for a Flax checkpoint") from None
        except Exception as error:  # FormatError, StackError, BufferFull, UnicodeDecodeError, ...
            raise ValueError(f"{path}: not a Flax msgpack checkpoint ({error})") from None
        extra = size - unpacker.tell()
        if extra:
            raise ValueError(f"{path}: {extra:,} unexpected bytes after the checkpoint")
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: holds a {type(tree).__name__}, not a tree of parameters")
    return _restore(tree, str(path))
