"""Completion of a bottom-right rectangle of image tokens, as a generator of progress messages.

The paper's completion: walk the raster order; every cell outside the region (the rectangle
from (r0, c0) to the plan's end, by default the bottom-right corner) is forced to the image's own
token, every cell inside it is sampled. With a KV cache this
costs one model call per masked cell: the call that produces a masked cell's logits also prefills
the run of kept cells before it, in one chunk (as ru-dalle does). A non-square image's padding
cells inside the rectangle are not sampled at all: they keep the image's own (edge-padded) tokens
and are dropped when the result is pasted back (``Plan``'s visible rows and columns).

``complete`` yields ``Progress`` once per finished rectangle row and ends with ``Done`` (or
``Cancelled``); ``generate`` is ``complete`` from cell (0, 0). Callers only iterate, as min-dalle's
``generate_raw_image_stream`` consumers do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from model.config import DEFAULT_TEXT_KIND, SamplingOptions, VQConfig, VQGANConfig
from model.geometry import Plan
from model.inference.lookahead import lookahead_scores
from model.networks.precision import (
    convert_in_place,
    for_inference,
    model_device,
    resolve_precision,
)

log = logging.getLogger(__name__)
_inference_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {precision}


def plan_mask(plan: Plan) -> torch.Tensor:
    """(grid, grid) bool, True on the cells ``plan`` samples."""
    mask = torch.zeros(plan.grid, plan.grid, dtype=torch.bool)
    mask[plan.row : plan.bottom, plan.col : plan.right] = True
    return mask


@dataclass
class Progress:
    tokens: torch.Tensor  # (n, grid, grid): kept tokens, sampled ones so far, originals elsewhere
    row: int  # grid row just finished
    rows_done: int
    rows_total: int
    cells_done: int
    cells_total: int
    tokens_per_s: float


@dataclass(frozen=True)
class Sampled:
    """``sample_tokens``' result: the candidates' tokens, in sampling order."""

    tokens: torch.Tensor  # (n, grid, grid)
    seed: int  # the seed that reproduces this run
    seconds: float
    tokens_per_s: float
    model_calls: int  # sequential transformer calls, for the one-call-per-masked-cell invariant


@dataclass(frozen=True)
class Done:
    """``complete``'s result: decoded candidates, best first when a reranker scored them."""

    tokens: torch.Tensor  # (n, grid, grid)
    images: torch.Tensor  # (n, 3, S, S) decoded candidates in [0, 1], same order
    scores: torch.Tensor | None  # (n,) reranker scores, None without a reranker
    seed: int
    seconds: float
    tokens_per_s: float
    model_calls: int
    order: list[int]  # the sampled index of each returned candidate
    # (n,) the lookahead log-likelihood of the kept cells after the region, same order; None
    # unless candidates were chosen by it (``complete``'s lookahead > 1)
    lookahead: torch.Tensor | None = None


@dataclass
class Cancelled:
    tokens: torch.Tensor  # what had been sampled when cancel was seen
    cells_done: int


Message = Progress | Sampled | Done | Cancelled


