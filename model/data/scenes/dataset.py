"""Writing a dataset: scenes ``0 … count-1`` as image, caption and structured-form files, in
worker processes whose output does not depend on their number."""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from model.data.scenes.rendering import render_scene
from model.data.scenes.shapes import require_emoji_font
from model.data.scenes.vocabulary import SPLITS
from model.files import write_bytes


def _write_range(
    out_dir: str, start: int, stop: int, seed: int, size: int, split: str, emoji: bool
) -> int:
    out = Path(out_dir)
    for index in range(start, stop):
        image, spec = render_scene(seed, index, size, split, emoji)
        png = io.BytesIO()
        image.save(png, format="PNG")
        stem = f"{index:06d}"
        # The caption goes last: a reader sees a pair only once its image is complete.
        # atomic, not fsynced: a crash cuts a dataset short but leaves no half-written file
        write_bytes(out / f"{stem}.json", spec.to_json().encode(), durable=False)
        write_bytes(out / f"{stem}.png", png.getvalue(), durable=False)
        write_bytes(out / f"{stem}.txt", (spec.caption + "\n").encode(), durable=False)
    return stop - start


def write_scenes(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    size: int = 128,
    split: str = "train",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    emoji: bool = False,
) -> int:
    """Write scenes ``0 … count-1`` as ``NNNNNN.png`` + ``.txt`` (caption) + ``.json`` (spec).

    Uses ``workers`` processes (default: every core) on chunks of indices; the files do not depend
    on the worker count. Each file is written to a temporary name and renamed. ``progress(done,
    total)`` is called from this process as chunks finish. Returns ``count``.
    """
    if count < 0:
        raise ValueError(f"scene count must be >= 0, got {count}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if size < 8:
        raise ValueError(f"scene size must be at least 8 pixels, got {size}")
    if emoji:
        require_emoji_font()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or os.cpu_count() or 1)
    chunk = max(1, min(64, math.ceil(count / (workers * 4))))
    ranges = [(s, min(s + chunk, count)) for s in range(0, count, chunk)]
    done = 0
    if workers == 1 or len(ranges) <= 1:
        for start, stop in ranges:
            done += _write_range(str(out), start, stop, seed, size, split, emoji)
            if progress:
                progress(done, count)
        return count
    # spawn, not fork: the caller may hold torch/OpenMP threads, which do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(ranges)), mp_context=context) as pool:
        futures = [
            pool.submit(_write_range, str(out), start, stop, seed, size, split, emoji)
            for start, stop in ranges
        ]
        for future in as_completed(futures):
            done += future.result()
            if progress:
                progress(done, count)
    return count
