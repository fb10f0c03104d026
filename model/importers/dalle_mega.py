"""``dalle import mega|mini``: DALL·E Mega or Mini, from the files a user downloaded, as one bundle.

Sources (nothing is downloaded here; the user fetches them):

    kuprel/min-dalle (Hugging Face)      min-dalle's conversion of dalle-mini's Flax models:
        Mega  encoder.pt, decoder.pt, vocab.json, merges.txt
        Mini  encoder_mini.pt, decoder_mini.pt, vocab_mini.json, merges_mini.txt
        both  detoker.pt (the VQGAN's decoder half; optional here, see below)
    dalle-mini/vqgan_imagenet_f16_16384  flax_model.msgpack, config.json: the whole VQGAN. Its
        encoder is what turns the user's picture into tokens, and min-dalle does not ship it.

The ``.pt`` files are read with ``torch.load(weights_only=True)`` (a pickle that names anything but
tensors is refused, never run) and memory-mapped where the file allows, so that Mega's 10 GB of
fp32 sources are not held next to their converted copy. The msgpack is read by
``model.importers.flax_msgpack`` (no JAX, no pickle).

The VQGAN: the Flax file holds both halves and is the original, so both come from it. When
``detoker.pt`` is present too, its decoder (the same weights, converted by min-dalle) must agree
with the Flax file's within ``DETOKER_TOLERANCE``: files of two different VQGANs are refused,
and the card says what was checked.

Sizes come from the files' shapes and must be the named preset's (``PRESETS``); Mini's files
given as ``mega`` (or the reverse) are named as such. ``import_dalle`` takes another config for
tests at tiny sizes. The transformer is stored in ``dtype`` (bf16 by default: Mega in 5.2 GB);
the VQGAN always in fp32 (80M parameters; its tokens are nearest-code choices, which rounding
would move). The card records the sources, the licences, the dtype and each input's SHA-256.
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.config import BartTextConfig, BundleConfig, VQGANConfig
from model.files import read_json
from model.importers import kinds
from model.importers.common import (
    Progress,
    gb,
    hash_files,
    refuse_without_room,
    tick,
    write_bundle,
)
from model.importers.limits import check_tensors
from model.networks.bart import MEGA, MINI, BartConfig, BartDalle, weights_only_detail
from model.tokenizers.bart_text import BartTokenizer

log = logging.getLogger(__name__)

MIN_DALLE = kinds.MIN_DALLE.text
VQGAN_REPO = kinds.VQGAN_F16.text
LICENCE = {
    "weights": "Apache-2.0 (the dalle-mini model cards: dalle-mini/dalle-mega, "
    "dalle-mini/dalle-mini, dalle-mini/vqgan_imagenet_f16_16384)",
    "conversion": "MIT (kuprel/min-dalle, whose .pt files and tokenizer files these are)",
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# detoker.pt against the Flax file's decoder: the same weights converted twice, so equal up to
# the rounding of a half-precision copy
DETOKER_TOLERANCE = 1e-3
FLAX_FILE, FLAX_CONFIG, DETOKER = kinds.VQGAN_FILE, kinds.VQGAN_CONFIG, kinds.DETOKER_FILE
EXAMPLE_CAPTIONS = [
    "a painting of a fox in the snow",
    "a red sailboat on a calm lake at sunset",
    "an astronaut riding a horse, oil painting",
]


@dataclass(frozen=True)
class Model:
    """One of the two models: its name, its files in min-dalle's folder, its sizes."""

    key: str  # "mega" or "mini": the command's word
    title: str
    encoder: str
    decoder: str
    vocab: str
    merges: str

    @property
    def config(self) -> BartConfig:
        return PRESETS[self.key]  # looked up at call time: tests put tiny presets here


def _model(key: str) -> Model:
    """The model's names as ``model.importers.kinds`` lists them (the one list of files)."""
    kind = kinds.KINDS[key]
    names = {source.role: source.names[0] for source in kind.sources}
    return Model(key, kind.title, *(names[r] for r in ("encoder", "decoder", "vocab", "merges")))


