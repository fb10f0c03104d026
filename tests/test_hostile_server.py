"""Hostile clients of ``dalle serve``, generated here: stalled, endless and oversized bodies,
trickled and oversized heads, idle connections, hostile JSON and pictures (issue 28).

One server process (the embedded model, small limits so that the load fits CI) takes every
case. Each case must end in an OpenAI-shaped 4xx within its time bound, or, for the slow and the
endless ones, in the connection closed within it. Then a hostile load (200 stalled uploads, 32
concurrent uploads, 300 idle connections, endless bodies) must keep the server's peak RSS under
``model.serve.guard.worst_case_memory`` of its options (README, server section): with these
options, the idle RSS plus 79 MB.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn")

from model.serve.app import Settings  # noqa: E402
from model.serve.guard import LINGER_S, worst_case_memory  # noqa: E402
from tests.test_serve import bomb_png, multipart  # noqa: E402
from tests.test_serve_bounds import (  # noqa: E402
    connect,
    head,
    openai_error,
    parse,
    read_to_close,
)

GEN, EDIT = "/v1/images/generations", "/v1/images/edits"
# small enough for CI; every bound scales with them (worst_case_memory)
OPTIONS = {
    "queue_size": 2,
    "max_upload_mb": 1,
    "max_megapixels": 0.25,
    "max_connections": 32,
    "header_timeout": 1.0,
    "body_timeout": 2.0,
    "url_store_mb": 2,
}
SETTINGS = Settings(
    queue_size=2,
    max_upload=2**20,
    max_pixels=250_000,
    max_connections=32,
    header_timeout=1.0,
    body_timeout=2.0,
    url_store_bytes=2 * 2**20,
)
SLOW_BOUND = SETTINGS.body_timeout + LINGER_S + 3  # seconds for a slow case to be closed
QUICK_BOUND = 5.0  # seconds for any other answer


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


@pytest.fixture(scope="module")
def server():
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("peak RSS is read from Linux's /proc")
    command = [sys.executable, "-m", "model.cli", "serve", "--port", "0"]
    for name, value in OPTIONS.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    logs: list[str] = []
    threading.Thread(target=lambda: logs.extend(process.stderr), daemon=True).start()
    line = process.stdout.readline()
    assert line.startswith("serving "), (line, logs)
    base = line.split()[-1].removesuffix("/v1")
    # one generation and one edit size the model's working memory: then the idle RSS
    assert post(base, GEN, json.dumps({"prompt": "a red heart"}).encode())[0] == 200
    image = Image.fromarray(np.full((64, 64, 4), 200, np.uint8), "RGBA")
    image.putpixel((60, 60), (0, 0, 0, 0))
    assert post(base, EDIT, *multipart({"prompt": "a"}, {"image": encode(image)}))[0] == 200
    time.sleep(0.5)
    yield base, process
    process.terminate()
    process.wait(30)
    assert not [entry for entry in logs if "Traceback" in entry], logs


def encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def post(base: str, path: str, body: bytes, headers: dict[str, str] | None = None):
    """(status, JSON) of a whole POST over a raw socket."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    sock = connect(base)
    sock.sendall(head("POST", path, {**headers, "Content-Length": str(len(body))}) + body)
    data, _ = read_to_close(sock, 120)
    sock.close()
    status, _, answer = parse(data)
    return status, answer


def noise_png(side: int, alpha: bool = False, seed: int = 0, marked: int = 0) -> bytes:
    """Incompressible pixels: the PNG is as large as the picture (``side`` squared); with
    ``alpha``, none fully transparent but the ``marked`` x ``marked`` bottom-right corner."""
    channels = 4 if alpha else 3
    pixels = np.random.default_rng(seed).integers(1, 256, (side, side, channels), np.uint8)
    if marked:
        pixels[-marked:, -marked:, 3] = 0
    return encode(Image.fromarray(pixels, "RGBA" if alpha else "RGB"))


def large_upload(seed: int = 0, marked: int = 0) -> tuple[bytes, dict[str, str]]:
    """An edit of 0.92 MB (0.23 megapixels), near both limits; with ``marked``, a valid one
    (the model redraws that corner; the answer is as large as the upload)."""
    image = noise_png(480, alpha=True, seed=seed, marked=marked)
    return multipart({"prompt": "a", "response_format": "b64_json"}, {"image": image})


