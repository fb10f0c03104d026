"""model/inference/completion.py: the one "complete this picture" use case, and the three adapters
over it (the studio's engine, ``dalle complete``, the server's edits) giving the same pixels."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from model.bundle import load
from model.config import SamplingOptions
from model.inference import completion as use_case
from model.inference import sampling
from model.inference.completion import (
    Completion,
    Finished,
    NotEnoughMemory,
    Pasted,
    Phase,
    complete_all,
)
from model.inference.images import paste_back
from tests.helpers import tiny_bundle, tiny_bundle_file


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return tiny_bundle_file(tmp_path_factory.mktemp("completion"))


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load(bundle_path, "cpu")


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def events_of(completion: Completion, cancel=None) -> list:
    return list(completion.run(cancel))


def test_a_job_says_its_phases_in_order(bundle):
    completion = Completion(bundle, photo(40, 40), (1, 2), "a red circle", SamplingOptions(n=2))
    events = events_of(completion)
    names = [
        (e.name, e.index) if isinstance(e, Phase) else type(e).__name__
        for e in events
        if not isinstance(e, sampling.Progress)
    ]
    assert names == [
        ("reading", 0),
        ("encoding", 0),
        ("decoding", 0),
        ("pasting", 0),
        "Pasted",
        ("pasting", 1),
        "Pasted",
        "Finished",
    ]
    rows = [e for e in events if isinstance(e, sampling.Progress)]
    assert [r.rows_done for r in rows] == [1, 2, 3]  # rows 1..3 of the 4x4 grid
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("Phase", kinds.index("Progress")) == len(rows) + 2  # right after the last


@pytest.mark.parametrize(
    ("size", "cell", "feather"),
    [((40, 40), (1, 1), 0), ((57, 23), (0, 2), 0), ((23, 57), (2, 0), 3), ((131, 97), (2, 3), 5)],
)
def test_every_pixel_outside_the_rectangle_is_the_pictures_own(bundle, size, cell, feather):
    picture = photo(*size, seed=sum(size))
    completion = Completion(
        bundle, picture, cell, "a blue square", SamplingOptions(n=2, seed=4), feather=feather
    )
    pasted, done = complete_all(completion)
    x0, y0 = completion.geometry.pixel_of(cell)
    outside = np.ones((size[1], size[0]), dtype=bool)
    outside[y0:, x0:] = False
    original = np.asarray(picture)
    assert len(pasted) == len(done.images) == 2
    for image in pasted:
        result = np.asarray(image)
        assert result.shape == original.shape
        assert np.array_equal(result[outside], original[outside])
    # and the rectangle is the decoded candidate's, as paste_back puts it
    expected = paste_back(picture, done.images[0], completion.geometry, cell, feather)
    assert np.array_equal(np.asarray(pasted[0]), np.asarray(expected))


def test_only_the_cells_that_hold_the_picture_are_sampled(bundle):
    wide = Completion(bundle, photo(48, 20), (0, 1), "x", SamplingOptions(seed=1))
    assert (wide.plan.visible_rows, wide.plan.visible_cols) == (2, 4)  # 32x13 in the square
    _, done = complete_all(wide)
    assert done.model_calls == wide.plan.cells == 2 * 3


def test_a_rectangle_in_the_padding_is_refused_in_one_line(bundle):
    with pytest.raises(ValueError, match="lies in the padding beside the image"):
        Completion(bundle, photo(48, 20), (3, 0), "x")


def test_too_little_memory_is_refused_before_the_sampler_runs(bundle, monkeypatch):
    called = []

    def sampler(*args, **kwargs):
        called.append(args)
        yield from ()

    monkeypatch.setattr(use_case.model_device, "available_memory", lambda device: 1000)
    completion = Completion(bundle, photo(40, 40), (1, 1), "x", SamplingOptions(n=8))
    completion.sampler = sampler
    with pytest.raises(NotEnoughMemory) as refused:
        events_of(completion)
    assert called == []
    needed = sampling.memory_needed(bundle.config, completion.options, "cpu") + 40 * 40 * 40
    assert refused.value.needed == needed and refused.value.free == 1000
    assert "8 candidates need about" in str(refused.value) and "ask for fewer" in str(refused.value)


def test_cancel_ends_the_job_without_results(bundle):
    cancel = threading.Event()
    cancel.set()
    events = events_of(Completion(bundle, photo(40, 40), (1, 1), "x"), cancel)
    assert isinstance(events[-1], sampling.Cancelled)
    assert not any(isinstance(e, Pasted | Finished) for e in events)
    with pytest.raises(RuntimeError, match="cancelled"):
        complete_all(Completion(bundle, photo(40, 40), (1, 1), "x"), cancel)


def test_the_preview_is_the_first_candidates_grid_pasted(bundle):
    completion = Completion(bundle, photo(40, 30), (1, 1), "x", SamplingOptions(n=2, seed=2))
    progress = next(e for e in completion.run() if isinstance(e, sampling.Progress))
    with torch.inference_mode():
        decoded = bundle.vae.decode(progress.tokens[:1])[0].float()
    expected = paste_back(completion.picture, decoded, completion.geometry, (1, 1))
    assert np.array_equal(np.asarray(completion.preview(progress)), np.asarray(expected))


# -- the three adapters ------------------------------------------------------------------------


def use_case_result(bundle, picture, cell, caption, seed, n=2, upscaler=None):
    options = SamplingOptions(n=n, seed=seed)
    completion = Completion(bundle, picture, cell, caption, options, upscaler=upscaler)
    pasted, _ = complete_all(completion)
    return [np.asarray(image) for image in pasted], completion.geometry


def test_the_cli_saves_what_the_use_case_makes(bundle, bundle_path, tmp_path, upscaler):
    from model.cli import main

    picture = photo(57, 41, seed=7)
    picture.save(tmp_path / "photo.png")
    # --upscaler auto (the default): 1.8 picture pixels per model pixel, the shipped net draws
    expected, _ = use_case_result(bundle, picture, (1, 2), "a red circle", 11, upscaler=upscaler)
    code = main(["complete", "--bundle", str(bundle_path), "--image", str(tmp_path / "photo.png"),
                 "--caption", "a red circle", "--from", "1,2", "--n", "2", "--seed", "11",
                 "--precision", "fp32", "--out", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    assert code == 0
    saved = sorted((tmp_path / "out").iterdir())
    assert len(saved) == 2
    for path, pixels in zip(saved, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), pixels)


def test_the_studio_engine_shows_what_the_use_case_makes(bundle):
    from studio.engine import Engine, Job

    picture = photo(57, 41, seed=8)
    expected, _ = use_case_result(bundle, picture, (2, 1), "a blue square", seed=12)
    engine = Engine()
    try:
        engine.set_bundle(bundle)
        engine.set_speed("fp32", False)
        job = Job(np.asarray(picture), (2, 1), "a blue square", SamplingOptions(n=2, seed=12))
        finished = engine.run_job_blocking(job, lambda message: None)
    finally:
        engine.shutdown()
    assert len(finished.candidates) == 2
    for candidate, pixels in zip(finished.candidates, expected, strict=True):
        assert np.array_equal(candidate, pixels)


def test_the_servers_edit_is_the_use_case_inside_its_mask(bundle):
    from model.serve.protocol import ImageRequest
    from model.serve.service import ModelService

    picture = photo(57, 41, seed=9)
    service = ModelService(bundle, "tiny", precision="fp32")
    geometry = use_case.geometry_for(bundle, 57, 41)
    x0, y0 = geometry.pixel_of((1, 1))
    marked = np.zeros((41, 57), dtype=bool)
    marked[y0:, x0:] = True  # the whole rectangle from cell (1, 1)
    request = ImageRequest("a red circle", SamplingOptions(n=2, seed=13), "b64_json", None,
                           picture, marked)  # fmt: skip
    result = service.run(request, threading.Event())
    expected, _ = use_case_result(bundle, picture, (1, 1), "a red circle", seed=13)
    import io

    for png, pixels in zip(result.pngs, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), pixels)


def test_no_adapter_keeps_its_own_memory_rule():
    """The per-pixel working memory is written once, in model/inference/completion.py."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for path in ["model/cli/common.py", "model/serve/service.py", "studio/engine.py"]:
        text = (root / path).read_text(encoding="utf-8")
        assert "40 * pixels" not in text and "memory_needed(" not in text, path


