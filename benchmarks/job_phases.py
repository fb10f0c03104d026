"""A studio job's phases and its ETA against the time that was really left (issue 28).

    python benchmarks/job_phases.py [--megapixels 48] [--n 4] [--rows 1] [--bundle B]

Runs one job through ``studio.engine.Engine`` (the worker's code, without a window) on a picture
of that many megapixels (a noise-free gradient: reading cost is size, not content), the rectangle
on its last ``--rows`` cell rows, and prints every message as it comes: the phase (reading,
encoding, sampling row r/R, decoding, pasting i/n), the ETA it carried and the seconds that were
really left. An honest ETA is near the last column once the first row is in.

Measured (issue 28; 8000x6000, one cell row, 4 candidates, the embedded model, int8 on 2 shared
CPU cores; ``python benchmarks/job_phases.py --megapixels 48``), seconds:

    engine           first message   total   ETA at the last row / really left
    before issue 28  23.9 (row 1/1)   89.3    88.8 / 65.4  (0 % until then, then 100 %)
    now              0.0 (reading)    14.6    14.7 / 9.4, then pasting 2/4: 6.6 / 7.1

Most of the gain is ``model.inference.images.paste_back`` blending only the rectangle in 8 bits (a
48 MP paste: 13-19 s before, 1.5-2.5 s now, the same pixels).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import bundle as bundle_io  # noqa: E402
from model.geometry import Geometry  # noqa: E402
from studio import engine as messages  # noqa: E402
from studio.engine import Engine, Job, SamplingOptions  # noqa: E402


def picture(megapixels: float) -> np.ndarray:
    height = int(math.sqrt(megapixels * 1e6 * 3 / 4))
    width = int(megapixels * 1e6 / height)
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = ramp
    image[..., 1] = rows
    image[..., 2] = 128
    return image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=48.0)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--rows", type=int, default=1, help="cell rows in the rectangle")
    parser.add_argument("--bundle", default=str(bundle_io.default_bundle_path()))
    args = parser.parse_args()
    bundle = bundle_io.load(args.bundle)
    engine = Engine()
    engine.set_bundle(bundle)
    image = picture(args.megapixels)
    height, width = image.shape[:2]
    geometry = Geometry(width, height, bundle.config.vae.image_size, bundle.config.vae.factor)
    rows = geometry.visible_grid[0]
    cell = (rows - args.rows, 0)
    print(
        f"{width}x{height} ({width * height / 1e6:.1f} MP), rectangle from cell {cell}, n={args.n}"
    )
    seen: list[tuple[float, str, float]] = []
    started = time.perf_counter()

    def emit(message) -> None:
        now = time.perf_counter() - started
        if isinstance(message, getattr(messages, "Phase", ())):  # () before issue 28
            step = f" {message.step + 1}/{message.steps}" if message.steps else ""
            seen.append((now, f"{message.phase}{step}", message.eta_s))
        elif isinstance(message, messages.RowDecoded):
            seen.append((now, f"sampling row {message.rows_done}/{message.rows_total}",
                         message.eta_s))  # fmt: skip
        else:
            seen.append((now, type(message).__name__, 0.0))

    job = Job(image=image, cell=cell, caption="a red circle", options=SamplingOptions(n=args.n))
    engine.run_job_blocking(job, emit)
    end = seen[-1][0]
    print(f"{'at s':>7}  {'message':<22} {'ETA s':>7} {'really left s':>14}")
    for at, what, eta in seen:
        shown = "—" if not math.isfinite(eta) else f"{eta:.1f}"
        print(f"{at:7.1f}  {what:<22} {shown:>7} {end - at:14.1f}")
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
