"""What can be imported, torch-free: each kind's files, the repository each comes from, what it
writes and what converting it needs. The one list the command line's help, the importers' error
messages and the studio's File › Import model… dialog all read.

A kind (``KINDS``) is a model a user downloads once and converts with ``dalle import``: DALL·E
Mega and Mini (min-dalle's files and dalle-mini's VQGAN), ruDALL-E Malevich (v3) and Surrealist
XL, OpenAI's dVAE and a Real-ESRGAN upscaler. ``scan`` says which of its files a folder holds and,
for each one missing, its name and its repository, before anything runs. ``estimate`` says the
memory and disk the conversion and the model need, from the files' sizes where they were found
and the released files' sizes where not, by the same sums the importers check before they read a
weight (``refuse_without_room``). ``run`` converts a scanned folder with the kind's importer (the
only part that imports torch, and only when called).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GB = 10**9
MB = 10**6
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}  # the transformer's stored precision


@dataclass(frozen=True)
class Repository:
    """Where a user downloads files: its name as the host spells it, and the address."""

    name: str
    host: str
    address: str

    @property
    def text(self) -> str:
        """The name, host and address in one phrase (importers' errors, the bundle's card)."""
        return f"{self.name} on {self.host} ({self.address})"


MIN_DALLE = Repository("kuprel/min-dalle", "Hugging Face", "huggingface.co/kuprel/min-dalle")
VQGAN_F16 = Repository(
    "dalle-mini/vqgan_imagenet_f16_16384",
    "Hugging Face",
    "huggingface.co/dalle-mini/vqgan_imagenet_f16_16384",
)
MALEVICH = Repository(
    "ai-forever/rudalle-Malevich", "Hugging Face", "huggingface.co/ai-forever/rudalle-Malevich"
)
SURREALIST = Repository(
    "shonenkov-AI/rudalle-xl-surrealist",
    "Hugging Face",
    "huggingface.co/shonenkov-AI/rudalle-xl-surrealist",
)
RUDALLE_UTILS = Repository(
    "shonenkov/rudalle-utils", "Hugging Face", "huggingface.co/shonenkov/rudalle-utils"
)
OPENAI_DALL_E = Repository(
    "openai/DALL-E", "GitHub", "github.com/openai/DALL-E; files at cdn.openai.com/dall-e/"
)
REAL_ESRGAN = Repository(
    "xinntao/Real-ESRGAN", "GitHub", "github.com/xinntao/Real-ESRGAN, its releases page"
)


@dataclass(frozen=True)
class Source:
    """One file a kind reads: the names it may have (the first is the released one, the others
    equivalent files the importer takes instead), what it is, where it comes from, and the
    released file's size in bytes (an estimate before it is downloaded: parameters x bytes)."""

    role: str
    names: tuple[str, ...]
    repository: Repository
    what: str
    released_bytes: int
    optional: bool = False


@dataclass(frozen=True)
class Kind:
    """Something File › Import model… and ``dalle import`` convert (see the module)."""

    key: str
    title: str
    command: str  # the CLI's equivalent, with {folder} and {out}
    output: str  # "bundle", "dvae" or "upscaler"
    suffix: str  # of the file it writes
    stem: str  # the written file's name in the models folder, before the dtype and suffix
    sources: tuple[Source, ...]
    note: str = ""  # what the output is for, where it is not a model to draw with
    dtypes: tuple[str, ...] = field(default=())  # the transformer's stored precisions offered


BUNDLE, DVAE, UPSCALER = "bundle", "dvae", "upscaler"
BUNDLE_SUFFIX = ".dalle.safetensors"  # model.bundle.SUFFIX (checked by the tests)
UPSCALER_SUFFIX = ".upscaler.safetensors"  # model.bundle.upscaler_files.SUFFIX
VQGAN_FILE, VQGAN_CONFIG, DETOKER_FILE = "flax_model.msgpack", "config.json", "detoker.pt"
# dalle-mini's VQGAN f16-16384: 76.1M fp32 parameters (VQGANConfig's defaults on the meta device)
VQGAN_F16_BYTES = 76_073_859 * 4
# ruDALL-E's Sber gumbel-f8: 69.0M parameters; the Lightning checkpoint stores them in fp32
SBER_VQGAN_BYTES = 68_995_971 * 4


