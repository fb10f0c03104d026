"""ruDALL-E's image tokenizer, the Sber gumbel-f8 VQGAN, from its PyTorch Lightning checkpoint
(``vqgan.gumbelf8-sber.model.ckpt`` in shonenkov/rudalle-utils on Hugging Face).

The file is ``torch.save`` of the dict a Lightning ``Trainer`` writes: ``epoch``, ``global_step``,
``pytorch-lightning_version``, ``state_dict`` (taming's ``GumbelVQ`` with its GAN loss: the
discriminator and LPIPS weights under ``loss.``) and, unless it was saved weights-only, the
callbacks' states, ``optimizer_states``, ``lr_schedulers`` and hyper-parameters. rudalle's own
``get_vae`` runs ``torch.load`` unrestricted and loads ``state_dict`` with ``strict=False``. Here
the file is read without running anything in it:

1. ``torch.load(weights_only=True)``, memory-mapped: enough when the dict holds only tensors and
   plain data (Lightning 1.5 and later key callback states by strings);
2. where torch refuses, ``safe_pickle``'s allow-list unpickler, with each class such a checkpoint
   names (``LIGHTNING_CLASSES``) as an inert stub: Lightning 1.0 to 1.4 key callback states by
   the callback's class (``ModelCheckpoint``), and hyper-parameters may be omegaconf objects.
   Anything else a file names (``os.system``, ...) is refused before it could run.

Only ``state_dict`` is kept, without ``loss.*``. Its names are ``model.networks.vqgan``'s with
``quantize="gumbel"``. The config is read off the shapes (ch, ch_mult, num_res_blocks, the levels
with attention, z_channels, embed_dim, n_embed) and must be ``SBER_GUMBEL_F8``, rudalle's
``vqgan.gumbelf8-sber.config.yml``. The resolution cannot be read off shapes (the network is
convolutional; it only says at which image size the attention levels sit): it is the expected
config's.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model.config import VQGANConfig
from model.importers.limits import check_tensors
from model.importers.safe_pickle import UnsafePickle, load_modules, plain_defaultdict

log = logging.getLogger(__name__)

# rudalle 1.1.3 rudalle/vae/vqgan.gumbelf8-sber.config.yml: taming's ddconfig with ch 128,
# ch_mult [1, 1, 2, 4] (f8: 32x32 tokens at 256 px), attention at 32 px, 8192 codes; pixels in
# [-1, 1] (rudalle's get_codebook_indices feeds 2x - 1, decode returns (clamp(y) + 1) / 2)
SBER_GUMBEL_F8 = VQGANConfig(
    resolution=256,
    in_channels=3,
    ch=128,
    ch_mult=(1, 1, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(32,),
    z_channels=256,
    embed_dim=256,
    n_embed=8192,
    quantize="gumbel",
    norm_eps=1e-6,  # taming's Normalize
    value_range="-1,1",
)
# the weights are ~275 MB in fp32; a full training checkpoint adds Adam's two moments for the
# generator and the discriminator and the LPIPS network, about 1 GB
MAX_FILE_BYTES = 4 * 2**30

# every class a Lightning 1.x checkpoint of a taming model may name outside its tensors:
# callback-state keys (Lightning 1.0 to 1.4 use the class itself), omegaconf hyper-parameters
# (a DictConfig, its metadata and nodes, and the types its metadata records; pickletools on
# torch.save of omegaconf 2.0.6 and 2.1.1 DictConfigs), and hparams_type
LIGHTNING_CLASSES = [
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "typing.Any",
    # types named, never called: protocol 2 spells int, str as Python 2's long, unicode
    *(f"{module}.{name}" for module in ("builtins", "__builtin__") for name in ("dict", "list")),
    *("builtins.int", "builtins.float", "builtins.str", "builtins.bool"),
    *("__builtin__.long", "__builtin__.int", "__builtin__.float", "__builtin__.unicode"),
    "__builtin__.bool",
]
# omegaconf's resolver cache is a defaultdict(dict): a plain dict, its factory never called
LIGHTNING_FUNCTIONS = {"collections.defaultdict": plain_defaultdict}

# the parts of taming's GumbelVQ Lightning module that are not the tokenizer: the GAN loss
DROPPED_PREFIXES = ("loss.",)


def read_checkpoint(path: Path) -> Any:
    """The object the file holds, read as the module docstring says. ValueError naming the file
    and what was refused or damaged."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(
            f"{path}: {size / 2**30:.1f} GB, more than the {MAX_FILE_BYTES / 2**30:.0f} GB a "
            "VQGAN checkpoint has: not the Sber VQGAN"
        )
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as file:
        if not is_zip and file.read(4) == b"PK\x03\x04":  # a zip without its directory
            raise ValueError(
                f"{path}: a damaged zip archive, cut short or corrupted (an interrupted "
                "download?): download it again"
            )
    if is_zip:  # torch does not check the archive's CRCs: a corrupted tensor would load
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ValueError(f"{path}: a damaged zip archive ({error})") from None
        if bad is not None:
            raise ValueError(
                f"{path}: damaged: {bad[-40:]} fails its CRC check (an interrupted or corrupted "
                "download?): download it again"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as error:  # refused or unreadable: the allow-list reader says which
        log.info("%s: torch's weights-only load refused it (%s)", path, type(error).__name__)
    try:
        return load_modules(path, LIGHTNING_CLASSES, MAX_FILE_BYTES, LIGHTNING_FUNCTIONS)
    except UnsafePickle as error:
        raise ValueError(f"{path}: refused: {error}") from None


def _is_tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def state_dict_of(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tokenizer's tensors in ``checkpoint``: its ``state_dict`` (or the checkpoint itself
    when it is a bare state dict) without the GAN loss's. ValueError naming what the file holds
    instead."""
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        if not _is_tensor_dict(state):
            raise ValueError(f"{path}: its state_dict is not a dict of named tensors")
    elif _is_tensor_dict(checkpoint):
        state = checkpoint  # someone saved the state dict alone
    else:
        raise ValueError(
            f"{path}: holds a {type(checkpoint).__name__} without a state_dict: not a Lightning "
            "checkpoint of a VQGAN"
        )
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    if "encoder.conv_in.weight" not in state and "model.encoder.conv_in.weight" in state:
        # rudalle's VQGanGumbelVAE wraps GumbelVQ as .model: its own state_dict() has the prefix
        if any(k.startswith("model.decoder.decoder.") for k in state):
            raise ValueError(
                f"{path}: the 512 px DWT-decoder VQGAN (vqgan.gumbelf8-sber-dwt.model.ckpt), "
                "which is not supported: use vqgan.gumbelf8-sber.model.ckpt"
            )
        state = {k.removeprefix("model."): v for k, v in state.items()}
    if "encoder.conv_in.weight" not in state:
        if any(k.startswith(("transformer.", "image_embeddings.")) for k in state):
            raise ValueError(
                f"{path}: holds a ruDALL-E transformer, not the VQGAN: pass "
                "vqgan.gumbelf8-sber.model.ckpt"
            )
        raise ValueError(f"{path}: not a VQGAN checkpoint: no 'encoder.conv_in.weight'")
    if "quantize.proj.weight" not in state:
        if "quantize.embedding.weight" in state:
            raise ValueError(
                f"{path}: a VQGAN with taming's nearest-code quantizer (quantize.embedding), "
                "not the gumbel one (quantize.proj, quantize.embed) of ruDALL-E's Sber VQGAN"
            )
        raise ValueError(f"{path}: not a gumbel VQGAN: no 'quantize.proj.weight'")
    return state


def _indices(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many ``{prefix}{i}.`` submodules there are (0, 1, ... without gaps)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    count = len(found)
    if found != set(range(count)):
        raise ValueError(f"{prefix}* is numbered {sorted(found)}, not 0 to {count - 1}")
    return count


def _shape(state: Mapping[str, torch.Tensor], name: str, rank: int = 4) -> tuple[int, ...]:
    if name not in state:
        raise ValueError(f"lacks {name!r}")
    shape = tuple(state[name].shape)
    if len(shape) != rank:
        raise ValueError(f"{name} has shape {shape}, expected rank {rank}")
    return shape


def infer_config(state: Mapping[str, torch.Tensor], resolution: int) -> VQGANConfig:
    """The gumbel VQGAN config that ``state``'s shapes describe, at ``resolution`` px (which
    places ``attn_resolutions``: shapes only say which levels have attention). ValueError saying
    what is missing or inconsistent."""
    ch, in_channels = _shape(state, "encoder.conv_in.weight")[:2]
    levels = _indices(state, "encoder.down.")
    if levels == 0:
        raise ValueError("lacks 'encoder.down.0'")
    widths = [_shape(state, f"encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)]
    if any(width % ch for width in widths):
        raise ValueError(f"level widths {widths} are not multiples of conv_in's {ch} channels")
    attention = [i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state]
    n_embed, embed_dim = _shape(state, "quantize.embed.weight", rank=2)
    values = dict(
        resolution=resolution,
        in_channels=in_channels,
        ch=ch,
        ch_mult=tuple(width // ch for width in widths),
        num_res_blocks=_indices(state, "encoder.down.0.block."),
        attn_resolutions=tuple(resolution // 2**i for i in attention),
        z_channels=_shape(state, "encoder.conv_out.weight")[0],
        embed_dim=embed_dim,
        n_embed=n_embed,
        quantize="gumbel",
        norm_eps=SBER_GUMBEL_F8.norm_eps,
        value_range=SBER_GUMBEL_F8.value_range,
    )
    out_channels = _shape(state, "decoder.conv_out.weight")[0]
    if out_channels != in_channels:
        raise ValueError(f"decodes {out_channels} channels but encodes {in_channels}")
    return VQGANConfig(**values)


# the fields compared with the expected config, in the order a difference is named
_COMPARED = ("in_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions")
_COMPARED += ("z_channels", "embed_dim", "n_embed", "quantize")


def vqgan_from_lightning(
    path: str | Path, expected: VQGANConfig | None = SBER_GUMBEL_F8
) -> tuple[VQGANConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of the gumbel VQGAN in the Lightning checkpoint ``path``, for
    ``model.networks.vqgan.VQGAN.load``: tensors in float32 under ``model.networks.vqgan``'s names,
    checked against ``expected`` (the Sber VQGAN; tests pass a tiny config, or None to take whatever
    the shapes say, at 256 px). Raises ValueError with one line naming the file and the problem."""
    from model.networks.vqgan import from_taming

    path = Path(path)
    state = state_dict_of(read_checkpoint(path), path)
    check_tensors(path, state, "a VQGAN's weights")  # strides: nothing copied yet
    resolution = (expected or SBER_GUMBEL_F8).resolution
    try:
        config = infer_config(state, resolution)
    except ValueError as error:
        raise ValueError(f"{path}: not a gumbel VQGAN of taming's layout: {error}") from None
    if expected is not None:
        differ = [name for name in _COMPARED if getattr(config, name) != getattr(expected, name)]
        if differ:
            name = differ[0]
            raise ValueError(
                f"{path}: not the Sber gumbel-f8 VQGAN ruDALL-E reads: {name} is "
                f"{getattr(config, name)}, expected {getattr(expected, name)} "
                f"({len(differ)} size(s) differ)"
            )
        config = expected
    try:
        converted = from_taming(state, config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    for name, tensor in converted.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: {name} holds NaN or infinity: the file is damaged")
    log.info("%s: a gumbel VQGAN of %d tensors", path, len(converted))
    return config, converted
