"""Peak RSS of ``dalle serve`` under hostile uploads (issue 28): stalled and concurrent.

Starts ``dalle serve --port 0`` with the embedded model and its default options (the code on
PYTHONPATH: run it once with the code before a change and once after), answers one generation
to size the model's working memory, then:

1. **stalled**: ``--stalled`` clients (40) each send ~97% of a ``--stalled-mb`` (20) MB edit
   upload and then nothing for ``--stall`` seconds (60); how many the server closed, and when.
2. **concurrent**: ``--concurrent`` clients (32) send a whole ``--upload-mb`` (14) MB edit at once
   (incompressible RGBA pixels, a small transparent corner to redraw); their statuses.

Each on a fresh server: the peak RSS (Linux's VmHWM, reset before the scenario) over the idle
RSS, and the RSS at the end. Prints one line per scenario.

    python benchmarks/serve_hostile.py                       # the code on PYTHONPATH
    PYTHONPATH=/work/main python benchmarks/serve_hostile.py # another checkout's code
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
from PIL import Image

MB = 2**20


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid``, bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")


def edit_upload(megabytes: float, seed: int = 0) -> tuple[bytes, str]:
    """A multipart edit of about ``megabytes``: RGBA noise, a 32x32 transparent corner."""
    side = int((megabytes * MB / 4) ** 0.5)
    pixels = np.random.default_rng(seed).integers(1, 256, (side, side, 4), np.uint8)
    pixels[-32:, -32:, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG", compress_level=1)
    boundary = "hostile-benchmark"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na red heart\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="response_format"\r\n\r\n'
            f"b64_json\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def request_head(port: int, body: bytes, kind: str) -> bytes:
    return (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()


def status_of(sock: socket.socket, seconds: float) -> tuple[int | str, float]:
    """(HTTP status, or 'closed'/'open', seconds until the server answered or closed)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed", time.monotonic() - started
            data += chunk
    except TimeoutError:
        return "open", time.monotonic() - started
    except OSError:
        return "closed", time.monotonic() - started
    return int(data.split()[1]), time.monotonic() - started


def stalled(port: int, args) -> dict:
    body, kind = edit_upload(args.stalled_mb)
    cut = len(body) * 97 // 100
    results: list[tuple[int | str, float]] = []
    lock = threading.Lock()

    def client() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            sock.sendall(request_head(port, body, kind) + body[:cut])
        except OSError:
            pass
        outcome = status_of(sock, args.stall)
        with lock:
            results.append(outcome)
        sock.close()

    threads = [threading.Thread(target=client) for _ in range(args.stalled)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.stall + 60)
    statuses = Counter(str(status) for status, _ in results)
    answered = [seconds for status, seconds in results if status != "open"]
    return {
        "statuses": dict(statuses),
        "last_answer_s": round(max(answered), 1) if answered else None,
        "body_mb": round(len(body) / MB, 1),
    }


def concurrent(port: int, args) -> dict:
    body, kind = edit_upload(args.upload_mb, seed=1)
    results: list[int | str] = []
    lock = threading.Lock()

    def client() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            sock.sendall(request_head(port, body, kind) + body)
        except OSError:
            pass
        status, _ = status_of(sock, 600)
        with lock:
            results.append(status)
        sock.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(args.concurrent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    return {
        "statuses": dict(Counter(str(s) for s in results)),
        "wall_s": round(time.monotonic() - started, 1),
        "body_mb": round(len(body) / MB, 1),
    }


def start_server(args) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "model.cli", "serve", "--port", "0", *args.serve_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    # `python -m` puts its working folder first on sys.path: start in the code's own checkout
    code = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or None
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=code
    )
    line = process.stdout.readline()
    if not line.startswith("serving "):
        process.kill()
        sys.exit(f"serve_hostile: the server did not start: {line!r}")
    port = int(line.split()[-1].rsplit(":", 1)[1].split("/")[0])
    return process, port


def warm_up(port: int) -> None:
    body = json.dumps({"prompt": "a red heart", "response_format": "b64_json"}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    assert status_of(sock, 300)[0] == 200
    sock.close()


def measure(process: subprocess.Popen, scenario, port: int, args) -> dict:
    idle, _ = rss(process.pid)
    reset_peak(process.pid)
    figures = scenario(port, args)
    now, peak = rss(process.pid)
    figures.update(
        idle_mb=round(idle / MB), peak_mb=round(peak / MB), growth_mb=round((peak - idle) / MB)
    )
    figures["after_mb"] = round(now / MB)
    try:  # the bound README states, for the server's options, where the code has one
        from model.cli.serve import add_serve_args, settings_of
        from model.serve.guard import worst_case_memory

        options = argparse.ArgumentParser()
        add_serve_args(options)
        settings = settings_of(options.parse_known_args(args.serve_args)[0], None)
        figures["bound_mb"] = round(worst_case_memory(settings, idle) / MB)
    except ImportError:
        pass
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=40)
    parser.add_argument("--stalled-mb", type=float, default=20.0 * 0.99)
    parser.add_argument("--stall", type=float, default=60.0, help="seconds the clients wait")
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--upload-mb", type=float, default=14.0)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of the server")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("serve_args", nargs="*", help="after --: options for dalle serve")
    args = parser.parse_args()

    figures = {"code": os.environ.get("PYTHONPATH", "(installed)")}
    for name, scenario in (("stalled", stalled), ("concurrent", concurrent)):
        process, port = start_server(args)  # a fresh server: the same idle RSS for each
        try:
            warm_up(port)
            figures[name] = measure(process, scenario, port, args)
        finally:
            process.terminate()
            process.wait(60)
    for name in ("stalled", "concurrent"):
        row = figures[name]
        print(
            f"{name:10s} idle {row['idle_mb']:5d} MB  peak {row['peak_mb']:5d} MB "
            f"(+{row['growth_mb']} MB)  after {row['after_mb']} MB  "
            + (f"bound {row['bound_mb']} MB  " if "bound_mb" in row else "")
            + "  ".join(f"{k}={v}" for k, v in row.items() if not k.endswith("_mb"))
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
