"""A bounded load test of ``dalle serve`` on loopback: C concurrent clients x R requests each.

Starts ``dalle serve --port 0`` with the embedded model (or uses ``--url``), then every client
sends its requests one after another (``POST /v1/images/generations``, ``b64_json``). A 429 is
counted and retried after its ``Retry-After``, as a polite client would; every accepted answer is
checked: the asked number of PNGs of the asked size. Prints p50/p95 latency of accepted requests
(from first try to answer, retries included, and of the accepted try alone), throughput, the 429
count and whether anything accepted was lost.

    pip install -e ".[serve]"
    python benchmarks/serve_load.py                      # 20 clients x 5 requests
    python benchmarks/serve_load.py --clients 20 --requests 5 --threads 1 --json load.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from PIL import Image


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ask(url: str, body: dict, timeout: float) -> tuple[int, dict, dict | None]:
    request = urllib.request.Request(
        f"{url}/images/generations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), None


def client(url: str, index: int, args, results: list[dict], lock: threading.Lock) -> None:
    for number in range(args.requests):
        body = {
            "prompt": f"a red heart, request {index}.{number}",
            "n": args.n,
            "size": args.size,
            "response_format": "b64_json",
        }
        first = time.perf_counter()
        rejected = 0
        while True:
            tried = time.perf_counter()
            status, headers, answer = ask(url, body, args.timeout)
            if status != 429:
                break
            rejected += 1
            wait = float({k.lower(): v for k, v in headers.items()}.get("retry-after", "1"))
            time.sleep(min(wait, 5.0))
        ok = status == 200 and answer is not None
        images = 0
        if ok:
            side = int(args.size.split("x")[0])
            for item in answer["data"]:
                image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
                images += image.format == "PNG" and image.size == (side, side)
        finished = time.perf_counter()
        with lock:
            results.append(
                {
                    "status": status,
                    "rejected": rejected,
                    "images": images,
                    "latency": finished - first,
                    "accepted_latency": finished - tried,
                }
            )


def start_server(args) -> tuple[subprocess.Popen, str]:
    env = {**os.environ}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, "-m", "model.cli", "serve", "--port", "0"]
    command += ["--queue-size", str(args.queue_size)]
    if args.bundle:
        command += ["--bundle", args.bundle]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    line = process.stdout.readline()
    if not line.startswith("serving "):
        process.kill()
        sys.exit(f"serve_load: the server did not start: {line!r}")
    return process, line.split()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running server's /v1 URL")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5, help="per client")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=None, help="OMP threads of the server")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    process, url = (None, args.url) if args.url else start_server(args)
    results: list[dict] = []
    lock = threading.Lock()
    started = time.perf_counter()
    try:
        clients = [
            threading.Thread(target=client, args=(url, i, args, results, lock))
            for i in range(args.clients)
        ]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    finally:
        wall = time.perf_counter() - started
        if process is not None:
            process.terminate()
            process.wait(30)

    accepted = [r for r in results if r["status"] == 200]
    lost = [r for r in accepted if r["images"] != args.n]
    failed = [r for r in results if r["status"] != 200]
    figures = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "images_per_request": args.n,
        "size": args.size,
        "queue_size": args.queue_size,
        "requests": len(results),
        "accepted": len(accepted),
        "failed": len(failed),
        "responses_429": sum(r["rejected"] for r in results),
        "lost": len(lost),
        "wall_s": round(wall, 2),
        "throughput_requests_per_s": round(len(accepted) / wall, 3),
        "throughput_images_per_s": round(sum(r["images"] for r in accepted) / wall, 3),
        "latency_p50_s": round(percentile([r["latency"] for r in accepted], 50), 3),
        "latency_p95_s": round(percentile([r["latency"] for r in accepted], 95), 3),
        "accepted_try_p50_s": round(percentile([r["accepted_latency"] for r in accepted], 50), 3),
        "accepted_try_p95_s": round(percentile([r["accepted_latency"] for r in accepted], 95), 3),
        "mean_latency_s": round(statistics.fmean(r["latency"] for r in accepted), 3)
        if accepted
        else None,
    }
    for name, value in figures.items():
        print(f"{name:28s} {value}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0 if not lost and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
