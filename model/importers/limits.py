"""What every importer checks before it reads a weight: files and tensors judged by their sizes.

A downloaded file is judged from its size, names, shapes, dtypes and strides alone, before a
tensor is materialised, widened (``.float()``) or made contiguous:

- small text files (``config.json``, ``vocab*.json``, ``merges*.txt``) are read only under a size
  cap, and JSON only under a nesting and an integer-digit limit (``model.files.read_json``,
  ``read_text``, shared with the caption tokenizers' readers);
- a tensor may not declare more values than the file stores for it (``check_tensors``): a
  stride-0 ``zeros(1).expand(2**40)`` is a few bytes in a pickle and terabytes once copied;
- the attention tables a converted transformer will build are held to the budget
  ``model.bundle.load`` applies to the bundle it becomes (``check_table_budget``).

Every refusal is a one-line ValueError naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model.bundle import MAX_RANK, MIN_TABLE_BUDGET
from model.files import megabytes
from model.networks.transformer import attention_table_bytes


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
            f"positions needs {megabytes(tables)} of attention tables; a bundle of "
            f"{megabytes(bundle_bytes)} may ask for at most {megabytes(allowed)}"
        )
    return tables
