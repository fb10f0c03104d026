"""Training recipes: the model-size presets of ``dalle train --preset``, and ``--set KEY=VALUE``
parsed into any config's fields."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from model.config.ours import DVAE_TRAINING, TEXT_TRAINING

# Model sizes for `dalle train --preset`: each stage's config fields (their training-only ones
# included), and the TrainConfig fields the preset changes (model.training.trainer.TrainConfig; its
# own defaults are the rest).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # a few-minute CPU run for tests and smoke checks: 32x32 images, a 4x4 grid
    "tiny": {
        "vae": dict(
            image_size=32, n_groups=3, n_hid=16, n_blk_per_group=1, vocab_size=64, n_init=32
        ),
        "vq": dict(image_size=32, width=16, res_blocks=1, z_channels=8, embed_dim=8, vocab_size=64),
        "text": dict(vocab_size=300, text_len=16),
        "transformer": dict(dim=64, depth=4, heads=4, conv_kernel=3),
        "train": dict(steps=300, batch_size=16, lr=2e-3, warmup=20, checkpoint_every=100, ema=0.99),
    },
    # 64x64 images and an 8x8 grid: trains on a CPU in well under an hour
    "small": {
        "vae": dict(image_size=64, n_groups=4, n_hid=32, n_blk_per_group=1, vocab_size=512),
        "vq": dict(image_size=64, patch=8, width=64, res_blocks=2, vocab_size=512),
        "text": dict(vocab_size=512, text_len=24),
        "transformer": dict(dim=192, depth=6, heads=6, conv_kernel=5),
        "train": dict(steps=4000, batch_size=32, lr=1e-3, warmup=100),
    },
    # the embedded model's recipe (resources/models/MODEL_CARD.md): 64x64 images, a 16x16 grid
    "default": {
        "vae": dict(
            image_size=64,
            n_groups=3,
            n_hid=32,
            n_blk_per_group=1,
            vocab_size=512,
            kl_warmup=0.5,
            code_usage=1.0,
        ),
        # the tokenizer study's best recipe (issue 17, "psw64e"): 64 px, a 16x16 grid, K = 512
        "vq": dict(image_size=64, patch=4, width=64, res_blocks=2, vocab_size=512),
        "text": dict(vocab_size=512, text_len=32),
        "transformer": dict(dim=192, depth=6, heads=6, conv_kernel=5),
        "train": {},
    },
}

# Fields TrainConfig had before the stage configs took those only one stage's training reads
# (model.config.ours.DVAE_TRAINING, TEXT_TRAINING), by the section that holds each now: a recipe
# written with them in its "train" section, and ``--set train.KEY``, still name them there.
MOVED_TRAIN_FIELDS = {**dict.fromkeys(DVAE_TRAINING, "vae"), **dict.fromkeys(TEXT_TRAINING, "text")}

# train vq's defaults under every preset's own train values (the study's: Adam at 2e-3 with 100
# warm-up steps, then cosine; its batch of 32 is TrainConfig's)
VQ_TRAIN: dict[str, Any] = dict(lr=2e-3, warmup=100)

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def preset(name: str) -> dict[str, dict[str, Any]]:
    """The preset called ``name``, as a fresh copy (changing it changes no other run's)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return moved_to_stages(PRESETS[name])


def moved_to_stages(recipe: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A fresh copy of ``recipe`` (a preset's sections) with each field of
    ``MOVED_TRAIN_FIELDS`` its "train" section names moved to the section that holds it now
    (an older recipe's layout; a value the stage's section gives itself wins)."""
    sections = {stage: dict(values) for stage, values in recipe.items()}
    train = sections.setdefault("train", {})
    for name in [name for name in train if name in MOVED_TRAIN_FIELDS]:
        sections.setdefault(MOVED_TRAIN_FIELDS[name], {}).setdefault(name, train.pop(name))
    return sections


def moved_sets(train_sets: dict[str, str], stage: str) -> tuple[dict[str, str], dict[str, str]]:
    """``--set train.KEY`` items (``train_sets``, the prefix cut off) split into TrainConfig's
    own and those of ``MOVED_TRAIN_FIELDS``, renamed as ``train STAGE``'s ``--set`` names them
    (``train vae``: KEY; ``train transformer``: text.KEY). Another stage's field is dropped,
    as TrainConfig took and ignored it before it moved."""
    own = {key: value for key, value in train_sets.items() if key not in MOVED_TRAIN_FIELDS}
    prefix = {"vae": {"vae": ""}, "transformer": {"text": "text."}}.get(stage, {})
    moved = {
        prefix[MOVED_TRAIN_FIELDS[key]] + key: value
        for key, value in train_sets.items()
        if MOVED_TRAIN_FIELDS.get(key) in prefix
    }
    return own, moved


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items as {KEY: VALUE}, both stripped; the values still text."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def sets_under(sets: dict[str, str], prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    """``sets`` split into those whose key starts with ``prefix`` (``"train."``, the prefix cut
    off) and the rest."""
    inside = {k[len(prefix) :]: v for k, v in sets.items() if k.startswith(prefix)}
    rest = {k: v for k, v in sets.items() if not k.startswith(prefix)}
    return inside, rest


def set_values(kind: type, sets: dict[str, str], prefix: str = "") -> dict[str, Any]:
    """``--set`` texts for fields of the dataclass ``kind``, each parsed as its field's type:
    bool (true/false, 1/0, yes/no), int, float, str, or a tuple of those ("0.9,0.96").

    Raises one-line ValueErrors naming the key as typed (``prefix`` + field): an unknown field
    (listing the known ones), or a value its type cannot take.
    """
    types = typing.get_type_hints(kind)
    names = {f.name for f in dataclasses.fields(kind)}
    values = {}
    for key, text in sets.items():
        if key not in names:
            raise ValueError(
                f"--set {prefix}{key}: unknown {kind.__name__} field {key!r}; "
                f"known: {sorted(names)}"
            )
        values[key] = _parse_value(types[key], text, f"{prefix}{key}")
    return values


def apply_sets(config: Any, sets: dict[str, str], prefix: str = "") -> Any:
    """A new ``config`` with ``set_values``' fields changed; ``config`` itself stays as it was."""
    return dataclasses.replace(config, **set_values(type(config), sets, prefix))


def _parse_value(kind: Any, text: str, key: str) -> Any:
    """``text`` as a value of the type ``kind`` (a field's resolved annotation)."""
    where = f"--set {key}={text!r:.40}"
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{where}: expected true or false (or 1/0, yes/no)")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise ValueError(f"{where}: expected {noun}") from None
    if kind is str:
        return text
    item_types = typing.get_args(kind)
    if typing.get_origin(kind) is tuple and Ellipsis not in item_types:
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != len(item_types):
            raise ValueError(
                f"{where}: expected {len(item_types)} comma-separated values, like 0.9,0.96"
            )
        return tuple(
            _parse_value(item, part, key) for item, part in zip(item_types, parts, strict=True)
        )
    raise ValueError(f"--set {key}: this field cannot be set from the command line")