def test_a_plan_for_another_grid_is_refused():
    bundle = tiny_bundle()
    from model.geometry import Plan

    with pytest.raises(ValueError, match="a plan for a 8x8 grid, but the model's is 4"):
        sampling.run(sampling.complete(bundle, torch.rand(3, 32, 32), Plan(8, 1, 1), "x"))


# -- the working area ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "corner", "area"),
    [
        ((301, 203), (250, 170), "auto"),
        ((203, 301), (150, 290), 97),
        ((300, 200), (10, 20), "auto"),
    ],
)
def test_an_area_keeps_every_pixel_outside_the_rectangle(bundle, size, corner, area):
    picture = photo(*size, seed=size[0])
    completion = Completion.at_pixel(
        bundle, picture, corner, "a red circle", SamplingOptions(n=2, seed=5), area=area, feather=2
    )
    x0, y0 = completion.corner
    assert x0 <= corner[0] and y0 <= corner[1]  # the cell that holds the corner
    outside = np.ones((size[1], size[0]), dtype=bool)
    outside[y0:, x0:] = False
    original = np.asarray(picture)
    pasted, done = complete_all(completion)
    for image in pasted:
        result = np.asarray(image)
        assert np.array_equal(result[outside], original[outside])
        assert not np.array_equal(result[y0:, x0:], original[y0:, x0:])


