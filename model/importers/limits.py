"""What every importer checks before it reads a weight: files and tensors judged by their sizes.

A downloaded file is judged from its size, names, shapes, dtypes and strides alone, before a
tensor is materialised, widened (``.float()``) or made contiguous:

- small text files (``config.json``, ``vocab*.json``, ``merges*.txt``) are read only under a size
  cap, and JSON only under a nesting and an integer-digit limit (``read_json``, ``read_text``);
- a tensor may not declare more values than the file stores for it (``check_tensors``): a
  stride-0 ``zeros(1).expand(2**40)`` is a few bytes in a pickle and terabytes once copied;
- the attention tables a converted transformer will build are held to the budget
  ``model.bundle.load`` applies to the bundle it becomes (``check_table_budget``).

Every refusal is a one-line ValueError naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model.bundle import MAX_RANK, MIN_TABLE_BUDGET
from model.transformer import attention_table_bytes

# min-dalle's vocab.json is about 1 MB, merges.txt 0.5 MB, dalle-mini's config.json 1 KB. A
# vocab or merges file of short unique entries becomes about 16 times its size in Python objects
# (measured: 8 MB of each, 270 MB), so the cap is what keeps a hostile one small.
MAX_TEXT_BYTES = 4 * 2**20
# dalle-mini's config.json and min-dalle's vocabularies are flat: one or two levels
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 30  # a size or an id; 10**30 is already far past anything real


def _mb(count: int) -> str:
    return f"{count / 2**20:,.{0 if count >= 100 * 2**20 else 1}f} MB"


def read_text(path: Path, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """``path`` as UTF-8 text, refused before reading when it is over ``max_bytes``."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(
                f"{path}: {_mb(size)} is more than the {_mb(max_bytes)} a {what} may be"
            )
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)  # the file may have grown since stat
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise ValueError(f"{path}: more than the {_mb(max_bytes)} a {what} may be")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text {what} ({error.reason}: not UTF-8)") from None


def _integer(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _TooLong(f"an integer of {digits:,} digits (at most {MAX_INT_DIGITS})")
    return int(text)


class _TooLong(ValueError):
    pass


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of parsed JSON, walked without recursion; stops past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        stack.extend(
            (child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
        )
    return deepest


def read_json(
    path: Path,
    what: str,
    max_bytes: int = MAX_TEXT_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """``path``'s JSON under a size cap (checked before reading), a nesting limit and an
    integer-digit limit; any failure is one ValueError naming the file."""
    text = read_text(path, what, max_bytes)
    try:
        value = json.loads(text, parse_int=_integer)
    except _TooLong as error:
        raise ValueError(f"{path}: the {what} holds {error}") from None
    except RecursionError:
        raise ValueError(
            f"{path}: the {what} is nested too deeply (more than {max_depth} levels)"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON {what} ({error})") from None
    except ValueError as error:  # Python's own integer-digit limit, on a float's exponent...
        raise ValueError(f"{path}: not a JSON {what} ({str(error)[:120]})") from None
    if _depth(value, max_depth) > max_depth:
        raise ValueError(f"{path}: the {what} is nested too deeply (more than {max_depth} levels)")
    return value


def check_tensors(path: Path, state: Mapping[Any, Any], what: str) -> None:
    """Every entry a tensor under a string name, of a sane rank, declaring no more values than
    its storage holds (a stride-0 or overlapping view would multiply when copied)."""
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"{path}: holds {type(tensor).__name__} {str(name)[:60]!r}, not only tensors "
                f"by name: not {what}"
            )
        if tensor.dim() > MAX_RANK:
            raise ValueError(f"{path}: tensor {name[:80]} has {tensor.dim()} dimensions")
        declared = tensor.numel() * tensor.element_size()
        stored = tensor.untyped_storage().nbytes()
        if declared > stored:
            raise ValueError(
                f"{path}: tensor {name[:80]} of shape {tuple(tensor.shape)} declares "
                f"{tensor.numel():,} values but the file stores {stored:,} bytes for it (a "
                "stride-0 or overlapping tensor): not a saved model"
            )


def declared_bytes(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """Bytes ``state``'s tensors take once converted to ``dtype`` (their own by default)."""
    return sum(t.numel() * (dtype or t.dtype).itemsize for t in state.values())


def check_table_budget(config, bundle_bytes: int) -> int:
    """The bytes of attention tables a transformer built from ``config`` needs; ValueError (the
    caller names the file) beyond what ``model.bundle.load`` allows a bundle of
    ``bundle_bytes``, which would refuse what this import wrote."""
    tables = attention_table_bytes(config)
    allowed = max(MIN_TABLE_BUDGET, 4 * bundle_bytes)
    if tables > allowed:
        raise ValueError(
            f"its {config.grid}x{config.grid} grid after {config.text_len} text "
            f"positions needs {_mb(tables)} of attention tables; a bundle of {_mb(bundle_bytes)} "
            f"may ask for at most {_mb(allowed)}"
        )
    return tables
