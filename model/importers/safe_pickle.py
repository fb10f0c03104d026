"""Reading a ``torch.save`` file of whole modules without running it: tensors out, nothing executed.

OpenAI's ``encoder.pkl``/``decoder.pkl`` are pickles of ``dall_e.Encoder``/``Decoder`` objects.
``torch.load(weights_only=False)`` would run whatever the file asks (and needs ``dall_e`` and an old
torch); ``weights_only=True`` refuses module objects. This reader is a ``pickle.Unpickler`` whose
``find_class`` allows only the names such a file holds: each module class becomes an inert stub
that keeps its ``__dict__``, tensors are rebuilt here (bounds checked) from the file's raw
storages, and anything else (``os.system``, ``builtins.eval``, an unknown class) is refused before
it could run. Both layouts are read: the zip archive ``torch.save`` writes since torch 1.6, and
the older "legacy" stream.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_PICKLE_BYTES = 64 * 2**20  # the object graph itself (not the tensors): a few MB at most

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class UnsafePickle(ValueError):
    """The file names something outside the allow-list, or is not a torch file we can read."""


class Stub:
    """An allowed module class, unpickled as its attributes only: never constructed, never run."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0] or {}
        if not isinstance(state, dict):
            raise UnsafePickle(f"{self.qualified_name}: unexpected pickled state")
        self.__dict__.update(state)


