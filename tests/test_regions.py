"""Regions anywhere (issue 31): a region that ends inside the picture, its forced cells, the
lookahead that scores the kept cells after it, and its paste."""

from __future__ import annotations

import pytest

from model.geometry import Area, Geometry, Plan, working_area


def test_a_region_in_the_middle_names_its_cells_and_the_kept_ones_after_it():
    plan = Plan(6, 1, 2, end=(3, 4))
    assert (plan.bottom, plan.right, plan.rows, plan.cells, plan.last_col) == (3, 4, 2, 4, 3)
    assert plan.masked_cells == [8, 9, 14, 15]
    assert not plan.to_corner
    # row 1 right of it, row 2 left and right of it, rows 3-5 whole
    assert plan.following_cells == [10, 11, 12, 13, 16, 17] + list(range(18, 36))
    assert set(plan.following_cells).isdisjoint(plan.masked_cells)


def test_a_region_to_the_corner_is_todays_plan():
    old, new = Plan(8, 2, 3, 6, 7), Plan(8, 2, 3, 6, 7, end=(6, 7))
    assert old.masked_cells == new.masked_cells and old.cells == new.cells == 16
    assert old == new and old.last_col == 6 and old.to_corner
    # kept cells after the first one: only those left of the region in its lower rows
    assert old.following_cells == [r * 8 + c for r in (3, 4, 5) for c in (0, 1, 2)]
    assert Geometry(100, 60, 64, 8).plan((1, 1)) == Plan(
        8, 1, 1, *Geometry(100, 60, 64, 8).visible_grid
    )


@pytest.mark.parametrize(
    "end, message",
    [
        ((1, 5), "must lie below and right of its start"),
        ((3, 2), "must lie below and right of its start"),
        ((7, 4), "past the image's 6x8 visible cells"),
        ((3, 9), "past the image's 6x8 visible cells"),
    ],
)
def test_a_bad_end_is_a_one_line_error(end, message):
    with pytest.raises(ValueError, match=message) as caught:
        Plan(8, 1, 2, 6, 8, end=end)
    assert "\n" not in str(caught.value)


def test_the_end_pixel_snaps_to_the_cell_that_holds_the_last_pixel():
    geometry = Geometry(100, 60, 64, 8)  # 0.64 model px per pixel, 5x8 visible cells
    assert geometry.end_cell(100, 60) == geometry.visible_grid
    assert geometry.end_cell(13, 13) == (1, 1)  # pixel 12 is in cell 0 (12 * 0.64 = 7.7)
    assert geometry.end_cell(14, 14) == (2, 2)
    with pytest.raises(ValueError, match="outside the 100x60 image"):
        geometry.end_cell(101, 10)
    # a picture far larger than the model: the last pixel is still in the last visible cell
    huge = Geometry(10003, 7001, 64, 8)
    assert huge.end_cell(10003, 7001) == huge.visible_grid


def test_an_area_ends_where_told_and_keeps_todays_default():
    assert Area((300, 200)).box == (0, 0, 300, 200) and Area((300, 200)).is_whole
    area = Area((300, 200), 10, 20, 250, 180)
    assert (area.width, area.height, area.is_whole) == (240, 160, False)
    with pytest.raises(ValueError, match="does not lie within the 300x200 picture"):
        Area((300, 200), 10, 20, 301, 180)
    with pytest.raises(ValueError, match="does not lie within"):
        Area((300, 200), 10, 20, 10, 180)


def test_auto_shows_a_margin_of_kept_pixels_past_a_region_inside_the_picture():
    picture = (2400, 1600)
    # to the corner: exactly today's area
    assert working_area(picture, (1400, 900), 256, "auto") == working_area(
        picture, (1400, 900), 256, "auto", end=picture
    )
    area = working_area(picture, (1000, 600), 256, "auto", end=(1400, 900), factor=8)
    left, top, right, bottom = area.box
    # a quarter of the 400 px side (at least a cell: 900 px / 32 cells = 29 px) past the region
    assert (right, bottom) == (1500, 1000)
    assert right - left == bottom - top == 900  # twice the side plus the margin
    assert left < 1000 and top < 600
    # near the picture's edge the margin is what the picture has
    area = working_area(picture, (2000, 1300), 256, "auto", end=(2380, 1590))
    assert area.box[2:] == (2400, 1600)
    # a small region: the margin is at least one model cell of the area
    area = working_area(picture, (1000, 600), 256, "auto", end=(1020, 610), factor=8)
    assert area.box[2] - 1020 >= area.width * 8 / 256
    assert working_area(picture, (1000, 600), 256, "whole", end=(1020, 610)).is_whole


