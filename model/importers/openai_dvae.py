"""``dalle import openai-dvae``: OpenAI's released dVAE (``encoder.pkl``, ``decoder.pkl``) as a
``vae.safetensors`` file that ``dalle train transformer --vae`` takes.

The two files are pickles of whole ``dall_e`` modules. They are read by ``safe_pickle`` (an
allow-list of the classes they hold; nothing in them runs), and their tensors go straight into
``model.networks.dvae.DVAE.load_openai``, whose layout matches OpenAI's bit for bit. The card
records where the weights came from, their licence and each input file's SHA-256.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.config import DVAEConfig
from model.importers.common import Progress, refuse_without_room, sha256, tick, write_file
from model.importers.limits import check_tensors, declared_bytes
from model.importers.safe_pickle import Stub, UnsafePickle, load_modules, state_dict

# every class a torch.save of dall_e.Encoder / dall_e.Decoder names (pickletools on both)
ALLOWED_CLASSES = [
    "dall_e.encoder.Encoder",
    "dall_e.encoder.EncoderBlock",
    "dall_e.decoder.Decoder",
    "dall_e.decoder.DecoderBlock",
    "dall_e.utils.Conv2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
]
MAX_FILE_BYTES = 2 * 2**30  # the released encoder is ~215 MB, the decoder ~175 MB
SOURCE = "OpenAI DALL-E discrete VAE (github.com/openai/DALL-E; cdn.openai.com/dall-e/)"
LICENCE = (
    "Modified MIT License, Copyright (c) 2021 OpenAI (openai/DALL-E LICENSE): use the model "
    "responsibly and clearly indicate that it was used"
)


def read_half(path: Path, role: str) -> dict[str, torch.Tensor]:
    """The state dict of ``encoder.pkl`` or ``decoder.pkl`` (``role``), or of a state-dict save
    of either, as the file stores it (nothing widened or copied: views of the file's storages,
    none declaring more values than its storage holds); ValueError naming the file for anything
    else."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        obj = load_modules(path, ALLOWED_CLASSES, MAX_FILE_BYTES)
    except UnsafePickle as error:
        raise ValueError(f"{path}: refused: {error}") from None
    if isinstance(obj, Stub):
        expected = f"dall_e.{role}.{role.capitalize()}"
        if obj.qualified_name != expected:
            other = "decoder" if role == "encoder" else "encoder"
            hint = (
                f": swap --{role} and --{other}"
                if obj.qualified_name == f"dall_e.{other}.{other.capitalize()}"
                else ""
            )
            raise ValueError(f"{path} holds a {obj.qualified_name}, not the {role}{hint}")
        try:
            tensors = state_dict(obj)
        except UnsafePickle as error:
            raise ValueError(f"{path}: refused: {error}") from None
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        tensors = dict(obj)  # someone saved the state dict alone
    else:
        raise ValueError(f"{path} does not hold a dall_e {role} or its state dict")
    check_tensors(path, tensors, f"a dall_e {role}")
    return tensors


def _check_layout(
    halves: dict[str, dict[str, torch.Tensor]], paths: dict[str, Path], image_size: int
) -> DVAEConfig:
    """The config the halves' names and shapes say, and every tensor's name and shape against
    the model built from it on the meta device: nothing read, widened or allocated."""
    from model.networks.dvae import DVAE, config_from_openai

    where = f"{paths['encoder'].name}/{paths['decoder'].name}"
    try:
        config = config_from_openai(halves["encoder"], halves["decoder"], image_size)
        with torch.device("meta"):
            model = DVAE(config)
    except (ValueError, TypeError, IndexError, RuntimeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{where}: not OpenAI's dVAE layout: {detail}") from None
    for role, module in (("encoder", model.encoder), ("decoder", model.decoder)):
        expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in halves[role].items()}
        unexpected = sorted(found.keys() - expected.keys())
        missing = sorted(expected.keys() - found.keys())
        if unexpected or missing:
            name = (unexpected or missing)[0]
            word = "unexpected" if unexpected else "missing"
            raise ValueError(f"{paths[role]}: not OpenAI's dVAE layout: {word} {name!r}")
        for name, shape in found.items():
            if shape != expected[name]:
                raise ValueError(
                    f"{paths[role]}: not OpenAI's dVAE layout: {name} has shape {shape}, "
                    f"expected {expected[name]}"
                )
    return config


def import_openai_dvae(
    encoder: str | Path,
    decoder: str | Path,
    out: str | Path,
    image_size: int = 256,
    progress: Progress | None = None,
) -> Path:
    """Convert OpenAI's dVAE files into ``out`` (a ``vae.safetensors`` file). Raises ValueError
    with one line naming the problem; writes nothing unless everything converted."""
    from model.bundle.tokenizer_files import save_vae
    from model.networks.dvae import DVAE

    say = progress or (lambda message: None)
    encoder, decoder, out = Path(encoder), Path(decoder), Path(out)
    paths = {"encoder": encoder, "decoder": decoder}
    halves = {}
    hashes = {}
    for role, path in paths.items():
        if path.is_file():
            say(f"reading {path.name} ({path.stat().st_size / 2**20:,.0f} MB)")
        halves[role] = read_half(path, role)
        hashes[path.name] = sha256(path, say=say)
    _check_layout(halves, paths, image_size)
    # fp32, one tensor at a time: the pickles' storages and the widened copies, then the file
    weights = sum(declared_bytes(half, torch.float32) for half in halves.values())
    stored = sum(path.stat().st_size for path in paths.values())
    refuse_without_room(stored + 2 * weights, weights, out)
    say("converting")
    for half in halves.values():
        for name in list(half):
            tick(say)
            half[name] = half[name].detach().float().contiguous()
    try:
        vae = DVAE.load_openai(halves["encoder"], halves["decoder"], image_size)
    except (ValueError, RuntimeError) as error:
        detail = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{encoder.name}/{decoder.name}: not OpenAI's dVAE layout: {detail}"
        ) from None
    for name, tensor in vae.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{encoder.name}/{decoder.name}: {name} holds NaN or infinity")
    card = {
        "stage": "vae",
        "name": "OpenAI DALL-E dVAE (imported)",
        "imported": {
            "from": "openai-dvae",
            "source": SOURCE,
            "licence": LICENCE,
            "files": hashes,
            "image_size": image_size,
        },
        "parameters": sum(p.numel() for p in vae.parameters()),
    }
    return write_file(out, say, lambda path: save_vae(vae, path, card))