MODELS = {key: _model(key) for key in ("mega", "mini")}
PRESETS: dict[str, BartConfig] = {"mega": MEGA, "mini": MINI}


# -- finding the files ----------------------------------------------------------------------------


def _other(model: Model) -> Model:
    return MODELS["mini" if model.key == "mega" else "mega"]


def find_files(model: Model, source: Path, vqgan_dir: Path) -> dict[str, Path | None]:
    """Every input's path, checked to exist (``detoker`` may be None). ValueError naming the
    first missing file and where it comes from, or saying that the folder holds the other
    model's files."""
    if not source.is_dir():
        raise ValueError(f"--from {source}: no such folder")
    if not vqgan_dir.is_dir():
        raise ValueError(f"--vqgan-dir {vqgan_dir}: no such folder")
    paths: dict[str, Path | None] = {
        role: source / getattr(model, role) for role in ("encoder", "decoder", "vocab", "merges")
    }
    for role, path in paths.items():
        if path.is_file():
            continue
        other = _other(model)
        if (source / getattr(other, role)).is_file():
            raise ValueError(
                f"{source} holds {other.title}'s {getattr(other, role)}, not {model.title}'s "
                f"{path.name}: run `dalle import {other.key}`, or download {path.name} from "
                f"{MIN_DALLE}"
            )
        raise ValueError(f"{path}: missing; download {path.name} from {MIN_DALLE}")
    for role, name in (("vqgan", FLAX_FILE), ("vqgan_config", FLAX_CONFIG)):
        path = vqgan_dir / name
        if not path.is_file():
            hint = "" if vqgan_dir != source else " (or pass --vqgan-dir FOLDER)"
            raise ValueError(
                f"{path}: missing; download {name} from {VQGAN_REPO}{hint}: the VQGAN's encoder, "
                "which turns your picture into tokens, is only in that file"
            )
        paths[role] = path
    detoker = source / DETOKER
    paths["detoker"] = detoker if detoker.is_file() else None
    return paths


# -- the transformer ------------------------------------------------------------------------------


def read_pt(path: Path, role: str) -> dict[str, torch.Tensor]:
    """A min-dalle state dict, ``weights_only`` (a pickle naming anything else is refused, not
    run), memory-mapped when the file is a zip archive (torch.save since 1.6)."""
    try:
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as error:  # a zip, pickle or allowlist error: one line for the user
        detail = weights_only_detail(error)
        raise ValueError(
            f"{path}: refused: not a weights-only torch state dict ({detail})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not min-dalle's {role} weights")
    check_tensors(path, state, f"{role} weights")  # names, ranks, strides: nothing copied yet
    return state


def _shape(state: Mapping[str, torch.Tensor], name: str, path: Path, role: str, rank: int) -> tuple:
    if name not in state:
        raise ValueError(f"{path} lacks {name!r}: not min-dalle's {role}")
    shape = tuple(state[name].shape)
    if len(shape) != rank:
        raise ValueError(
            f"{path}: {name} has shape {shape}, expected rank {rank}: not min-dalle's {role}"
        )
    return shape


def _layers(state: Mapping[str, torch.Tensor]) -> int:
    numbers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    return max(numbers) + 1 if numbers else 0


