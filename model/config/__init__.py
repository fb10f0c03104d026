"""Configuration dataclasses for every stage, split by family; this package's top level names
them all, so ``from model.config import X`` is the one way in (the studio's too).

A bundle stores these as JSON (``asdict``) and rebuilds its models from them alone, as nanoGPT's
checkpoints do with ``GPTConfig(**checkpoint["model_args"])``. Standard library only: reading a
bundle's config, a project or the server's options needs no torch.

- ``limits``: the bounds of every config read from a file
- ``ours``: the product's own models (dVAE, VQ, BPE, transformer, reranker)
- ``imported``: DALL·E Mega/Mini (BART, VQGAN) and ruDALL-E (youtokentome)
- ``sampling``: ``SamplingOptions`` and its bounds
- ``ranges``: every field's range and ``config_from_dict``, a config from a file's values
- ``bundle``: ``BundleConfig`` and the kinds each of its sections can hold
- ``recipes``: ``dalle train --preset`` sizes and ``--set KEY=VALUE`` parsing
"""

from model.config.bundle import (
    DEFAULT_TEXT_KIND,
    DEFAULT_TRANSFORMER_KIND,
    DEFAULT_VAE_KIND,
    LATER_FIELDS,
    TEXT_KINDS,
    TRANSFORMER_KINDS,
    VAE_KINDS,
    BundleConfig,
    vae_config_from_dict,
    vae_kind,
)
from model.config.imported import (
    MAX_LEVELS,
    NORM_GROUPS,
    VALUE_RANGES,
    VQGAN_QUANTIZERS,
    BartConfig,
    BartTextConfig,
    VQGANConfig,
    YttmTextConfig,
    check_vqgan_config,
)
from model.config.limits import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_DIM,
    MAX_GRID,
    MAX_GROUPS,
    MAX_IMAGE_SIZE,
    MAX_PATCH,
    MAX_TEXT_LEN,
    MAX_VOCAB,
)
from model.config.ours import (
    DVAE_TRAINING,
    TEXT_TRAINING,
    TRANSFORMER_LAYOUTS,
    VQ_TRAINING,
    DVAEConfig,
    RerankerConfig,
    TextConfig,
    TransformerConfig,
    VQConfig,
    conv_kernel_for,
)
from model.config.ranges import FIELD_RANGES, MAX_ITEMS, config_from_dict
from model.config.recipes import (
    MOVED_TRAIN_FIELDS,
    PRESETS,
    VQ_TRAIN,
    apply_sets,
    moved_sets,
    moved_to_stages,
    parse_sets,
    preset,
    set_values,
    sets_under,
)
from model.config.sampling import (
    MAX_GUIDANCE,
    MAX_SEED,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    OptionError,
    SamplingOptions,
)

__all__ = [
    "DVAE_TRAINING",
    "MOVED_TRAIN_FIELDS",
    "TEXT_TRAINING",
    "VQ_TRAINING",
    "moved_sets",
    "moved_to_stages",
    "BartConfig",
    "BartTextConfig",
    "BundleConfig",
    "DEFAULT_TEXT_KIND",
    "DEFAULT_TRANSFORMER_KIND",
    "DEFAULT_VAE_KIND",
    "DVAEConfig",
    "FIELD_RANGES",
    "LATER_FIELDS",
    "MAX_BLOCKS",
    "MAX_CHANNELS",
    "MAX_DEPTH",
    "MAX_DIM",
    "MAX_GRID",
    "MAX_GROUPS",
    "MAX_GUIDANCE",
    "MAX_IMAGE_SIZE",
    "MAX_ITEMS",
    "MAX_LEVELS",
    "MAX_PATCH",
    "MAX_SEED",
    "MAX_TEMPERATURE",
    "MAX_TEXT_LEN",
    "MAX_VOCAB",
    "MIN_TEMPERATURE",
    "OptionError",
    "NORM_GROUPS",
    "PRESETS",
    "RerankerConfig",
    "SamplingOptions",
    "TEXT_KINDS",
    "TRANSFORMER_KINDS",
    "TRANSFORMER_LAYOUTS",
    "TextConfig",
    "TransformerConfig",
    "VAE_KINDS",
    "VALUE_RANGES",
    "VQConfig",
    "VQGANConfig",
    "VQGAN_QUANTIZERS",
    "VQ_TRAIN",
    "YttmTextConfig",
    "apply_sets",
    "check_vqgan_config",
    "config_from_dict",
    "conv_kernel_for",
    "parse_sets",
    "preset",
    "set_values",
    "sets_under",
    "vae_config_from_dict",
    "vae_kind",
]
