"""Completion invariants: kept tokens forced, masked cells sampled, one call per masked cell."""

import threading

import pytest
import torch

from model.config import SamplingOptions, TransformerConfig
from model.geometry import Geometry, Plan
from model.inference.sampling import (
    Cancelled,
    Done,
    Progress,
    Sampled,
    filter_logits,
    guided,
    plan_mask,
    run,
    sample_tokens,
)
from model.networks.transformer import Logits, Transformer

CFG = TransformerConfig(
    text_vocab=40, text_len=5, image_vocab=30, grid=4, dim=32, depth=4, heads=4, conv_kernel=3
)


class RecordingTransformer(Transformer):
    """The real model, recording each call's (start, length, batch); optionally forced logits."""

    def __init__(self, config, forced: bool = False):
        super().__init__(config)
        self.calls: list[tuple[int, int, int]] = []
        self.forced = forced

    def forward(self, ids, start=0, cache=None, last_only=False):
        self.calls.append((start, ids.shape[1], ids.shape[0]))
        out = super().forward(ids, start, cache, last_only)
        if self.forced:
            # the only possible token for cell s is (s + 1) % V: proves which cells were sampled
            cell = start + ids.shape[1] - 1 - self.config.text_len
            logits = torch.full_like(out.image, float("-inf"))
            logits[..., (cell + 1) % self.config.image_vocab] = 0.0
            return Logits(text=None, image=logits)
        return out


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, CFG.text_vocab, (CFG.text_len,), generator=g)
    image = torch.randint(0, CFG.image_vocab, (CFG.grid, CFG.grid), generator=g)
    empty = torch.arange(CFG.text_vocab, CFG.text_vocab + CFG.text_len)
    return text, image, empty


@pytest.mark.parametrize("cell", [(0, 0), (1, 2), (2, 0), (0, 3), (3, 3)])
def test_kept_tokens_forced_masked_cells_sampled(cell):
    model = RecordingTransformer(CFG, forced=True).eval()
    text, image, empty = inputs()
    plan = Plan(CFG.grid, *cell)
    done = run(sample_tokens(model, text, image, plan, SamplingOptions(n=3, seed=0), empty))
    mask = plan_mask(plan)
    for candidate in done.tokens:
        assert torch.equal(candidate[~mask], image[~mask])  # kept cells untouched
        expected = (torch.arange(CFG.image_len).view(CFG.grid, CFG.grid) + 1) % CFG.image_vocab
        assert torch.equal(candidate[mask], expected[mask])  # every masked cell was sampled
    # one sequential call per masked cell: the first also prefills text and the kept prefix,
    # later ones prefill the run of kept cells before their masked cell in the same chunk
    assert done.model_calls == plan.cells == len(model.calls)
    fed = sum(length for _, length, _ in model.calls)
    last_masked = plan.masked_cells[-1]
    assert fed == CFG.text_len + last_masked + 1  # each stream position fed exactly once
    starts = [start for start, _, _ in model.calls]
    assert starts == sorted(set(starts))


def test_from_last_cell_samples_one_token():
    model = RecordingTransformer(CFG).eval()
    text, image, empty = inputs()
    done = run(sample_tokens(model, text, image, Plan(CFG.grid, 3, 3), SamplingOptions(n=2), empty))
    assert done.model_calls == 1
    assert torch.equal(done.tokens[:, :3], image[:3].expand(2, -1, -1))
    assert torch.equal(done.tokens[:, 3, :3], image[3, :3].expand(2, -1))


def test_from_origin_is_full_generation_and_ignores_image():
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    options = SamplingOptions(n=2, seed=5)
    a = run(sample_tokens(model, text, image, Plan(CFG.grid, 0, 0), options, empty))
    other = (image + 7) % CFG.image_vocab
    b = run(sample_tokens(model, text, other, Plan(CFG.grid, 0, 0), options, empty))
    assert torch.equal(a.tokens, b.tokens)
    assert a.model_calls == CFG.image_len


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("cell", [(0, 0), (1, 1), (3, 2)])
def test_cached_and_uncached_sampling_give_identical_tokens(cell, guidance):
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    options = SamplingOptions(n=3, seed=11, guidance=guidance, temperature=1.0)
    plan = Plan(CFG.grid, *cell)
    a = run(sample_tokens(model, text, image, plan, options, empty, use_cache=True))
    b = run(sample_tokens(model, text, image, plan, options, empty, use_cache=False))
    assert torch.equal(a.tokens, b.tokens)


