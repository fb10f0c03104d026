"""Start-up time of the app to its first window, from source and from the PyInstaller build.

    python benchmarks/startup.py [--frozen dist/dalle-studio/dalle-studio] [--repeats 3]

Each run launches the app offscreen with --selftest into a fresh folder and reads the time stamp
of its "window shown" log line; the figure is that time minus the launch time, in seconds. Runs
alternate between source and frozen so that both see the same machine load. The file cache is
warm after the first run of each (dropping it needs root); the first run is reported apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def time_to_window(command: list[str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=folder)
        started = time.time()
        subprocess.run(
            command + ["--selftest", "--selftest-dir", folder],
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        for line in (Path(folder) / "logs" / "studio.log").read_text().splitlines():
            if "window shown" in line:
                stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return stamp.timestamp() - started
    raise RuntimeError("the app never logged 'window shown'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frozen", default=str(ROOT / "dist" / "dalle-studio" / "dalle-studio"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    commands = {"source": [sys.executable, "-m", "studio"]}
    if Path(args.frozen).is_file():
        commands["frozen"] = [args.frozen]
    else:
        print(f"no build at {args.frozen}; timing the source only")
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats + 1):
        for name, command in commands.items():
            times[name].append(time_to_window(command))
    for name, values in times.items():
        warm = sorted(values[1:])
        print(
            f"{name:7s} first {values[0]:.2f} s, then median {warm[len(warm) // 2]:.2f} s "
            f"(min {warm[0]:.2f}, max {warm[-1]:.2f}) to the first window"
        )


if __name__ == "__main__":
    main()