def sizes_of(
    encoder: Mapping[str, torch.Tensor],
    decoder: Mapping[str, torch.Tensor],
    paths: Mapping[str, Path],
) -> dict[str, int]:
    """The sizes the files' shapes say (heads cannot be read off shapes: BartConfig's)."""
    enc, dec = paths["encoder"], paths["decoder"]
    # only min-dalle's decoder has an lm_head; swapped files would otherwise fail on sizes
    if "lm_head.weight" in encoder:
        raise ValueError(f"{enc} holds a decoder (it has lm_head.weight), not the encoder")
    if "lm_head.weight" not in decoder and "embed_tokens.weight" in decoder:
        raise ValueError(f"{dec} holds an encoder (it has no lm_head.weight), not the decoder")
    text_vocab, embed_dim = _shape(encoder, "embed_tokens.weight", enc, "encoder", 2)
    grid_len = _shape(decoder, "embed_positions.weight", dec, "decoder", 2)[0]
    grid = math.isqrt(grid_len)
    if grid * grid != grid_len:
        raise ValueError(f"{dec}: {grid_len} image positions is not a square grid")
    return {
        "text_vocab": text_vocab,
        "embed_dim": embed_dim,
        "text_len": _shape(encoder, "embed_positions.weight", enc, "encoder", 2)[0],
        "glu_dim": _shape(encoder, "layers.0.glu.fc0.weight", enc, "encoder", 2)[0],
        "encoder_layers": _layers(encoder),
        "image_rows": _shape(decoder, "embed_tokens.weight", dec, "decoder", 2)[0],
        "decoder_layers": _layers(decoder),
        "grid": grid,
    }


def check_sizes(found: Mapping[str, int], model: Model, config: BartConfig, where: str) -> None:
    """The files' sizes against ``config`` (the preset). ValueError naming the other model when
    they are its sizes, else the first size that differs."""
    differ = [name for name, value in found.items() if getattr(config, name) != value]
    if not differ:
        return
    other = _other(model)
    if config == model.config and all(
        getattr(other.config, name) == value for name, value in found.items()
    ):
        raise ValueError(
            f"{where} hold {other.title} (embed_dim {found['embed_dim']}, "
            f"{found['encoder_layers']}+{found['decoder_layers']} layers), not {model.title}: "
            f"run `dalle import {other.key}`"
        )
    name = differ[0]
    raise ValueError(
        f"{where} are not {model.title}'s: {name} is {found[name]}, expected "
        f"{getattr(config, name)} ({len(differ)} size(s) differ)"
    )


def convert_transformer(
    states: dict[str, Mapping[str, torch.Tensor]],
    config: BartConfig,
    dtype: torch.dtype,
    where: str,
    say: Progress | None = None,
) -> BartDalle:
    """A ``BartDalle`` holding the files' weights in ``dtype``, built on the meta device (the
    converted tensors are its weights: no second copy). ``states`` holds the "encoder" and
    "decoder" state dicts (memory-mapped files); each is taken out and dropped once converted, so
    that Mega's fp32 encoder file is unmapped before its decoder file is read. ValueError for a
    wrong shape, a non-float tensor or a weight that is not finite (fp16 overflows above 65504).
    ``say`` is ticked between the halves and the tensors checked (``common.tick``)."""
    from model.bundle import all_finite

    with torch.device("meta"):
        model = BartDalle(config).to(dtype)
    for half in ("encoder", "decoder"):
        if say is not None:
            tick(say)
        try:
            model.load_min_dalle_half(half, states.pop(half))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    for name, tensor in model.state_dict().items():
        if say is not None:
            tick(say)
        if not all_finite(tensor):
            fp16 = dtype == torch.float16
            hint = " (fp16 overflows above 65504: use --dtype bf16)" if fp16 else ""
            raise ValueError(f"{where}: {name} holds NaN or infinity{hint}")
    model.precision = {v: k for k, v in DTYPES.items()}[dtype]
    return model.eval()


# -- the VQGAN ------------------------------------------------------------------------------------


