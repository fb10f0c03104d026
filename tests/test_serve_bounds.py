"""``dalle serve`` bounded as a whole (issue 28), driven over raw sockets: a full queue refuses
before a body is read, bodies and heads have deadlines, connections are capped, an answer to an
unread body closes the connection, the url store is capped by bytes, and bad JSON, bad uploads
and bad options are one-line errors (OpenAI's JSON, or exit 2 before the model loads).

The server is in-process with the stand-in model of tests/test_serve.py (a job ends when told).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

pytest.importorskip("uvicorn")

from model.serve.app import ImageStore  # noqa: E402
from model.serve.guard import LINGER_S  # noqa: E402
from model.serve.service import Result  # noqa: E402
from tests.test_serve import (  # noqa: E402
    WaitingService,
    health,
    in_process,
    multipart,
    picture,
    png,
    run_cli,
    wait_until,
)

GEN = "/v1/images/generations"
EDIT = "/v1/images/edits"


def connect(base: str) -> socket.socket:
    parts = urlsplit(base)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_to_close(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``seconds`` pass (False)."""
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def read_answer(sock: socket.socket, seconds: float) -> bytes:
    """One whole answer (head and Content-Length bytes of body), without waiting for a close."""
    data = b""
    sock.settimeout(seconds)
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    top, _, rest = data.partition(b"\r\n\r\n")
    length = int(top.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    return top + b"\r\n\r\n" + rest


def parse(data: bytes) -> tuple[int, dict[str, str], dict]:
    """(status, lower-case headers, JSON body) of the first answer in ``data``."""
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    length = int(headers.get("content-length", len(rest)))
    return int(lines[0].split()[1]), headers, json.loads(rest[:length])


def openai_error(body: dict) -> dict:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "\n" not in body["error"]["message"]
    return body["error"]


def fill_the_queue(base: str, service: WaitingService) -> list[threading.Thread]:
    """queue_size=1: one request running, one waiting; returns their threads."""
    asking = []
    for prompt in ("running", "waiting"):
        thread = threading.Thread(
            target=lambda p=prompt: httpx.post(f"{base}{GEN}", json={"prompt": p}, timeout=30)
        )
        thread.start()
        asking.append(thread)
        if prompt == "running":
            assert service.started.acquire(timeout=5)
    assert wait_until(lambda: health(base)["queued"] == 1)
    return asking


@pytest.mark.parametrize(
    "path, kind",
    [(GEN, "application/json"), (EDIT, "multipart/form-data; boundary=x")],
    ids=["generation", "edit"],
)
def test_a_full_queue_answers_429_before_reading_a_byte_of_the_body(path, kind):
    service = WaitingService()
    with in_process(service, queue_size=1, body_timeout=30) as (base, _, _):
        asking = fill_the_queue(base, service)
        sock = connect(base)
        started = time.monotonic()
        # a 19 MB body announced, none of it sent: the answer cannot wait for it
        sock.sendall(head("POST", path, {"Content-Type": kind, "Content-Length": "19000000"}))
        data, closed = read_to_close(sock, 5)
        status, headers, body = parse(data)
        assert status == 429 and openai_error(body)["code"] == "rate_limit_exceeded"
        assert int(headers["retry-after"]) >= 1 and headers["connection"] == "close"
        assert closed and time.monotonic() - started < LINGER_S + 2
        sock.close()
        assert health(base)["rejected"] == 1
        service.release.set()
        for thread in asking:
            thread.join(10)
        assert wait_until(lambda: health(base)["admitted"] == 0)  # every place given back


@pytest.mark.parametrize("path", [GEN, EDIT], ids=["generation", "edit"])
def test_a_stalled_body_is_answered_408_and_closed(path):
    service = WaitingService()
    service.release.set()
    with in_process(service, body_timeout=1.0) as (base, _, _):
        body, headers = multipart({"prompt": "a"}, {"image": png(picture())})
        if path == GEN:
            body, headers = json.dumps({"prompt": "a" * 500}).encode(), {}
        sock = connect(base)
        started = time.monotonic()
        headers = {**headers, "Content-Length": str(len(body))}
        sock.sendall(head("POST", path, headers) + body[: len(body) * 97 // 100])  # then stalls
        data, closed = read_to_close(sock, 6)
        status, answer_headers, answer = parse(data)
        assert status == 408 and openai_error(answer)["code"] == "request_timeout"
        assert "1 s" in answer["error"]["message"]
        assert answer_headers["connection"] == "close"
        assert closed and time.monotonic() - started < 1 + LINGER_S + 2
        assert wait_until(lambda: health(base)["admitted"] == 0)


def test_a_trickled_head_is_answered_408_and_idle_connections_are_closed():
    service = WaitingService()
    with in_process(service, header_timeout=1.0) as (base, _, _):
        idle = [connect(base) for _ in range(20)]
        trickle = connect(base)
        started = time.monotonic()
        trickle.sendall(b"POST /v1/images/generations HTTP/1.1\r\nX-Slow: ")

        def drip():
            for _ in range(60):  # a byte every 0.1 s: 6 s if nobody stops it
                try:
                    trickle.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.1)

        dripping = threading.Thread(target=drip)
        dripping.start()
        data, closed = read_to_close(trickle, 6)
        status, _, answer = parse(data)
        assert status == 408 and "headers did not arrive within" in answer["error"]["message"]
        assert closed and time.monotonic() - started < 1 + LINGER_S + 2
        for sock in idle:  # sent nothing at all: closed without an answer
            assert read_to_close(sock, 3) == (b"", True)
        dripping.join(10)


def test_connections_past_the_cap_are_answered_503():
    service = WaitingService()
    with in_process(service, max_connections=4, header_timeout=30) as (base, _, _):
        held = [connect(base) for _ in range(4)]
        time.sleep(0.2)
        extra = connect(base)
        extra.sendall(head("GET", "/health", {}))
        data, closed = read_to_close(extra, 5)
        status, headers, answer = parse(data)
        assert status == 503 and openai_error(answer)["code"] == "too_many_connections"
        assert headers["connection"] == "close" and headers["retry-after"] == "1" and closed
        for sock in held:
            sock.close()
        assert wait_until(lambda: httpx.get(f"{base}/health", timeout=5).status_code == 200)


@pytest.mark.parametrize(
    "method, path, status",
    [("POST", GEN, 413), ("POST", EDIT, 413), ("GET", "/health", 200)],
    ids=["generation", "edit", "health"],
)
def test_an_endless_chunked_body_is_not_read_past_the_answer(method, path, status):
    """uvicorn reads and drops a body the app did not read; an endless one, forever."""
    service = WaitingService()
    with in_process(service, max_upload=2**20) as (base, _, _):
        sock = connect(base)
        kind = "multipart/form-data; boundary=x" if path == EDIT else "application/json"
        sock.sendall(head(method, path, {"Transfer-Encoding": "chunked", "Content-Type": kind}))
        if path == EDIT:  # a file part that never ends
            part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sent, stopped = [0], threading.Event()
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"

        def endless():
            deadline = time.monotonic() + 15
            try:
                while time.monotonic() < deadline:
                    sent[0] += sock.send(chunk)
            except OSError:
                stopped.set()

        sender = threading.Thread(target=endless)
        sender.start()
        first = read_answer(sock, 10)
        assert parse(first)[0] == status and b"connection: close" in first.lower()
        assert stopped.wait(LINGER_S + 3), f"still reading after {sent[0] / 2**20:.0f} MB"
        sender.join(20)
        assert sent[0] < 64 * 2**20  # the limit, the socket buffers, and no more


def test_the_url_store_is_capped_by_bytes_and_drops_the_oldest():
    store = ImageStore(ttl=60, capacity=1000)
    names = [store.put(bytes([i]) * 300) for i in range(5)]
    assert store.size == 900 and store.size <= store.capacity
    assert [store.get(n) is not None for n in names] == [False, False, True, True, True]
    with pytest.raises(ValueError):
        store.put(b"x" * 1001)


def test_an_answer_larger_than_the_url_store_is_refused_and_b64_still_works():
    service = WaitingService()
    service.release.set()
    with in_process(service, url_store_bytes=1000) as (base, _, _):
        big = httpx.post(f"{base}{GEN}", json={"prompt": "a", "n": 10}, timeout=10)
        assert big.status_code == 507
        assert openai_error(big.json())["param"] == "response_format"
        assert "b64_json" in big.json()["error"]["message"]
        fine = httpx.post(
            f"{base}{GEN}", json={"prompt": "a", "n": 10, "response_format": "b64_json"}
        )
        assert fine.status_code == 200 and len(fine.json()["data"]) == 10
        two = httpx.post(f"{base}{GEN}", json={"prompt": "a", "n": 2}, timeout=10)
        assert two.status_code == 200 and 0 < health(base)["url_store_bytes"] <= 1000


def test_an_answer_past_max_pixels_is_refused_before_it_runs():
    service = WaitingService()
    service.release.set()
    with in_process(service, max_pixels=10_000) as (base, _, _):
        many = httpx.post(f"{base}{GEN}", json={"prompt": "a", "n": 3}, timeout=10)
        assert many.status_code == 400
        error = openai_error(many.json())
        assert (error["param"], error["code"]) == ("n", "answer_too_large")
        assert error["message"] == (
            "n=3 images of 64x64 make 0.0123 megapixels; this server answers at most 0.01 "
            "megapixels a request: ask for fewer or smaller images"
        )
        assert not service.started.acquire(timeout=0.2)  # never ran
        assert httpx.post(f"{base}{GEN}", json={"prompt": "a", "n": 2}).status_code == 200


@pytest.mark.parametrize(
    "body, param, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, None, "nested too deep"),
        (b'{"prompt": "a", "n": ' + b"1" * 5000 + b"}", None, "number out of range"),
        (b'{"prompt": "a \\ud800 b"}', "prompt", "lone surrogate (U+D800)"),
        (b'{"prompt": "a", "\\udc00": 1}', "\udc00", "Unrecognized request argument"),
    ],
    ids=["nested-100k", "5000-digits", "lone-surrogate", "surrogate-field-name"],
)
def test_hostile_json_is_400_not_500(body, param, words):
    service = WaitingService()
    service.release.set()
    with in_process(service) as (base, _, _):
        answer = httpx.post(
            f"{base}{GEN}", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        error = openai_error(json.loads(answer.content.decode("ascii")))
        assert error["param"] == param and words in error["message"]


@pytest.mark.parametrize("field", ["image", "mask"])
def test_an_unreadable_upload_names_its_field_not_a_python_object(field):
    service = WaitingService()
    service.release.set()
    with in_process(service) as (base, _, _):
        files = {"image": png(picture()), field: b"this is not a picture"}
        body, headers = multipart({"prompt": "a"}, files)
        answer = httpx.post(f"{base}{EDIT}", content=body, headers=headers)
        error = openai_error(answer.json())
        assert answer.status_code == 400 and error["param"] == field
        assert error["message"] == (
            f"{field}: not a readable image (not a PNG, JPEG, WebP or BMP file)"
        )


@pytest.mark.parametrize(
    "option, value",
    [
        ("--max-upload-mb", "inf"),
        ("--max-megapixels", "1e308"),
        ("--timeout", "nan"),
        ("--url-ttl", "1e308"),
        ("--queue-size", "0"),
        ("--max-connections", "0"),
        ("--header-timeout", "inf"),
        ("--body-timeout", "-1"),
        ("--url-store-mb", "inf"),
        ("--grace", "1e400"),
    ],
)
def test_an_option_out_of_range_is_one_line_before_the_model_loads(option, value):
    started = time.monotonic()
    done = run_cli("--port", "0", option, value)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert f"{option} must be" in done.stderr
    assert done.stdout == ""  # it never served, nor loaded the model
    assert time.monotonic() - started < 30


class LargeAnswerService(WaitingService):
    """Answers at once with n PNGs of incompressible pixels (about 0.75 MB each)."""

    def run(self, request, cancel):
        import numpy as np
        from PIL import Image

        pixels = np.random.default_rng(0).integers(0, 256, (500, 500, 3), np.uint8)
        return Result([png(Image.fromarray(pixels))] * request.options.n, 1, 0.1, 10.0, "")


def test_a_place_is_held_until_the_answer_is_taken_and_a_client_that_never_reads_is_dropped():
    service = LargeAnswerService()
    with in_process(service, queue_size=1, body_timeout=2.0, max_pixels=10**7) as (base, _, _):
        sock = connect(base)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = json.dumps({"prompt": "a", "n": 10, "response_format": "b64_json"}).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        sock.sendall(head("POST", GEN, headers) + body)  # and never reads its 10 MB answer
        assert wait_until(lambda: health(base)["done"] == 1)
        time.sleep(0.5)
        assert health(base)["admitted"] == 1  # its answer still waits: its place is held
        assert wait_until(lambda: health(base)["admitted"] == 0, 2.0 + 3)  # then dropped
        received = 0
        try:  # what the socket had taken, then the end: the rest of the answer was dropped
            while chunk := sock.recv(65536):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 10 * 2**20
        taken = httpx.post(f"{base}{GEN}", json={"prompt": "b", "n": 2}, timeout=10)
        assert taken.status_code == 200
        assert wait_until(lambda: health(base)["admitted"] == 0)
