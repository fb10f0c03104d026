"""Speed paths keep the model's meaning: gathered decode windows, bf16 and int8 inference copies.

Within one precision, a KV-cache step must equal recomputing the whole prefix, and the cached and
uncached samplers must give the same tokens for a seed. Across precisions the logits stay close to
fp32's (the accuracy figures themselves are in benchmarks/README.md).
"""

import pytest
import torch
from torch import nn

from model.config import SamplingOptions, TransformerConfig
from model.sampling import Plan, prepared, run, sample_tokens
from model.transformer import (
    COLUMN,
    CONV,
    ROW,
    Int8Linear,
    Transformer,
    decode_keys,
    for_inference,
    resolve_precision,
    stream_mask,
)

CFG = TransformerConfig(
    text_vocab=40, text_len=5, image_vocab=30, grid=4, dim=32, depth=6, heads=4, conv_kernel=3
)
# tolerance on logits relative to their largest magnitude: bf16 keeps ~3 significant digits
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2, "int8": 2e-2}


def trained_like(config=CFG, seed=0) -> Transformer:
    """Random weights with a larger spread than the init, so logits are far from uniform."""
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    return model


def inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, CFG.text_vocab_padded, (batch, CFG.text_len), generator=g)
    image = torch.randint(0, CFG.image_vocab, (batch, CFG.image_len), generator=g)
    return text, image


@pytest.mark.parametrize("kind", [ROW, COLUMN, CONV])
def test_decode_key_tables_are_the_mask_rows(kind):
    config = TransformerConfig(text_len=7, grid=6, conv_kernel=3, dim=32, heads=4)
    index, counts = decode_keys(kind, config)
    mask = stream_mask(kind, config)
    for p in range(config.seq_len):
        assert index[p, : counts[p]].tolist() == mask[p].nonzero().squeeze(1).tolist()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_cache_equals_full_recompute_within_each_precision(precision):
    model = for_inference(trained_like(), precision)
    text, image = inputs()
    stream = model.stream(text, image)
    with torch.inference_mode():
        full = model(stream).image.float()
        cache = model.new_cache(2)
        # prefill text + 2 slots, then one position at a time (the gathered decode path)
        steps = [model(stream[:, : CFG.text_len + 2], 0, cache).image]
        for p in range(CFG.text_len + 2, CFG.seq_len):
            steps.append(model(stream[:, p : p + 1], p, cache).image)
    cached = torch.cat(steps, dim=1).float()
    assert (cached - full).abs().max() <= TOLERANCE[precision] * full.abs().max()


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_logits_stay_close_to_fp32(precision):
    reference = trained_like()
    model = for_inference(reference, precision)
    text, image = inputs()
    with torch.inference_mode():
        exact = reference(reference.stream(text, image)).image
        approx = model(model.stream(text, image)).image.float()
    scale = exact.abs().max()
    assert (approx - exact).abs().max() <= 0.05 * scale
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_and_uncached_sampling_agree_and_repeat_in_reduced_precision(precision, guidance):
    model = for_inference(trained_like(), precision)
    text, image = inputs(batch=1)
    empty = torch.arange(CFG.text_vocab, CFG.text_vocab_padded)
    options = SamplingOptions(n=3, seed=5, guidance=guidance)
    grid = image.view(CFG.grid, CFG.grid)
    plan = Plan(CFG.grid, 1, 1)
    a = run(sample_tokens(model, text[0], grid, plan, options, empty, use_cache=True))
    b = run(sample_tokens(model, text[0], grid, plan, options, empty, use_cache=False))
    again = run(sample_tokens(model, text[0], grid, plan, options, empty, use_cache=True))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.tokens, again.tokens)


def test_int8_linear_kernel_and_dense_paths_agree():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    quantized = Int8Linear(linear)
    x = torch.randn(40, 64)
    with torch.inference_mode():
        exact = linear(x)
        dense = quantized(x).float()  # 40 rows: the dense bf16 path
        rows = torch.cat([quantized(x[i : i + 4]) for i in range(0, 40, 4)]).float()  # int8 kernel
    assert quantized.weight.dtype == torch.int8
    assert (dense - exact).abs().max() <= 0.02 * exact.abs().max()
    assert (rows - dense).abs().max() <= 0.01 * exact.abs().max()


def test_precision_choice_and_conversion_once():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") in ("int8", "fp32")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", "cpu")
    model = Transformer(CFG).eval()
    assert prepared(model, "fp32") is model
    int8 = prepared(model, "int8")
    assert int8 is prepared(model, "int8") and int8.precision == "int8"
    assert model.to_image.weight.dtype == torch.float32  # the original is untouched
    assert model.new_cache(1).state.dtype == int8.new_cache(1).state.dtype == torch.float32
