"""The sparse masks, the layer schedule, and KV-cache parity with full recomputation."""

import pytest
import torch

from model.config import TransformerConfig
from model.networks.transformer import (
    COLUMN,
    CONV,
    ROW,
    Transformer,
    image_mask,
    layer_kinds,
    stream_mask,
)


def tiny_config(**overrides) -> TransformerConfig:
    values = dict(
        text_vocab=40, text_len=5, image_vocab=30, grid=4, dim=32, depth=6, heads=4, conv_kernel=3
    )
    values.update(overrides)
    return TransformerConfig(**values)


def reference_mask(kind: str, grid: int, kernel: int) -> torch.Tensor:
    """The paper's definitions, written as plainly as possible, cell by cell."""
    n = grid * grid
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        ri, ci = divmod(i, grid)
        for j in range(i + 1):  # causal in raster order
            rj, cj = divmod(j, grid)
            if kind == ROW:
                allowed = i - j <= grid  # the previous W + 1 tokens, wrapping
            elif kind == COLUMN:
                allowed = cj == ci
            else:
                allowed = abs(ri - rj) <= kernel // 2 and abs(ci - cj) <= kernel // 2
            mask[i, j] = allowed
    return mask


@pytest.mark.parametrize("kind", [ROW, COLUMN, CONV])
@pytest.mark.parametrize("grid,kernel", [(3, 3), (4, 3), (5, 5)])
def test_masks_match_paper_definitions(kind, grid, kernel):
    assert torch.equal(image_mask(kind, grid, kernel), reference_mask(kind, grid, kernel))


def test_row_mask_reaches_same_column_one_row_up_and_no_further():
    grid = 4
    mask = image_mask(ROW, grid)
    i = 2 * grid + 1  # row 2, column 1
    assert mask[i, i - grid]  # directly above
    assert not mask[i, i - grid - 1]  # W + 2 back is out of reach
    assert mask[i].sum() == grid + 1


def test_column_mask_sees_whole_column_above():
    grid = 5
    mask = image_mask(COLUMN, grid)
    i = 4 * grid + 2
    assert mask[i].nonzero().flatten().tolist() == [2, 7, 12, 17, 22]


def test_conv_mask_is_causal_window():
    grid, k = 5, 3
    mask = image_mask(CONV, grid, k)
    i = 2 * grid + 2  # centre
    seen = {divmod(j, grid) for j in mask[i].nonzero().flatten().tolist()}
    assert seen == {(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)}


@pytest.mark.parametrize("depth", [1, 2, 4, 6, 8, 12, 64])
def test_layer_schedule(depth):
    kinds = layer_kinds(depth)
    assert kinds[-1] == CONV
    for i, kind in enumerate(kinds[:-1], start=1):
        assert kind == (COLUMN if (i - 2) % 4 == 0 else ROW)


def test_stream_mask_text_and_image_parts():
    cfg = tiny_config()
    mask = stream_mask(ROW, cfg)
    t = cfg.text_len
    assert torch.equal(mask[:t, :t], torch.ones(t, t, dtype=torch.bool).tril())
    assert not mask[:t, t:].any()  # text never sees the image
    assert mask[t:, :t].all()  # every image slot sees every text token


def test_forward_shapes_and_loss():
    cfg = tiny_config()
    model = Transformer(cfg)
    text = torch.randint(0, cfg.text_vocab_padded, (3, cfg.text_len))
    image = torch.randint(0, cfg.image_vocab, (3, cfg.image_len))
    logits = model(model.stream(text, image))
    assert logits.text.shape == (3, cfg.text_len, cfg.text_vocab_padded)
    assert logits.image.shape == (3, cfg.image_len, cfg.image_vocab)
    out = model.loss(text, image)
    expected = (
        cfg.text_loss_weight * out["text_loss"] + (1 - cfg.text_loss_weight) * out["image_loss"]
    )
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_image_logits_do_not_depend_on_future_cells():
    cfg = tiny_config()
    model = Transformer(cfg).eval()
    text = torch.randint(0, cfg.text_vocab, (1, cfg.text_len))
    image = torch.randint(0, cfg.image_vocab, (1, cfg.image_len))
    changed = image.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % cfg.image_vocab
    a = model(model.stream(text, image)).image
    b = model(model.stream(text, changed)).image
    # the output at slot s predicts cell s from cells < s: slots 0..7 cannot see cells >= 7
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("depth", [1, 2, 6])  # 1: conv only; 2: column + conv; 6: all kinds
def test_cache_equals_full_recompute_every_step(depth):
    cfg = tiny_config(depth=depth)
    model = Transformer(cfg).eval()
    torch.manual_seed(1)
    text = torch.randint(0, cfg.text_vocab_padded, (2, cfg.text_len))
    image = torch.randint(0, cfg.image_vocab, (2, cfg.image_len))
    stream = model.stream(text, image)
    full = model(stream)
    cache = model.new_cache(2)
    # a prefill chunk spanning text and the first slots, then single positions, then a chunk
    chunks = [(0, cfg.text_len + 3)] + [(p, p + 1) for p in range(cfg.text_len + 3, 15)]
    chunks.append((15, cfg.seq_len))
    image_steps = []
    for start, end in chunks:
        with torch.no_grad():
            out = model(stream[:, start:end], start, cache)
        if out.image is not None:
            image_steps.append(out.image)
    assert torch.allclose(torch.cat(image_steps, dim=1), full.image, atol=1e-5)


def test_last_only_equals_last_position():
    cfg = tiny_config()
    model = Transformer(cfg).eval()
    stream = model.stream(torch.randint(0, 40, (1, cfg.text_len)), torch.randint(0, 30, (1, 16)))
    full = model(stream[:, :12]).image[:, -1]
    last = model(stream[:, :12], last_only=True).image[:, -1]
    assert torch.allclose(full, last, atol=1e-6)


def test_bad_configs_and_calls_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        Transformer(tiny_config(dim=30, heads=4))
    with pytest.raises(ValueError, match="odd"):
        Transformer(tiny_config(conv_kernel=4))
    model = Transformer(tiny_config())
    with pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(1, 2, dtype=torch.long), start=3)
    with pytest.raises(ValueError, match="exceed"):
        model(torch.zeros(1, 100, dtype=torch.long))