# -- the cases ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    data: bytes  # what the server sent
    closed: bool  # and then closed the connection
    seconds: float


def exchange(base: str, first: bytes, then=None, seconds: float = 10) -> Outcome:
    """Send ``first``; ``then(sock)`` in a thread (a trickle, an endless body); read to close."""
    sock = connect(base)
    started = time.monotonic()
    sock.sendall(first)
    if then is not None:
        threading.Thread(target=then, args=(sock,), daemon=True).start()
    data, closed = read_to_close(sock, seconds)
    outcome = Outcome(data, closed, time.monotonic() - started)
    sock.close()
    return outcome


def stalled(path: str, fraction: float):
    def case(base: str) -> Outcome:
        if path == GEN:
            body, headers = json.dumps({"prompt": "x" * 900_000}).encode(), {}
        else:
            body, headers = large_upload()
        headers = {"Content-Type": "application/json", **headers}
        headers["Content-Length"] = str(len(body))
        return exchange(base, head("POST", path, headers) + body[: int(len(body) * fraction)])

    return case


def endless(path: str, method: str = "POST"):
    def case(base: str) -> Outcome:
        kind = "multipart/form-data; boundary=x" if path == EDIT else "application/json"
        first = head(method, path, {"Transfer-Encoding": "chunked", "Content-Type": kind})
        if path == EDIT:
            part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            first += b"%x\r\n%s\r\n" % (len(part), part)

        def send_forever(sock: socket.socket) -> None:
            chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"
            deadline = time.monotonic() + 30
            try:
                while time.monotonic() < deadline:
                    sock.sendall(chunk)
            except OSError:
                pass

        return exchange(base, first, send_forever)

    return case


def declared(path: str, length: str):
    kind = "multipart/form-data; boundary=x" if path == EDIT else "application/json"
    return lambda base: exchange(
        base, head("POST", path, {"Content-Type": kind, "Content-Length": length})
    )


def trickled_head(base: str) -> Outcome:
    def drip(sock: socket.socket) -> None:
        try:
            for _ in range(300):
                sock.sendall(b"a")
                time.sleep(0.1)
        except OSError:
            pass

    return exchange(base, b"POST /v1/images/generations HTTP/1.1\r\nX-Slow: ", drip)


def complete(path: str, body: bytes, headers: dict[str, str] | None = None):
    # "Connection: close": the time to the answer is the time to the close
    headers = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
    headers["Content-Length"] = str(len(body))
    return lambda base: exchange(base, head("POST", path, headers) + body)


def edit_with(files: dict[str, bytes], fields: dict[str, str] | None = None):
    body, headers = multipart({"prompt": "a", **(fields or {})}, files)
    return complete(EDIT, body, headers)


def past_the_connection_cap(base: str) -> Outcome:
    held = [connect(base) for _ in range(SETTINGS.max_connections)]
    time.sleep(0.2)
    try:
        return exchange(base, head("GET", "/health", {}))
    finally:
        for sock in held:
            sock.close()


