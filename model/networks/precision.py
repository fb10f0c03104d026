"""Inference precision of a sampling model: fp32, bf16 or weight-only int8, copied or converted in
place, and its one-cell decode step through ``torch.compile``.

``for_inference`` makes an eval-mode copy in a precision (``resolve_precision`` picks ``auto``'s);
``convert_in_place`` turns a model too big to hold twice into one, a tensor at a time;
``Int8Linear`` is the int8 Linear both put in place of every ``nn.Linear``; ``CompiledStep`` wraps
a model's ``decode_step``. Everything here works on any model with the sampler's interface
(``model.networks.transformer.Transformer``, its ruDALL-E layout,
``model.networks.bart.BartDalle``).
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import logging
import sys

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "int8")


class Int8Linear(nn.Module):
    """Weight-only int8 Linear for inference: per-output-channel scales, bf16 activations.

    A decode step is a matrix-vector product bound by memory bandwidth: int8 weights move a
    quarter of fp32's bytes (an 11M-parameter model's 45 MB of fp32 weights no longer fit a 32 MiB
    L3; 11 MB do). ``aten._weight_int8pack_mm`` only pays for a few rows, though: from
    ``int8_rows_max`` up a dense bf16 matmul over the same (dequantized) weights is faster, so
    prefill chunks and large batches take that path. Both compute with the same rounded weights.

    ``keep_dense=False`` keeps no bf16 copy (it would take two bytes a weight next to the int8
    one: 5.2 GB for DALL·E Mega); those rows then multiply by the int8 weights widened to bf16
    (exact: |q| <= 127) and scale the result per output channel. Measured on this project's
    2-core AVX-512 CPU, one thread, a 2048x4096 weight: 2.9 ms at 16 rows and 4.8 ms at 64, where
    the int8 kernel takes 3.0 and 12 ms and a dequantized copy made per call 35 ms.
    """

    int8_rows_max = 8  # measured on AVX-512: int8 kernel 0.7 ms vs bf16 2.4 ms at 1 row, even at 8
    # ``_weight_int8pack_mm`` on CPU reads its inner dimension in blocks of 16 without checking:
    # any other width gives garbage or a crash (torch 2.13; DALL·E Mini's GLU is 2730 wide), so
    # the weights are stored padded with zero columns and each input padded to match
    in_multiple = 16

    def __init__(self, linear: nn.Linear, keep_dense: bool = True):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,) one step per channel
        quantized = (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        del weight
        dense = (quantized.float() * scale[:, None]).to(torch.bfloat16) if keep_dense else None
        self.pad = -quantized.shape[1] % self.in_multiple  # zero columns after the last input
        if self.pad:
            quantized = F.pad(quantized, (0, self.pad))
        self.register_buffer("weight", quantized)  # (out, in + pad) int8
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("dense", dense)  # (out, in) bf16, or None
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (M, in)
        if x.shape[0] <= self.int8_rows_max:
            padded = F.pad(x, (0, self.pad)) if self.pad else x
            y = torch.ops.aten._weight_int8pack_mm(padded, self.weight, self.scale)
            if self.bias is not None:
                y = y + self.bias
        elif self.dense is not None:
            y = F.linear(x, self.dense, self.bias)
        else:  # x q^T, then each output channel's scale: the int8 kernel's own order
            padded = F.pad(x, (0, self.pad)) if self.pad else x
            y = F.linear(padded, self.weight.to(torch.bfloat16)) * self.scale
            if self.bias is not None:
                y = y + self.bias
        return y.view(*rows, -1)  # (..., out) bf16


# the precisions a model's weights can be in, besides int8 (fp16: a bundle stored so)
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are: its first parameter's (or buffer's) device. Reads no
    particular layer, so any model with the sampler's interface answers, int8 or not."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    raise ValueError(f"{type(model).__name__} has no weights")


def precision_of(model: nn.Module) -> str:
    """ "int8" when its linears are ``Int8Linear``, else its weights' dtype: "fp32", "bf16" or
    "fp16". ValueError for a model whose floating-point weights mix dtypes."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return "int8"
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    for name, dtype in PRECISION_DTYPES.items():
        if dtypes == {dtype}:
            return name
    raise ValueError(f"{type(model).__name__}'s weights mix dtypes: {sorted(map(str, dtypes))}")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 on CUDA; int8 on x86 CPUs with AVX2/AVX-512 (a decode step there is
    bandwidth-bound and the int8 kernel is vectorised); fp32 elsewhere (MPS, other CPUs)."""
    if precision not in PRECISIONS:
        expected = ", ".join(PRECISIONS)
        raise ValueError(f"unknown precision {precision!r}; expected one of {expected}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16"
    if kind == "cpu" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return "int8"
    return "fp32"


class CompiledStep:
    """``Transformer.decode_step`` through ``torch.compile``, or eager if compiling fails.

    The step is shape-static, so inductor builds one graph per batch size (about 15 s on two CPU
    cores the first time, a few seconds from its on-disk cache later). Compiling needs a C++
    compiler on CPU and Triton on CUDA; where that fails, the step logs one warning and runs
    eager, which is the same computation.
    """

    def __init__(self, eager, backend: str = "inductor"):
        self.eager = eager
        self.compiled = torch.compile(eager, backend=backend, fullgraph=True, dynamic=False)
        self.failure: str | None = None
        self.batches: set[int] = set()  # batch sizes compiled so far

    def will_compile(self, batch: int) -> bool:
        """Whether a step at ``batch`` rows would compile first (the wait worth telling)."""
        return self.failure is None and batch not in self.batches

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor, cache: list[torch.Tensor]):
        if self.failure is None:
            try:
                logits = self.compiled(ids, pos, cache)
                self.batches.add(ids.shape[0])
                return logits
            except Exception as error:  # any compiler failure: eager is the same computation
                # dynamo wraps the compiler's own error (BackendCompilerFailed.inner_exception)
                while getattr(error, "inner_exception", None) or error.__cause__:
                    error = getattr(error, "inner_exception", None) or error.__cause__
                lines = str(error).strip().splitlines()
                self.failure = f"{type(error).__name__}: {lines[0] if lines else ''}"
                log.warning("torch.compile failed, sampling eagerly: %s", self.failure)
        return self.eager(ids, pos, cache)


def for_inference(
    transformer: nn.Module, precision: str = "auto", compile: bool = False, in_place: bool = False
) -> nn.Module:
    """An eval-mode copy of ``transformer`` in ``precision`` (fp32, bf16, int8 or auto).

    bf16 and int8 run activations and the KV cache in bf16; int8 also stores every Linear's
    weights as int8 (see ``Int8Linear``). fp32 returns the model itself, in eval mode, unless
    ``compile`` asks for its decode step through ``torch.compile`` (see ``CompiledStep``). A copy
    is for sampling only: it has no gradients and cannot be trained or saved into a bundle.

    ``in_place=True`` converts ``transformer`` itself instead of copying it (see
    ``convert_in_place``): what a model of billions of parameters needs, which cannot be held
    twice.
    """
    device = model_device(transformer)
    precision = resolve_precision(precision, device)
    if in_place:
        return convert_in_place(transformer, precision, compile)
    if precision == "fp32" and not compile:
        return transformer.eval()
    model = copy.deepcopy(transformer).eval().requires_grad_(False)
    if compile:
        model.decode_step = CompiledStep(model.decode_step)
    if precision == "fp32":
        return model
    if precision == "int8":
        quantize_linears(model)
    model.precision = precision
    return model.to(torch.bfloat16)


def release_freed_memory() -> None:
    """Hand memory freed by an in-place conversion back to the system. glibc keeps freed blocks
    under its mmap threshold (32 MB at most: every weight of DALL·E Mini) in its heap for reuse;
    measured on Mini, bf16 -> int8 left 360 MB that ``malloc_trim`` returns. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library (musl): nothing to trim
        pass


