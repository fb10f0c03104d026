"""Speed paths keep the model's meaning: gathered decode windows, bf16 and int8 inference copies,
the compiled decode step.

Within one precision, a KV-cache step must equal recomputing the whole prefix, and the cached and
uncached samplers must give the same tokens for a seed. Across precisions the logits stay close to
fp32's (the accuracy figures themselves are in benchmarks/README.md).
"""

import shutil

import pytest
import torch
from torch import nn

from model.config import SamplingOptions, TransformerConfig
from model.geometry import Plan
from model.inference.sampling import prepared, run, sample_tokens
from model.networks.precision import CompiledStep, Int8Linear, for_inference, resolve_precision
from model.networks.transformer import COLUMN, CONV, ROW, Transformer, decode_keys, stream_mask

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
    assert model.new_cache(1).layers[0].dtype == int8.new_cache(1).layers[0].dtype == torch.float32


class CountingBackend:
    """A torch.compile backend that records each graph dynamo hands it and runs it eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def sample_all(model, guidance=1.0, n=2):
    text, image = inputs(batch=1)
    empty = torch.arange(CFG.text_vocab, CFG.text_vocab_padded)
    options = SamplingOptions(n=n, seed=3, guidance=guidance)
    grid = image.view(CFG.grid, CFG.grid)
    return run(sample_tokens(model, text[0], grid, Plan(CFG.grid, 1, 1), options, empty)).tokens


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_decode_step_is_shape_static_one_graph_serves_every_position(precision):
    """The point of the static step: dynamo traces it once per batch size, not once per position
    (the old step indexed its key window with a Python int and recompiled at every cell)."""
    model = for_inference(trained_like(), precision, compile=False)
    reference = sample_all(model)
    backend = CountingBackend()
    model.decode_step = CompiledStep(model.decode_step, backend=backend)
    torch._dynamo.reset()
    assert torch.equal(sample_all(model), reference)
    assert model.decode_step.failure is None
    assert backend.graphs == 1  # 12 one-cell steps at positions 6..19, one graph
    assert model.decode_step.batches == {2}
    assert not model.decode_step.will_compile(2) and model.decode_step.will_compile(4)
    sample_all(model, guidance=3.0)  # batch 4 (candidates + unconditional rows): one more
    assert backend.graphs == 2


def test_compiled_step_falls_back_to_eager_with_one_warning(caplog):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler found\nlong details")

    model = for_inference(trained_like(), "fp32", compile=False)
    reference = sample_all(model)
    model.decode_step = CompiledStep(model.decode_step, backend=broken_backend)
    torch._dynamo.reset()
    with caplog.at_level("WARNING", logger="model.networks.precision"):
        tokens = sample_all(model)
    assert torch.equal(tokens, reference)
    assert "no C++ compiler found" in model.decode_step.failure
    assert not model.decode_step.will_compile(4)  # it samples eagerly now: nothing to wait for
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="no C++")
def test_inductor_compiled_sampling_gives_the_eager_tokens():
    reference_model = trained_like()
    compiled = prepared(reference_model, "fp32", compile=True)
    assert compiled is not reference_model and compiled is prepared(reference_model, "fp32", True)
    assert isinstance(compiled.decode_step, CompiledStep)
    torch._dynamo.reset()
    tokens = sample_all(compiled)
    if compiled.decode_step.failure is not None:  # graph breaks fail the counting test above
        pytest.skip(f"inductor cannot build here: {compiled.decode_step.failure}")
    assert torch.equal(tokens, sample_all(reference_model))
    assert not isinstance(reference_model.decode_step, CompiledStep)  # the original stays eager
