"""The single-file model bundle (``*.dalle.safetensors``, DESIGN.md §3).

One safetensors file holds every weight and everything needed to rebuild the models around them,
as nanoGPT's checkpoints carry their ``model_args``:

    tensors    vae.*, transformer.*, reranker.* (optional): each model's state_dict; vae.* is
               the image tokenizer
    metadata   format     "dalle-studio/1"
               config     BundleConfig as JSON; config.text.text_len is the tokenizer's text_len.
                          Each section's "kind" says what it builds; absent, it is the product's
                          own (as in every bundle written before kinds existed):
                            vae.kind          "dvae" (absent), "vq" (model/vq.py) or "vqgan"
                                              (model/vqgan.py: DALL·E Mega's f16 VQGAN)
                            text.kind         "bpe" (absent: model/text.py), "bart"
                                              (model/bart_text.py: BART's BPE, pad id 1) or
                                              "yttm" (model/yttm_text.py: ruDALL-E's BPE)
                            transformer.kind  "dalle" (absent: model/transformer.py) or "bart"
                                              (model/bart.py: DALL·E Mega / Mini)
               tokenizer  the caption tokenizer as JSON: ``tokenizers``' for "bpe",
                          ``BartTokenizer.to_json`` (vocab, merges, text_len) for "bart",
                          ``RudalleTokenizer.to_json`` for "yttm"
               card       JSON: training data, steps, metrics, example captions; an imported
                          model's sources, licence and input hashes

No pickle anywhere. ``load`` refuses a bundle that is truncated, is not safetensors, has an
unknown format, missing metadata, an invalid config, missing or extra tensors, wrong shapes or
non-finite weights, with a ``BundleError`` naming the file and the problem. Structural checks run on
the header alone, before any weight is read; ``read_card`` and ``read_config`` read only the header.

A bundle is untrusted input, so nothing is allocated on its word: the header is bounded in size,
tensor count and nesting; every config field is typed and bounded (``model.config.FIELD_RANGES``);
the models are first built on the meta device, where the stored shapes are compared with theirs
without a byte of weights; and the attention tables a config asks for must be justified by the
file's size. Then the memory the load needs is estimated from the header (the stored tensors, the
models built around them, working space) and a load that cannot fit is refused in one line rather
than swapping the machine. Only then are the weights read (as much memory as the file holds).

Imported models are large (DALL·E Mega: 2.6B parameters, 5.2 GB in bf16), so the "bart" and
"vqgan" kinds are built on the meta device and take the file's tensors themselves
(``load_state_dict(assign=True)``), in the dtype they were stored in (fp32, bf16 or fp16, one per
model): their weights are in memory once. The product's own models are small and built as before
(our transformer's attention tables are not in the file) and their weights copied in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from model import card as card_schema
from model.bart_text import BartTokenizer
from model.config import (
    DEFAULT_TEXT_KIND,
    DEFAULT_TRANSFORMER_KIND,
    BartConfig,
    BundleConfig,
    DVAEConfig,
    TransformerConfig,
    VQConfig,
    VQGANConfig,
    vae_kind,
)
from model.device import available_memory
from model.files import atomic_path
from model.text import CaptionTokenizer
from model.yttm_text import RudallePrompt

logger = logging.getLogger(__name__)

FORMAT = "dalle-studio/1"
SUFFIX = ".dalle.safetensors"
DEFAULT_BUNDLE_NAME = "default" + SUFFIX
METADATA_KEYS = ("format", "config", "tokenizer", "card")
PREFIXES = ("vae", "transformer", "reranker")

# The JSON header: a bundle's is tens of KB (the default's 39 KB; an imported DALL·E Mega with its
# 50k-token BPE a few MB). Parsing 16 MB of hostile JSON stays within a couple of hundred MB.
MAX_HEADER_BYTES = 16 * 2**20
MAX_TENSORS = 65_536  # DALL·E Mega has about 1,000; ruDALL-E XL about 600
MAX_RANK = 8  # dimensions of one tensor
# attention tables (not weights, so not paid for by the file) up to this much or 4x the file
MIN_TABLE_BUDGET = 256 * 2**20
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64",
    "U64": "uint64", "F64": "float64",
}  # fmt: skip
# dtypes a model loaded by assignment keeps (its weights are the file's tensors, not copies)
ASSIGNED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
NAMES_SHOWN = 5  # how many offending tensor names an error lists


class BundleError(ValueError):
    """A bundle that cannot be read, saved or trusted; the message names the file and problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"model bundle {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass
