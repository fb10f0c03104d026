"""No command writes over its own input unless told to: ``--overwrite``.

A run's outputs are checked against every file it reads (the image, the batch CSV and every image
it names, the bundle, a tokenizer or checkpoint it starts from, an importer's sources) before any
work. Two paths are the same file when they resolve to the same path (``..``, symlinks) or, for
files that exist, when they are the same inode (hard links). The atomic writer replaces a name,
so a hard-linked or symlinked output would leave the input's bytes in the other name; it is
refused all the same, since the user named the input as the place for the result.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from model.cli.common import CLIError, shown

OVERWRITE_HELP = "allow an output to replace a file this run reads (refused otherwise)"
# what an importer writes; none of them reads one (they read pickles, .pt, .bin, .ckpt, JSON,
# msgpack and BPE models), so a folder's .safetensors files are not its inputs
IMPORT_OUTPUT_SUFFIX = ".safetensors"


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """(resolved path, (device, inode) when it exists)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compared by its name
        resolved = Path(os.path.abspath(path))
    try:
        info = os.stat(path)
        return resolved, (info.st_dev, info.st_ino)
    except (OSError, ValueError):
        return resolved, None


def refuse_overwrite(
    outputs: Iterable[Path],
    inputs: Iterable[tuple[str, Path]],
    overwrite: bool = False,
    option: str = "--out",
) -> None:
    """Raise CLIError (one line) when an output is the same file as an input; ``inputs`` are
    (what the user calls it, path) pairs. Nothing is checked with ``overwrite``."""
    if overwrite:
        return
    known: dict[object, tuple[str, Path]] = {}
    for label, path in inputs:
        resolved, inode = _identity(Path(path))
        known.setdefault(resolved, (label, Path(path)))
        if inode is not None:
            known.setdefault(inode, (label, Path(path)))
    for output in outputs:
        resolved, inode = _identity(Path(output))
        hit = known.get(resolved) or (known.get(inode) if inode is not None else None)
        if hit is not None:
            label, path = hit
            raise CLIError(
                f"{option} {shown(output)} is the same file as {label} {shown(path)}: writing "
                "there would destroy it; name another output, or pass --overwrite"
            )


def folder_files(label: str, folder: Path, skip_suffix: str = "") -> list[tuple[str, Path]]:
    """The regular files directly in ``folder`` as inputs (none when it is not a folder)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [
        (label, folder / name)
        for name in names
        if (folder / name).is_file() and not (skip_suffix and name.endswith(skip_suffix))
    ]


def given(*pairs: tuple[str, str | None]) -> list[tuple[str, Path]]:
    """(label, path) for each option that was given."""
    return [(label, Path(value)) for label, value in pairs if value]


def check_import(args, out: Path) -> None:
    """``dalle import``: its --out against its source files (``--encoder``/``--decoder``, or the
    files of ``--from`` and ``--vqgan-dir``)."""
    inputs = given(
        ("--encoder", getattr(args, "encoder", None)),
        ("--decoder", getattr(args, "decoder", None)),
    )
    for option, attribute in (("--from", "source"), ("--vqgan-dir", "vqgan_dir")):
        folder = getattr(args, attribute, None)
        if folder:
            inputs += folder_files(f"{option}'s", Path(folder), IMPORT_OUTPUT_SUFFIX)
    refuse_overwrite([out], inputs, getattr(args, "overwrite", False))
