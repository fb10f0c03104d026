"""The Krita plug-in's core (issue 32), plain Python against a live ``dalle serve`` on the embedded
model: selection → region and mask, the crop a large document sends, the request's fields, the
answers → the region's pixels at document resolution with every other pixel the document's own,
one-line errors for a bad URL, a server that is down and a wrong key, and the server launcher.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn")

from krita_plugin.dalle_studio import client, core  # noqa: E402

KEY = "krita-key-7"
PYTHON_DALLE = f"{sys.executable} -m model.cli"


class PilCodec:
    """The tests' codec: Pillow decodes and resizes (Krita's side uses QImage)."""

    def decode(self, png: bytes) -> tuple[bytes, int, int]:
        image = Image.open(io.BytesIO(png)).convert("RGBA")
        return image.tobytes(), image.width, image.height

    def resize(self, rgba: bytes, width: int, height: int, to: tuple[int, int]) -> bytes:
        image = Image.frombytes("RGBA", (width, height), rgba)
        return image.resize(to, Image.Resampling.LANCZOS).tobytes()


CODEC = PilCodec()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    """``dalle serve --api-key KEY`` on the embedded model (128 px); yields its /v1 URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "model.cli", "serve", "--port", "0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = process.stdout.readline()
    assert line.startswith("serving dalle-studio-default on http://127.0.0.1:"), line
    yield line.split()[-1]
    process.terminate()
    process.wait(30)


