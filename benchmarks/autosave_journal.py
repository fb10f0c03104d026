"""What making each history change durable costs: a journal line vs a whole autosave.

A document with ENTRIES history entries of SIZE x SIZE pixels; times, best of REPEATS, for: the
whole autosave (what making each change durable would cost without the journal), a star (one
fsynced line), an accept (one line naming an entry already on disk), and a generation of 4
candidates (4 PNGs written once, then one line). Prints one table.

    QT_QPA_PLATFORM=offscreen python benchmarks/autosave_journal.py [--entries 200] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QCoreApplication

from studio import project
from studio.autosave import Autosaver
from studio.document import Document


def picture(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def generation(document: Document, size: int, seed: int, count: int = 4) -> None:
    document.start_generation()
    candidates = [picture(size, seed + i) for i in range(count)]
    document.finish_generation(candidates, "a caption", (1, 1), seed, None)


def best(action, repeats: int) -> float:
    times = []
    for index in range(repeats):
        started = time.perf_counter()
        action(index)
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    QCoreApplication([])
    folder = Path(tempfile.mkdtemp(prefix="journal-bench-"))
    saver = Autosaver(folder)
    document = Document(picture(args.size, 0))
    saver.watch(document)
    for seed in range(1, args.entries, 4):
        generation(document, args.size, 1000 * seed)
    ids = [i for i, e in document.history.items() if not e.is_original]

    def whole(index: int) -> None:
        project.autosave(document, folder)

    def star(index: int) -> None:
        document.set_starred(ids[index], True)

    def accept(index: int) -> None:
        generation(document, args.size, 10**6 + 10 * index)
        started = time.perf_counter()
        document.accept_candidate()
        accept.times.append(time.perf_counter() - started)

    accept.times = []
    generate_ms = best(lambda i: generation(document, args.size, 10**7 + 10 * i), args.repeats)
    rows = [
        ("whole autosave", best(whole, args.repeats)),
        ("journal: star", best(star, args.repeats)),
        ("journal: a generation's 4 entries", generate_ms),
    ]
    best(accept, args.repeats)
    rows.append(("journal: accept", min(accept.times) * 1000))
    print(f"{len(document.history)} entries of {args.size}x{args.size}, best of {args.repeats}")
    print("| change made durable | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