class Bundle:
    """A loaded model: its config, the three models, the tokenizer and the model card."""

    config: BundleConfig
    vae: nn.Module  # model.dvae.DVAE, model.vq.VQVAE or model.vqgan.VQGAN: config.vae_kind
    transformer: nn.Module  # model.transformer.Transformer or model.bart.BartDalle
    tokenizer: CaptionTokenizer | BartTokenizer  # as config.text_kind says
    reranker: nn.Module | None = None  # model.rerank.Reranker
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from; None for a bundle built in memory

    def modules(self) -> dict[str, nn.Module]:
        """The models by tensor prefix, the reranker only when present."""
        found = {"vae": self.vae, "transformer": self.transformer, "reranker": self.reranker}
        return {prefix: module for prefix, module in found.items() if module is not None}

    def to(self, device: str | torch.device) -> Bundle:
        for module in self.modules().values():
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device


# -- where the embedded model lives -------------------------------------------------------------


def default_bundle_path() -> Path:
    """``resources/models/default.dalle.safetensors``, from source or a PyInstaller build."""
    try:
        root = resources.files("resources")
        if isinstance(root, Path):  # a plain folder: from source, installed, or PyInstaller
            return root / "models" / DEFAULT_BUNDLE_NAME
    except (ModuleNotFoundError, TypeError):
        pass
    # a loader without file-system paths (e.g. a zip): the checkout's layout next to this file
    return Path(__file__).resolve().parent.parent / "resources" / "models" / DEFAULT_BUNDLE_NAME


# -- consistency between the parts ---------------------------------------------------------------