def test_same_seed_same_output_and_seed_reported():
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    plan = Plan(CFG.grid, 1, 1)
    a = run(sample_tokens(model, text, image, plan, SamplingOptions(n=4, seed=3), empty))
    b = run(sample_tokens(model, text, image, plan, SamplingOptions(n=4, seed=3), empty))
    assert torch.equal(a.tokens, b.tokens) and a.seed == b.seed == 3
    fresh = run(sample_tokens(model, text, image, plan, SamplingOptions(n=4), empty))
    again = run(
        sample_tokens(model, text, image, plan, SamplingOptions(n=4, seed=fresh.seed), empty)
    )
    assert torch.equal(fresh.tokens, again.tokens)  # a random run is reproducible from its seed


def test_guidance_doubles_the_batch_and_candidates_share_one_batch():
    model = RecordingTransformer(CFG).eval()
    text, image, empty = inputs()
    run(
        sample_tokens(
            model, text, image, Plan(CFG.grid, 2, 2), SamplingOptions(n=3, guidance=2.0), empty
        )
    )
    assert {batch for _, _, batch in model.calls} == {6}
    model.calls.clear()
    run(sample_tokens(model, text, image, Plan(CFG.grid, 2, 2), SamplingOptions(n=3), empty))
    assert {batch for _, _, batch in model.calls} == {3}


def test_progress_once_per_row_then_done():
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    messages = list(
        sample_tokens(model, text, image, Plan(CFG.grid, 1, 2), SamplingOptions(), empty)
    )
    progress = [m for m in messages if isinstance(m, Progress)]
    assert [p.row for p in progress] == [1, 2, 3]
    assert [p.rows_done for p in progress] == [1, 2, 3]
    assert progress[-1].cells_done == progress[-1].cells_total == 6
    assert isinstance(messages[-1], Sampled)


def test_cancel_stops_between_tokens():
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    cancel = threading.Event()
    stream = sample_tokens(
        model, text, image, Plan(CFG.grid, 0, 0), SamplingOptions(), empty, cancel=cancel
    )
    first = next(stream)
    assert isinstance(first, Progress)
    cancel.set()
    rest = list(stream)
    assert len(rest) == 1 and isinstance(rest[0], Cancelled)
    assert rest[0].cells_done == CFG.grid
    with pytest.raises(RuntimeError, match="cancelled"):
        cancel2 = threading.Event()
        cancel2.set()
        run(
            sample_tokens(
                model, text, image, Plan(CFG.grid, 0, 0), SamplingOptions(), empty, cancel=cancel2
            )
        )


def test_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    top1 = filter_logits(logits, SamplingOptions(top_k=1))
    assert torch.isfinite(top1).sum() == 1 and top1[0, 1] == 3.0
    top2 = filter_logits(logits, SamplingOptions(top_k=2))
    assert torch.isfinite(top2[0]).tolist() == [False, True, True, False]
    nucleus = filter_logits(logits, SamplingOptions(top_p=0.5))
    assert torch.isfinite(nucleus[0]).tolist() == [False, True, False, False]
    hot = filter_logits(logits, SamplingOptions(temperature=2.0))
    assert torch.allclose(hot, logits / 2)


def test_guided_combination():
    cond = torch.tensor([[2.0, 0.0]])
    uncond = torch.tensor([[1.0, 1.0]])
    both = torch.cat([cond, uncond])
    assert torch.allclose(guided(both, 1, 3.0), uncond + 3.0 * (cond - uncond))
    assert torch.equal(guided(cond, 1, 3.0), cond)