def test_an_area_in_pixels_keeps_what_margin_it_can():
    area = working_area((2400, 1600), (1000, 600), 256, 450, end=(1400, 900))
    assert area.box == (1000, 500, 1450, 950)  # 50 px of margin: all the side leaves
    with pytest.raises(ValueError, match="must end below and right of its start"):
        working_area((2400, 1600), (1000, 600), 256, "auto", end=(900, 900))
    with pytest.raises(ValueError, match="inside the 2400x1600 picture"):
        working_area((2400, 1600), (1000, 600), 256, "auto", end=(2401, 900))


# -- the sampler: forced cells, sampled cells and the lookahead, in every family ----------------


def studio_model(layout: str = "studio"):
    import torch

    from model.config import TransformerConfig
    from model.networks.transformer import Transformer

    torch.manual_seed(1)
    extra = (
        dict(layout="rudalle", sandwich_norm=True, head_norm=True, head_bias=True)
        if layout == "rudalle"
        else {}
    )
    config = TransformerConfig(
        text_vocab=50, text_len=6, image_vocab=32, grid=6, dim=32, depth=2, heads=2,
        conv_kernel=3, **extra,
    )  # fmt: skip
    return Transformer(config).eval()


def bart_model():
    import torch

    from model.config import BartConfig
    from model.networks.bart import BartDalle

    torch.manual_seed(2)
    config = BartConfig(
        text_vocab=50, image_vocab=32, image_rows=33, embed_dim=32, heads=2, glu_dim=48,
        encoder_layers=1, decoder_layers=2, text_len=6, grid=6, start_token=32,
    )  # fmt: skip
    model = BartDalle(config).eval()
    with torch.no_grad():  # BART starts with zero biases: random ones make the test mean more
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


MODELS = {"studio": studio_model, "rudalle": lambda: studio_model("rudalle"), "bart": bart_model}
MIDDLE = Plan(6, 1, 2, end=(4, 4))


def picture_tokens(model, seed: int = 3):
    import torch

    grid = model.config.grid
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(2, 50, (model.config.text_len,), generator=generator)
    return text, torch.randint(0, 32, (grid, grid), generator=generator)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("plan", [MIDDLE, Plan(6, 0, 0, end=(2, 3)), Plan(6, 2, 0, end=(6, 1))])
def test_forced_cells_are_the_pictures_and_only_the_region_is_sampled(family, plan):
    import torch

    from model.config import SamplingOptions
    from model.inference.sampling import Progress, Sampled, plan_mask, run, sample_tokens

    model = MODELS[family]()
    text, image = picture_tokens(model)
    options = SamplingOptions(n=4, seed=5, temperature=3.0)
    messages = list(sample_tokens(model, text, image, plan, options))
    sampled = messages[-1]
    assert isinstance(sampled, Sampled) and sampled.model_calls == plan.cells
    mask = plan_mask(plan)
    assert torch.equal(sampled.tokens[:, ~mask], image.expand(4, -1, -1)[:, ~mask])
    assert not torch.equal(sampled.tokens[:, mask], image.expand(4, -1, -1)[:, mask])
    rows = [m.row for m in messages if isinstance(m, Progress)]
    assert rows == list(range(plan.row, plan.bottom))  # one Progress per region row
    # the cache's chunks (kept cells right of the region prefilled before the next row) equal
    # recomputing every prefix
    again = run(sample_tokens(model, text, image, plan, options, use_cache=False))
    assert torch.equal(again.tokens, sampled.tokens)


