"""Image tokenizer files (``vae.safetensors``, ``vq.safetensors``) and the bundle's decoder swap.

A stage run of ``dalle train vae`` or ``dalle train vq`` ends in one safetensors file: the model's
state_dict, and as metadata its ``format``, its config (JSON) and its card (JSON). Such a file is
untrusted input like a bundle, so it is read through the bundle's own checks
(``model.bundle.read_header``, ``check_tensors``, ``read_tensors``): a bounded header, every config
field typed and bounded, shapes compared on the meta device before any weight is read, finite
weights. Every failure is one ValueError naming the file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from model.bundle import Bundle, BundleError, check_tensors, parse_json, read_header, read_tensors
from model.config import DVAEConfig, VQConfig, config_from_dict
from model.files import atomic_path

VAE_FORMAT = "dalle-studio-vae/1"
VQ_FORMAT = "dalle-studio-vq/1"


def _kinds() -> dict[str, tuple[str, type, type]]:
    """format -> (name in messages, config class, model class) of every image tokenizer file."""
    from model.dvae import DVAE
    from model.vq import VQVAE

    return {VAE_FORMAT: ("dVAE", DVAEConfig, DVAE), VQ_FORMAT: ("VQ tokenizer", VQConfig, VQVAE)}


# -- saving --------------------------------------------------------------------------------------


def _save(model: nn.Module, path: Path, card: dict, fmt: str) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": fmt,
        "config": json.dumps(dataclasses.asdict(model.config)),
        "card": json.dumps(card),
    }
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=meta)


def save_vae(vae: nn.Module, path: Path, card: dict) -> None:
    """A dVAE and its card, as ``dalle train vae`` leaves it."""
    _save(vae, path, card, VAE_FORMAT)


def save_vq(vq: nn.Module, path: Path, card: dict) -> None:
    """A VQ tokenizer and its card, as ``dalle train vq`` leaves it."""
    _save(vq, path, card, VQ_FORMAT)


# -- loading -------------------------------------------------------------------------------------


def _load(path: str | Path, formats: tuple[str, ...], device="cpu") -> tuple[nn.Module, dict]:
    """A file of one of ``formats``, read through the bundle's checks; every failure is one
    ValueError naming the file (FileNotFoundError when there is none)."""
    kinds = _kinds()
    noun = kinds[formats[0]][0] if len(formats) == 1 else "image tokenizer"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {noun} file")
    try:
        header = read_header(path)
        meta = header.metadata
        fmt = meta.get("format")
        if fmt not in formats:
            expected = " or ".join(repr(f) for f in formats)
            raise ValueError(f"format {fmt!r}, expected {expected}")
        noun, config_kind, model_kind = kinds[fmt]
        if "config" not in meta:
            raise ValueError("no config in its metadata")
        config = config_from_dict(config_kind, parse_json(path, meta["config"], "config"), "config")
        with torch.device("meta"):
            shapes = model_kind(config).state_dict()
        check_tensors(path, header, shapes)
        card = parse_json(path, meta.get("card", "{}"), "card")
        if not isinstance(card, dict):
            raise ValueError("its card is not a JSON object")
        tensors = read_tensors(path)
    except BundleError as error:
        raise ValueError(f"{noun} {path}: {error.problem}") from None
    except ValueError as error:
        raise ValueError(f"{noun} {path}: {error}") from None
    model = model_kind(config)
    model.load_state_dict(tensors)
    return model.to(device).eval(), card


def load_vae(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    """A ``save_vae`` file (a dVAE) and its card."""
    return _load(path, (VAE_FORMAT,), device)


def load_vq(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    """A ``save_vq`` file (a VQ tokenizer) and its card."""
    return _load(path, (VQ_FORMAT,), device)


def load_image_tokenizer(path: str | Path, device="cpu") -> tuple[nn.Module, dict]:
    """A dVAE or a VQ tokenizer file, whichever its format says, and its card."""
    return _load(path, (VAE_FORMAT, VQ_FORMAT), device)


# -- the decoder swap ----------------------------------------------------------------------------


def replace_decoder(bundle: Bundle, vae_path: str | Path) -> None:
    """Put ``vae_path``'s dVAE into ``bundle``; its encoder must be the bundle's, weight for
    weight, or the transformer would be reading tokens it never learned."""
    if bundle.config.vae_kind != "dvae":
        raise ValueError(
            f"--vae {vae_path}: swaps a dVAE decoder, but this bundle's image tokenizer is a "
            f"{bundle.config.vae_kind}"
        )
    vae, card = load_vae(vae_path)
    if vae.config.encoder_config() != bundle.vae.config.encoder_config():
        raise ValueError(f"{vae_path}: its dVAE encoder config differs from the bundle's")
    theirs, ours = vae.encoder.state_dict(), bundle.vae.encoder.state_dict()
    if any(not torch.equal(theirs[k], ours[k].cpu()) for k in ours):
        raise ValueError(
            f"{vae_path}: its encoder differs from the bundle's (tokens would change); "
            "only a dVAE from `train vae --decoder-only --init` on this bundle's dVAE fits"
        )
    bundle.vae = vae.to(bundle.device).eval()
    bundle.config = dataclasses.replace(bundle.config, vae=vae.config)
    bundle.card["vae"] = card
