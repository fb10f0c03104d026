"""ruDALL-E v3's transformer as ``layout="rudalle"``: ``model.importers.rudalle`` and
``model.networks.transformer.RudalleTransformer`` against rudalle 1.1.3's own ``DalleModel``.

The reference is rudalle's code, run alone: its package ``__init__`` pulls in transformers, cv2
and a Hugging Face download helper, so ``rudalle`` and ``rudalle.dalle`` are stubbed as bare
packages and ``rudalle/dalle/model.py`` (with its ``transformer.py``, ``image_attention.py`` and
``utils.py``) is imported from the installed files; einops, when missing, is stood in for by the
one pattern rudalle uses. The completion test runs rudalle's own ``pipelines.generate_images`` the
same way, with stand-ins for the modules it imports but this test never reaches (torchvision,
matplotlib, more_itertools), transformers' ``top_k_top_p_filtering`` copied from transformers 4.x
(what rudalle 1.1.3 ran with), and a tokenizer, image prompts and VQGAN that only hand over ids.

At a tiny size (4 or 6 layers, hidden 64, 4 heads, 8 text positions, a 12x12 grid, so that
ruDALL-E's fixed 11x11 conv window leaves cells out), with random weights, LayerNorm weights and
biases randomised too, in fp32. Image logits are compared at every image-predicting position:
ruDALL-E's position T - 1 + s against our slot s, for s = 0 .. N - 1.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.config import SamplingOptions, TransformerConfig
from model.geometry import Plan
from model.importers.rudalle import transformer_from_rudalle, v3_conv_mask
from model.inference.sampling import Sampled, prepared, sample_tokens
from model.networks.precision import Int8Linear, for_inference
from model.networks.transformer import (
    COLUMN,
    CONV,
    ROW,
    RudalleTransformer,
    Transformer,
    image_mask,
    layer_kinds,
    stream_mask,
)

ATOL = 1e-5
TEXT_POSITIONS = 8  # ruDALL-E's text_seq_length; our text_len is one less
BPE_IDS = 100  # ruDALL-E's vocab_size is BPE ids + one padding id per text position
GRID = 12
IMAGE_CODES = 64
HIDDEN, HEADS = 64, 4
BOS, EOS = 2, 3
SPREAD = 0.15  # weights and biases: logits spread ~1.5 (assert_close checks it), fp32 error ~4e-6
CAPTION = [BOS, 17, 42, 9, EOS]  # then 0s, which ruDALL-E turns into per-position padding ids


# -- rudalle, run alone ----------------------------------------------------------------------------


def _package(name: str, path: Path) -> types.ModuleType:
    package = types.ModuleType(name)
    package.__path__ = [str(path)]
    return package


def _einops_stand_in() -> types.ModuleType:
    """einops.rearrange for the one pattern rudalle's model and pipelines use."""

    def rearrange(tensor: torch.Tensor, pattern: str) -> torch.Tensor:
        if pattern != "b n c -> b c n":
            raise NotImplementedError(pattern)
        return tensor.transpose(1, 2)

    module = types.ModuleType("einops")
    module.rearrange = rearrange
    return module


def top_k_top_p_filtering(logits, top_k=0, top_p=1.0, filter_value=-float("Inf"),
                          min_tokens_to_keep=1):  # fmt: skip
    """transformers 4.x ``generation_utils.top_k_top_p_filtering``, as rudalle calls it."""
    if top_k > 0:
        top_k = min(max(top_k, min_tokens_to_keep), logits.size(-1))
        indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
        logits[indices_to_remove] = filter_value
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_indices_to_remove = cumulative_probs > top_p
        if min_tokens_to_keep > 1:
            sorted_indices_to_remove[..., :min_tokens_to_keep] = 0
        sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
        sorted_indices_to_remove[..., 0] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(
            1, sorted_indices, sorted_indices_to_remove
        )
        logits[indices_to_remove] = filter_value
    return logits


@pytest.fixture(scope="module")
def rudalle_code() -> types.SimpleNamespace:
    return load_rudalle_code()