def full_recompute(model, text, tokens, plan):
    """Each following cell's log-probability from its own prefix, one call per cell."""
    import torch

    cfg = model.config
    totals = []
    for grid in tokens:
        flat = grid.reshape(1, -1)
        stream = model.stream(text.view(1, -1), flat)
        total = 0.0
        for cell in plan.following_cells:
            logits = model(stream[:, : cfg.text_len + cell + 1], 0, None, last_only=True).image
            total += logits[0, -1].double().log_softmax(-1)[flat[0, cell]].item()
        totals.append(total)
    return torch.tensor(totals, dtype=torch.float64)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_lookahead_is_the_full_recompute_log_likelihood(family):
    import torch

    from model.config import SamplingOptions
    from model.inference.lookahead import lookahead_scores
    from model.inference.sampling import run, sample_tokens

    model = MODELS[family]()
    text, image = picture_tokens(model)
    tokens = run(sample_tokens(model, text, image, MIDDLE, SamplingOptions(n=3, seed=1))).tokens
    scores = lookahead_scores(model, text, tokens, MIDDLE, chunk=2)
    reference = full_recompute(model, text, tokens, MIDDLE)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.allclose(scores.double(), reference, atol=1e-4, rtol=0)
    assert len(set(scores.tolist())) == 3  # the candidates differ, and so do their fits
    assert torch.equal(lookahead_scores(model, text, tokens, Plan(6, 5, 0)), torch.zeros(3))


# -- complete: K candidates per one asked for, kept by their lookahead --------------------------


def square_picture(bundle, seed: int = 0):
    import torch

    size = bundle.config.vae.image_size
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["dvae", "vq"])
def test_complete_with_lookahead_keeps_the_likeliest_and_forces_the_rest(kind):
    import torch

    from model.config import SamplingOptions
    from model.inference.lookahead import lookahead_scores
    from model.inference.sampling import complete, plan_mask, run, sample_tokens
    from tests.helpers import tiny_bundle

    bundle = tiny_bundle(kind=kind)
    grid = bundle.config.transformer.grid
    plan = Plan(grid, 1, 1, end=(3, 3))
    image = square_picture(bundle)
    own = bundle.vae.encode(image.unsqueeze(0))[0]
    caption = "a red circle"
    done = run(complete(bundle, image, plan, caption, SamplingOptions(n=2, seed=7), lookahead=3))
    assert done.tokens.shape == (2, grid, grid) and done.images.shape[0] == 2
    mask = plan_mask(plan)
    assert torch.equal(done.tokens[:, ~mask], own.expand(2, -1, -1)[:, ~mask])
    assert done.model_calls == plan.cells  # the K x n candidates run in one batch
    # the same seed's six candidates, scored: the two kept are the best two, best first
    text = bundle.tokenizer.encode([caption])[0]
    six = run(
        sample_tokens(
            bundle.transformer, text, own, plan, SamplingOptions(n=6, seed=7),
            bundle.tokenizer.empty(1)[0],
        )
    ).tokens  # fmt: skip
    every = lookahead_scores(bundle.transformer, text, six, plan)
    best = every.argsort(descending=True)[:2].tolist()
    assert done.order == best and torch.equal(done.tokens, six[best])
    assert torch.equal(done.lookahead, every[best])
    # K = 1: no lookahead, the sampler's own n candidates in its order, as ever
    once = run(complete(bundle, image, plan, caption, SamplingOptions(n=2, seed=7)))
    two = run(
        sample_tokens(
            bundle.transformer, text, own, plan, SamplingOptions(n=2, seed=7),
            bundle.tokenizer.empty(1)[0],
        )
    ).tokens  # fmt: skip
    assert once.lookahead is None and once.order == [0, 1] and torch.equal(once.tokens, two)


def test_lookahead_must_be_a_whole_number_of_at_least_one():
    from model.inference.sampling import complete, run
    from tests.helpers import tiny_bundle

    bundle = tiny_bundle()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="lookahead must be a whole number of at least 1"):
            run(complete(bundle, None, (0, 0), "a red circle", lookahead=bad))


