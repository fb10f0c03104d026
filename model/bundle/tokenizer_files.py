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
    from model.networks.dvae import DVAE
    from model.networks.vq import VQVAE

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
    """Put ``vae_path``'s image tokenizer into ``bundle``: a dVAE from ``train vae
    --decoder-only``, or a VQ tokenizer from ``train vq --decoder-only`` (which may draw at
    another size: issue 17's 128 px decoder on 64 px codes). The parts that choose the tokens
    must be the bundle's, weight for weight, or the transformer would be reading tokens it never
    learned."""
    kind = bundle.config.vae_kind
    if kind not in ("dvae", "vq"):
        raise ValueError(
            f"--vae {vae_path}: swaps a dVAE or VQ decoder, but this bundle's image tokenizer is "
            f"a {kind}"
        )
    vae, card = (load_vae if kind == "dvae" else load_image_tokenizer)(vae_path)
    ours = bundle.vae
    if kind == "vq":
        from model.networks.vq import VQVAE, token_part_problem

        if not isinstance(vae, VQVAE):
            raise ValueError(f"--vae {vae_path}: a dVAE, but this bundle's image tokenizer is a vq")
        problem = token_part_problem(ours.config, vae.config)
        if problem:
            raise ValueError(f"--vae {vae_path}: its VQ tokenizer's {problem}")
        # what chooses a token: the encoder, quant_conv and the codebook's vectors
        prefixes = ("encoder.", "quant_conv.", "quantize.embedding.weight")
        noun = "encoder or codebook"
    else:
        if vae.config.encoder_config() != ours.config.encoder_config():
            raise ValueError(f"{vae_path}: its dVAE encoder config differs from the bundle's")
        prefixes = ("encoder.",)
        noun = "encoder"
    theirs, mine = vae.state_dict(), ours.state_dict()
    names = [k for k in mine if k.startswith(prefixes)]
    if any(not torch.equal(theirs[k], mine[k].cpu()) for k in names):
        raise ValueError(
            f"{vae_path}: its {noun} differs from the bundle's (tokens would change); only a "
            f"tokenizer from `train {'vae' if kind == 'dvae' else 'vq'} --decoder-only --init` "
            "on this bundle's fits"
        )
    bundle.vae = vae.to(bundle.device).eval()
    bundle.config = dataclasses.replace(bundle.config, vae=vae.config)
    bundle.card["vae"] = card
