"""Working memory of ``model.networks.upscaler.upscale`` against picture size: it depends on the
tile.

Runs the shipped upscaler (or ``--upscaler``) at its default tile on a random picture of
``--side`` px and prints the peak resident-memory rise over the loaded net, less the result's own
bytes, beside the bound ``tile_working_bytes``. One picture per process (peak RSS only grows):

    for side in 400 1100; do PYTHONPATH=. python benchmarks/upscale_memory.py --side $side; done
    # the same without glibc keeping freed tiles in its heap:
    MALLOC_MMAP_THRESHOLD_=1048576 PYTHONPATH=. python benchmarks/upscale_memory.py --side 1100
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import torch

from model.bundle.upscaler_files import load_upscaler
from model.networks.upscaler import largest_tile, tile_working_bytes, upscale


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=400, help="the picture's side (px)")
    parser.add_argument("--upscaler", default=None, help="default: the shipped one")
    parser.add_argument("--overlap", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    upscaler, _ = load_upscaler(args.upscaler)
    picture = np.random.default_rng(0).integers(0, 256, (args.side, args.side, 3), np.uint8)
    upscale(picture[:32, :32], upscaler, overlap=args.overlap)  # kernels and allocator warm
    base = resident()
    start = time.perf_counter()
    result = upscale(picture, upscaler, overlap=args.overlap)
    seconds = time.perf_counter() - start
    rise = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    tile = largest_tile(upscaler, args.overlap)
    bound = tile_working_bytes(upscaler, tile, args.overlap)
    mb = 2**20
    print(
        f"{args.side} px picture, tile {tile}, overlap {args.overlap}: peak RSS rise "
        f"{rise / mb:.0f} MB, less the result ({result.nbytes / mb:.0f} MB): "
        f"{(rise - result.nbytes) / mb:.0f} MB; bound {bound / mb:.0f} MB; {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
