"""Tiny random-weight bundles for tests: everything a real bundle has, in a few hundred KiB."""

from __future__ import annotations

from pathlib import Path

import torch

from model.bundle import Bundle, save
from model.config import BundleConfig, DVAEConfig, TextConfig, TransformerConfig, VQConfig
from model.networks.dvae import DVAE
from model.networks.transformer import Transformer
from model.networks.vq import VQVAE
from model.tokenizers.text import CaptionTokenizer

CAPTIONS = [
    "a red circle in the top left",
    "two blue squares on a yellow background",
    "a green ring above a pink square",
    "three purple stars",
    "a white heart to the left of a black cross",
    "an orange diamond in the center",
]


# a VQ tokenizer of the same geometry as the tiny dVAE: 32 px, a 4x4 grid of 32 codes
TINY_VQ = VQConfig(image_size=32, patch=8, width=8, res_blocks=1, z_channels=8, embed_dim=8,
                   vocab_size=32)  # fmt: skip


def tiny_bundle(seed: int = 0, kind: str = "dvae") -> Bundle:
    """``kind``: the image tokenizer, "dvae" or "vq" (same grid, codes and image size)."""
    torch.manual_seed(seed)
    if kind == "vq":
        vae_config = TINY_VQ
    else:
        vae_config = DVAEConfig(
            image_size=32, n_groups=4, n_hid=8, n_blk_per_group=1, vocab_size=32, n_init=16
        )
    tokenizer = CaptionTokenizer.train(CAPTIONS * 4, vocab_size=300, text_len=12)
    text_config = TextConfig(vocab_size=tokenizer.vocab_size, text_len=tokenizer.text_len)
    tf_config = TransformerConfig(
        text_vocab=tokenizer.vocab_size,
        text_len=tokenizer.text_len,
        image_vocab=32,
        grid=vae_config.grid,
        dim=32,
        depth=2,
        heads=2,
        conv_kernel=3,
    )
    config = BundleConfig(vae=vae_config, text=text_config, transformer=tf_config)
    return Bundle(
        config=config,
        vae=(VQVAE(vae_config) if kind == "vq" else DVAE(vae_config)).eval(),
        transformer=Transformer(tf_config).eval(),
        tokenizer=tokenizer,
        card={"name": "tiny test bundle", "example_captions": CAPTIONS[:3]},
    )


def tiny_bundle_file(folder: Path, seed: int = 0, kind: str = "dvae") -> Path:
    path = folder / (
        "tiny.dalle.safetensors" if kind == "dvae" else f"tiny-{kind}.dalle.safetensors"
    )
    save(tiny_bundle(seed, kind), path)
    return path


def edit_stored_config(path: Path, **changes) -> Path:
    """Rewrite the config JSON in a safetensors file's metadata with ``changes`` (tensors kept):
    a file that lies about its model, for the loaders' checks."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    config.update(changes)
    meta["config"] = json.dumps(config)
    save_file(load_file(path), path, metadata=meta)
    return path
