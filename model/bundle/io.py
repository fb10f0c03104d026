"""Reading and writing bundles: ``load`` (every check of ``model.bundle.format`` and
``model.bundle.checks`` before a weight is read, then the weights, then the models of the kinds
``model.bundle.kinds`` builds), ``save`` (atomic, refusing an inconsistent bundle), and the
header-only readers ``read_card`` and ``read_config``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from model import card as card_schema
from model.bundle.checks import (
    check_assigned_dtypes,
    check_memory,
    check_model_tensors,
    check_table_budget,
    config_problems,
)
from model.bundle.format import (
    ASSIGNED_DTYPES,
    FORMAT,
    BundleError,
    Header,
    check_format,
    existing_file,
    few,
    parse_json,
    read_header,
    torch_dtype,
)
from model.bundle.kinds import (
    assigned_prefixes,
    build_model,
    build_models,
    has_attention_tables,
    memory_to_load,
    parse_tokenizer,
)
from model.config import BundleConfig
from model.files import atomic_path
from model.tokenizers.bart_text import BartTokenizer
from model.tokenizers.text import CaptionTokenizer

logger = logging.getLogger("model.bundle")


@dataclass
class Bundle:
    """A loaded model: its config, the three models, the tokenizer and the model card."""

    config: BundleConfig
    # an ImageTokenizer (model/networks/image_tokenizer.py): DVAE, VQVAE or VQGAN, as
    # config.vae_kind says
    vae: nn.Module
    # model.networks.transformer.Transformer or model.networks.bart.BartDalle
    transformer: nn.Module
    tokenizer: CaptionTokenizer | BartTokenizer  # as config.text_kind says
    reranker: nn.Module | None = None  # model.networks.rerank.Reranker
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


# -- saving ---------------------------------------------------------------------------------------


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
            # model.networks.precision.for_inference's int8 weights are not the model's parameters
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
    for prefix in assigned_prefixes(bundle.config):
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


# -- reading the metadata -------------------------------------------------------------------------


def parse_config(path: Path, metadata: Mapping[str, str]) -> BundleConfig:
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


def parse_card(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    card = parse_json(path, metadata["card"], "invalid card metadata: the card")
    if not isinstance(card, dict):
        raise BundleError(path, "invalid card metadata: not a JSON object")
    return card_schema.clean(card, str(path))  # an odd field is left out, never raised on


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card, from the header alone (no weights read)."""
    path = existing_file(path)
    header = read_header(path)
    check_format(path, header.metadata)
    return parse_card(path, header.metadata)


def read_config(path: str | os.PathLike) -> BundleConfig:
    """The bundle's config, from the header alone (no weights read)."""
    path = existing_file(path)
    header = read_header(path)
    check_format(path, header.metadata)
    return parse_config(path, header.metadata)


# -- reading the weights --------------------------------------------------------------------------


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
                    tensor = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
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
        raise BundleError(path, f"non-finite weights (NaN or inf) in {few(non_finite)}")
    return tensors


# -- loading --------------------------------------------------------------------------------------


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Bundle:
    """Read, check and rebuild a bundle (the embedded default when ``path`` is None).

    Models come back in eval mode on ``device``. An imported model (``kinds.assigned_prefixes``)
    keeps the dtype it was stored in and its ``precision`` says which;
    ``model.inference.sampling.prepared`` converts it in place rather than copying it.
    """
    path = existing_file(path)
    device = torch.device(device)
    header = read_header(path)
    check_format(path, header.metadata)
    config = parse_config(path, header.metadata)
    card = parse_card(path, header.metadata)
    tokenizer = parse_tokenizer(path, config, header.metadata)
    problems = config_problems(config, tokenizer)
    if problems:
        raise BundleError(path, "inconsistent config: " + "; ".join(problems))
    try:
        shapes = build_models(config, device="meta")  # no weights allocated
    except (ValueError, TypeError) as error:  # e.g. an even conv_kernel, image_size vs groups
        raise BundleError(path, f"cannot build its models: {error}") from None
    check_model_tensors(path, header, shapes)
    assigned = assigned_prefixes(config)
    check_assigned_dtypes(path, header, assigned)
    if has_attention_tables(config):  # only ours has them
        check_table_budget(path, config)
    weights = sum(entry.end - entry.begin for entry in header.tensors.values())
    check_memory(path, memory_to_load(header, config, shapes), weights, device)

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
        from model.networks.precision import precision_of

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