def _stub(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    return type(name, (Stub,), {"__module__": module, "qualified_name": qualified_name})


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


def plain_defaultdict(*args: Any) -> dict:
    """``collections.defaultdict(factory)`` as a plain dict: the factory (a stub, in a file read
    here) is never called. omegaconf pickles its resolver cache this way."""
    if len(args) > 1:
        raise UnsafePickle("a defaultdict with more than a factory")
    return {}


def _device(*args: Any) -> str:
    return str(args[0]) if args else "cpu"


def _set(*args: Any) -> set:
    items = args[0] if args else ()
    if not all(isinstance(x, str | int) for x in items):
        raise UnsafePickle("a set of something other than names")
    return set(items)


class _Unpickler(pickle.Unpickler):
    def __init__(
        self,
        stream,
        classes: dict[str, type],
        storages: dict,
        read_storage=None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
    ):
        super().__init__(stream)
        self.classes = classes
        self.functions = functions or {}
        self.storages = storages
        self.read_storage = read_storage  # (key, dtype, numel) -> 1-D tensor

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in self.classes:
            return self.classes[qualified]
        if qualified in self.functions:
            return self.functions[qualified]
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        allowed = {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor,
            "torch._utils._rebuild_parameter": self._rebuild_parameter,
            "torch.device": _device,
            "builtins.set": _set,
            "__builtin__.set": _set,
        }
        if qualified not in allowed:
            raise UnsafePickle(f"it names {qualified[:80]}, which this importer does not allow")
        return allowed[qualified]

    def persistent_load(self, saved_id: Any) -> Any:
        if not isinstance(saved_id, tuple) or not saved_id:
            raise UnsafePickle("an unexpected persistent id")
        kind = saved_id[0]
        if kind == "module":  # legacy files: (module, class, source file, source); the class
            cls = saved_id[1] if len(saved_id) > 1 else None  # came through find_class
            if not (isinstance(cls, type) and issubclass(cls, Stub)):
                raise UnsafePickle("a module class this importer does not allow")
            return cls
        if kind != "storage" or len(saved_id) < 5:
            raise UnsafePickle(f"an unexpected persistent id {str(kind)[:40]!r}")
        dtype, key, numel = saved_id[1], str(saved_id[2]), saved_id[4]
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise UnsafePickle("a storage of an unexpected type")
        if key not in self.storages:
            if self.read_storage is None:
                raise UnsafePickle("a tensor where plain data was expected")
            self.storages[key] = self.read_storage(key, dtype, numel)
        storage = self.storages[key]
        if storage.dtype != dtype or storage.numel() != numel:
            raise UnsafePickle(f"storage {key[:20]} is referenced with two shapes")
        if len(saved_id) > 5 and saved_id[5] is not None:  # legacy view: (view key, offset, size)
            _, offset, size = saved_id[5]
            if not (0 <= offset and offset + size <= numel):
                raise UnsafePickle(f"a view outside storage {key[:20]}")
            return storage[offset : offset + size]
        return storage

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
        if not isinstance(storage, torch.Tensor):
            raise UnsafePickle("a tensor without a storage")
        size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if len(size) != len(stride) or any(s < 0 for s in size + stride) or offset < 0:
            raise UnsafePickle("a tensor with an invalid shape")
        if all(size):
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= storage.numel():
                raise UnsafePickle("a tensor that reaches past its storage")
            numel = math.prod(size)
            if numel > storage.numel():  # stride 0 or overlapping: it multiplies when copied
                raise UnsafePickle(
                    f"a tensor of shape {size} declares {numel:,} values over a storage of "
                    f"{storage.numel():,} (a stride-0 or overlapping view)"
                )
        return torch.as_strided(storage, size, stride, offset)

    @staticmethod
    def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
        if not isinstance(data, torch.Tensor):
            raise UnsafePickle("a parameter that is not a tensor")
        return data


def _bytes_to_tensor(data: bytes, dtype: torch.dtype, numel: int, what: str) -> torch.Tensor:
    size = torch.empty((), dtype=dtype).element_size()
    if len(data) != numel * size:
        raise UnsafePickle(f"{what} holds {len(data)} bytes, expected {numel * size}")
    return torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _load_zip(path: Path, classes: dict[str, type], functions: Mapping | None = None) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise UnsafePickle("not a torch.save archive (no single data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        # torch.save stores every entry uncompressed: a deflated one (a few KB of zip that
        # declares gigabytes) is refused before it is inflated
        packed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise UnsafePickle(
                f"{packed[0][:60]} is compressed ({len(packed)} entries): torch.save stores "
                "its entries as they are"
            )
        info = archive.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise UnsafePickle(f"its object graph is {info.file_size / 2**20:.0f} MB")
        data = archive.read(pickles[0])

        def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            name = f"{root}data/{key}"
            if name not in names:
                raise UnsafePickle(f"storage {key[:20]} is missing from the archive")
            size = torch.empty((), dtype=dtype).element_size() * numel
            if archive.getinfo(name).file_size != size:
                raise UnsafePickle(f"storage {key[:20]} has the wrong size")
            data = bytearray(size)  # read into its one copy
            with archive.open(name) as entry:
                if entry.readinto(data) != size:
                    raise UnsafePickle(f"storage {key[:20]} is cut short")
            return torch.frombuffer(data, dtype=dtype) if numel else torch.empty(0, dtype=dtype)

        return _Unpickler(io.BytesIO(data), classes, {}, read_storage, functions).load()


def _load_legacy(path: Path, classes: dict[str, type], functions: Mapping | None = None) -> Any:
    """The pre-1.6 stream: magic, protocol, system info, the object pickle, the storage keys,
    then each storage as an int64 element count and its raw bytes."""
    stream = io.BytesIO(path.read_bytes())  # bounded by the caller's file-size check

    def plain() -> Any:  # the header pickles and the key list: plain data, no tensors
        return _Unpickler(stream, {}, {}).load()

    try:
        magic = plain()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, UnsafePickle):
        raise UnsafePickle("not a torch.save file") from None
    if magic != LEGACY_MAGIC:
        raise UnsafePickle("not a torch.save file")
    plain()  # protocol version
    plain()  # system info
    storages: dict[str, torch.Tensor] = {}

    def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        if numel * torch.empty((), dtype=dtype).element_size() > len(stream.getbuffer()):
            raise UnsafePickle(f"storage {key[:20]} is larger than the file")
        return torch.empty(numel, dtype=dtype)  # filled below, once the keys are known

    result = _Unpickler(stream, classes, storages, read_storage, functions).load()
    keys = plain()
    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
        raise UnsafePickle("its storage list does not match its tensors")
    for key in map(str, keys):
        storage = storages[key]
        header = stream.read(8)
        if len(header) != 8 or struct.unpack("<q", header)[0] != storage.numel():
            raise UnsafePickle(f"storage {key[:20]} has the wrong size")
        size = storage.numel() * storage.element_size()
        storage.copy_(_bytes_to_tensor(stream.read(size), storage.dtype, storage.numel(), key))
    return result


def load_modules(
    path: str | Path,
    allowed: list[str],
    max_bytes: int,
    functions: Mapping[str, Callable[..., Any]] | None = None,
) -> Any:
    """The object a ``torch.save`` file holds, with each class in ``allowed`` (qualified names)
    as an inert ``Stub`` and tensors rebuilt from the file. ``functions`` adds, for one importer,
    names the file may call, each to an inert stand-in that the caller vouches for (such as
    ``plain_defaultdict``). Raises UnsafePickle naming what it refused; nothing in the file is
    executed."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafePickle(
            f"{size / 2**20:,.0f} MB, more than the {max_bytes / 2**20:,.0f} MB such a file has"
        )
    classes = {name: _stub(name) for name in allowed}
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, classes, functions)
        return _load_legacy(path, classes, functions)
    except UnsafePickle:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        struct.error,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        RuntimeError,
    ) as error:
        detail = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
        raise UnsafePickle(f"not a readable torch file ({detail})") from None


MAX_MODULE_DEPTH = 64  # dall_e's modules nest 4 deep; a Lightning model a dozen or so
MAX_MODULES = 100_000  # visits, shared children once per place: dall_e's encoder has ~60


def state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """A module stub's parameters and buffers by their dotted names, as ``state_dict()`` has
    them. Walked without recursion: a module that holds itself, modules nested more than
    ``MAX_MODULE_DEPTH`` deep or more than ``MAX_MODULES`` in all are refused (UnsafePickle)."""
    if not isinstance(obj, Stub):
        raise UnsafePickle("the file does not hold a module")
    found: dict[str, torch.Tensor] = {}
    stack = [(obj, "", ())]  # (module, prefix, ids of the modules above it)
    visits = 0
    while stack:
        module, prefix, above = stack.pop()
        visits += 1
        if visits > MAX_MODULES:
            raise UnsafePickle(f"more than {MAX_MODULES:,} modules")
        if id(module) in above:
            raise UnsafePickle(f"module {prefix.rstrip('.')[:80]!r} holds itself")
        if len(above) >= MAX_MODULE_DEPTH:
            raise UnsafePickle(f"modules nested more than {MAX_MODULE_DEPTH} deep")
        state = module.__dict__
        for attribute in ("_parameters", "_buffers", "_modules"):
            if not isinstance(state.get(attribute) or {}, Mapping):
                raise UnsafePickle(f"module {prefix.rstrip('.')[:80]!r} has an odd {attribute}")
        for attribute in ("_parameters", "_buffers"):
            for name, tensor in (state.get(attribute) or {}).items():
                if tensor is not None:
                    found[f"{prefix}{name}"] = tensor
        children = [(n, c) for n, c in (state.get("_modules") or {}).items() if c is not None]
        for name, child in reversed(children):  # popped in their order
            if not isinstance(child, Stub):
                raise UnsafePickle(f"module {prefix}{name} is a {type(child).__name__}")
            stack.append((child, f"{prefix}{name}.", (*above, id(module))))
    return found
