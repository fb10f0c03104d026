"""``dalle serve``: OpenAI's images API, driven by the real ``openai`` client and by raw HTTP.

The embedded model runs in a server process started as a user would (``dalle serve --port 0``);
the queue, disconnect, timeout and shutdown tests use an in-process server whose model is a
stand-in that waits until it is told to finish (the worker and the web side are what they test).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from model.cli.serve import bind  # noqa: E402
from model.serve.app import Settings, create_app  # noqa: E402
from model.serve.guard import server_config  # noqa: E402
from model.serve.service import Result, png_bytes  # noqa: E402
from model.serve.worker import JobCancelled  # noqa: E402

KEY = "test-key-123"


def png(image: Image.Image) -> bytes:
    return png_bytes(image)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def server():
    """The embedded model behind ``dalle serve --port 0 --api-key KEY``; yields its /v1 URL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "model.cli",
            "serve",
            "--port",
            "0",
            "--api-key",
            KEY,
            "--max-megapixels",
            "1",
            "--max-upload-mb",
            "2",
            "--json-logs",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    logs: list[str] = []  # stderr, drained as it comes (a full pipe would stall the server)
    reader = threading.Thread(target=lambda: logs.extend(process.stderr), daemon=True)
    reader.start()
    line = process.stdout.readline()
    assert line.startswith("serving dalle-studio-default on http://127.0.0.1:"), line
    url = line.split()[-1]
    process.logs = logs
    yield url, process
    process.terminate()
    process.wait(30)


def client(url: str, key: str = KEY):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def post(url: str, body: bytes, headers: dict[str, str], key: str | None = KEY):
    """(status, headers, JSON or bytes) of a raw POST, errors included."""
    headers = dict(headers)
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def declared_too_large(url: str, length: int, kind: str = "application/json"):
    """A POST that declares ``length`` bytes and sends none: refused from the header alone."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.putrequest("POST", parts.path)
    connection.putheader("Content-Type", kind)
    connection.putheader("Content-Length", str(length))
    connection.putheader("Authorization", f"Bearer {KEY}")
    connection.endheaders()
    response = connection.getresponse()
    answer = response.status, response.headers, json.loads(response.read())
    connection.close()
    return answer


def post_json(url: str, body, key: str | None = KEY):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return post(url, data, {"Content-Type": "application/json"}, key)


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = "----dalle-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, data in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{name}.png"\r\nContent-Type: image/png\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def picture(width: int = 80, height: int = 60) -> Image.Image:
    """A picture the model would not draw: a gradient with a magenta square."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    array = np.concatenate([x + 0 * y, y + 0 * x, 128 + 0 * (x + y)], axis=2).astype(np.uint8)
    array[5:20, 5:20] = (255, 0, 255)
    return Image.fromarray(array, "RGB")


def blob_mask(width: int = 80, height: int = 60, centre=(58, 40), radius=9) -> Image.Image:
    """Opaque everywhere except a transparent disc (OpenAI's mask: alpha 0 marks the edit)."""
    yy, xx = np.mgrid[:height, :width]
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    alpha = np.where(disc, 0, 255).astype(np.uint8)
    rgba = np.dstack([np.full((height, width, 3), 255, np.uint8), alpha])
    return Image.fromarray(rgba, "RGBA")


# -- the real client against the embedded model --------------------------------------------------


def test_client_generates_pngs_of_the_asked_size(server):
    url, _ = server
    answer = client(url).images.generate(
        prompt="a red heart",
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={"seed": 7},
    )
    images = [decode(base64.b64decode(item.b64_json)) for item in answer.data]
    assert [im.size for im in images] == [(256, 256), (256, 256)]
    assert all(im.format == "PNG" for im in images)
    native = client(url).images.generate(
        prompt="a blue circle", size="128x128", response_format="b64_json"
    )
    assert decode(base64.b64decode(native.data[0].b64_json)).size == (128, 128)