def load_rudalle_code() -> types.SimpleNamespace:
    """rudalle 1.1.3's ``dalle.model`` and ``pipelines`` modules (see the module docstring)."""
    spec = importlib.util.find_spec("rudalle")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rudalle is not installed (pip install --no-deps rudalle==1.1.3)")
    root = Path(spec.submodule_search_locations[0])
    stubs = {
        "rudalle": _package("rudalle", root),
        "rudalle.dalle": _package("rudalle.dalle", root / "dalle"),
    }
    if importlib.util.find_spec("einops") is None:
        stubs["einops"] = _einops_stand_in()
    # pipelines.py imports these at its top; generate_images calls only top_k_top_p_filtering
    # and, at its end, to_pil_image on what the VQGAN stand-in returns
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = types.SimpleNamespace(
        functional=types.SimpleNamespace(to_pil_image=lambda image: _BlankImage())
    )
    stubs["torchvision"] = torchvision
    stubs["transformers"] = types.ModuleType("transformers")
    stubs["transformers"].top_k_top_p_filtering = top_k_top_p_filtering
    stubs["more_itertools"] = types.ModuleType("more_itertools")
    stubs["more_itertools"].chunked = lambda items, size: [
        list(items)[i : i + size] for i in range(0, len(items), size)
    ]
    stubs["matplotlib"] = _package("matplotlib", root / "absent")
    stubs["matplotlib.pyplot"] = types.ModuleType("matplotlib.pyplot")
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name, module in stubs.items():
            patch.setitem(sys.modules, name, module)
        try:
            model = importlib.import_module("rudalle.dalle.model")
            masks = importlib.import_module("rudalle.dalle.image_attention")
            layers = importlib.import_module("rudalle.dalle.transformer")
            pipelines = importlib.import_module("rudalle.pipelines")
        except ImportError as error:
            pytest.skip(f"rudalle's code cannot be imported here: {error}")
        finally:  # the modules live on through the objects returned; sys.modules forgets them
            for name in set(sys.modules) - before:
                if name.startswith("rudalle."):
                    del sys.modules[name]
    return types.SimpleNamespace(
        DalleModel=model.DalleModel,
        DalleTransformer=layers.DalleTransformer,
        masks=masks,
        pipelines=pipelines,
    )


class _BlankImage:
    def convert(self, mode: str) -> _BlankImage:
        return self


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random, LayerNorms included: weights near 1 and biases near 0 would hide a
    LayerNorm mapped to the wrong place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "layernorm" in name or name.startswith("to_logits.0"):
                p.copy_((1 + 0.5 * noise) if name.endswith("weight") else 0.5 * noise)
            else:
                p.copy_(SPREAD * noise)


def rudalle_model(code, depth: int = 4, sandwich: bool = True, seed: int = 0):
    """ruDALL-E's ``DalleModel`` at the tiny size, v3, with CogView's PB-relax as Malevich has."""
    torch.manual_seed(seed)
    model = code.DalleModel(
        device="cpu",
        num_layers=depth,
        vocab_size=BPE_IDS + TEXT_POSITIONS,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        embedding_dropout_prob=0.1,
        attention_dropout_prob=0.1,
        output_dropout_prob=0.1,
        text_seq_length=TEXT_POSITIONS,
        image_tokens_per_dim=GRID,
        image_vocab_size=IMAGE_CODES,
        cogview_sandwich_layernorm=sandwich,
        cogview_pb_relax=True,
        hf_version="v3",
    )
    randomise_(model, seed)
    return model.eval()