def config_problems(
    config: BundleConfig, tokenizer: CaptionTokenizer | BartTokenizer | None = None
) -> list[str]:
    """Ways in which the config's parts (and the tokenizer) disagree; empty when they agree."""
    problems = []
    text, tf, vae = config.text, config.transformer, config.vae
    if text.text_len != tf.text_len:
        problems.append(f"text.text_len {text.text_len} != transformer.text_len {tf.text_len}")
    if vae.vocab_size != tf.image_vocab:
        problems.append(
            f"vae.vocab_size {vae.vocab_size} != transformer.image_vocab {tf.image_vocab}"
        )
    if vae.grid != tf.grid:
        problems.append(f"the vae's grid {vae.grid} != transformer.grid {tf.grid}")
    bart_text = config.text_kind == "bart"
    if (config.transformer_kind == "bart") != bart_text:
        problems.append(
            f"a transformer of kind {config.transformer_kind!r} cannot read captions of "
            f"text.kind {config.text_kind!r}"
        )
    yttm_text = config.text_kind == "yttm"
    rudalle = config.transformer_kind == "dalle" and tf.layout == "rudalle"
    if yttm_text != rudalle and config.transformer_kind != "bart":  # bart: said above
        problems.append(
            "ruDALL-E's captions (text.kind 'yttm') go with a transformer of layout 'rudalle' "
            f"and only with it; this bundle has text.kind {config.text_kind!r} and a "
            f"transformer of layout {tf.layout!r}"
        )
    if yttm_text and text.vocab_size != tf.text_vocab:
        problems.append(
            f"text.vocab_size {text.vocab_size} != transformer.text_vocab {tf.text_vocab}"
        )
    if config.reranker is not None and config.text_kind != DEFAULT_TEXT_KIND:
        # the reranker scores our BPE's ids; never feed it another tokenizer's
        problems.append(
            f"a reranker reads {DEFAULT_TEXT_KIND!r} caption ids, not {config.text_kind!r} ones"
        )
    if bart_text and text.vocab_size > tf.text_vocab + 1:
        # DALL·E Mini's vocab_mini.json has one id (50264, "<mask>") past its encoder's 50264
        # rows; BPE never produces it, and BartTokenizer reads any such id as <unk>
        problems.append(
            f"text.vocab_size {text.vocab_size} is more than one past the encoder's "
            f"{tf.text_vocab} rows"
        )
    if tokenizer is not None:
        expected = {"bart": BartTokenizer, "yttm": RudallePrompt}.get(
            config.text_kind, CaptionTokenizer
        )
        if not isinstance(tokenizer, expected):
            problems.append(
                f"text.kind {config.text_kind!r} needs a {expected.__name__}, "
                f"not a {type(tokenizer).__name__}"
            )
        elif (bart_text or yttm_text) and tokenizer.vocab_size != text.vocab_size:
            problems.append(
                f"the tokenizer has {tokenizer.vocab_size} ids but text.vocab_size is "
                f"{text.vocab_size}"
            )
        elif not bart_text and tokenizer.vocab_size != tf.text_vocab:
            problems.append(
                f"the tokenizer has {tokenizer.vocab_size} BPE ids but "
                f"transformer.text_vocab is {tf.text_vocab}"
            )
        if tokenizer.text_len != text.text_len:
            problems.append(
                f"the tokenizer pads to {tokenizer.text_len} but text.text_len is {text.text_len}"
            )
    return problems