def filter_logits(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on (B, V) logits."""
    if options.temperature != 1.0:
        logits = logits / options.temperature
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token once the mass before it already reaches top_p (the first always stays)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= options.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def guided(logits: torch.Tensor, n: int, scale: float) -> torch.Tensor:
    """Classifier-free guidance: rows [0, n) are conditional, rows [n, 2n) unconditional."""
    if logits.shape[0] == n:
        return logits
    cond, uncond = logits[:n].float(), logits[n:].float()
    return uncond + scale * (cond - uncond)


def batch_rows(options: SamplingOptions, guided: bool = True) -> int:
    """Rows the model runs at once: the candidates, twice over with guidance (the second half
    unconditional). ``guided=False``: no empty caption to guide with."""
    return 2 * options.n if guided and options.guidance != 1.0 else options.n


def memory_needed(config, options: SamplingOptions, device_type: str = "cpu") -> int:
    """Bytes a run allocates besides the model (``config``: a ``BundleConfig``): the KV cache of
    every row, fp32 on CPU and bf16 elsewhere (see ``Transformer.new_cache``; a ``BartConfig``
    names its sizes so that this is ``BartCache``'s too, its cross keys in the text positions),
    and the decoded candidates with the decoder's widest full-resolution activations."""
    tf, vae = config.transformer, config.vae
    value_bytes = 4 if device_type == "cpu" else 2
    cache = tf.depth * 2 * batch_rows(options) * tf.seq_len * tf.dim * value_bytes
    if isinstance(vae, VQConfig):  # every convolution at grid resolution, then PixelShuffle
        activations = 3 * vae.image_size**2 + 2 * vae.width * vae.grid**2
    elif isinstance(vae, VQGANConfig):  # a residual block at full resolution holds ~4 maps
        activations = (3 + 4 * vae.ch * vae.ch_mult[0]) * vae.image_size**2
    else:
        activations = (3 + 2 * vae.decoder_n_hid) * vae.image_size**2
    decoded = options.n * activations * 4
    return cache + decoded


def resolve_seed(seed: int | None) -> int:
    return int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)


@torch.inference_mode()
def sample_tokens(
    transformer,
    text: torch.Tensor,
    image_tokens: torch.Tensor,
    plan: Plan,
    options: SamplingOptions,
    empty_text: torch.Tensor | None = None,
    cancel: threading.Event | None = None,
    use_cache: bool = True,
) -> Iterator[Message]:
    """Core sampler on token grids; yields Progress per finished row, then ``Sampled``.

    text: (text_len,) caption ids; image_tokens: (grid, grid) the image's own tokens (ignored on
    masked cells); empty_text: (text_len,) the unconditional caption for guidance.
    ``use_cache=False`` recomputes the whole prefix each step (the reference the cache must equal).
    """
    options.validate()
    cfg = transformer.config
    if image_tokens.shape != (cfg.grid, cfg.grid):
        raise ValueError(
            f"image tokens must be {cfg.grid}x{cfg.grid}, got {tuple(image_tokens.shape)}"
        )
    device = model_device(transformer)
    n = options.n
    batch = batch_rows(options, guided=empty_text is not None)
    use_guidance = batch != n
    seed = resolve_seed(options.seed)
    generator = torch.Generator(device=device).manual_seed(seed)

    grid_tokens = image_tokens.to(device).reshape(1, -1).repeat(n, 1)  # (n, N)
    T = cfg.text_len
    masked = plan.masked_cells
    started = time.perf_counter()
    cache = transformer.new_cache(batch) if use_cache else None
    stream = _prompt_stream(transformer, text, empty_text if use_guidance else None, n, device)
    calls = 0
    fed = 0  # stream positions [0, fed) are in the cache
    rows_done = 0
    for done, cell in enumerate(masked):
        if cancel is not None and cancel.is_set():
            yield Cancelled(tokens=grid_tokens.view(n, cfg.grid, cfg.grid).cpu(), cells_done=done)
            return
        # slot s holds cell s - 1, final once written: fill the new slots up to `cell`'s own
        end = T + cell + 1
        first = max(fed, T + 1)
        if first < end:
            cells = grid_tokens[:, first - T - 1 : cell]
            stream[:, first:end] = cells.repeat(2, 1) if use_guidance else cells
        if use_cache:
            logits = transformer(stream[:, fed:end], fed, cache, last_only=True).image[:, -1]
        else:
            logits = transformer(stream[:, :end], 0, None, last_only=True).image[:, -1]
        calls += 1
        fed = end
        logits = filter_logits(guided(logits, n, options.guidance), options)
        probs = logits.float().softmax(dim=-1)
        grid_tokens[:, cell] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        if cell % cfg.grid == plan.last_col:  # a region row is finished
            rows_done += 1
            elapsed = time.perf_counter() - started
            yield Progress(
                tokens=grid_tokens.view(n, cfg.grid, cfg.grid).cpu(),
                row=cell // cfg.grid,
                rows_done=rows_done,
                rows_total=plan.rows,
                cells_done=done + 1,
                cells_total=plan.cells,
                tokens_per_s=n * (done + 1) / max(elapsed, 1e-9),
            )
    seconds = time.perf_counter() - started
    yield Sampled(
        tokens=grid_tokens.view(n, cfg.grid, cfg.grid).cpu(),
        seed=seed,
        seconds=seconds,
        tokens_per_s=n * plan.cells / max(seconds, 1e-9),
        model_calls=calls,
    )


def _prompt_stream(
    transformer,
    text: torch.Tensor,
    empty_text: torch.Tensor | None,
    n: int,
    device: torch.device,
) -> torch.Tensor:
    """The token stream the sampler fills: ``n`` rows of the caption (then ``n`` of the empty
    caption when guided) and the start of the image; the image's slots are written as it goes."""
    cfg = transformer.config
    texts = text.to(device).expand(n, -1)
    if empty_text is not None:
        texts = torch.cat([texts, empty_text.to(device).expand(n, -1)])
    stream = torch.empty(texts.shape[0], cfg.seq_len, dtype=torch.long, device=device)
    stream[:, : cfg.text_len] = texts
    stream[:, cfg.text_len] = transformer.start_of_image
    return stream


def prepared(transformer, precision: str, compile: bool = False):
    """``transformer`` in ``precision`` for sampling, converted once and kept on the model.

    ``fp32`` is the model itself (the reference); ``auto``/``bf16``/``int8`` and ``compile`` see
    ``model.networks.precision.for_inference``.

    A model too large to hold twice (``converts_in_place``: DALL·E Mega and Mini, 2.6B and 0.4B
    parameters) is converted in place instead of copied
    (``model.networks.precision.convert_in_place``): the bundle's transformer itself becomes bf16 or
    int8, so a 5.2 GB bf16 Mega samples in 5.2 GB (or 2.8 GB in int8), not twice that. Its ``auto``
    never widens it (see ``resolve_in_place``). The price: a model turned int8 stays int8 (asking
    for another precision afterwards is a ValueError that says to load it again), and one turned
    bf16 samples fp32 from bf16-rounded weights.
    """
    device = model_device(transformer)
    if getattr(transformer, "converts_in_place", False):
        precision = resolve_in_place(transformer, precision, device)
        return convert_in_place(transformer, precision, compile)
    precision = resolve_precision(precision, device)
    if precision == transformer.precision and not compile:
        return transformer
    copies = _inference_copies.setdefault(transformer, {})
    if (precision, compile) not in copies:
        copies[precision, compile] = for_inference(transformer, precision, compile)
    return copies[precision, compile]


def resolve_in_place(transformer, precision: str, device: torch.device) -> str:
    """``precision`` for a model converted in place: a name is itself; ``auto`` is
    ``resolve_precision``'s choice (int8 on AVX2/AVX-512 CPUs, bf16 on CUDA), except that a
    model already in half precision is never widened to fp32 (a bf16 Mega would double) and a
    CUDA model stored in fp16 keeps it."""
    chosen = resolve_precision(precision, device)
    if precision != "auto":
        return chosen
    current = transformer.precision
    if device.type == "cuda" and current in ("bf16", "fp16"):
        return current
    if chosen == "fp32" and current in ("bf16", "fp16", "int8"):
        return current
    return chosen


def complete(
    bundle,
    image: torch.Tensor | None,
    plan: Plan | tuple[int, int],
    caption: str,
    options: SamplingOptions | None = None,
    cancel: threading.Event | None = None,
    use_cache: bool = True,
    precision: str = "fp32",
    compile: bool = False,
    lookahead: int = 1,
) -> Iterator[Message]:
    """Regenerate the cells ``plan`` names (its region, by default to the bottom-right corner,
    less the padding beside the picture: ``Geometry.plan``) under ``caption``. A (row, col)
    cell instead of a plan: the rectangle from it over the whole grid (a square picture).

    image: (3, S, S) in [0, 1] at the bundle's resolution (see ``model.inference.images.to_model``),
    or None for a blank start (only valid from cell (0, 0)). Yields Progress per finished row, then
    Done with decoded candidates, reranked best first when the bundle carries a reranker.
    precision: fp32 (default: the exact reference), bf16, int8 or auto (see ``prepared``);
    compile: run each one-cell step through ``torch.compile``
    (``model.networks.precision.CompiledStep``). The rectangle's padding cells keep the image's own
    tokens and are not sampled. ``model.inference.completion`` runs this for a user's picture, at
    its own size.

    ``lookahead`` K > 1 samples K times ``options.n`` candidates in one batch and keeps the n
    whose kept cells after the region are likeliest (``model.inference.lookahead``), then orders
    those n by the reranker where the bundle has one. Lookahead first, not a rank sum: it is what
    K buys (how well a candidate leads into the picture the sampler could not see), while the
    reranker scores the whole decoded picture, mostly kept pixels for a small region, and only
    the n kept candidates need decoding. K = 1 is the sampler without lookahead, bit for bit.
    """
    options = options or SamplingOptions()
    options.validate()
    if not isinstance(lookahead, int) or isinstance(lookahead, bool) or lookahead < 1:
        raise ValueError(f"lookahead must be a whole number of at least 1, got {lookahead!r}")
    cfg = bundle.config
    grid = cfg.transformer.grid
    if not isinstance(plan, Plan):
        plan = Plan(grid, *plan)
    elif plan.grid != grid:
        raise ValueError(f"a plan for a {plan.grid}x{plan.grid} grid, but the model's is {grid}")
    device = bundle.device
    if image is None:
        if (plan.row, plan.col) != (0, 0):
            raise ValueError("completing from a cell other than (0, 0) needs an image")
        image_tokens = torch.zeros(grid, grid, dtype=torch.long)
    else:
        size = cfg.vae.image_size
        if tuple(image.shape) != (3, size, size):
            raise ValueError(f"image must be a 3x{size}x{size} tensor, got {tuple(image.shape)}")
        image_tokens = bundle.vae.encode(image.unsqueeze(0).to(device))[0]
    text = bundle.tokenizer.encode([caption])[0]
    empty = bundle.tokenizer.empty(1)[0]
    transformer = prepared(bundle.transformer, precision, compile)
    sampled = options if lookahead == 1 else dataclasses.replace(options, n=options.n * lookahead)
    for message in sample_tokens(
        transformer, text, image_tokens, plan, sampled, empty, cancel, use_cache
    ):
        if not isinstance(message, Sampled):
            yield message
            continue
        fits, order = None, list(range(sampled.n))
        if lookahead > 1:
            fits = lookahead_scores(transformer, text, message.tokens, plan)
            order = torch.sort(fits, descending=True, stable=True).indices[: options.n].tolist()
            fits = fits[order]
        yield _decoded(bundle, message, text, order, fits)


def _decoded(
    bundle, message: Sampled, text: torch.Tensor, order: list[int], fits: torch.Tensor | None
) -> Done:
    """``Done`` for the sampled candidates ``order`` keeps (in that order): decoded, then
    reranked best first when the bundle carries a reranker (their lookahead ``fits`` along)."""
    device = bundle.device
    tokens, scores = message.tokens[order], None
    with torch.inference_mode():
        images = bundle.vae.decode(tokens.to(device)).float().cpu()
    # a reranker reads our BPE's ids: bundle.config_problems refuses one next to any other
    # caption tokenizer (an imported DALL·E Mega has none), so BART ids never reach it
    if bundle.reranker is not None and bundle.config.text_kind == DEFAULT_TEXT_KIND:
        captions = text.unsqueeze(0).expand(len(order), -1)
        scores = bundle.reranker.score(images.to(device), captions).float().cpu()
        ranked = scores.argsort(descending=True).tolist()
        tokens, images, scores = tokens[ranked], images[ranked], scores[ranked]
        order = [order[i] for i in ranked]
        fits = None if fits is None else fits[ranked]
    return Done(
        tokens=tokens,
        images=images,
        scores=scores,
        seed=message.seed,
        seconds=message.seconds,
        tokens_per_s=message.tokens_per_s,
        model_calls=message.model_calls,
        order=order,
        lookahead=fits,
    )


def generate(
    bundle,
    caption: str,
    options: SamplingOptions | None = None,
    cancel=None,
    precision="fp32",
    compile=False,
):
    """Generate whole images from a caption: completion from cell (0, 0)."""
    return complete(
        bundle, None, (0, 0), caption, options, cancel, precision=precision, compile=compile
    )


def run(messages: Iterator[Message]) -> Done | Sampled:
    """Drain a message stream and return its result (raises if it was cancelled)."""
    for message in messages:
        if isinstance(message, Done | Sampled):
            return message
        if isinstance(message, Cancelled):
            raise RuntimeError("sampling was cancelled")
    raise RuntimeError("sampling ended without a result")