def test_an_area_shows_the_model_more_pixels_of_the_rectangle(bundle):
    picture = photo(320, 240)
    whole = Completion.at_pixel(bundle, picture, (300, 220), "x", area="whole")
    auto = Completion.at_pixel(bundle, picture, (300, 220), "x", area="auto")
    assert whole.area.pixels_per_model_pixel(32) == 10.0
    assert auto.area.pixels_per_model_pixel(32) == 1.25  # 40 px: twice the 20 px rectangle
    assert auto.view.size == (40, 40) and auto.area.box == (280, 200, 320, 240)


def test_the_whole_area_at_a_pixel_is_todays_completion(bundle):
    picture = photo(57, 41, seed=3)
    at_pixel = Completion.at_pixel(bundle, picture, (30, 20), "x", SamplingOptions(seed=1))
    cell = use_case.geometry_for(bundle, 57, 41).cell_at(30, 20)
    by_cell = Completion(bundle, picture, cell, "x", SamplingOptions(seed=1))
    assert at_pixel.cell == cell and at_pixel.area.is_whole
    assert np.array_equal(
        np.asarray(complete_all(at_pixel)[0][0]), np.asarray(complete_all(by_cell)[0][0])
    )


def test_the_cli_completes_in_the_area_it_is_given(bundle, bundle_path, tmp_path, capsys):
    from model.cli import main

    picture = photo(300, 200, seed=21)
    picture.save(tmp_path / "photo.png")
    expected = Completion.at_pixel(
        bundle, picture, (260, 170), "a red circle", SamplingOptions(seed=2), area="auto"
    )
    args = ["complete", "--bundle", str(bundle_path), "--image", str(tmp_path / "photo.png"),
            "--caption", "a red circle", "--from-px", "260,170", "--seed", "2", "--precision",
            "fp32", "--upscaler", "off", "--quiet"]  # fmt: skip
    assert main([*args, "--area", "auto", "--out", str(tmp_path / "a.png")]) == 0
    saved = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    assert np.array_equal(saved, np.asarray(complete_all(expected)[0][0]))
    capsys.readouterr()
    assert main([*args, "--area", "30", "--out", str(tmp_path / "b.png")]) == 2
    assert "--area: a working area of 30 px does not hold the 40x30 px rectangle" in (
        capsys.readouterr().err
    )
    assert main([*args, "--area", "half", "--out", str(tmp_path / "c.png")]) == 2
    assert "--area is whole, auto or a side in pixels, got 'half'" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


# -- the upscaler ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upscaler():
    from model.bundle.upscaler_files import load_upscaler

    return load_upscaler()[0]  # the shipped realesr-animevideov3 x4