def _few(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


# -- saving --------------------------------------------------------------------------------------


def _tensors_for_saving(bundle: Bundle) -> dict[str, torch.Tensor]:
    """Every state_dict entry, prefixed, on the CPU and contiguous, sharing no storage."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for prefix, module in bundle.modules().items():
        for name, tensor in module.state_dict().items():
            tensor = tensor.detach().to("cpu").contiguous()
            if tensor.untyped_storage().data_ptr() in storages:
                # tied weights or views: safetensors refuses shared storage, so store a copy
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            tensors[f"{prefix}.{name}"] = tensor
    return tensors


def save(bundle: Bundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to ``path`` atomically: the file appears complete or not at all."""
    path = Path(path)
    if bundle.reranker is None and bundle.config.reranker is not None:
        raise BundleError(path, "cannot save: the config names a reranker but the bundle has none")
    if bundle.reranker is not None and bundle.config.reranker is None:
        raise BundleError(path, "cannot save: the bundle has a reranker but its config has none")
    problems = config_problems(bundle.config, bundle.tokenizer)
    for prefix, module in bundle.modules().items():
        converted = getattr(module, "precision", "fp32") == "int8"
        if converted or any(type(m).__name__ == "Int8Linear" for m in module.modules()):
            # model.precision.for_inference's int8 weights are not the model's parameters
            problems.append(
                f"the {prefix} was converted to int8 for sampling; load the bundle again to save it"
            )
        # a model built from another config would be refused on load with shape errors
        built_with = getattr(module, "config", None)
        if built_with is not None and built_with != getattr(bundle.config, prefix):
            problems.append(f"the {prefix} was built with another config than the bundle's")
    if problems:
        raise BundleError(path, "cannot save an inconsistent bundle: " + "; ".join(problems))
    try:
        card = json.dumps(bundle.card)
    except (TypeError, ValueError) as error:
        raise BundleError(path, f"cannot save: the card is not JSON ({error})") from error
    metadata = {
        "format": FORMAT,
        "config": json.dumps(bundle.config.to_dict()),
        "tokenizer": bundle.tokenizer.to_json(),
        "card": card,
    }
    tensors = _tensors_for_saving(bundle)
    for prefix in _assigned_prefixes(bundle.config):
        dtypes = {t.dtype for k, t in tensors.items() if k.startswith(prefix + ".")}
        if len(dtypes) > 1 or not dtypes <= set(ASSIGNED_DTYPES.values()):
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
            raise BundleError(
                path,
                f"cannot save: the {prefix}'s weights are {names}; store it in one of "
                "float32, bfloat16 or float16",
            )

    if not path.parent.is_dir():
        raise BundleError(path, f"cannot save: folder {path.parent} does not exist")
    try:
        # a model file is for everyone to read: not private
        with atomic_path(path) as temp:
            save_file(tensors, str(temp), metadata=metadata)
    except (OSError, SafetensorError) as error:  # safetensors' own error for a full disk
        raise BundleError(
            path, f"cannot save: {getattr(error, 'strerror', None) or error}"
        ) from error
    logger.info("saved model bundle %s (%d tensors)", path, len(tensors))
    return path


# -- reading the header ----------------------------------------------------------------------------


@dataclass
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Header:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int = 0  # where the data section begins: 8 + the header's length


def _existing_file(path: str | os.PathLike | None) -> Path:
    if path is None:
        path = default_bundle_path()
        if not path.is_file():
            raise BundleError(path, "the embedded default model is missing from this installation")
    path = Path(path)
    if not path.exists():
        raise BundleError(path, "no such file")
    if not path.is_file():
        raise BundleError(path, "not a file")
    return path


def read_header(path: str | os.PathLike) -> Header:
    """Parse and check the safetensors header without reading any tensor data."""
    path = _existing_file(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise BundleError(path, f"not a safetensors file: only {size} bytes long")
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise BundleError(
                    path,
                    f"not a safetensors file (or not a bundle): its header length field reads "
                    f"{header_len} bytes; a bundle's header is at most {MAX_HEADER_BYTES}",
                )
            if 8 + header_len > size:
                raise BundleError(
                    path,
                    f"truncated or not a safetensors file: the header needs {header_len} bytes "
                    f"but only {size - 8} follow its length field",
                )
            raw = f.read(header_len)
    except OSError as error:
        raise BundleError(path, f"cannot read: {error.strerror or error}") from error
    header = parse_json(path, raw, "not a safetensors file: its header")
    if not isinstance(header, dict):
        raise BundleError(path, "not a safetensors file: its header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BundleError(path, "corrupt header: __metadata__ is not a map of strings")
    if len(header) > MAX_TENSORS:
        raise BundleError(
            path,
            f"corrupt header: it lists {len(header)} tensors; a bundle has at most {MAX_TENSORS}",
        )
    data_len = size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        tensors[name] = _tensor_entry(path, name, entry, data_len)
    return Header(metadata=metadata, tensors=tensors, data_start=8 + header_len)


def _tensor_entry(path: Path, name: str, entry: Any, data_len: int) -> TensorEntry:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise BundleError(path, f"corrupt header: malformed entry for tensor {name}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise BundleError(path, f"corrupt header: tensor {name} has unknown dtype {dtype!r:.40}")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_RANK
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise BundleError(
            path,
            f"corrupt header: tensor {name} has shape {shape!r:.60}; expected a list of at most "
            f"{MAX_RANK} non-negative integers",
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise BundleError(
            path, f"corrupt header: impossible data_offsets {offsets!r:.60} for tensor {name}"
        )
    begin, end = offsets
    if end > data_len:
        raise BundleError(
            path,
            f"truncated: tensor {name} needs bytes up to {end} of the data section "
            f"but the file holds only {data_len}",
        )
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise BundleError(
            path, f"corrupt header: tensor {name} of shape {shape} does not fit its bytes"
        )
    return TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def parse_json(path: Path, text: str | bytes, what: str) -> Any:
    """JSON from a bundle, any failure one BundleError: ``what`` names the part ("its card")."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(path, f"{what} is not JSON ({error})") from None
    except RecursionError:
        raise BundleError(path, f"{what} is nested too deeply to be read") from None


def _check_format(path: Path, metadata: Mapping[str, str]) -> None:
    fmt = metadata.get("format")
    if fmt is None:
        raise BundleError(path, "no 'format' in its metadata: not a DALL·E Studio bundle")
    if fmt != FORMAT:
        raise BundleError(
            path, f"unknown format {fmt!r}: this version of DALL·E Studio reads {FORMAT!r}"
        )
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise BundleError(path, f"missing metadata: {', '.join(missing)}")


def _parse_config(path: Path, metadata: Mapping[str, str]) -> BundleConfig:
    data = parse_json(path, metadata["config"], "invalid config metadata: the config")
    try:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        config = BundleConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise BundleError(path, f"invalid config metadata: {detail}") from None
    problems = config_problems(config)
    if problems:
        raise BundleError(path, "inconsistent config: " + "; ".join(problems))
    return config


def _parse_card(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    card = parse_json(path, metadata["card"], "invalid card metadata: the card")
    if not isinstance(card, dict):
        raise BundleError(path, "invalid card metadata: not a JSON object")
    return card_schema.clean(card, str(path))  # an odd field is left out, never raised on


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card, from the header alone (no weights read)."""
    path = _existing_file(path)
    header = read_header(path)
    _check_format(path, header.metadata)
    return _parse_card(path, header.metadata)


def read_config(path: str | os.PathLike) -> BundleConfig:
    """The bundle's config, from the header alone (no weights read)."""
    path = _existing_file(path)
    header = read_header(path)
    _check_format(path, header.metadata)
    return _parse_config(path, header.metadata)


# -- loading -------------------------------------------------------------------------------------


def build_models(
    config: BundleConfig, device: str | torch.device | None = None
) -> dict[str, nn.Module]:
    """Fresh models for ``config``, keyed by tensor prefix (the reranker only when configured).

    ``device="meta"`` builds them without allocating their weights: their shapes, for checking a
    file's tensors before anything of its size is allocated.
    """
    prefixes = ["vae", "transformer"] + (["reranker"] if config.reranker is not None else [])
    return {prefix: build_model(config, prefix, device) for prefix in prefixes}


def build_model(
    config: BundleConfig, prefix: str, device: str | torch.device | None = None
) -> nn.Module:
    """The model a bundle holds under ``prefix`` ("vae", "transformer", "reranker"), fresh."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if prefix == "vae":
            return build_vae(config.vae)
        if prefix == "transformer":
            return build_transformer(config.transformer)
        if config.reranker is None:
            raise ValueError("the config has no reranker")
        try:
            from model.rerank import Reranker
        except ModuleNotFoundError as error:
            if error.name != "model.rerank":
                raise
            raise ValueError("this installation has no reranker (model.rerank)") from error
        return Reranker(config.reranker)


def build_transformer(config: TransformerConfig | BartConfig) -> nn.Module:
    """Our ``Transformer``, or DALL·E Mega / Mini's ``BartDalle`` for a ``BartConfig``. Both
    offer the sampler's stream interface (``model.sampling.sample_tokens``)."""
    if isinstance(config, BartConfig):
        from model.bart import BartDalle

        return BartDalle(config)
    from model.transformer import Transformer

    return Transformer(config)


def build_vae(config: DVAEConfig | VQConfig | VQGANConfig) -> nn.Module:
    """A fresh image tokenizer of ``config``'s kind: a ``DVAE``, a ``VQVAE`` or a ``VQGAN``. All
    offer ``encode(images) -> codes``, ``decode(codes) -> images``, ``grid``, ``vocab_size``,
    ``image_size`` and ``factor``, which is all that sampling, the studio and evaluation use."""
    kind = vae_kind(config)
    if kind == "vqgan":
        from model.vqgan import VQGAN

        return VQGAN(config)
    if kind == "vq":
        from model.vq import VQVAE

        return VQVAE(config)
    from model.dvae import DVAE

    return DVAE(config)


def _assigned_prefixes(config: BundleConfig) -> set[str]:
    """The models loaded by assignment (built on the meta device, taking the file's tensors and
    their dtype): the imported kinds, whose size makes a second copy unaffordable."""
    assigned = set()
    tf = config.transformer
    if config.transformer_kind != DEFAULT_TRANSFORMER_KIND or tf.layout == "rudalle":
        assigned.add("transformer")
    if config.vae_kind == "vqgan":
        assigned.add("vae")
    return assigned


def _check_table_budget(path: Path, config: BundleConfig) -> None:
    """Refuse a config whose attention tables (not weights: the file does not pay for them) are
    more than the file's size justifies."""
    from model.transformer import attention_table_bytes

    tables = attention_table_bytes(config.transformer)
    allowed = max(MIN_TABLE_BUDGET, 4 * path.stat().st_size)
    if tables > allowed:
        tf = config.transformer
        raise BundleError(
            path,
            f"its {tf.grid}x{tf.grid} grid after {tf.text_len} text positions needs "
            f"{tables / 2**20:.0f} MB of attention tables; a bundle of this size may ask for "
            f"at most {allowed / 2**20:.0f} MB",
        )


def check_tensors(path: Path, header: Header, expected: Mapping[str, torch.Tensor]) -> None:
    """Names, shapes and kinds of the stored tensors against ``expected`` (meta tensors will do:
    nothing is read or allocated)."""
    missing = expected.keys() - header.tensors.keys()
    if missing:
        raise BundleError(path, f"missing tensors ({len(missing)}): {_few(missing)}")
    extra = header.tensors.keys() - expected.keys()
    if extra:
        raise BundleError(path, f"unexpected tensors ({len(extra)}): {_few(extra)}")
    wrong = []
    for name, tensor in expected.items():
        entry = header.tensors[name]
        if entry.shape != tuple(tensor.shape):
            wrong.append(f"{name} (expected {list(tensor.shape)}, got {list(entry.shape)})")
        elif tensor.is_floating_point() != (entry.dtype in FLOAT_DTYPES):
            wrong.append(f"{name} (expected {tensor.dtype}, got {entry.dtype})")
    if wrong:
        raise BundleError(path, f"wrong shape or dtype: {_few(wrong)}")


def _check_tensors(path: Path, header: Header, models: Mapping[str, nn.Module]) -> None:
    """The stored tensors against the models built from the config (on the meta device)."""
    expected = {
        f"{prefix}.{name}": tensor
        for prefix, module in models.items()
        for name, tensor in module.state_dict().items()
    }
    check_tensors(path, header, expected)


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, TORCH_DTYPES[name], None)
    if dtype is None:  # e.g. U16 on a torch older than 2.3
        raise ValueError(f"this torch cannot hold {name} tensors")
    return dtype


# values checked at once for NaN and infinity: temporaries of 1 MB at most, so that the check
# does not raise glibc's mmap threshold and push the weights read after it into a fragmenting
# heap (measured on DALL·E Mega's load: whole-tensor checks, with 32 MB temporaries, peaked
# 0.4-1.5 GB above the weights in 3 of 6 runs; 1 MB chunks within 0.15 GB in 8 of 8)
FINITE_CHUNK = 2**18


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in ``tensor``, checked ``FINITE_CHUNK`` values at a time."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), FINITE_CHUNK):
        chunk = flat[start : start + FINITE_CHUNK]
        if chunk.dtype.itemsize == 1:  # float8: isfinite has no kernel for it
            chunk = chunk.float()
        if not bool(torch.isfinite(chunk).all()):
            return False
    return True


def read_tensors(path: Path, header: Header | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a file whose header was checked, refusing non-finite weights.

    Each tensor is read into memory of its own (not views of one mapping of the file, as
    ``safetensors.torch.load_file`` gives): a model converted in place afterwards (bf16 -> int8)
    frees what it no longer uses, where a mapping would stay whole while any tensor used it.
    The data section must be exactly the tensors' bytes, back to back, as safetensors requires.
    """
    header = header or read_header(path)
    entries = sorted(header.tensors.items(), key=lambda item: (item[1].begin, item[1].end))
    expected = 0
    for name, entry in entries:
        if entry.begin != expected:
            what = "overlaps the one before" if entry.begin < expected else "leaves a gap before"
            raise BundleError(path, f"not a valid safetensors file: tensor {name} {what} it")
        expected = entry.end
    tensors: dict[str, torch.Tensor] = {}
    non_finite = []
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if header.data_start + expected != size:
                raise BundleError(
                    path,
                    f"not a valid safetensors file: {size - header.data_start} bytes of data for "
                    f"tensors of {expected}",
                )
            file.seek(header.data_start)
            for name, entry in entries:  # in file order: one sequential read
                try:
                    tensor = torch.empty(entry.shape, dtype=_torch_dtype(entry.dtype))
                except ValueError as error:
                    raise BundleError(path, f"tensor {name}: {error}") from None
                if tensor.numel():
                    view = tensor.view(-1).view(torch.uint8).numpy()  # little-endian, as stored
                    if file.readinto(memoryview(view)) != entry.end - entry.begin:
                        raise BundleError(path, f"truncated while reading tensor {name}")
                if tensor.is_floating_point() and not all_finite(tensor):
                    non_finite.append(name)
                tensors[name] = tensor
    except OSError as error:
        raise BundleError(path, f"cannot read: {error.strerror or error}") from None
    if non_finite:
        raise BundleError(path, f"non-finite weights (NaN or inf) in {_few(non_finite)}")
    return tensors


def _check_assigned_dtypes(path: Path, header: Header, assigned: set[str]) -> None:
    """A model loaded by assignment keeps its stored dtype: one of fp32, bf16, fp16, the same
    for all its weights (a model of mixed dtypes would fail in its first matmul)."""
    for prefix in sorted(assigned):
        dtypes = {
            entry.dtype
            for name, entry in header.tensors.items()
            if name.startswith(prefix + ".") and entry.dtype in FLOAT_DTYPES
        }
        if not dtypes <= ASSIGNED_DTYPES.keys():
            odd = ", ".join(sorted(dtypes - ASSIGNED_DTYPES.keys()))
            raise BundleError(path, f"the {prefix}'s weights are {odd}; expected F32, BF16 or F16")
        if len(dtypes) > 1:
            raise BundleError(
                path,
                f"the {prefix}'s weights mix {', '.join(sorted(dtypes))}; a model is stored in "
                "one dtype",
            )


def _size(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def memory_to_load(header: Header, config: BundleConfig, shapes: Mapping[str, nn.Module]) -> int:
    """Bytes of CPU memory ``load`` needs, from the header and the meta-built models alone.

    The stored tensors are read once (a model loaded by assignment keeps them as its weights);
    a model built for real (ours) adds its own fp32 weights, and our transformer its attention
    tables; the non-finite check briefly needs one byte per value of the largest tensor. The
    file's pages in the OS cache are not counted: they can be dropped.
    """
    stored = sum(entry.end - entry.begin for entry in header.tensors.values())
    largest = max((entry.end - entry.begin for entry in header.tensors.values()), default=0)
    assigned = _assigned_prefixes(config)
    built = sum(
        4 * tensor.numel()
        for prefix, module in shapes.items()
        if prefix not in assigned
        for tensor in module.state_dict().values()
    )
    tables = 0
    if config.transformer_kind == DEFAULT_TRANSFORMER_KIND:
        from model.transformer import attention_table_bytes

        tables = attention_table_bytes(config.transformer)
    return stored + built + tables + largest


def _check_memory(path: Path, needed: int, weights: int, device: torch.device) -> None:
    """Refuse a load that cannot fit, before it starts, rather than swap the machine to death."""
    free = available_memory(torch.device("cpu"))
    if free is not None and needed > free:
        raise BundleError(
            path,
            f"needs about {_size(needed)} of memory to load, {_size(free)} available: close "
            "other programs or use a smaller model",
        )
    if device.type != "cpu":
        free = available_memory(device)
        if free is not None and weights > free:
            raise BundleError(
                path,
                f"needs about {_size(weights)} of {device} memory for its weights, "
                f"{_size(free)} free: close other programs or use a smaller model",
            )


def _parse_tokenizer(
    path: Path, config: BundleConfig, metadata: Mapping[str, str]
) -> CaptionTokenizer | BartTokenizer:
    text = metadata["tokenizer"]
    try:
        if config.text_kind == "bart":
            tokenizer = BartTokenizer.from_json(text)
            # an id past the encoder's rows (DALL·E Mini's "<mask>") reads as <unk>
            tokenizer.rows = config.transformer.text_vocab
            return tokenizer
        if config.text_kind == "yttm":
            return RudallePrompt.from_json(text)
        return CaptionTokenizer.from_json(text, config.text.text_len)
    except (ValueError, TypeError) as error:
        raise BundleError(path, f"invalid tokenizer metadata: {error}") from None


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Read, check and rebuild a bundle (the embedded default when ``path`` is None).

    Models come back in eval mode on ``device``. An imported model (``_assigned_prefixes``) keeps
    the dtype it was stored in and its ``precision`` says which; ``model.sampling.prepared``
    converts it in place rather than copying it.
    """
    path = _existing_file(path)
    device = torch.device(device)
    header = read_header(path)
    _check_format(path, header.metadata)
    config = _parse_config(path, header.metadata)
    card = _parse_card(path, header.metadata)
    tokenizer = _parse_tokenizer(path, config, header.metadata)
    problems = config_problems(config, tokenizer)
    if problems:
        raise BundleError(path, "inconsistent config: " + "; ".join(problems))
    try:
        shapes = build_models(config, device="meta")  # no weights allocated
    except (ValueError, TypeError) as error:  # e.g. an even conv_kernel, image_size vs groups
        raise BundleError(path, f"cannot build its models: {error}") from None
    _check_tensors(path, header, shapes)
    assigned = _assigned_prefixes(config)
    _check_assigned_dtypes(path, header, assigned)
    if config.transformer_kind == DEFAULT_TRANSFORMER_KIND:  # only ours has attention tables
        _check_table_budget(path, config)
    weights = sum(entry.end - entry.begin for entry in header.tensors.values())
    _check_memory(path, memory_to_load(header, config, shapes), weights, device)

    tensors = read_tensors(path, header)
    models = {}
    for prefix, shaped in shapes.items():
        start = len(prefix) + 1
        names = [k for k in tensors if k.startswith(prefix + ".")]
        state = {k[start:]: tensors.pop(k) for k in names}  # each tensor held once, by its model
        if prefix in assigned:
            module = shaped  # built on the meta device: it takes the tensors themselves
            module.load_state_dict(state, strict=True, assign=True)
        else:
            module = build_model(config, prefix)  # every shape checked: as big as its tensors
            module.load_state_dict(state, strict=True)
        del state
        models[prefix] = module.eval()
    if "transformer" in assigned:
        from model.precision import precision_of

        models["transformer"].precision = precision_of(models["transformer"])
    bundle = Bundle(
        config=config,
        vae=models["vae"],
        transformer=models["transformer"],
        tokenizer=tokenizer,
        reranker=models.get("reranker"),
        card=card,
        path=path,
    )
    logger.info("loaded model bundle %s", path)
    return bundle.to(device)