def test_client_edit_keeps_every_unmasked_pixel(server):
    url, _ = server
    image, mask = picture(), blob_mask()
    answer = client(url).images.edit(
        image=("picture.png", png(image), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a yellow circle",
        n=2,
        response_format="b64_json",
        extra_body={"seed": 3},
    )
    marked = np.asarray(mask)[..., 3] == 0
    source = np.asarray(image)
    for item in answer.data:
        result = decode(base64.b64decode(item.b64_json))
        assert result.size == image.size and result.mode == "RGB"
        pixels = np.asarray(result)
        assert np.array_equal(pixels[~marked], source[~marked])  # bit for bit
        assert not np.array_equal(pixels[marked], source[marked])  # the disc was redrawn


def test_client_edit_with_the_images_own_alpha_and_a_url_answer(server):
    url, _ = server
    image = picture(128, 128).convert("RGBA")
    rgba = np.asarray(image).copy()
    rgba[80:, 88:, 3] = 0  # transparent corner: no mask sent, the image's alpha marks it
    rgba[0:8, 0:8, 3] = 200  # half-transparent, not marked: kept as it is
    answer = client(url).images.edit(
        image=("picture.png", png(Image.fromarray(rgba, "RGBA")), "image/png"),
        prompt="a green square",
        size="128x128",
        response_format="url",
    )
    with urllib.request.urlopen(answer.data[0].url, timeout=30) as response:
        result = decode(response.read())
    assert result.mode == "RGBA" and result.size == (128, 128)
    pixels = np.asarray(result)
    marked = rgba[..., 3] == 0
    assert np.array_equal(pixels[~marked], rgba[~marked])
    assert (pixels[marked][:, 3] == 255).all()


def test_legacy_image_create_shape_as_raw_http(server):
    """openai<1.0's ``Image.create(prompt, n, size)``: a JSON POST whose answer is urls."""
    url, _ = server
    status, headers, body = post_json(
        f"{url}/images/generations", {"prompt": "a red heart", "n": 2, "size": "256x256"}
    )
    assert status == 200 and isinstance(body["created"], int)
    assert len(body["data"]) == 2
    for item in body["data"]:
        with urllib.request.urlopen(item["url"], timeout=30) as response:
            assert decode(response.read()).size == (256, 256)
    # 2x the embedded model's 128 px: the shipped upscaler draws it (dalle serve --upscaler auto)
    assert "128x128 and upscaled to 256x256" in headers["X-DALLE-Studio-Note"]
    # with the seed extension the raw call and the client's call give the same images
    raw = post_json(
        f"{url}/images/generations",
        {
            "prompt": "a red heart",
            "n": 1,
            "size": "256x256",
            "seed": 11,
            "response_format": "b64_json",
        },
    )[2]
    typed = client(url).images.generate(
        prompt="a red heart",
        n=1,
        size="256x256",
        response_format="b64_json",
        extra_body={"seed": 11},
    )
    assert raw["data"][0]["b64_json"] == typed.data[0].b64_json
    assert raw["seed"] == 11


def test_models_lists_the_loaded_bundle(server):
    url, _ = server
    models = client(url).models.list()
    assert [m.id for m in models.data] == ["dalle-studio-default"]
    request = urllib.request.Request(
        f"{url}/models/dalle-studio-default", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read())
    assert body["image_size"] == 128 and body["grid"] == 16
    assert body["file"] == "default.dalle.safetensors"


def error_of(status_body):
    status, _, body = status_body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "\n" not in body["error"]["message"]
    return status, body["error"]


def test_every_bad_request_is_an_openai_error_and_the_server_survives(server):
    url, process = server
    gen = f"{url}/images/generations"
    edit = f"{url}/images/edits"
    good_image, good_mask = png(picture()), png(blob_mask())
    big = png(Image.new("RGB", (1200, 1000), "white"))  # 1.2 MP > --max-megapixels 1
    cases = [
        # (request, status, param, words in the message)
        (post_json(gen, {"n": 1}), 400, "prompt", "required"),
        (post_json(gen, {"prompt": "   "}), 400, "prompt", "empty"),
        (post_json(gen, {"prompt": "x" * 1001}), 400, "prompt", "1000"),
        (post_json(gen, {"prompt": "a", "n": 0}), 400, "n", "from 1 to 10"),
        (post_json(gen, {"prompt": "a", "n": 11}), 400, "n", "from 1 to 10"),
        (post_json(gen, {"prompt": "a", "n": "two"}), 400, "n", "integer"),
        (post_json(gen, {"prompt": "a", "size": "300x300"}), 400, "size", "not offered"),
        (post_json(gen, {"prompt": "a", "size": "big"}), 400, "size", "WIDTHxHEIGHT"),
        (
            post_json(gen, {"prompt": "a", "response_format": "jpeg"}),
            400,
            "response_format",
            "'url' or 'b64_json'",
        ),
        (post_json(gen, {"prompt": "a", "colour": "red"}), 400, "colour", "Unrecognized"),
        (post_json(gen, {"prompt": "a", "temperature": -1}), 400, "temperature", "temperature"),
        (post_json(gen, {"prompt": "a", "top_p": 2}), 400, "top_p", "top-p"),
        (post_json(gen, {"prompt": "a", "seed": "x"}), 400, "seed", "integer"),
        (post_json(gen, {"prompt": "a", "stream": True}), 400, "stream", "stream"),
        (post_json(gen, b"{not json"), 400, None, "not valid JSON"),
        (post_json(gen, [1, 2]), 400, None, "JSON object"),
        (post_json(gen, {"prompt": "a", "model": "dall-e-3"}), 404, "model", "dall-e-3"),
        (post_json(gen, {"prompt": "a"}, key=None), 401, None, "API key"),
        (post_json(gen, {"prompt": "a"}, key="wrong"), 401, None, "Incorrect API key"),
        (
            declared_too_large(gen, 3 * 2**20),
            413,
            None,
            "JSON body is larger than this server's limit of 1 MB",
        ),
        (
            declared_too_large(edit, 3 * 2**20, "multipart/form-data; boundary=x"),
            413,
            None,
            "limit of 2 MB",
        ),
        (post(edit, *multipart({"prompt": "a"}, {"image": big})), 413, "image", "megapixels"),
        (
            post(edit, *multipart({"prompt": "a"}, {"image": b"not a png"})),
            400,
            "image",
            "not a readable image",
        ),
        (
            post(edit, *multipart({"prompt": "a"}, {"mask": good_mask})),
            400,
            "image",
            "required file",
        ),
        (
            post(edit, *multipart({"prompt": "a"}, {"image": good_image})),
            400,
            "image",
            "no transparency",
        ),
        (
            post(edit, *multipart({"prompt": "a"}, {"image": good_image, "mask": good_image})),
            400,
            "mask",
            "no transparency",
        ),
        (
            post(
                edit,
                *multipart(
                    {"prompt": "a"},
                    {"image": good_image, "mask": png(blob_mask(radius=0).resize((40, 30)))},
                ),
            ),
            400,
            "mask",
            "same size",
        ),
        (
            post(
                edit,
                *multipart(
                    {"prompt": "a"},
                    {"image": good_image, "mask": png(Image.new("RGBA", (80, 60), "red"))},
                ),
            ),
            400,
            "mask",
            "nothing is marked",
        ),
        (
            post(
                edit,
                *multipart(
                    {"prompt": "a", "size": "256x256"}, {"image": good_image, "mask": good_mask}
                ),
            ),
            400,
            "size",
            "80x60 like the image",
        ),
        (post_json(edit, {"prompt": "a"}), 400, None, "multipart/form-data"),
    ]
    for number, (answer, status, param, words) in enumerate(cases):
        got_status, error = error_of(answer)
        assert (got_status, error["param"]) == (status, param), (number, error)
        assert words in error["message"], (number, error["message"])
    missing = urllib.request.Request(f"{url}/files/nothing.png")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(missing, timeout=10)
    assert (
        caught.value.code == 404
        and "kept for" in json.loads(caught.value.read())["error"]["message"]
    )
    # the server is still up and answers a good request
    assert process.poll() is None
    status, _, body = post_json(gen, {"prompt": "a red heart", "response_format": "b64_json"})
    assert status == 200
    assert decode(base64.b64decode(body["data"][0]["b64_json"])).size == (128, 128)


def test_json_logs_follow_each_job(server):
    url, process = server
    before = len(process.logs)
    assert post_json(f"{url}/images/generations", {"prompt": "a red heart", "seed": 1})[0] == 200

    def this_job() -> list[dict]:
        """The log entries of the first job queued since ``before`` (an earlier test's job may
        still be logging its last line); every line must be JSON."""
        entries = [json.loads(line) for line in process.logs[before:]]
        first = next((e["job"] for e in entries if e.get("event") == "queued"), None)
        return [e for e in entries if first is not None and e.get("job") == first]

    assert wait_until(lambda: len(this_job()) >= 3)
    queued, started, done = this_job()
    assert [queued["event"], started["event"], done["event"]] == ["queued", "started", "done"]
    assert done["seconds"] > 0 and done["tokens_per_s"] > 0


# -- the queue, disconnects, timeouts and shutdown (a stand-in model) ----------------------------


class WaitingService:
    """A model that finishes a job only when ``release`` is set (or its cancel event fires)."""

    id = "waiting"
    size = 64

    def __init__(self):
        self.release = threading.Event()
        self.cancelled: list[str] = []
        self.started = threading.Semaphore(0)

    def describe(self):
        return {"id": self.id, "object": "model", "created": 0, "owned_by": "test"}

    def check_memory(self, request):
        pass

    def run(self, request, cancel):
        self.started.release()
        while not self.release.is_set():
            if cancel.wait(0.02):
                self.cancelled.append(request.prompt)
                raise JobCancelled("cancelled")
        return Result(
            [png(Image.new("RGB", (64, 64), "red"))] * request.options.n, 1, 0.1, 10.0, ""
        )


@contextmanager
def in_process(service, **settings):
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    settings = Settings(**settings)
    config = server_config(
        create_app(service, settings),
        settings,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert instance.started
    try:
        yield f"http://127.0.0.1:{port}", instance, thread
    finally:
        service.release.set()
        instance.should_exit = True
        thread.join(15)


def health(base: str) -> dict:
    return httpx.get(f"{base}/health", timeout=5).json()


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_full_queue_answers_429_with_retry_after():
    service = WaitingService()
    with in_process(service, queue_size=1) as (base, _, _):
        answers = []

        def ask(prompt):
            answers.append(
                httpx.post(
                    f"{base}/v1/images/generations",
                    json={"prompt": prompt, "response_format": "b64_json"},
                    timeout=30,
                )
            )

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        assert service.started.acquire(timeout=5)  # running
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        assert wait_until(lambda: health(base)["queued"] == 1)
        refused = httpx.post(f"{base}/v1/images/generations", json={"prompt": "third"}, timeout=10)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        service.release.set()
        first.join(10), second.join(10)
        assert sorted(a.status_code for a in answers) == [200, 200]  # nothing accepted is lost
        assert health(base)["rejected"] == 1


def test_a_client_that_disconnects_cancels_its_job():
    service = WaitingService()
    with in_process(service) as (base, _, _):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/images/generations", json={"prompt": "gone"}, timeout=0.5)
        assert wait_until(lambda: service.cancelled == ["gone"])
        assert wait_until(lambda: health(base)["cancelled"] == 1)
        # the worker is free again
        service.release.set()
        answer = httpx.post(f"{base}/v1/images/generations", json={"prompt": "next"}, timeout=10)
        assert answer.status_code == 200


def test_a_request_past_the_timeout_is_cancelled_with_504():
    service = WaitingService()
    with in_process(service, timeout=0.5) as (base, _, _):
        answer = httpx.post(f"{base}/v1/images/generations", json={"prompt": "slow"}, timeout=10)
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "timeout"
        assert wait_until(lambda: service.cancelled == ["slow"])


def test_shutdown_finishes_the_running_job_then_stops():
    service = WaitingService()
    with in_process(service) as (base, instance, thread):
        answers = []
        asking = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{base}/v1/images/generations", json={"prompt": "last"}, timeout=30)
            )
        )
        asking.start()
        assert service.started.acquire(timeout=5)
        instance.should_exit = True  # what SIGTERM does
        time.sleep(0.3)
        assert thread.is_alive()  # waiting for the running job
        service.release.set()
        asking.join(10)
        thread.join(10)
        assert not thread.is_alive()
        assert [a.status_code for a in answers] == [200]


