"""``dalle import rudalle``: ruDALL-E Malevich (v3) or Surrealist XL, from the files a user
downloaded, as one bundle.

Sources (nothing is downloaded here; the user fetches them):

    ai-forever/rudalle-Malevich (Hugging Face)    pytorch_model_v3.bin: the transformer, v3
    shonenkov-AI/rudalle-xl-surrealist            pytorch_model.bin: Surrealist XL (also v3)
    shonenkov/rudalle-utils                       vqgan.gumbelf8-sber.model.ckpt: the image
                                                  tokenizer (a PyTorch Lightning checkpoint);
                                                  bpe.model: the caption BPE (youtokentome)

The transformer file is a flat state dict of fp16 tensors, read with ``torch.load(weights_only=
True)`` and memory-mapped. The Lightning checkpoint is read by ``model.importers.rudalle_vqgan``
(weights only, or the allow-list unpickler that never runs code). The conversions themselves are
``model.importers.rudalle`` (transformer: the "rudalle" layout of ``model/networks/transformer.py``)
and ``rudalle_vqgan`` (the gumbel VQGAN on ``model/networks/vqgan.py``);
``model.tokenizers.yttm_text`` converts the BPE.

v2 checkpoints (Malevich's ``pytorch_model_v2.bin``, Emojich) wrap the conv window around the grid
and put BOS at an extra text position; their shapes are those of v3, so the file cannot say which
it is: ``--version`` does, and v2 is refused until that layout exists.

The transformer is stored in ``dtype`` (bf16 by default: Malevich in 2.6 GB), the VQGAN in fp32
(its tokens are argmax choices, which rounding would move). The card records the sources, the
licences as far as they could be checked, the dtype and each input's SHA-256.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch

from model.config import BundleConfig, TransformerConfig, VQGANConfig, YttmTextConfig
from model.importers import kinds
from model.importers.common import Progress, hash_files, refuse_without_room, tick, write_bundle
from model.importers.dalle_mega import DTYPES, read_pt
from model.importers.limits import check_table_budget
from model.tokenizers.yttm_text import RudallePrompt, RudalleTokenizer

log = logging.getLogger(__name__)

# Malevich v3, Surrealist XL: the one list of names and repositories is model.importers.kinds
_MALEVICH, _SURREALIST = kinds.KINDS["malevich"], kinds.KINDS["surrealist"]
TRANSFORMER_FILES = (_MALEVICH.sources[0].names[0], _SURREALIST.sources[0].names[0])
V2_FILE = "pytorch_model_v2.bin"
VQGAN_FILE, BPE_FILE = (source.names[0] for source in _MALEVICH.sources[1:])
SOURCES = {
    "transformer": f"{kinds.MALEVICH.name} (once sberbank-ai/rudalle-Malevich): "
    f"{TRANSFORMER_FILES[0]}, or "
    f"{kinds.SURREALIST.name} ({TRANSFORMER_FILES[1]}) on Hugging Face",
    "image tokenizer and caption BPE": f"{kinds.RUDALLE_UTILS.name} on Hugging Face "
    f"({VQGAN_FILE}, {BPE_FILE})",
}
# The rudalle code is Apache-2.0 (LICENSE.txt in its wheel). The weights' own licence is stated
# nowhere we could read: the files carry none, and the Hugging Face model card of
# ai-forever/rudalle-Malevich (the repository sberbank-ai/rudalle-Malevich moved to), read on
# 2026-12-05 through its stored commit history, declares none in its front matter (language,
# pipeline_tag and tags only) and shows no licence tag. The card says so rather than guess.
LICENCE = {
    "code": "Apache-2.0 (the rudalle package, ai-forever/ru-dalle)",
    "weights": "not stated in the downloaded files, nor in the front matter of the model card "
    "at huggingface.co/ai-forever/rudalle-Malevich (formerly sberbank-ai/rudalle-Malevich; "
    "checked 2026-12-05); ask the authors before redistributing pictures or weights",
}
# Russian captions, as the model was trained on, each with an English gloss
EXAMPLE_CAPTIONS = [
    "рыжий кот сидит на подоконнике",
    "зимний лес на закате, масло",
    "красный парусник на спокойном озере",
]
EXAMPLE_GLOSSES = [
    "a ginger cat sitting on a windowsill",
    "a winter forest at sunset, oil painting",
    "a red sailboat on a calm lake",
]
HEADS = 16  # Malevich and Surrealist XL: 2048 / 128; not in the file's shapes


def find_files(source: Path, version: str, transformer_file: str | None = None) -> dict[str, Path]:
    """The three inputs in ``source`` (the transformer ``transformer_file`` when named, else the
    first of ``TRANSFORMER_FILES`` there); ValueError naming the first one missing."""
    if not source.is_dir():
        raise ValueError(f"--from {source}: no such folder")
    if version != "v3":
        raise ValueError(
            f"--version {version}: only v3 checkpoints (Malevich's pytorch_model_v3.bin, "
            "Surrealist XL) can be imported; v2's wrapped conv window is not built yet"
        )
    names = (transformer_file,) if transformer_file else TRANSFORMER_FILES
    transformer = next((source / n for n in names if (source / n).is_file()), None)
    if transformer is None:
        extra = (
            f"; {V2_FILE} is a v2 checkpoint, which cannot be imported yet"
            if (source / V2_FILE).is_file()
            else ""
        )
        raise ValueError(
            f"{source} has neither {' nor '.join(names)} (from {SOURCES['transformer']}){extra}"
        )
    paths = {"transformer": transformer}
    for role, name in (("vqgan", VQGAN_FILE), ("bpe", BPE_FILE)):
        if not (source / name).is_file():
            raise ValueError(
                f"{source} lacks {name} (from {SOURCES['image tokenizer and caption BPE']})"
            )
        paths[role] = source / name
    return paths


def _check_room(paths: dict[str, Path], dtype: torch.dtype, out: Path) -> None:
    """Refuse, before reading a weight, a conversion that memory or the disk cannot hold: the
    file is fp16 (2 bytes a parameter), the bundle ``dtype``; a file torch cannot memory-map is
    read whole."""
    needed, written = kinds.rudalle_room(
        paths["transformer"].stat().st_size,
        paths["vqgan"].stat().st_size,
        dtype.itemsize,
        zipfile.is_zipfile(paths["transformer"]),
    )
    refuse_without_room(needed, written, out, dtype)


def import_rudalle(
    source: str | Path,
    out: str | Path,
    dtype: str = "bf16",
    version: str = "v3",
    heads: int = HEADS,
    progress: Progress | None = None,
    vqgan: VQGANConfig | None = None,
    transformer_file: str | None = None,
) -> Path:
    """Convert ruDALL-E's files in ``source`` into the bundle ``out`` (the transformer
    ``transformer_file`` when named: a folder may hold both Malevich and Surrealist XL).
    ``heads`` is the transformer's head count and ``vqgan`` the VQGAN config the checkpoint must
    have (defaults: Malevich's 16 and the Sber gumbel-f8; tests pass tiny ones). Raises
    ValueError with one line naming the file and the problem; writes nothing unless everything
    converted."""
    from model import bundle as bundle_io

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    say = progress or (lambda message: None)
    source, out = Path(source), Path(out)
    paths = find_files(source, version, transformer_file)
    _check_room(paths, DTYPES[dtype], out)

    hashes = hash_files(paths.values(), say)

    bpe = RudalleTokenizer.from_yttm(paths["bpe"])
    transformer, tokenizer = _convert_transformer(paths, bpe, out, dtype, version, heads, say)
    tf_config = transformer.config
    vq_config, vqgan_model = _load_vqgan(paths, vqgan, tf_config, say)

    config = BundleConfig(
        vae=vq_config,
        text=YttmTextConfig(vocab_size=tokenizer.vocab_size, text_len=tokenizer.text_len),
        transformer=tf_config,
    )
    card = _card(paths, hashes, transformer, vq_config, version, dtype)
    bundle = bundle_io.Bundle(
        config=config, vae=vqgan_model, transformer=transformer, tokenizer=tokenizer, card=card
    )
    return write_bundle(bundle, out, say)


def _convert_transformer(
    paths: dict[str, Path],
    bpe: RudalleTokenizer,
    out: Path,
    dtype: str,
    version: str,
    heads: int,
    say: Progress,
):
    """The transformer from ``paths["transformer"]`` in ``dtype``, its size checked against
    memory before it is built, and the caption tokenizer it reads (its vocabulary checked)."""
    from model.importers.rudalle import transformer_from_rudalle
    from model.networks.transformer import Transformer

    say(f"reading {paths['transformer'].name}")
    state = read_pt(paths["transformer"], "ruDALL-E transformer")  # mapped; strides checked

    def affordable(config: TransformerConfig) -> None:
        """The tables and weights the file's shapes ask for, against the budget the bundle
        will be loaded with and the machine's memory, before anything is built."""
        with torch.device("meta"):
            weights = Transformer(config).num_parameters() * DTYPES[dtype].itemsize
        tables = check_table_budget(config, weights)
        vqgan_bytes = paths["vqgan"].stat().st_size
        refuse_without_room(
            weights + tables + 2 * vqgan_bytes, weights + vqgan_bytes, out, DTYPES[dtype]
        )

    try:
        tf_config, tf_state = transformer_from_rudalle(
            state, heads=heads, version=version, check_config=affordable
        )
    except ValueError as error:
        raise ValueError(f"{paths['transformer']}: {error}") from None
    del state
    tokenizer = RudallePrompt.of(bpe, text_len=tf_config.text_len)
    if tf_config.text_vocab != tokenizer.vocab_size:
        raise ValueError(
            f"{paths['bpe']}: {tokenizer.vocab_size} ids for a transformer that reads "
            f"{tf_config.text_vocab}: not this model's caption BPE"
        )
    say(f"converting the transformer to {dtype}")
    with torch.device("meta"):
        transformer = Transformer(tf_config)
    for name in list(tf_state):
        tick(say)
        tf_state[name] = tf_state[name].to(DTYPES[dtype])
    transformer.load_state_dict(tf_state, assign=True, strict=True)
    transformer.eval()
    return transformer, tokenizer


def _load_vqgan(
    paths: dict[str, Path],
    vqgan: VQGANConfig | None,
    tf_config: TransformerConfig,
    say: Progress,
):
    """The VQGAN from ``paths["vqgan"]`` (fp32), checked to be the one the transformer reads."""
    from model.importers.rudalle_vqgan import SBER_GUMBEL_F8, vqgan_from_lightning
    from model.networks.vqgan import VQGAN

    say(f"reading {paths['vqgan'].name}")
    vq_config, vq_state = vqgan_from_lightning(paths["vqgan"], vqgan or SBER_GUMBEL_F8)
    if vq_config.n_embed != tf_config.image_vocab or vq_config.grid != tf_config.grid:
        raise ValueError(
            f"{paths['vqgan']}: a VQGAN of {vq_config.n_embed} codes on a {vq_config.grid}x"
            f"{vq_config.grid} grid, but the transformer reads {tf_config.image_vocab} codes on "
            f"{tf_config.grid}x{tf_config.grid}: not this model's image tokenizer"
        )
    return vq_config, VQGAN.load(vq_config, vq_state).eval()


def _card(
    paths: dict[str, Path],
    hashes: dict[str, str],
    transformer: torch.nn.Module,
    vq_config: VQGANConfig,
    version: str,
    dtype: str,
) -> dict:
    """The imported bundle's card: its title, sources, licence and the files' hashes."""
    from model.networks.vqgan import describe

    tf_config = transformer.config
    title = (
        "ruDALL-E Surrealist XL"
        if paths["transformer"].name == "pytorch_model.bin"
        else ("ruDALL-E Malevich (v3)")
    )
    return {
        "stage": "imported",
        "name": f"{title} (imported)",
        "description": (
            f"{title} (Sber AI) converted from its released files, with the Sber gumbel-f8 VQGAN: "
            f"{vq_config.resolution} px, {tf_config.grid}x{tf_config.grid} tokens. Russian "
            "captions. Not trained for guidance: sample with guidance 1."
        ),
        "parameters": sum(p.numel() for p in transformer.parameters()),
        "imported": {
            "from": "dalle import rudalle",
            "sources": SOURCES,
            "licence": LICENCE,
            "files": hashes,
            "version": version,
            "dtype": dtype,
            "vqgan_dtype": "fp32",
            "vqgan": describe(vq_config),
        },
        "example_captions": EXAMPLE_CAPTIONS,
        "example_glosses": EXAMPLE_GLOSSES,
        "suggested_sampling": {"guidance": 1.0, "top_k": 2048, "top_p": 0.995},  # ruDALL-E's
    }