def test_with_a_reranker_the_lookahead_chooses_and_the_reranker_orders():
    import torch

    from model.config import RerankerConfig, SamplingOptions
    from model.inference.lookahead import lookahead_scores
    from model.inference.sampling import complete, run, sample_tokens
    from model.networks.rerank import Reranker
    from tests.helpers import tiny_bundle

    bundle = tiny_bundle()
    bundle.config.reranker = RerankerConfig(
        text_vocab=bundle.tokenizer.padded_vocab_size, text_len=bundle.tokenizer.text_len,
        image_size=bundle.config.vae.image_size, dim=16, text_layers=1, image_width=8,
    )  # fmt: skip
    bundle.reranker = Reranker(bundle.config.reranker).eval()
    plan, caption = Plan(4, 1, 1, end=(3, 3)), "a red circle"
    image = square_picture(bundle, 1)
    done = run(complete(bundle, image, plan, caption, SamplingOptions(n=3, seed=4), lookahead=4))
    assert torch.all(done.scores[:-1] >= done.scores[1:])  # reranked, best first
    text, own = bundle.tokenizer.encode([caption])[0], bundle.vae.encode(image.unsqueeze(0))[0]
    twelve = run(
        sample_tokens(
            bundle.transformer, text, own, plan, SamplingOptions(n=12, seed=4),
            bundle.tokenizer.empty(1)[0],
        )
    ).tokens  # fmt: skip
    every = lookahead_scores(bundle.transformer, text, twelve, plan)
    # the three kept are the three likeliest of the twelve sampled, whatever the reranker says
    assert sorted(done.order) == sorted(every.argsort(descending=True)[:3].tolist())
    assert torch.equal(done.tokens, twelve[done.order])
    assert torch.equal(done.lookahead, every[done.order])


# -- the paste: only the region changes, feathered where it meets kept pixels ------------------


def test_blend_into_feathers_every_inner_border_and_writes_only_the_region():
    import numpy as np

    from model.inference.images import blend_into

    out = np.zeros((7, 9, 3), np.uint8)
    region = np.full((4, 5, 3), 240, np.uint8)
    blend_into(out, region, (2, 1), 2, (True, True))
    assert out[:, :2].max() == 0 and out[:, 7:].max() == 0  # left of and right of it
    assert out[:1].max() == 0 and out[5:].max() == 0  # above and below it
    assert out[1, 2:7, 0].tolist() == [80, 80, 80, 80, 80]  # its top row: a third
    assert out[2, 2:7, 0].tolist() == [80, 160, 160, 160, 80]
    assert out[3, 2:7, 0].tolist() == [80, 160, 160, 160, 80]  # only 4 rows: no full weight
    assert out[4, 2:7, 0].tolist() == [80, 80, 80, 80, 80]  # its bottom row, an inner border
    corner = np.zeros((7, 9, 3), np.uint8)
    blend_into(corner, region, (2, 1), 2)  # to the corner: only the top and left feathered
    assert corner[4, 2:7, 0].tolist() == [80, 160, 240, 240, 240]