def generated_cases():
    """(id, case, expected status or None for 'closed, any answer', slow)."""
    for path, name in ((GEN, "generation"), (EDIT, "edit")):
        for fraction in (0.0, 0.5, 0.97):
            yield f"{name}-stalled-at-{fraction:.0%}", stalled(path, fraction), 408, True
        yield f"{name}-endless-chunked", endless(path), 413, True
        yield f"{name}-declares-a-terabyte", declared(path, str(10**12)), 413, False
        yield f"{name}-declares-a-bad-length", declared(path, "12abc"), 400, False
    yield "health-with-an-endless-body", endless("/health", "GET"), None, True
    yield "trickled-head", trickled_head, 408, True
    yield "idle-connection", lambda base: exchange(base, b""), None, True
    yield "head-of-a-megabyte", complete(GEN, b"{}", {"X-Big": "a" * 2**20}), 400, False
    yield "not-http", lambda base: exchange(base, b"\x16\x03\x01\x02\x00hello\r\n\r\n"), 400, False
    yield "connections-past-the-cap", past_the_connection_cap, 503, False
    json_bodies = {
        "nested-100k": b"[" * 100_000 + b"]" * 100_000,
        "5000-digit-integer": b'{"prompt": "a", "seed": ' + b"9" * 5000 + b"}",
        "lone-surrogate": b'{"prompt": "\\udfff"}',
        "nan-temperature": b'{"prompt": "a", "temperature": NaN}',
        "n-of-10^30": b'{"prompt": "a", "n": 1000000000000000000000000000000}',
        "prompt-as-a-list": b'{"prompt": ["a"]}',
        "answer-of-10-megapixels": b'{"prompt": "a", "n": 10, "size": "1024x1024"}',
        "json-over-1-MiB": b'{"prompt": "' + b"x" * (2**20) + b'"}',
    }
    for name, body in json_bodies.items():
        status = 413 if name == "json-over-1-MiB" else 400
        yield f"json-{name}", complete(GEN, body), status, False
    yield "png-declaring-1600-megapixels", edit_with({"image": bomb_png(40000, 40000)}), 413, False
    yield "not-a-picture", edit_with({"image": b"GIF89a" + b"\0" * 100}), 400, False
    yield "picture-without-transparency", edit_with({"image": noise_png(100)}), 400, False
    yield (
        "mask-of-another-size",
        edit_with({"image": noise_png(100, alpha=True), "mask": noise_png(50, alpha=True)}),
        400,
        False,
    )


CASES = list(generated_cases())


@pytest.mark.parametrize("case, status, slow", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_client_gets_a_4xx_or_is_closed_in_bounded_time(server, case, status, slow):
    base, process = server
    outcome = case(base)
    bound = SLOW_BOUND if slow else QUICK_BOUND
    if status is None:  # a connection to close: an answer, if any, is OpenAI's
        assert outcome.closed and outcome.seconds < bound, outcome
        if outcome.data:
            parse(outcome.data)
        return
    assert outcome.data, f"no answer in {outcome.seconds:.1f} s"
    got, headers, body = parse(outcome.data)
    error = openai_error(body)
    assert got == status, (got, error)
    assert outcome.seconds < bound, outcome.seconds
    if slow or got in (408, 413, 503):  # the body was not read to the end
        assert headers.get("connection") == "close" and outcome.closed, headers
    assert process.poll() is None


# -- peak RSS under a hostile load --------------------------------------------------------------


def test_peak_rss_under_hostile_load_stays_under_the_formula(server):
    base, process = server
    idle, _ = rss(process.pid)
    with open(f"/proc/{process.pid}/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from now
    upload, upload_headers = large_upload(seed=1, marked=16)
    statuses: list[int | str] = []
    lock = threading.Lock()

    def stalled_upload() -> None:  # ~97% of an upload at the limit, then nothing
        headers = {**upload_headers, "Content-Length": str(len(upload))}
        outcome = exchange(base, head("POST", EDIT, headers) + upload[: len(upload) * 97 // 100])
        with lock:
            statuses.append(parse(outcome.data)[0] if outcome.data else "closed")

    def whole_upload() -> None:  # valid edits: read, decoded, queued, run and answered
        headers = {**upload_headers, "Content-Length": str(len(upload)), "Connection": "close"}
        outcome = exchange(base, head("POST", EDIT, headers) + upload, seconds=120)
        with lock:
            statuses.append(parse(outcome.data)[0] if outcome.data else "closed")

    loads = [
        [stalled_upload] * 200,
        [whole_upload] * 32,
        [lambda: exchange(base, b"", seconds=5)] * 300,
        [lambda: endless(GEN)(base), lambda: endless(EDIT)(base)] * 4,
    ]
    for load in loads:
        threads = [threading.Thread(target=target) for target in load]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    _, peak = rss(process.pid)
    bound = worst_case_memory(SETTINGS, idle)
    growth = (peak - idle) / 2**20
    print(
        f"idle {idle / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB (+{growth:.0f} MB), bound "
        f"{bound / 2**20:.0f} MB (+{(bound - idle) / 2**20:.0f} MB)"
    )
    counts = Counter(statuses)
    assert counts[200] >= 1 and set(counts) <= {200, 408, 429, 503, "closed"}, counts
    assert peak <= bound, f"peak RSS grew {growth:.0f} MB, past the formula's bound"
    assert process.poll() is None