@pytest.mark.parametrize(
    "options,message",
    [
        (SamplingOptions(n=0), "at least 1"),
        (SamplingOptions(temperature=0), "temperature"),
        (SamplingOptions(top_k=-1), "top-k"),
        (SamplingOptions(top_p=0), "top-p"),
        (SamplingOptions(guidance=-1), "guidance"),
        (SamplingOptions(guidance=float("nan")), "guidance"),
        (SamplingOptions(guidance=float("inf")), "guidance"),
        (SamplingOptions(guidance=1e300), "guidance"),
        (SamplingOptions(temperature=1e-45), "temperature"),
        (SamplingOptions(temperature=float("nan")), "temperature"),
        (SamplingOptions(temperature=float("inf")), "temperature"),
        (SamplingOptions(top_p=float("nan")), "top-p"),
        (SamplingOptions(top_p=float("inf")), "top-p"),
        (SamplingOptions(seed=2**64), "seed"),
        (SamplingOptions(seed=-1), "seed"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        options.validate()


def test_plan_outside_grid_is_refused():
    with pytest.raises(ValueError, match="outside the 4x4 token grid"):
        Plan(4, 4, 0)


# -- padding cells: the rectangle's cells below or right of the image are not sampled ----------


@pytest.mark.parametrize("cell, visible", [((0, 0), (3, 2)), ((1, 1), (3, 4)), ((2, 0), (4, 1))])
def test_padding_cells_keep_their_tokens_and_cost_no_call(cell, visible):
    model = RecordingTransformer(CFG, forced=True).eval()
    text, image, empty = inputs()
    plan = Plan(CFG.grid, *cell, *visible)
    done = run(sample_tokens(model, text, image, plan, SamplingOptions(n=2, seed=0), empty))
    rows, cols = visible
    sampled = torch.zeros(CFG.grid, CFG.grid, dtype=torch.bool)
    sampled[cell[0] : rows, cell[1] : cols] = True
    assert torch.equal(plan_mask(plan), sampled)
    expected = (torch.arange(CFG.image_len).view(CFG.grid, CFG.grid) + 1) % CFG.image_vocab
    for candidate in done.tokens:
        assert torch.equal(candidate[~sampled], image[~sampled])  # padding and kept cells
        assert torch.equal(candidate[sampled], expected[sampled])
    assert done.model_calls == plan.cells == len(model.calls) == int(sampled.sum())
    fed = sum(length for _, length, _ in model.calls)
    assert fed == CFG.text_len + plan.masked_cells[-1] + 1


def test_padding_cells_are_not_counted_in_progress():
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    plan = Plan(CFG.grid, 1, 0, visible_rows=3, visible_cols=2)
    messages = list(sample_tokens(model, text, image, plan, SamplingOptions(), empty))
    progress = [m for m in messages if isinstance(m, Progress)]
    assert [p.row for p in progress] == [1, 2]
    assert [(p.rows_done, p.rows_total) for p in progress] == [(1, 2), (2, 2)]
    assert [(p.cells_done, p.cells_total) for p in progress] == [(2, 4), (4, 4)]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_sampling_equals_recompute_with_padding(guidance):
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    options = SamplingOptions(n=2, seed=4, guidance=guidance)
    plan = Plan(CFG.grid, 0, 1, visible_rows=4, visible_cols=3)
    a = run(sample_tokens(model, text, image, plan, options, empty, use_cache=True))
    b = run(sample_tokens(model, text, image, plan, options, empty, use_cache=False))
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize(
    "args, message",
    [
        ((4, 3, 0, 3, 4), "padding"),
        ((4, 0, 2, 4, 2), "padding"),
        ((4, 0, 0, 0, 4), "visible"),
        ((4, 0, 0, 4, 5), "visible"),
    ],
)
def test_plan_refuses_a_rectangle_only_in_the_padding(args, message):
    with pytest.raises(ValueError, match=message):
        Plan(*args)


@pytest.mark.parametrize("kind", ["dvae", "vq"])
def test_complete_skips_the_padding_of_a_wide_image(kind):
    from model.inference.images import to_model, to_pil
    from model.inference.sampling import complete
    from tests.helpers import tiny_bundle

    bundle = tiny_bundle(kind=kind)
    grid, factor = bundle.config.transformer.grid, bundle.config.vae.factor
    pixels = torch.rand(3, 12, 32)  # wide: the lower rows of the square are padding
    picture = to_pil(pixels)
    geometry = Geometry(picture.width, picture.height, bundle.config.vae.image_size, factor)
    tensor = to_model(picture, geometry)
    visible = geometry.visible_grid
    assert visible[0] < grid and visible[1] == grid
    own = bundle.vae.encode(tensor.unsqueeze(0))[0]
    options = SamplingOptions(n=2, seed=3)
    plan = geometry.plan((1, 0))
    messages = list(complete(bundle, tensor, plan, "a red circle", options))
    done = messages[-1]
    assert isinstance(done, Done)
    assert done.model_calls == (visible[0] - 1) * grid
    assert all(torch.equal(t[visible[0] :], own[visible[0] :]) for t in done.tokens)
    assert messages[0].rows_total == visible[0] - 1
    whole = run(complete(bundle, tensor, (1, 0), "a red circle", SamplingOptions(seed=3)))
    assert whole.model_calls == (grid - 1) * grid  # a cell, not a plan: the whole grid


def test_extreme_but_valid_options_sample():
    model = Transformer(CFG).eval()
    text, image, empty = inputs()
    for options in (
        SamplingOptions(seed=2**64 - 1, temperature=0.01, guidance=100.0, top_p=1e-9),
        SamplingOptions(seed=0, temperature=100.0, top_k=10**30),
    ):
        done = run(sample_tokens(model, text, image, Plan(CFG.grid, 3, 0), options, empty))
        assert ((done.tokens >= 0) & (done.tokens < CFG.image_vocab)).all()