def imported(reference) -> RudalleTransformer:
    config, state = transformer_from_rudalle(reference.state_dict(), heads=HEADS)
    model = Transformer(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def rudalle_text(batch: int = 2) -> torch.Tensor:
    """(batch, T) ruDALL-E's input ids: BOS, caption, EOS, then 0s (its tokenizer's padding)."""
    text = torch.zeros(batch, TEXT_POSITIONS, dtype=torch.long)
    text[:, : len(CAPTION)] = torch.tensor(CAPTION)
    text[1:, 1] = 55  # the rows differ
    return text


def our_text(text: torch.Tensor) -> torch.Tensor:
    """ruDALL-E's first T - 1 text ids with its padding ids written out (``RudallePrompt``'s)."""
    ours = text[:, : TEXT_POSITIONS - 1].clone()
    padding = BPE_IDS + torch.arange(TEXT_POSITIONS - 1).expand_as(ours)
    return torch.where(ours == 0, padding, ours)


def cells(batch: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, IMAGE_CODES, (batch, GRID * GRID), generator=generator)


def reference_logits(reference, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """ruDALL-E's full pass, as ``generate_images`` calls it: (B, T + N, all vocab) logits."""
    ids = torch.cat([text, image], dim=1)
    length = ids.shape[1]
    attention_mask = torch.ones(ids.shape[0], 1, length, length).tril()
    with torch.no_grad():
        logits, _ = reference(ids, attention_mask)
    return logits


def reference_image_logits(reference, text, image) -> torch.Tensor:
    """(B, N, image codes): position T - 1 + s predicts cell s."""
    logits = reference_logits(reference, text, image)
    vocab = BPE_IDS + TEXT_POSITIONS
    return logits[:, TEXT_POSITIONS - 1 : -1, vocab:]


@pytest.fixture(scope="module")
def pair(rudalle_code):
    reference = rudalle_model(rudalle_code)
    return reference, imported(reference)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    spread = theirs.std().item()
    assert spread > 1.0, f"logits spread {spread:.2f}: too flat for the comparison to mean much"
    difference = (ours - theirs).abs().max().item()
    assert difference <= ATOL, f"max |difference| {difference:.2e} > {ATOL}"
    return difference


# -- the layout's tables ---------------------------------------------------------------------------


def tiny_config(**changes) -> TransformerConfig:
    values = dict(
        text_vocab=BPE_IDS, text_len=TEXT_POSITIONS - 1, image_vocab=IMAGE_CODES, grid=GRID,
        dim=HIDDEN, depth=4, heads=HEADS, conv_kernel=11, layout="rudalle", sandwich_norm=True,
        head_norm=True, head_bias=True,
    )  # fmt: skip
    values.update(changes)
    return TransformerConfig(**values)


@pytest.mark.parametrize("kind", [ROW, COLUMN, CONV])
def test_masks_are_rudalles_on_the_positions_we_keep(rudalle_code, kind):
    """Our stream is ruDALL-E's first T - 1 + N positions: its masks there are ours."""
    build = {ROW: "get_row_mask", COLUMN: "get_col_mask", CONV: "get_conv_mask"}[kind]
    theirs = getattr(rudalle_code.masks, build)(TEXT_POSITIONS, GRID, is_bool_mask=True)
    config = tiny_config()
    ours = stream_mask(kind, config)
    assert torch.equal(ours, theirs[: config.seq_len, : config.seq_len])
    # and they are not the studio layout's: its start slot is under the sparse pattern, and its
    # conv window sits on predicted cells
    studio = stream_mask(kind, TransformerConfig(**{**vars(config), "layout": "studio"}))
    assert not torch.equal(studio, ours)
    if kind == CONV:
        assert torch.equal(theirs, v3_conv_mask(TEXT_POSITIONS, GRID))
        wrapped = rudalle_code.masks.get_conv_mask(
            TEXT_POSITIONS, GRID, is_bool_mask=True, hf_version="v2"
        )
        assert not torch.equal(wrapped, theirs)


@pytest.mark.parametrize("depth", range(1, 14))
def test_layer_schedule_is_rudalles(rudalle_code, depth):
    tables = types.SimpleNamespace(num_layers=depth, row_mask=ROW, col_mask=COLUMN, conv_mask=CONV)
    theirs = [rudalle_code.DalleTransformer._get_layer_mask(tables, i) for i in range(depth)]
    assert layer_kinds(depth, "rudalle") == theirs
    if (depth - 2) % 4 == 0:  # ruDALL-E's last layer is a column one; the paper's is conv
        assert layer_kinds(depth)[-1] == CONV != theirs[-1]


# -- parity with DalleModel ------------------------------------------------------------------------


@pytest.mark.parametrize("depth,sandwich", [(4, True), (6, True), (4, False)])
def test_full_pass_matches_rudalle(rudalle_code, depth, sandwich):
    reference = rudalle_model(rudalle_code, depth, sandwich, seed=depth)
    ours = imported(reference)
    assert isinstance(ours, RudalleTransformer)
    assert ours.config.sandwich_norm is sandwich and ours.config.depth == depth
    text, image = rudalle_text(), cells()
    with torch.no_grad():
        logits = ours(ours.stream(our_text(text), image))
    theirs = reference_logits(reference, text, image)
    assert_close(logits.image, theirs[:, TEXT_POSITIONS - 1 : -1, BPE_IDS + TEXT_POSITIONS :])
    # text: our positions 0 .. T-2 over BPE ids and our T - 1 padding ids
    text_columns = BPE_IDS + TEXT_POSITIONS - 1
    assert_close(logits.text, theirs[:, : TEXT_POSITIONS - 1, :text_columns])


def test_kv_cache_decode_matches_rudalle(pair):
    """Text prefilled, then every image slot, slot 0 included, through the one-slot decode step
    (gathered key windows)."""
    reference, ours = pair
    text, image = rudalle_text(), cells(seed=2)
    theirs = reference_image_logits(reference, text, image)
    stream = ours.stream(our_text(text), image)
    length = ours.config.text_len
    steps = []
    with torch.inference_mode():
        cache = ours.new_cache(2)
        assert ours(stream[:, :length], 0, cache).image is None
        for p in range(length, ours.config.seq_len):
            steps.append(ours(stream[:, p : p + 1], p, cache).image)
    assert_close(torch.cat(steps, dim=1), theirs)


def test_decode_step_is_the_one_slot_path(pair, monkeypatch):
    """The test above would prove nothing if one-slot calls took the chunk path."""
    _, ours = pair
    calls = []
    real = RudalleTransformer.decode_step
    monkeypatch.setattr(
        RudalleTransformer, "decode_step", lambda self, *a: calls.append(1) or real(self, *a)
    )
    stream = ours.stream(our_text(rudalle_text()), cells())
    with torch.inference_mode():
        cache = ours.new_cache(2)
        ours(stream[:, : ours.config.text_len + 3], 0, cache)
        ours(stream[:, ours.config.text_len + 3 : ours.config.text_len + 4], 10, cache)
    assert calls == [1]


def test_chunked_prefill_matches_rudalle(pair):
    """Uneven chunks across the text / image boundary and within the image, as the sampler
    prefills the kept cells before each sampled one; full logits and ``last_only``."""
    reference, ours = pair
    text, image = rudalle_text(), cells(seed=3)
    theirs = reference_image_logits(reference, text, image)
    stream = ours.stream(our_text(text), image)
    T, L = ours.config.text_len, ours.config.seq_len
    bounds = [0, 3, T + 1, T + 2, T + 9, T + 27, T + 28, T + 60, L]
    chunks, lasts = [], []
    with torch.inference_mode():
        cache = ours.new_cache(2)
        for start, end in zip(bounds, bounds[1:], strict=False):
            logits = ours(stream[:, start:end], start, cache).image
            if logits is not None:
                chunks.append(logits)
        cache = ours.new_cache(2)
        for start, end in zip(bounds, bounds[1:], strict=False):
            lasts.append(ours(stream[:, start:end], start, cache, last_only=True).image)
    assert lasts[0] is None  # the first chunk is text only
    assert_close(torch.cat(chunks, dim=1), theirs)  # slot 0 onwards
    last_slots = [end - 1 - T for end in bounds[2:]]  # each later chunk's last position
    assert_close(torch.cat(lasts[1:], dim=1), theirs[:, last_slots])


def test_built_on_meta_and_assigned_as_bundles_load_it(pair):
    """``model.bundle`` builds an imported transformer on the meta device and assigns the file's
    tensors: the attention tables, which are not in a state dict, come with the weights."""
    reference, ours = pair
    config, state = transformer_from_rudalle(reference.state_dict(), heads=HEADS)
    with torch.device("meta"):
        shaped = Transformer(config)
    assert "mask_row" not in shaped._buffers
    shaped.load_state_dict(state, strict=True, assign=True)
    text, image = rudalle_text(), cells(seed=5)
    stream = shaped.stream(our_text(text), image)
    with torch.inference_mode():
        cache = shaped.eval().new_cache(2)
        shaped(stream[:, : config.text_len + 1], 0, cache)
        steps = [
            shaped(stream[:, p : p + 1], p, cache).image
            for p in range(config.text_len + 1, config.seq_len)
        ]
    theirs = reference_image_logits(reference, text, image)
    assert_close(torch.cat(steps, dim=1), theirs[:, 1:])


def test_copies_keep_the_layout(pair):
    """``for_inference`` deep-copies the model: the copy must stay a ``RudalleTransformer``."""
    _, ours = pair
    stream = ours.stream(our_text(rudalle_text()), cells())
    copy = for_inference(ours, "bf16")
    assert type(copy) is RudalleTransformer and copy is not ours
    with torch.inference_mode():
        exact = ours(stream).image
        rounded = copy(stream).image.float()
    assert (rounded - exact).abs().max() <= 5e-2 * exact.abs().max()


def test_sampling_converts_it_in_place(pair):
    """Like DALL·E Mega, a ruDALL-E model is converted in place for sampling, never copied (a
    1.3B model held twice), and its int8 keeps no dense copy of a Linear."""
    _, ours = pair
    model = copy.deepcopy(ours)
    stream = model.stream(our_text(rudalle_text()), cells())
    with torch.inference_mode():
        exact = model(stream).image
    assert prepared(model, "int8") is model and model.precision == "int8"
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert linears and all(m.dense is None for m in linears)
    assert not any(type(m) is nn.Linear for m in model.modules())
    with torch.inference_mode():
        rounded = model(stream).image.float()
    assert (rounded - exact).abs().max() <= 5e-2 * exact.abs().max()
    with pytest.raises(ValueError, match="converted to int8 in place"):
        prepared(model, "bf16")


# -- completion: the token stream of rudalle's own generate_images ---------------------------------


class _Recorder:
    """The VQGAN ``generate_images`` decodes with: it keeps the codes it is given."""

    def __init__(self):
        self.codes = []

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        self.codes.append(codes.clone())
        return torch.zeros(codes.shape[0], 3, 8, 8)


@pytest.mark.parametrize("use_cache", [True, False])
def test_forced_completion_matches_rudalles_generate_images(rudalle_code, pair, use_cache):
    """A bottom-right rectangle from cell (5, 4): every cell with r < 5 or c < 4 forced to the
    image's own token (rudalle's ``ImagePrompts``), the others sampled with top-k and top-p.

    The multinomial draws are aligned by giving both the same random stream. rudalle samples each
    cell with ``torch.multinomial(probs, 1)`` on torch's global CPU generator; our sampler with
    ``torch.multinomial(probs, 1, generator=g)`` on ``g = torch.Generator().manual_seed(seed)``.
    Both are the same mt19937 generator, so seeding the global one with the same seed (inside
    ``fork_rng``, to leave other tests' randomness alone) gives both the same random numbers.
    Each sampled cell takes exactly one draw of shape (n, image codes) in both loops, in raster
    order, and nothing else in either loop draws (dropout is off in eval mode): the k-th sampled
    cell gets the same uniform numbers in both, and with probabilities equal to ~1e-6 the same
    token. Forced cells take no draw in either.
    """
    reference, ours = pair
    n, seed, row, col = 2, 1234, 5, 4
    image = cells(batch=1, seed=4)[0]
    forced = {r * GRID + c for r in range(GRID) for c in range(GRID) if r < row or c < col}
    prompts = types.SimpleNamespace(image_prompts_idx=forced, image_prompts=image[None])
    tokenizer = types.SimpleNamespace(encode_text=lambda text, text_seq_length: rudalle_text(1)[0])
    recorder = _Recorder()
    options = dict(top_k=24, top_p=0.9, temperature=1.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rudalle_code.pipelines.generate_images(
            "caption", tokenizer, reference, recorder, options["top_k"], options["top_p"],
            images_num=n, image_prompts=prompts, temperature=options["temperature"], bs=n,
            seed=None, use_cache=True,
        )  # fmt: skip
    (theirs,) = recorder.codes

    plan = Plan(GRID, row, col)
    messages = sample_tokens(
        ours,
        our_text(rudalle_text(1))[0],
        image.view(GRID, GRID),
        plan,
        SamplingOptions(n=n, seed=seed, **options),
        use_cache=use_cache,
    )
    result = [m for m in messages if isinstance(m, Sampled)][0]
    tokens = result.tokens.view(n, -1)
    assert result.model_calls == len(plan.masked_cells)
    kept = sorted(forced)
    assert torch.equal(theirs[:, kept], image[kept].expand(n, -1))  # rudalle forced them
    sampled = plan.masked_cells
    assert (tokens[:, sampled] != image[sampled]).float().mean() > 0.5  # they were sampled
    assert not torch.equal(tokens[0, sampled], tokens[1, sampled])  # two different candidates
    assert torch.equal(tokens, theirs)


# -- the importer ----------------------------------------------------------------------------------


def test_import_reads_sizes_and_maps_the_start(pair):
    reference, ours = pair
    config = ours.config
    assert (config.text_vocab, config.text_len, config.image_vocab) == (BPE_IDS, 7, IMAGE_CODES)
    assert (config.grid, config.dim, config.depth, config.heads) == (GRID, HIDDEN, 4, HEADS)
    assert (config.conv_kernel, config.layout) == (11, "rudalle")
    assert config.sandwich_norm and config.head_norm and config.head_bias
    # the start row: ruDALL-E's last text position's padding id, at that position
    state = reference.state_dict()
    start = state["text_embeddings.weight"][-1] + state["text_pos_embeddings.weight"][7]
    assert torch.equal(ours.image_embed.weight[ours.start_of_image], start)


def test_import_keeps_no_masks_and_needs_every_parameter(pair):
    reference, ours = pair
    _, state = transformer_from_rudalle(reference.state_dict(), heads=HEADS)
    assert set(state) == set(ours.state_dict())
    masks = {k for k in reference.state_dict() if k.endswith("_mask")}
    assert masks == {"transformer.row_mask", "transformer.col_mask", "transformer.conv_mask"}
    without = {k: v for k, v in reference.state_dict().items() if k not in masks}
    assert transformer_from_rudalle(without, heads=HEADS)[0] == ours.config  # masks optional


def test_malevich_shapes_give_malevichs_config(rudalle_code):
    """Malevich's names and shapes (research/importers.md 2.2), on the meta device, with its mask
    buffers as rudalle builds them at that size."""
    from model.importers.rudalle import expected_shapes

    shapes = expected_shapes(2048, 24, 16512, 129, 8192, 32)
    state = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    masks = rudalle_code.masks
    state["transformer.conv_mask"] = masks.get_conv_mask(128, 32, is_bool_mask=True)
    config, ours = transformer_from_rudalle(state)
    assert config == TransformerConfig(
        text_vocab=16384, text_len=127, image_vocab=8192, grid=32, dim=2048, depth=24, heads=16,
        conv_kernel=11, layout="rudalle", sandwich_norm=True, head_norm=True, head_bias=True,
    )  # fmt: skip
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(ours, strict=True, assign=True)
    # ruDALL-E's 1,310,410,880, less the last padding id's embedding and head row (its position
    # is our slot 0) and text positions 127 and 128, plus the start row
    assert model.num_parameters() == 1_310_410_880 - (2 * 2048 + 1) - 2 * 2048 + 2048
    assert "mask_row" not in model._buffers  # meta weights: no tables yet


def one_line_error(state, **kwargs) -> str:
    with pytest.raises(ValueError) as caught:
        transformer_from_rudalle(state, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message
    return message


@pytest.fixture()
def state(pair):
    return dict(pair[0].state_dict())


def test_refuses_v2(state, rudalle_code):
    assert "only ruDALL-E v3" in one_line_error(state, heads=HEADS, version="v2")
    state["transformer.conv_mask"] = rudalle_code.masks.get_conv_mask(
        TEXT_POSITIONS, GRID, is_bool_mask=True, hf_version="v2"
    )
    assert "v2 checkpoint" in one_line_error(state, heads=HEADS)


def test_refuses_a_missing_parameter(state):
    del state["to_logits.0.bias"]
    assert "'to_logits.0.bias'" in one_line_error(state, heads=HEADS)
    del state["text_embeddings.weight"]
    assert "'text_embeddings.weight'" in one_line_error(state, heads=HEADS)


def test_refuses_half_a_sandwich(state):
    del state["transformer.layers.2.before_second_addition_layernorm.weight"]
    message = one_line_error(state, heads=HEADS)
    assert "'transformer.layers.2.before_second_addition_layernorm.weight'" in message


def test_refuses_an_unexpected_name(state):
    state["transformer.layers.0.attention.rotary.weight"] = torch.zeros(3)
    assert "unexpected 'transformer.layers.0.attention.rotary.weight'" in one_line_error(
        state, heads=HEADS
    )


def test_refuses_a_wrong_shape(state):
    state["to_logits.1.weight"] = state["to_logits.1.weight"][:-1]
    message = one_line_error(state, heads=HEADS)
    assert "to_logits.1.weight has shape (171, 64), expected (172, 64)" in message


def test_refuses_a_wrong_mask_shape(state):
    state["transformer.conv_mask"] = state["transformer.conv_mask"][:-1, :-1]
    assert "transformer.conv_mask has shape (151, 151)" in one_line_error(state, heads=HEADS)


def test_refuses_gaps_in_the_layers(state):
    for name in [k for k in state if k.startswith("transformer.layers.3.")]:
        state[name.replace("layers.3.", "layers.5.")] = state.pop(name)
    assert "layers [0, 1, 2, 5]" in one_line_error(state, heads=HEADS)


def test_refuses_heads_that_do_not_divide(state):
    assert "heads 5 does not divide the hidden size 64" in one_line_error(state, heads=5)
    assert "heads 0" in one_line_error(state, heads=0)


def test_refuses_integer_weights(state):
    state["image_row_embeddings.weight"] = state["image_row_embeddings.weight"].long()
    assert "image_row_embeddings.weight holds torch.int64" in one_line_error(state, heads=HEADS)


def test_refuses_text_rows_without_padding_ids(state):
    state["text_embeddings.weight"] = state["text_embeddings.weight"][:5]
    assert "text_embeddings has 5 rows for 8 text positions" in one_line_error(state, heads=HEADS)


# -- the studio layout is untouched ----------------------------------------------------------------


def test_studio_layout_builds_the_plain_model():
    model = Transformer(TransformerConfig(dim=32, depth=2, heads=2, grid=4, text_len=5))
    assert type(model) is Transformer
    assert type(model.blocks[0]).__name__ == "Block" and not hasattr(model, "ln_head")
    assert model.to_image.bias is None and model.to_text.bias is None
    assert torch.equal(
        stream_mask(CONV, model.config)[5:, 5:], image_mask(CONV, 4, model.config.conv_kernel)
    )


def test_layout_choices_refused_with_one_line():
    for changes, expected in (
        (dict(layout="openai"), "unknown layout 'openai'"),
        (dict(head_norm=True), "head_norm"),
    ):
        with pytest.raises(ValueError, match=expected) as caught:
            Transformer(TransformerConfig(dim=32, depth=2, heads=2, grid=4, **changes))
        assert "\n" not in str(caught.value)


def test_rudalle_layout_without_head_norm_runs(pair):
    """The flags are independent: a rudalle layout without the second LayerNorm or sandwich."""
    config = tiny_config(head_norm=False, sandwich_norm=False, head_bias=False)
    model = Transformer(config).eval()
    text, image = our_text(rudalle_text()), cells()
    stream = model.stream(text, image)
    with torch.inference_mode():
        full = model(stream).image
        cache = model.new_cache(2)
        model(stream[:, : config.text_len], 0, cache)
        steps = [
            model(stream[:, p : p + 1], p, cache).image
            for p in range(config.text_len, len(stream[0]))
        ]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= ATOL