def picture(width: int, height: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize(
    "size, corner, end",
    [
        ((45, 31), (12, 9), (30, 20)),  # in the middle
        ((45, 31), (0, 9), (20, 25)),  # at the left edge
        ((31, 45), (5, 0), (25, 12)),  # at the top edge
        ((45, 31), (12, 9), (45, 31)),  # to the corner
    ],
)
@pytest.mark.parametrize("feather", [0, 2])
def test_every_pixel_outside_the_region_is_the_pictures(size, corner, end, feather):
    import numpy as np

    from model.config import SamplingOptions
    from model.inference.completion import Completion, complete_all
    from tests.helpers import tiny_bundle

    bundle = tiny_bundle()
    original = picture(*size)
    options = SamplingOptions(n=2, seed=3)
    job = Completion.at_pixel(bundle, original, corner, "a red circle", options, end=end,
                              feather=feather, lookahead=2)  # fmt: skip
    x0, y0 = job.corner
    x1, y1 = job.end_pixel
    assert x0 <= corner[0] < end[0] <= x1 and y0 <= corner[1] < end[1] <= y1  # snapped outwards
    assert (job.end is None) == (end == size)
    images, done = complete_all(job)
    assert done.model_calls == job.plan.cells
    before = np.asarray(original)
    inside = np.zeros(before.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    for image in images:
        after = np.asarray(image)
        assert after.shape == before.shape
        assert np.array_equal(after[~inside], before[~inside])
        assert not np.array_equal(after[inside], before[inside])


def test_a_region_to_the_corner_pastes_what_it_always_did():
    import numpy as np

    from model.config import SamplingOptions
    from model.inference.completion import Completion, complete_all
    from tests.helpers import tiny_bundle

    bundle = tiny_bundle()
    original = picture(45, 31, 1)
    options = SamplingOptions(n=2, seed=9)
    today = Completion.at_pixel(bundle, original, (12, 9), "a red circle", options, feather=3)
    named = Completion.at_pixel(
        bundle, original, (12, 9), "a red circle", options, feather=3, end=(45, 31)
    )
    assert named.plan == today.plan and named.end is None
    for a, b in zip(complete_all(today)[0], complete_all(named)[0], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_auto_shows_the_model_the_kept_pixels_right_of_and_below_the_region():
    from model.inference.completion import Completion
    from tests.helpers import tiny_bundle

    bundle = tiny_bundle()  # a 32 px model: a 200x150 picture is scaled down in whole
    original = picture(200, 150)
    job = Completion.at_pixel(bundle, original, (60, 40), "a red circle", area="auto",
                              end=(76, 56))  # fmt: skip
    left, top, right, bottom = job.area.box
    assert right > 76 and bottom > 56 and left < 60 and top < 40
    plan = job.plan
    assert not plan.to_corner and plan.right < plan.visible_cols and plan.bottom < plan.visible_rows
    assert len(plan.following_cells) > 0
    with pytest.raises(ValueError, match="must end below and right of its start"):
        Completion.at_pixel(bundle, original, (60, 40), "a red circle", end=(50, 56))


def test_the_upscaler_draws_only_the_region():
    import numpy as np

    from model.bundle.upscaler_files import load_upscaler
    from model.config import SamplingOptions
    from model.inference.completion import Completion, Phase, complete_all
    from tests.helpers import tiny_bundle

    bundle, upscaler = tiny_bundle(), load_upscaler()[0]
    original = picture(200, 150, 4)  # 6.25 picture pixels per model pixel
    options = SamplingOptions(n=1, seed=2)
    settings = dict(feather=3, upscaler=upscaler, end=(3, 3))
    upscaled = Completion(bundle, original, (1, 1), "x", options, **settings)
    x0, y0 = upscaled.corner
    x1, y1 = upscaled.end_pixel
    assert (x1, y1) == (150, 150)  # a 32 px model: a cell is 50 picture pixels
    events = list(upscaled.run())
    assert [e.name for e in events if isinstance(e, Phase)][-1] == "upscaling"
    (image,), _ = complete_all(Completion(bundle, original, (1, 1), "x", options, **settings))
    after, before = np.asarray(image), np.asarray(original)
    inside = np.zeros((150, 200), bool)
    inside[y0:y1, x0:x1] = True
    assert np.array_equal(after[~inside], before[~inside])
    assert not np.array_equal(after[inside], before[inside])


# -- dalle complete --to / --to-px / --lookahead ------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from tests.helpers import tiny_bundle_file

    folder = tmp_path_factory.mktemp("regions")
    photo = folder / "photo.png"
    picture(60, 45, 5).save(photo)  # a 32 px model: cells of 15 px, 3x4 visible
    return tiny_bundle_file(folder), photo


def checked(bundle_file, photo, region, area):
    """The Completion ``dalle complete`` runs for one region (its cell, area and end)."""
    from PIL import Image

    from model.bundle import load
    from model.cli.common import parse_pair
    from model.cli.sample import Job, check_job
    from model.inference.completion import Completion

    bundle = load(bundle_file)
    first, last = parse_pair(region[1], "from"), parse_pair(region[3], "to")
    if region[0] == "--from-px":
        job = Job(photo, "x", pixel=first, last_pixel=last)
    else:
        job = Job(photo, "x", cell=first, last_cell=last)
    done = check_job(job, bundle, area)
    return Completion(bundle, Image.open(photo), done.cell, "x", area=done.area, end=done.end)


def dalle(*args) -> int:
    from model.cli import main

    return main([str(a) for a in args])


@pytest.mark.parametrize(
    "region",
    [
        ("--from-px", "20,15", "--to-px", "40,29"),  # the last pixel, inclusive
        ("--from", "1,1", "--to", "1,2"),  # the last cell, inclusive
    ],
)
@pytest.mark.parametrize("area", ["whole", "auto"])
def test_dalle_complete_regenerates_only_the_region(cli_files, tmp_path, region, area):
    import numpy as np
    from PIL import Image

    bundle, photo = cli_files
    out = tmp_path / "out"
    code = dalle("complete", "--bundle", bundle, "--image", photo, *region, "--caption", "x",
                 "--n", 2, "--lookahead", 2, "--seed", 1, "--area", area, "--out", out,
                 "--quiet")  # fmt: skip
    assert code == 0
    original = np.asarray(Image.open(photo))
    job = checked(bundle, photo, region, area)
    x0, y0 = job.corner
    x1, y1 = job.end_pixel
    if area == "whole":
        assert (x0, y0, x1, y1) == (15, 15, 45, 30)  # cells (1, 1) and (1, 2)
    assert x0 <= 20 and y0 <= 15 and 41 <= x1 < 60 and 30 <= y1 < 45
    inside = np.zeros(original.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    written = sorted(out.glob("*.png"))
    assert len(written) == 2
    for path in written:
        result = np.asarray(Image.open(path))
        assert np.array_equal(result[~inside], original[~inside])
        assert not np.array_equal(result[inside], original[inside])


@pytest.mark.parametrize(
    "args, words",
    [
        (("--from-px", "20,15", "--to-px", "10,29"), "--to-px 10,29 is above or left of"),
        (("--from-px", "20,15", "--to-px", "60,29"), "--to-px 60,29 is outside the 60x45"),
        (("--from", "1,1", "--to", "3,1"), "--to 3,1 is outside the image's 3x4 visible cells"),
        (("--from", "1,2", "--to", "2,1"), "--to 2,1 is above or left of --from 1,2"),
        (("--from-px", "20,15", "--to", "2,1"), "--to ROW,COL (cells) goes with --from"),
        (("--from", "1,1", "--to-px", "40,29"), "--to-px X,Y (pixels) goes with --from-px"),
        (("--from", "1,1", "--to", "-2,1"), "--to must not be negative"),
        (("--from", "1,1", "--lookahead", "0"), "--lookahead must be at least 1, got 0"),
    ],
)
def test_a_bad_region_is_one_line(cli_files, tmp_path, capsys, args, words):
    bundle, photo = cli_files
    out = tmp_path / "out"
    code = dalle("complete", "--bundle", bundle, "--image", photo, *args, "--caption", "x",
                 "--out", out, "--quiet")  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert not out.exists()


def test_a_batch_takes_no_region_end(cli_files, tmp_path, capsys):
    bundle, photo = cli_files
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"{photo},x,1,1\n")
    code = dalle("complete", "--bundle", bundle, "--batch", jobs, "--to", "2,2",
                 "--out", tmp_path / "out")  # fmt: skip
    assert code == 2 and "a batch's reach the corner" in capsys.readouterr().err


def test_the_memory_check_counts_the_lookaheads_candidates(cli_files, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    from model.bundle import load
    from model.config import SamplingOptions
    from model.inference import lookahead
    from model.inference.completion import memory_needed

    bundle_file, photo = cli_files
    bundle, options = load(bundle_file), SamplingOptions(n=2)
    four = SamplingOptions(n=8)
    assert memory_needed(bundle, options, 100, 4) == memory_needed(
        bundle, four, 100
    ) + lookahead.memory_needed(bundle.config, 8)
    assert memory_needed(bundle, options, 100, 1) == memory_needed(bundle, options, 100)
    needed = memory_needed(bundle, options, 60 * 45, 4)
    monkeypatch.setattr("model.device.available_memory", lambda device: needed - 1)
    args = ("complete", "--bundle", bundle_file, "--image", photo, "--from", "1,1", "--to",
            "1,2", "--caption", "x", "--n", 2, "--out", tmp_path / "out", "--quiet")  # fmt: skip
    assert dalle(*args) == 0  # without the lookahead it fits
    assert dalle(*args, "--lookahead", 4, "--overwrite") == 2
    assert "--n 2 with --lookahead 4 needs about" in capsys.readouterr().err


def test_an_area_near_the_top_left_keeps_its_whole_side():
    """A region ending inside the picture near its top-left edge: the square reaches further
    right and down instead of shrinking below the model (which would scale the picture up)."""
    from model.geometry import working_area

    assert working_area((128, 128), (48, 48), 128, "auto", (80, 80), 8).box == (0, 0, 128, 128)
    assert working_area((128, 128), (0, 0), 128, "auto", (40, 40), 8).box == (0, 0, 128, 128)
    small = working_area((4000, 3000), (10, 10), 256, "auto", (60, 60), 8)
    assert small.box == (0, 0, 256, 256) and small.pixels_per_model_pixel(256) == 1.0
    side = working_area((4000, 3000), (10, 10), 256, 300, (60, 60), 8)
    assert side.box == (0, 0, 300, 300)
    corner = working_area((2400, 1600), (1400, 900), 256, "auto")  # to the corner: as before
    assert corner.box == (400, 0, 2400, 1600)