# -- the command line -----------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "model.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DALLE_API_KEY"},
    )


def test_a_public_host_needs_an_api_key():
    done = run_cli("--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "can be reached from other machines: give --api-key" in done.stderr


def test_a_port_in_use_is_one_line():
    sock = bind("127.0.0.1", 0)
    try:
        done = run_cli("--port", str(sock.getsockname()[1]))
    finally:
        sock.close()
    assert done.returncode == 2
    assert done.stderr.strip().endswith("is in use")
    assert done.stderr.strip().count("\n") == 0


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height; its pixel data is never reached."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_hostile_bodies_are_refused_before_they_are_parsed():
    service = WaitingService()
    service.release.set()
    with in_process(service, max_upload=2**20, max_pixels=1_000_000) as (base, _, _):
        gen, edit = f"{base}/v1/images/generations", f"{base}/v1/images/edits"

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(18):  # 1.1 MB: just past the limit (a client still sending
                yield b" " * 65536  # when the answer comes would see a broken pipe)

        streamed = httpx.post(gen, content=chunks(), timeout=30)
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "request_too_large"
        bomb = httpx.post(
            edit,
            data={"prompt": "a"},
            files={"image": ("bomb.png", bomb_png(40000, 40000), "image/png")},
        )
        assert bomb.status_code == 413 and "1600 megapixels" in bomb.json()["error"]["message"]
        gif = io.BytesIO()
        Image.new("RGB", (8, 8)).save(gif, format="GIF")
        refused = httpx.post(
            edit, data={"prompt": "a"}, files={"image": ("a.gif", gif.getvalue(), "image/gif")}
        )
        assert refused.status_code == 400 and "GIF" in refused.json()["error"]["message"]
        many = {f"f{i}": (f"{i}.png", b"x", "image/png") for i in range(6)}
        too_many = httpx.post(edit, data={"prompt": "a"}, files=many)
        assert too_many.status_code == 400 and "form" in too_many.json()["error"]["message"]
        twice = httpx.post(
            edit,
            data={"prompt": ["a", "b"]},
            files={"image": ("a.png", png(picture()), "image/png")},
        )
        assert twice.status_code == 400 and twice.json()["error"]["param"] == "prompt"
        bad_utf8 = httpx.post(gen, content=b'{"prompt": "\xff"}', timeout=10)
        assert (
            bad_utf8.status_code == 400 and "not valid JSON" in bad_utf8.json()["error"]["message"]
        )
        seed = httpx.post(gen, json={"prompt": "a", "seed": 2**70}, timeout=10)
        assert seed.status_code == 400 and seed.json()["error"]["param"] == "seed"
        wrong_method = httpx.get(gen, timeout=10)
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
        # still serving
        ok = httpx.post(gen, json={"prompt": "fine", "response_format": "b64_json"}, timeout=10)
        assert ok.status_code == 200 and len(ok.json()["data"]) == 1


def test_a_job_cancelled_while_queued_never_runs():
    service = WaitingService()
    with in_process(service) as (base, _, _):
        running = threading.Thread(
            target=lambda: httpx.post(
                f"{base}/v1/images/generations", json={"prompt": "first"}, timeout=30
            )
        )
        running.start()
        assert service.started.acquire(timeout=5)
        with pytest.raises(httpx.ReadTimeout):  # queued behind "first", then gone
            httpx.post(f"{base}/v1/images/generations", json={"prompt": "queued"}, timeout=0.5)
        # out of the queue at once, its slot free, while "first" still runs
        assert wait_until(lambda: health(base)["cancelled"] == 1 and health(base)["queued"] == 0)
        assert health(base)["running"]
        service.release.set()
        running.join(10)
        assert wait_until(lambda: health(base)["done"] == 1)
        assert not service.started.acquire(timeout=0.5)  # "queued" never started
        assert service.cancelled == []