def test_a_scaled_down_picture_is_upscaled_and_keeps_its_pixels(bundle, upscaler):
    picture = photo(200, 150, seed=31)  # 6.25 picture pixels per model pixel
    options = SamplingOptions(n=2, seed=6)
    upscaled = Completion(bundle, picture, (2, 1), "x", options, upscaler=upscaler, feather=3)
    plain = Completion(bundle, picture, (2, 1), "x", options, feather=3)
    events = events_of(upscaled)
    phases = [e.name for e in events if isinstance(e, Phase)]
    assert phases[-2:] == ["upscaling", "upscaling"]
    pasted = [np.asarray(e.image) for e in events if isinstance(e, Pasted)]
    lanczos = [np.asarray(image) for image in complete_all(plain)[0]]
    x0, y0 = upscaled.corner
    outside = np.ones((150, 200), dtype=bool)
    outside[y0:, x0:] = False
    for result, other in zip(pasted, lanczos, strict=True):
        assert np.array_equal(result[outside], np.asarray(picture)[outside])
        assert not np.array_equal(result[y0:, x0:], other[y0:, x0:])  # drawn by the net


def test_the_upscaled_region_lies_where_lanczos_puts_it(upscaler):
    """The net's region and Lanczos' agree best unshifted: the upscaled crop is mapped onto the
    same pixels (here a model pixel is 8 picture pixels; shifts of half of one do worse)."""
    from skimage import data

    from model.geometry import Geometry
    from model.inference.completion import upscaled_region

    small = Image.fromarray(data.astronaut()).resize((32, 32), Image.Resampling.LANCZOS)
    decoded = torch.from_numpy(np.array(small)).permute(2, 0, 1).float() / 255
    for width, height, cell in [(256, 200, (1, 1)), (200, 256, (1, 2))]:
        geometry = Geometry(width, height, 32, 8)
        region = upscaled_region(decoded, geometry, cell, upscaler).astype(int)
        x0, y0 = geometry.pixel_of(cell)
        blank = Image.new("RGB", (width, height))
        lanczos = np.asarray(paste_back(blank, decoded, geometry, cell))[y0:, x0:].astype(int)
        assert region.shape == lanczos.shape == (height - y0, width - x0, 3)

        unshifted = shifted_difference(region, lanczos, 0, 0)
        assert unshifted < 20
        for dx, dy in [(-4, 0), (4, 0), (0, -4), (0, 4)]:
            assert unshifted < shifted_difference(region, lanczos, dx, dy)


def shifted_difference(region: np.ndarray, reference: np.ndarray, dx: int, dy: int) -> float:
    """Mean absolute difference of ``region`` moved by (dx, dy) against ``reference``, inside
    a 10 px border."""
    h, w = region.shape[:2]
    moved = region[10 + dy : h - 10 + dy, 10 + dx : w - 10 + dx]
    return float(np.abs(moved - reference[10:-10, 10:-10]).mean())


def test_a_picture_near_the_models_size_is_not_upscaled(bundle, upscaler):
    picture = photo(40, 40)  # 1.25 picture pixels per model pixel: Lanczos alone
    options = SamplingOptions(seed=7)
    with_net = Completion(bundle, picture, (1, 1), "x", options, upscaler=upscaler)
    without = Completion(bundle, picture, (1, 1), "x", options)
    events = events_of(with_net)
    assert "upscaling" not in [e.name for e in events if isinstance(e, Phase)]
    assert np.array_equal(
        np.asarray(next(e.image for e in events if isinstance(e, Pasted))),
        np.asarray(complete_all(without)[0][0]),
    )


def test_cancel_while_upscaling_ends_the_job_without_results(bundle, upscaler):
    cancel = threading.Event()
    completion = Completion(bundle, photo(300, 300), (1, 1), "x", upscaler=upscaler)
    events = []
    for event in completion.run(cancel):
        events.append(event)
        if isinstance(event, Phase) and event.name == "upscaling":
            cancel.set()
    assert isinstance(events[-1], sampling.Cancelled)
    assert not any(isinstance(e, Pasted) for e in events)