def read_vqgan_config(path: Path, bart: BartConfig) -> VQGANConfig:
    from model.networks.vqgan import config_from_vqgan_jax

    values: Any = read_json(path, "config")  # size, nesting and digits bounded
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a JSON object")
    try:
        config = config_from_vqgan_jax(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from None
    if (config.n_embed, config.grid) != (bart.image_vocab, bart.grid):
        raise ValueError(
            f"{path}: a VQGAN of {config.n_embed} codes on a {config.grid}x{config.grid} grid; "
            f"the transformer reads {bart.image_vocab} codes on a {bart.grid}x{bart.grid} grid: "
            f"use the config.json of {VQGAN_REPO}"
        )
    return config


def convert_vqgan(
    paths: Mapping[str, Path | None], config: VQGANConfig, say: Progress
) -> tuple[dict[str, torch.Tensor], str]:
    """The VQGAN's state dict (fp32) from the Flax file, and a line for the card saying which
    file gave the decoder and how detoker.pt compared."""
    from model.importers.flax_msgpack import read_flax_msgpack
    from model.networks.vqgan import from_flax, from_min_dalle, parameter_shapes

    flax_path = paths["vqgan"]
    say(f"reading {flax_path.name} ({gb(flax_path.stat().st_size)})")
    # its errors name the file; arrays beyond twice the VQGAN's fp32 weights are refused
    budget = 2 * 4 * sum(math.prod(s) for s in parameter_shapes(config).values())
    params = read_flax_msgpack(flax_path, max_array_bytes=budget)
    try:
        state = from_flax(params, config)
    except ValueError as error:
        raise ValueError(f"{flax_path}: {error}") from None
    del params
    detoker = paths.get("detoker")
    if detoker is None:
        return state, f"{FLAX_FILE} (both halves; no {DETOKER} to compare with)"
    say(f"checking {DETOKER} against {flax_path.name}")
    detoker_state = read_pt(detoker, "VQGAN decoder")
    try:
        theirs = from_min_dalle(detoker_state, config)
    except ValueError as error:
        raise ValueError(f"{detoker}: {error}") from None
    worst, worst_name = 0.0, ""
    for name, tensor in theirs.items():
        tick(say)
        ours = state[name]
        difference = float((tensor - ours).abs().max()) / max(float(ours.abs().max()), 1e-12)
        if difference > worst:
            worst, worst_name = difference, name
    if worst > DETOKER_TOLERANCE:
        raise ValueError(
            f"{detoker} and {flax_path.name} hold different VQGAN decoders ({worst_name} differs "
            f"by {worst:.2g} of its largest value): they are not the same model; remove "
            f"{DETOKER} to use the Flax file alone"
        )
    return state, (
        f"{FLAX_FILE} (both halves); {DETOKER}'s decoder agrees within {worst:.1e} "
        f"(largest relative difference; tolerance {DETOKER_TOLERANCE:g})"
    )


# -- the whole import -----------------------------------------------------------------------------


def _check_room(
    config: BartConfig, vq_config: VQGANConfig, dtype: torch.dtype, paths: Mapping, out: Path
) -> None:
    """Refuse, before reading any weight, a conversion the machine's memory or the output's disk
    cannot hold."""
    from model.networks.vqgan import parameter_shapes

    with torch.device("meta"):
        transformer = BartDalle(config).num_parameters() * dtype.itemsize
    vqgan = 4 * sum(math.prod(s) for s in parameter_shapes(vq_config).values())
    # the Flax file is read into memory; a .pt that cannot be memory-mapped is too
    read = paths["vqgan"].stat().st_size + sum(
        path.stat().st_size
        for role in ("encoder", "decoder")
        if not zipfile.is_zipfile(path := paths[role])
    )
    refuse_without_room(transformer + 2 * vqgan + read, transformer + vqgan, out, dtype)


def import_dalle(
    which: str,
    source: str | Path,
    out: str | Path,
    vqgan_dir: str | Path | None = None,
    dtype: str = "bf16",
    progress: Progress | None = None,
    config: BartConfig | None = None,
) -> Path:
    """Convert min-dalle's files for ``which`` ("mega" or "mini") in ``source`` and the VQGAN in
    ``vqgan_dir`` (default: ``source``) into the bundle ``out``. ``config`` replaces the preset
    the files' sizes must match (tests: tiny files). Raises ValueError with one line naming the
    file and the problem; writes nothing unless everything converted."""
    from model import bundle as bundle_io

    if which not in MODELS:
        raise ValueError(f"unknown model {which!r}; expected mega or mini")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    say = progress or (lambda message: None)
    model = MODELS[which]
    expected = config or model.config
    source, out = Path(source), Path(out)
    paths = find_files(model, source, Path(vqgan_dir) if vqgan_dir else source)
    vq_config = read_vqgan_config(paths["vqgan_config"], expected)
    _check_room(expected, vq_config, DTYPES[dtype], paths, out)

    # the small files first: a hostile one is refused before gigabytes are hashed
    tokenizer = BartTokenizer.from_files(paths["vocab"], paths["merges"], expected.text_len)
    if tokenizer.vocab_size > expected.text_vocab + 1:
        raise ValueError(
            f"{paths['vocab']}: {tokenizer.vocab_size} ids for an encoder of "
            f"{expected.text_vocab} rows: not {model.title}'s vocabulary"
        )

    hashes = hash_files(paths.values(), say)

    say(f"reading {paths['encoder'].name} and {paths['decoder'].name}")
    states = {half: read_pt(paths[half], half) for half in ("encoder", "decoder")}  # mapped
    where = f"{paths['encoder'].name} and {paths['decoder'].name}"
    sizes = sizes_of(states["encoder"], states["decoder"], paths)  # shapes only: nothing read
    check_sizes(sizes, model, expected, f"{source}: {where}")
    say(f"converting {model.title} to {dtype}")
    transformer = convert_transformer(states, expected, DTYPES[dtype], where, say)

    vqgan, vqgan_note = _load_vqgan(paths, vq_config, say)

    config_ = BundleConfig(
        vae=vq_config,
        text=BartTextConfig(vocab_size=tokenizer.vocab_size, text_len=tokenizer.text_len),
        transformer=expected,
    )
    card = _card(model, transformer.num_parameters(), hashes, dtype, vq_config, vqgan_note)
    bundle = bundle_io.Bundle(
        config=config_, vae=vqgan, transformer=transformer, tokenizer=tokenizer, card=card
    )
    return write_bundle(bundle, out, say)


def _load_vqgan(paths: Mapping[str, Path | None], vq_config: VQGANConfig, say: Progress):
    """The VQGAN (fp32) from ``paths["vqgan"]`` and the note on its decoder; a weight holding
    NaN or infinity is refused."""
    from model.networks.vqgan import VQGAN

    vq_state, vqgan_note = convert_vqgan(paths, vq_config, say)
    vqgan = VQGAN.load(vq_config, vq_state).eval()
    for name, tensor in vqgan.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{paths['vqgan']}: {name} holds NaN or infinity")
    return vqgan, vqgan_note


def _card(
    model: Model,
    parameters: int,
    hashes: dict[str, str],
    dtype: str,
    vq_config: VQGANConfig,
    vqgan_note: str,
) -> dict:
    """The imported bundle's card: title, sources, licence and the files' hashes."""
    from model.networks.vqgan import describe

    return {
        "stage": "imported",
        "name": f"{model.title} (imported)",
        "description": (
            f"{model.title} (dalle-mini) converted from min-dalle's files, with dalle-mini's "
            "VQGAN f16-16384: 256 px, 16x16 tokens. English captions."
        ),
        "parameters": parameters,
        "imported": {
            "from": f"dalle import {model.key}",
            "sources": {
                "transformer and caption tokenizer": (
                    f"{MIN_DALLE}: {model.encoder}, {model.decoder}, {model.vocab}, "
                    f"{model.merges} (min-dalle's conversion of dalle-mini/dalle-"
                    f"{'mega' if model.key == 'mega' else 'mini'})"
                ),
                "image tokenizer": f"{VQGAN_REPO}: {FLAX_FILE}, {FLAX_CONFIG}",
            },
            "licence": LICENCE,
            "files": hashes,
            "dtype": dtype,
            "vqgan_dtype": "fp32",
            "vqgan": describe(vq_config),
            "vqgan_decoder": vqgan_note,
        },
        "example_captions": EXAMPLE_CAPTIONS,
    }