def painting(width: int, height: int) -> bytes:
    """A picture with detail everywhere (gradients and stripes), opaque, as RGBA bytes."""
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.stack(
        [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), (x // 7 % 2) * 200 + 30],
        axis=-1,
    ).astype(np.uint8)
    alpha = np.full((height, width, 1), 255, np.uint8)
    return np.concatenate([rgba, alpha], axis=-1).tobytes()


def as_array(rgba: bytes, width: int, height: int) -> np.ndarray:
    return np.frombuffer(rgba, np.uint8).reshape(height, width, 4)


def generate(url: str, document: bytes, size, bounds, n=2, seed=9, guidance=None):
    """What the docker does on Generate: plan, crop, send, place every candidate."""
    server = client.Server(url, KEY)
    model = server.model()
    plan = core.plan_edit(core.region_of(bounds, size), size, model.image_size)
    image, mask = core.edit_images(plan, core.crop_pixels(document, size[0], plan.crop), CODEC)
    request = client.EditRequest("a red circle", image, mask, n, seed, guidance, model.id)
    answer = server.edit(request)
    regions = [core.region_from_answer(plan, png, CODEC) for png in answer.pngs]
    return plan, answer, regions, (image, mask)


def outside_kept_inside_changed(document, plan, region_pixels) -> None:
    width, height = plan.document
    before = as_array(document, width, height)
    after = as_array(core.composite(document, plan, region_pixels), width, height)
    r = plan.region
    inside = np.zeros((height, width), bool)
    inside[r.y : r.bottom, r.x : r.right] = True
    assert np.array_equal(after[~inside], before[~inside])  # bit for bit
    assert not np.array_equal(after[inside], before[inside])
    assert (after[inside][:, 3] == 255).all()


# -- plain Python, no server -------------------------------------------------------------------


def test_selection_bounds_become_the_region_clipped_to_the_document():
    assert core.region_of((10, 20, 30, 40), (100, 100)) == core.Rect(10, 20, 30, 40)
    assert core.region_of((-5, 90, 20, 30), (100, 100)) == core.Rect(0, 90, 15, 10)
    for bounds, words in [
        (None, "nothing is selected"),
        ((0, 0, 0, 5), "nothing is selected"),
        ((200, 10, 5, 5), "lies outside the 100x100 document"),
    ]:
        with pytest.raises(core.PluginError, match=words) as error:
            core.region_of(bounds, (100, 100))
        assert "\n" not in str(error.value)


def test_the_mask_is_transparent_exactly_on_the_region_and_the_png_reads_back():
    hole = core.Rect(3, 2, 4, 5)
    mask = core.encode_png(core.mask_pixels((10, 8), hole), 10, 8)
    alpha = np.asarray(Image.open(io.BytesIO(mask)).getchannel("A"))
    expected = np.full((8, 10), 255, np.uint8)
    expected[2:7, 3:7] = 0
    assert np.array_equal(alpha, expected)
    picture = painting(37, 23)
    decoded = Image.open(io.BytesIO(core.encode_png(picture, 37, 23)))
    assert decoded.mode == "RGBA" and decoded.tobytes() == picture
    assert core.swap_red_blue(core.swap_red_blue(picture)) == picture
    assert core.swap_red_blue(bytes([1, 2, 3, 4])) == bytes([3, 2, 1, 4])


def test_a_small_selection_in_a_large_document_plans_a_small_crop_around_it():
    plan = core.plan_edit(core.Rect(1500, 1000, 60, 40), (2000, 1500), 128)
    assert (plan.crop.width, plan.crop.height) == (128, 128) and not plan.scaled
    crop, region = plan.crop, plan.region
    assert crop.x <= region.x and region.right <= crop.right
    assert crop.y <= region.y and region.bottom <= crop.bottom
    corner = core.plan_edit(core.Rect(1990, 0, 10, 10), (2000, 1500), 128).crop
    assert (corner.x, corner.y, corner.right) == (1872, 0, 2000)  # kept inside the document
    big = core.plan_edit(core.Rect(100, 100, 1500, 1200), (2000, 1500), 128)
    assert big.crop == core.Rect(0, 0, 2000, 1500) and big.sent == (1024, 768)
    hole = big.sent_region()  # covers the region once scaled
    assert hole.x * 2000 / 1024 <= 100 and hole.right * 2000 / 1024 >= 1600


# -- against a live dalle serve ----------------------------------------------------------------


def test_models_reads_the_served_model_and_its_card_headline(served):
    model = client.Server(served, KEY).model()
    assert model.id == "dalle-studio-default" and model.image_size == 128
    assert model.headline and "tokenizer PSNR" in model.headline and "%" in model.headline
    # the line Settings shows for the same card, written once in model/card.py
    from model import card as card_schema
    from studio import catalog

    card = catalog.read_card(catalog.default_bundle_path())
    assert model.headline == card_schema.measured(card)
    assert model.id in model.describe() and "\n" not in model.describe()


def test_each_candidate_keeps_every_pixel_outside_the_region(served):
    size = (160, 120)
    document = painting(*size)
    plan, answer, regions, (image, mask) = generate(served, document, size, (90, 50, 40, 30))
    assert answer.seed == 9 and len(regions) == 2  # the request's n and seed were honoured
    assert Image.open(io.BytesIO(image)).size == plan.sent
    alpha = np.asarray(Image.open(io.BytesIO(mask)).getchannel("A"))
    hole = plan.sent_region()
    assert (alpha == 0).sum() == hole.width * hole.height == 40 * 30
    for pixels in regions:
        assert len(pixels) == 40 * 30 * 4
        outside_kept_inside_changed(document, plan, pixels)
    again = generate(served, document, size, (90, 50, 40, 30))[2]
    assert again == regions  # the same seed: the same candidates
    guided = generate(served, document, size, (90, 50, 40, 30), n=1, seed=9, guidance=3.0)[2]
    assert guided[0] != regions[0]  # guidance reached the sampler


def test_a_large_document_sends_the_crop_and_gets_the_region_back_at_its_resolution(served):
    size = (2000, 1500)
    document = painting(*size)
    plan, _, regions, (image, _) = generate(served, document, size, (1500, 1000, 60, 40), n=1)
    assert Image.open(io.BytesIO(image)).size == (128, 128)  # the crop, not the canvas
    assert len(regions[0]) == 60 * 40 * 4
    outside_kept_inside_changed(document, plan, regions[0])
    plan, _, regions, (image, _) = generate(served, document, size, (300, 200, 1400, 1100), n=1)
    assert Image.open(io.BytesIO(image)).size == plan.sent == (1024, 768)  # scaled to fit
    assert len(regions[0]) == 1400 * 1100 * 4  # scaled back to document resolution
    outside_kept_inside_changed(document, plan, regions[0])


def test_a_bad_url_a_server_that_is_down_and_a_wrong_key_are_one_line(served):
    with pytest.raises(core.PluginError, match="must look like http://127.0.0.1:8000/v1"):
        client.Server("ftp://example/v1")
    down = client.Server(f"http://127.0.0.1:{free_port()}/v1")
    failures = []
    for call in (down.model, lambda: down.edit(client.EditRequest("x", b"", b""))):
        with pytest.raises(core.PluginError) as error:
            call()
        failures.append(str(error.value))
    hint = ": connection refused; start dalle serve, or press Start dalle serve"
    assert failures == [
        f"no server answers at {down.url}{hint}",
        f"no answer from {down.url}{hint}",
    ]
    assert client.plain(TimeoutError("timed out")) == "timed out"
    assert client.plain("Connection refused") == "connection refused"  # Qt's errorString
    with pytest.raises(core.PluginError, match=r"HTTP 401\): Incorrect API key") as error:
        client.Server(served, "wrong").model()
    refused = client.Server(served, KEY)
    image = core.encode_png(painting(8, 8), 8, 8)
    with pytest.raises(core.PluginError, match=r"HTTP 400\).*no fully transparent") as error:
        refused.edit(client.EditRequest("x", image, image))
    assert all("\n" not in text for text in failures + [str(error.value)])


def test_cancel_closes_the_connection_of_the_edit_in_flight():
    with socket.socket() as listener:  # a server that never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = client.Server(f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
        outcome = []

        def edit():
            try:
                server.edit(client.EditRequest("x", b"png", b"png"))
            except core.PluginError as error:
                outcome.append(str(error))

        thread = threading.Thread(target=edit)
        thread.start()
        accepted, _ = listener.accept()
        accepted.recv(65536)
        server.cancel()
        thread.join(10)
        accepted.close()
    assert outcome == ["cancelled"]


def test_the_launcher_starts_dalle_serve_and_stops_it():
    server = client.Server(f"http://127.0.0.1:{free_port()}/v1", KEY)
    assert not server.answers()
    launcher = client.Launcher(PYTHON_DALLE)
    launcher.start(server)
    try:
        assert launcher.running() and server.model().id == "dalle-studio-default"
    finally:
        launcher.stop()
    assert not launcher.running() and not server.answers()
    for command, words in [
        ("/nonexistent/dalle", "cannot run '/nonexistent/dalle'"),
        ("", "the dalle command is empty"),
        (f"{PYTHON_DALLE} --no-such-option", "dalle serve stopped: "),
    ]:
        with pytest.raises(core.PluginError, match=words) as error:
            client.Launcher(command).start(server, wait=60)
        assert "\n" not in str(error.value)