def test_an_upscaler_that_cannot_be_read_is_one_line(bundle_path, tmp_path, capsys):
    from model.cli import main

    photo(60, 50).save(tmp_path / "photo.png")
    (tmp_path / "fake.upscaler.safetensors").write_bytes(b"not a safetensors file")
    for given, said in [
        (tmp_path / "missing.upscaler.safetensors", "no such upscaler file"),
        (tmp_path / "fake.upscaler.safetensors", "fake.upscaler.safetensors"),
    ]:
        code = main(["complete", "--bundle", str(bundle_path), "--image",
                     str(tmp_path / "photo.png"), "--caption", "x", "--from", "1,1",
                     "--upscaler", str(given), "--out", str(tmp_path / "out.png")])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        assert err[0].startswith("dalle complete: error: --upscaler: ") and said in err[0]
    assert not (tmp_path / "out.png").exists()


def test_the_server_upscales_what_it_makes_smaller_than_asked(bundle, upscaler):
    from model.serve.protocol import ImageRequest
    from model.serve.service import ModelService, upscaler_bytes

    options = SamplingOptions(n=1, seed=3)
    request = ImageRequest("a red circle", options, "b64_json", (256, 256))
    upscaled = ModelService(bundle, "tiny", "fp32", upscaler).run(request, threading.Event())
    plain = ModelService(bundle, "tiny", "fp32").run(request, threading.Event())
    assert "upscaled to 256x256" in upscaled.note and "resized to 256x256" in plain.note
    import io

    pictures = [Image.open(io.BytesIO(r.pngs[0])) for r in (upscaled, plain)]
    assert [p.size for p in pictures] == [(256, 256), (256, 256)]
    assert not np.array_equal(np.asarray(pictures[0]), np.asarray(pictures[1]))
    same_size = ImageRequest("a red circle", options, "b64_json", (32, 32))
    assert "resized" in ModelService(bundle, "t", "fp32", upscaler).run(same_size, None).note
    assert upscaler_bytes(None) == 0 and 20 * 2**20 < upscaler_bytes(upscaler) < 200 * 2**20


def test_the_servers_edit_regenerates_only_the_masks_bounding_rectangle(bundle):
    """A small mask near the top-left: the cells of its bounding rectangle are sampled, not the
    rectangle from it to the corner; every unmarked pixel is the image's own."""
    import io
    import re

    from model.serve.protocol import ImageRequest
    from model.serve.service import ModelService

    picture = photo(64, 64, seed=17)  # 2x the tiny model: its cells are 16 px
    marked = np.zeros((64, 64), dtype=bool)
    marked[5:14, 6:12] = True  # inside the cell (0, 0)
    request = ImageRequest("a red circle", SamplingOptions(n=1, seed=2), "b64_json", None,
                           picture, marked)  # fmt: skip
    result = ModelService(bundle, "tiny", precision="fp32").run(request, threading.Event())
    cells = int(re.search(r", (\d+) of the 4x4 cells", result.note).group(1))
    assert cells == 1  # to the corner it would have been all 16
    pixels = np.asarray(Image.open(io.BytesIO(result.pngs[0])).convert("RGB"))
    original = np.asarray(picture)
    assert np.array_equal(pixels[~marked], original[~marked])
    assert not np.array_equal(pixels[marked], original[marked])


@pytest.mark.parametrize("kind", ["dvae", "vq"])
@pytest.mark.parametrize(
    ("size", "area"), [((301, 203), "auto"), ((203, 301), 120), ((97, 61), 40)]
)
def test_every_image_tokenizer_keeps_the_pixels_outside_at_every_area(kind, size, area, upscaler):
    bundle = tiny_bundle(kind=kind)
    picture = photo(*size, seed=size[1])
    corner = (size[0] * 3 // 4, size[1] * 2 // 3)
    completion = Completion.at_pixel(
        bundle, picture, corner, "x", SamplingOptions(n=1, seed=9), area=area, upscaler=upscaler
    )
    x0, y0 = completion.corner
    outside = np.ones((size[1], size[0]), dtype=bool)
    outside[y0:, x0:] = False
    result = np.asarray(complete_all(completion)[0][0])
    assert np.array_equal(result[outside], np.asarray(picture)[outside])