def _min_dalle(key: str, title: str, suffix: str, encoder: int, decoder: int) -> Kind:
    """DALL·E Mega or Mini: min-dalle's files (fp32: 4 bytes a parameter) and the VQGAN."""
    return Kind(
        key=key,
        title=title,
        command=f"dalle import {key} --from {{folder}} --out {{out}}",
        output=BUNDLE,
        suffix=BUNDLE_SUFFIX,
        stem=f"dalle-{key}",
        sources=(
            Source("encoder", (f"encoder{suffix}.pt",), MIN_DALLE, "text encoder", encoder * 4),
            Source("decoder", (f"decoder{suffix}.pt",), MIN_DALLE, "image decoder", decoder * 4),
            Source("vocab", (f"vocab{suffix}.json",), MIN_DALLE, "caption vocabulary", 1 * MB),
            Source("merges", (f"merges{suffix}.txt",), MIN_DALLE, "caption BPE merges", MB // 2),
            Source("vqgan", (VQGAN_FILE,), VQGAN_F16, "image tokenizer (VQGAN)", VQGAN_F16_BYTES),
            Source("vqgan_config", (VQGAN_CONFIG,), VQGAN_F16, "VQGAN config", 1000),
            Source(
                "detoker",
                (DETOKER_FILE,),
                MIN_DALLE,
                "VQGAN decoder, checked against the Flax file",
                VQGAN_F16_BYTES // 2,
                optional=True,
            ),
        ),
        dtypes=("bf16", "fp16", "fp32"),
    )


def _rudalle(key: str, title: str, name: str, repository: Repository, parameters: int) -> Kind:
    """ruDALL-E (fp16 transformer: 2 bytes a parameter) with the Sber VQGAN and caption BPE."""
    return Kind(
        key=key,
        title=title,
        command="dalle import rudalle --from {folder} --out {out}",
        output=BUNDLE,
        suffix=BUNDLE_SUFFIX,
        stem=f"rudalle-{key}",
        sources=(
            Source("transformer", (name,), repository, "transformer", parameters * 2),
            Source(
                "vqgan",
                ("vqgan.gumbelf8-sber.model.ckpt",),
                RUDALLE_UTILS,
                "image tokenizer (Sber VQGAN)",
                SBER_VQGAN_BYTES,
            ),
            Source("bpe", ("bpe.model",), RUDALLE_UTILS, "caption BPE", MB),
        ),
        dtypes=("bf16", "fp16", "fp32"),
    )


KINDS: dict[str, Kind] = {
    kind.key: kind
    for kind in (
        # parameters of MINI's and MEGA's encoder and decoder (model.networks.bart presets)
        _min_dalle("mini", "DALL·E Mini", "_mini", 202_649_584, 235_313_136),
        _min_dalle("mega", "DALL·E Mega", "", 1_110_220_800, 1_477_746_688),
        _rudalle(
            "malevich", "ruDALL-E Malevich (v3)", "pytorch_model_v3.bin", MALEVICH, 1_300_000_000
        ),
        _rudalle(
            "surrealist", "ruDALL-E Surrealist XL", "pytorch_model.bin", SURREALIST, 1_300_000_000
        ),
        Kind(
            key="openai-dvae",
            title="OpenAI's dVAE",
            command="dalle import openai-dvae --encoder {folder}/encoder.pkl "
            "--decoder {folder}/decoder.pkl --out {out}",
            output=DVAE,
            suffix=".safetensors",
            stem="openai-dvae",
            sources=(
                Source("encoder", ("encoder.pkl",), OPENAI_DALL_E, "dVAE encoder", 215 * MB),
                Source("decoder", ("decoder.pkl",), OPENAI_DALL_E, "dVAE decoder", 175 * MB),
            ),
            note="a dVAE file is not a model to draw with: it is the image tokenizer that "
            "`dalle train transformer --vae FILE` trains a transformer on",
        ),
        Kind(
            key="realesrgan",
            title="Real-ESRGAN upscaler",
            command="dalle import realesrgan --from {folder}/{file} --out {out}",
            output=UPSCALER,
            suffix=UPSCALER_SUFFIX,
            stem="",  # named after the file it reads
            sources=(
                Source(
                    "weights",
                    (
                        "RealESRGAN_x4plus.pth",
                        "RealESRGAN_x4plus_anime_6B.pth",
                        "realesr-animevideov3.pth",
                        "RealESRGAN_x2plus.pth",
                    ),
                    REAL_ESRGAN,
                    "upscaler weights",
                    64 * MB,
                ),
            ),
            note="an upscaler draws the new region at the picture's resolution when the model "
            "saw it smaller (Settings › Upscaler)",
        ),
    )
}


# -- the folder -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    """What a folder holds of a kind's files: each role's path, and the sources missing."""

    kind: Kind
    folder: Path
    found: dict[str, Path]
    missing: tuple[Source, ...]  # optional files not counted

    @property
    def complete(self) -> bool:
        return not self.missing


def scan(kind: Kind, folder: str | Path) -> Scan:
    """Each of ``kind``'s files in ``folder`` (the first accepted name present), and those
    missing; reads no file, only their names."""
    folder = Path(folder)
    found, missing = {}, []
    for source in kind.sources:
        path = next((folder / n for n in source.names if (folder / n).is_file()), None)
        if path is not None:
            found[source.role] = path
        elif not source.optional:
            missing.append(source)
    return Scan(kind, folder, found, tuple(missing))


def output_name(scan_: Scan, dtype: str) -> str:
    """The file's name in the models folder: the kind and its precision ("dalle-mega-bf16"), or
    the upscaler's own name ("RealESRGAN_x4plus")."""
    kind = scan_.kind
    if kind.output == UPSCALER:
        weights = scan_.found.get("weights")
        return (weights.stem if weights else kind.sources[0].names[0].split(".")[0]) + kind.suffix
    return f"{kind.stem}-{dtype}{kind.suffix}" if kind.dtypes else kind.stem + kind.suffix


def free_name(folder: Path, name: str, suffix: str) -> Path:
    """``folder / name``, or ``stem-2`` ``stem-3``… before ``suffix`` when that file exists: an
    import never writes over a model already there."""
    path = folder / name
    stem = name[: -len(suffix)] if name.endswith(suffix) else name
    number = 2
    while path.exists():
        path = folder / f"{stem}-{number}{suffix}"
        number += 1
    return path


# -- what it needs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needs:
    """Bytes the conversion needs in memory, the written file on disk, the model in memory once
    loaded, and what the figures are based on."""

    memory: int
    disk: int
    model_memory: int
    basis: str


def _size(scan_: Scan, role: str) -> tuple[int, bool]:
    """(the file's size, True) when found, else (the released file's, False)."""
    path = scan_.found.get(role)
    if path is not None:
        return path.stat().st_size, True
    source = next(s for s in scan_.kind.sources if s.role == role)
    return source.released_bytes, False


def _mapped(scan_: Scan, role: str) -> bool:
    """torch memory-maps a zip-format ``.pt``/``.bin`` (torch.save since 1.6; the released files
    are); another is read whole. A file not downloaded yet counts as mapped."""
    path = scan_.found.get(role)
    return path is None or zipfile.is_zipfile(path)


def rudalle_room(transformer: int, vqgan: int, dtype_bytes: int, mapped: bool) -> tuple[int, int]:
    """(memory, disk) converting ruDALL-E needs: the fp16 file's parameters in the stored dtype,
    the VQGAN twice (read, then built), the file itself unless memory-mapped; the bundle holds
    the transformer and the VQGAN (``rudalle_import`` checks the same before reading)."""
    converted = transformer // 2 * dtype_bytes
    return converted + 2 * vqgan + (0 if mapped else transformer), converted + vqgan


def estimate(scan_: Scan, dtype: str = "bf16") -> Needs:
    """What converting ``scan_``'s kind and running the result need (``Needs``)."""
    kind = scan_.kind
    sizes = {s.role: _size(scan_, s.role) for s in kind.sources if not s.optional}
    measured = all(found for _, found in sizes.values())
    basis = (
        "the files' sizes"
        if measured
        else "the released files' sizes where a file is missing"
        if any(found for _, found in sizes.values())
        else "the released files' sizes"
    )
    if kind.output == BUNDLE and "transformer" in sizes:  # ruDALL-E: fp16 in the file
        memory, disk = rudalle_room(
            sizes["transformer"][0],
            sizes["vqgan"][0],
            DTYPE_BYTES[dtype],
            _mapped(scan_, "transformer"),
        )
        basis += f"; the fp16 transformer stored in {dtype}, the VQGAN in fp32"
    elif kind.output == BUNDLE:  # min-dalle: fp32 in the files; the Flax VQGAN read whole
        halves = sizes["encoder"][0] + sizes["decoder"][0]
        transformer, vqgan = halves // 4 * DTYPE_BYTES[dtype], sizes["vqgan"][0]
        read = vqgan + sum(sizes[r][0] for r in ("encoder", "decoder") if not _mapped(scan_, r))
        memory, disk = transformer + 2 * vqgan + read, transformer + vqgan
        basis += f"; the fp32 transformer stored in {dtype}, the VQGAN in fp32"
    elif kind.output == DVAE:  # pickles of fp32 modules: read, widened copies, then written
        stored = sum(size for size, _ in sizes.values())
        memory, disk = 3 * stored, stored
        basis += "; fp32 weights"
    else:  # an upscaler: read, converted and written, all small
        stored = sizes["weights"][0]
        memory, disk = 3 * stored, stored
        basis += "; weights stored as the file stores them"
    return Needs(memory=memory, disk=disk, model_memory=disk, basis=basis)


def size_text(count: float) -> str:
    """Bytes as a user reads them: "5.2 GB", "290 MB", "12 KB"."""
    if count >= GB:
        return f"{count / GB:.1f} GB"
    return f"{count / MB:.0f} MB" if count >= MB else f"{count / 1e3:.0f} KB"


# -- converting -----------------------------------------------------------------------------------


def steps(scan_: Scan) -> int:
    """How many lines the kind's importer says (its ``progress`` calls) on ``scan_``'s files:
    a progress bar's length. Mega and Mini: hashing each file, reading the transformer,
    converting it, reading the VQGAN (and checking detoker.pt), writing; ruDALL-E: hashing its
    three files, reading, converting, reading the VQGAN, writing; the dVAE: reading each half,
    converting, writing; an upscaler: reading, writing (the tests hold each importer to it)."""
    key, found = scan_.kind.key, len(scan_.found)
    if key in ("mega", "mini"):
        return found + 4 + ("detoker" in scan_.found)
    if key in ("malevich", "surrealist"):
        return found + 4
    return 4 if key == "openai-dvae" else 2


def run(scan_: Scan, out: Path, dtype: str, progress: Callable[[str], None]) -> Path:
    """Convert a complete ``scan_`` into ``out`` with its kind's importer; ``progress`` is the
    importers' (``model.importers.common.Progress``: one whose ``tick`` raises ``Cancelled``
    stops the import between two steps, before anything is written). ValueError in one line
    for a refused file."""
    if not scan_.complete:
        missing = scan_.missing[0]
        raise ValueError(f"{scan_.folder}: no {missing.names[0]} (from {missing.repository.text})")
    kind, found, folder = scan_.kind, scan_.found, scan_.folder
    if kind.key in ("mega", "mini"):
        from model.importers.dalle_mega import import_dalle

        return import_dalle(kind.key, folder, out, folder, dtype, progress)
    if kind.key in ("malevich", "surrealist"):
        from model.importers.rudalle_import import import_rudalle

        name = found["transformer"].name
        return import_rudalle(folder, out, dtype, progress=progress, transformer_file=name)
    if kind.key == "openai-dvae":
        from model.importers.openai_dvae import import_openai_dvae

        return import_openai_dvae(found["encoder"], found["decoder"], out, progress=progress)
    from model.importers.realesrgan import import_realesrgan

    return import_realesrgan([found["weights"]], out, progress)