def quantize_linears(model: nn.Module, keep_dense: bool = True) -> None:
    """Every ``nn.Linear`` of ``model`` replaced by an ``Int8Linear``, one at a time: each
    Linear's weights are freed as soon as its int8 copy exists (only its parent is held here,
    never a list of the Linears themselves, which would keep every one alive to the end)."""
    places = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name in places:
        setattr(parent, name, Int8Linear(getattr(parent, name), keep_dense))


def convert_in_place(model: nn.Module, precision: str, compile: bool = False) -> nn.Module:
    """``model`` itself turned into ``precision`` ("fp32", "bf16", "fp16" or "int8"), one tensor at
    a time: the memory it needs is the model's and one tensor's, never two models'.

    Casts go either way (fp32 -> bf16 rounds the weights; bf16 -> fp32 widens them, without
    bringing back what was rounded, and is refused when the memory it adds is not free). int8
    quantizes every Linear without a dense bf16 copy (``Int8Linear(keep_dense=False)``) and is
    one way: leaving it is refused (ValueError), as the int8 rounding cannot be undone; load the
    bundle again. ``compile`` wraps the decode step in ``CompiledStep`` (or unwraps it).
    """
    model.eval().requires_grad_(False)
    current = getattr(model, "precision", None) or precision_of(model)
    if precision != current:
        if current == "int8":
            raise ValueError(
                f"this model was converted to int8 in place to save memory; load the model "
                f"again to sample in {precision}"
            )
        if precision == "int8":
            quantize_linears(model, keep_dense=False)
            model.to(torch.bfloat16)  # the LayerNorms and embeddings
        else:
            target = PRECISION_DTYPES[precision]
            grown = sum(
                p.numel() * (target.itemsize - p.element_size())
                for p in model.parameters()
                if p.is_floating_point() and target.itemsize > p.element_size()
            )
            if grown:
                from model.device import available_memory

                free = available_memory(model_device(model))
                if free is not None and grown > free:
                    raise ValueError(
                        f"sampling in {precision} needs about {grown / 1e9:.1f} GB more memory "
                        f"than this {current} model holds, {free / 1e9:.1f} GB available: "
                        f"choose {current} or int8"
                    )
            model.to(target)
        model.precision = precision
        release_freed_memory()
        log.info("converted %s in place to %s", type(model).__name__, precision)
    compiled = isinstance(model.__dict__.get("decode_step"), CompiledStep)
    if compile and not compiled:
        model.decode_step = CompiledStep(model.decode_step)
    elif compiled and not compile:
        del model.decode_step  # the class's own, eager
    return model
