"""Peak memory, exit status and message for the headline hostile inputs of issue 15.

    python benchmarks/hostile_memory.py                       # this checkout
    git worktree add /tmp/before 4096202                      # the code before issue 15
    python benchmarks/hostile_memory.py --before /tmp/before  # both, side by side

Each case runs in a fresh process (the command line, or the studio's project reader) under a
memory cap and a time limit, so code that would take gigabytes is stopped rather than allowed to
take the machine; its peak RSS is read from ``wait4``. Inputs are generated with the same
generators as tests/test_hostile.py and tests/test_hostile_projects.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CAP_BYTES = 8 * 2**30  # address space per case: old code that tries for more fails at the cap
TIME_LIMIT_S = 120


def make_inputs(folder: Path) -> dict[str, list[str]]:
    """Case name -> the argv (after the interpreter) that reads it."""
    import numpy as np
    from PIL import Image

    from tests.helpers import tiny_bundle_file
    from tests.test_hostile import bundle_with, png_claiming
    from tests.test_hostile_projects import append_zeros, valid_members, write_zip

    tiny = tiny_bundle_file(folder)
    out = str(folder / "out")
    (folder / "bomb.png").write_bytes(png_claiming(30000, 30000))
    Image.fromarray(np.full((11000, 11000, 3), 90, np.uint8)).save(folder / "big.png")
    bundle_with(tiny, folder / "deep.dalle.safetensors", {"transformer": {"depth": 1_000_000}})
    bundle_with(tiny, folder / "wide.dalle.safetensors", {"transformer": {"dim": 20_000}})
    members = {k: v for k, v in valid_members().items() if k != "x"}
    bomb = write_zip(folder / "bomb.dstudio", members)
    append_zeros(bomb, "manifest.json", 1536 * 2**20, b" ", True)
    cli = ["-m", "model.cli"]
    complete = ["complete", "--bundle", str(tiny), "--from", "1,1", "--caption", "x", "--out", out]
    generate = ["generate", "--caption", "x", "--out", out + "/a.png", "--quiet", "--bundle"]
    read_project = (  # what the studio does with File > Open: one line for the dialog
        "import sys; from studio import project\n"
        "try: project.load(sys.argv[1])\n"
        "except project.ProjectError as error: sys.exit(f'open: {error}')"
    )
    return {
        "PNG claiming 30000x30000 (69 bytes)": cli
        + complete
        + ["--image", str(folder / "bomb.png")],
        "PNG of 11000x11000": cli + complete + ["--image", str(folder / "big.png")],
        "bundle with depth 1,000,000": cli + generate + [str(folder / "deep.dalle.safetensors")],
        "bundle with dim 20,000": cli + generate + [str(folder / "wide.dalle.safetensors")],
        "project: 1.5 GB manifest in 1.5 MB": ["-c", read_project, str(folder / "bomb.dstudio")],
    }


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def run(argv: list[str], repo: Path) -> tuple[str, float, float, str]:
    """(exit, peak MB, seconds, last stderr line) of ``python argv``, ``repo`` on the path."""
    env = dict(os.environ, PYTHONPATH=str(repo), QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, *argv], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=_limits,
        )  # fmt: skip
        timed_out = False
        while True:  # wait4: this child's own peak RSS
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > TIME_LIMIT_S:
                process.kill()
                _, status, usage = os.wait4(process.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        err.seek(0)
        lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
    seconds = time.perf_counter() - started
    code = "timeout" if timed_out else str(process.returncode)
    last = lines[-1][:110] if lines else ""
    if len(lines) > 1:
        last = f"({len(lines)} lines) {last}"
    return code, usage.ru_maxrss / 1024, seconds, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare against")
    args = parser.parse_args()
    repos = {"now": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    with tempfile.TemporaryDirectory() as folder:
        cases = make_inputs(Path(folder))
        print(f"memory cap {CAP_BYTES >> 30} GiB, time limit {TIME_LIMIT_S} s per case\n")
        for name, argv in cases.items():
            print(name)
            for label, repo in repos.items():
                code, peak, seconds, last = run(argv, repo)
                print(f"  {label:6} exit {code:>7}  peak {peak:7.0f} MB  {seconds:5.1f} s  {last}")


if __name__ == "__main__":
    main()
