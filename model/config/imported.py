"""Imported model families (``model/importers``): DALL·E Mega and Mini (BART, its caption
tokenizer and the VQGAN) and ruDALL-E (its youtokentome caption tokenizer; its Sber VQGAN is a
``VQGANConfig`` with ``quantize="gumbel"``, its transformer a ``TransformerConfig`` with
``layout="rudalle"``).

Their modules live in model/networks/vqgan.py, model/networks/bart.py, model/tokenizers/bart_text.py
and model/tokenizers/yttm_text.py; their configs live here, with the others, so that reading a
bundle's config (and the studio's project files, which import this package) needs no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from model.config.limits import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_DIM,
    MAX_GRID,
    MAX_IMAGE_SIZE,
    MAX_TEXT_LEN,
    MAX_VOCAB,
)

# taming hard-codes GroupNorm(num_groups=32) (``Normalize``), and so do vqgan-jax and min-dalle
NORM_GROUPS = 32
# resolution levels: f16 has 5, f8 4; 8 levels would be a 128x downsampling
MAX_LEVELS = 8
VALUE_RANGES = ("0,1", "-1,1")
VQGAN_QUANTIZERS = ("vq", "gumbel")


@dataclass(frozen=True)
class VQGANConfig:
    """taming's ``ddconfig`` plus the quantiser's size; the defaults are dalle-mini's fine-tuned
    VQGAN f16-16384 (``dalle-mini/vqgan_imagenet_f16_16384`` config.json), the image tokenizer of
    DALL·E Mega and Mini."""

    resolution: int = 256  # S: 16x16 tokens at f16
    in_channels: int = 3  # also the decoder's output channels (taming's out_ch)
    ch: int = 128  # width of level 0; level i is ch * ch_mult[i] wide
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 5 levels: downsampling factor 2**4 = 16
    num_res_blocks: int = 2  # per encoder level; the decoder has one more per level
    attn_resolutions: tuple[int, ...] = (16,)  # levels at these resolutions get self-attention
    z_channels: int = 256  # encoder output / decoder input
    embed_dim: int = 256  # code vector dimension
    n_embed: int = 16384  # K codes
    # "vq": nearest code (taming's VectorQuantizer, DALL·E Mega/Mini). "gumbel": taming's
    # GumbelQuantize (ruDALL-E's Sber VQGAN): quantize.proj, a 1x1 conv to n_embed logits, and
    # argmax for tokens; decoding looks the code up in quantize.embed.
    quantize: str = "vq"
    # GroupNorm epsilon: taming and vqgan-jax use 1e-6; min-dalle's detokenizer keeps torch's
    # default 1e-5 (a test against min-dalle needs it to match to 1e-5)
    norm_eps: float = 1e-6
    double_z: bool = False  # taming's KL autoencoder doubles the encoder output; a VQGAN never
    # "0,1" for dalle-mini's fine-tuned VQGAN, "-1,1" for taming's originals (and ruDALL-E's)
    value_range: str = "0,1"

    def __post_init__(self) -> None:
        # JSON (a bundle, config.json) brings lists; the config is frozen and hashable
        for name in ("ch_mult", "attn_resolutions"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        check_vqgan_config(self)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.resolution // self.factor

    @property
    def image_size(self) -> int:
        return self.resolution

    @property
    def channels(self) -> int:
        return self.in_channels

    @property
    def vocab_size(self) -> int:
        return self.n_embed

    def encoder_config(self) -> VQGANConfig:
        """As ``DVAEConfig.encoder_config``: configs equal here give the same tokens. Every
        field of a VQGAN config shapes its encoder or its codebook, so this is the config
        itself."""
        return self


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_vqgan_config(config: VQGANConfig) -> None:
    """Refuse a configuration that cannot build a working VQGAN (or that would build an absurdly
    large one from a file), saying which value is wrong."""
    counts = {
        "resolution": (config.resolution, 1, MAX_IMAGE_SIZE),
        "in_channels": (config.in_channels, 1, MAX_CHANNELS),
        "ch": (config.ch, 1, MAX_DIM),
        "num_res_blocks": (config.num_res_blocks, 1, MAX_BLOCKS),
        "z_channels": (config.z_channels, 1, MAX_DIM),
        "embed_dim": (config.embed_dim, 1, MAX_DIM),
        "n_embed": (config.n_embed, 1, MAX_VOCAB),
    }
    for name, (value, low, high) in counts.items():
        if not _is_int(value) or not low <= value <= high:
            raise ValueError(f"VQGAN {name} must be an integer in [{low}, {high}], got {value!r}")
    mult = config.ch_mult
    if (
        not isinstance(mult, tuple)
        or not 1 <= len(mult) <= MAX_LEVELS
        or not all(_is_int(m) and m >= 1 for m in mult)
    ):
        raise ValueError(
            f"VQGAN ch_mult must be 1 to {MAX_LEVELS} positive integers, got {config.ch_mult!r}"
        )
    if config.ch * max(mult) > MAX_DIM:
        raise ValueError(
            f"VQGAN ch * max(ch_mult) = {config.ch * max(mult)} is wider than {MAX_DIM}"
        )
    for width in sorted({config.ch * m for m in (1, *mult)}):
        if width % NORM_GROUPS:
            raise ValueError(
                f"VQGAN level width {width} (ch {config.ch} x ch_mult) must be a multiple of "
                f"{NORM_GROUPS}: taming's GroupNorm has {NORM_GROUPS} groups"
            )
    attn = config.attn_resolutions
    if not isinstance(attn, tuple) or not all(_is_int(r) and r >= 1 for r in attn):
        raise ValueError(
            f"VQGAN attn_resolutions must be positive integers, got {config.attn_resolutions!r}"
        )
    if config.resolution % config.factor:
        raise ValueError(
            f"VQGAN resolution {config.resolution} must be a multiple of the downsampling "
            f"factor {config.factor} (2 ** (len(ch_mult) - 1))"
        )
    if not isinstance(config.norm_eps, (int, float)) or not 0 < config.norm_eps < 1:
        raise ValueError(f"VQGAN norm_eps must be in (0, 1), got {config.norm_eps!r}")
    if config.double_z is not False:
        raise ValueError(
            "VQGAN double_z must be false: taming's VQModel feeds z_channels (not 2 * z_channels) "
            "to quant_conv; double_z belongs to the KL autoencoder"
        )
    if config.quantize not in VQGAN_QUANTIZERS:
        raise ValueError(
            f"VQGAN quantize must be one of {VQGAN_QUANTIZERS}, got {config.quantize!r}"
        )
    if config.quantize == "gumbel" and config.z_channels != config.embed_dim:
        raise ValueError(
            f"VQGAN quantize 'gumbel' needs z_channels == embed_dim (taming builds quantize.proj "
            f"for z_channels and feeds it embed_dim), got {config.z_channels} and "
            f"{config.embed_dim}"
        )
    if config.value_range not in VALUE_RANGES:
        raise ValueError(
            f"VQGAN value_range must be one of {VALUE_RANGES}, got {config.value_range!r}"
        )


@dataclass(frozen=True)
class BartConfig:
    """Sizes of a DalleBart; the defaults are DALL·E Mega's (min-dalle's ``MinDalle``)."""

    text_vocab: int = 50272  # encoder embedding rows (Mini: 50264)
    image_vocab: int = 16384  # VQGAN f16 codes: sampled tokens, and logits cut to these columns
    # decoder embedding and lm_head rows: min-dalle's image_vocab_count + 1 (the Flax checkpoints'
    # image_vocab_size, plus one row reserved for a start token); Mini: 16385
    image_rows: int = 16416
    embed_dim: int = 2048
    heads: int = 32  # head dim 64 in both Mega and Mini
    glu_dim: int = 4096  # GLU hidden width (Mini: 2730)
    encoder_layers: int = 24
    decoder_layers: int = 24
    text_len: int = 64  # min-dalle pads every caption to 64 tokens
    grid: int = 16  # 16x16 tokens of the f16 VQGAN at 256 px: 256 decoder positions
    # min-dalle starts every image with 2**14 - 1 (a real code's row); dalle-mini's own config
    # names image_vocab_size (16384 Mini, 16415 Mega) as decoder_start_token_id instead
    start_token: int = 2**14 - 1
    pad_id: int = 1  # BART's <pad>: masked out of every attention over the caption

    def __post_init__(self):
        bounds = {
            "text_vocab": MAX_VOCAB,
            "image_vocab": MAX_VOCAB,
            "image_rows": MAX_VOCAB,
            "embed_dim": MAX_DIM,
            "heads": MAX_DIM,
            "glu_dim": 4 * MAX_DIM,
            "encoder_layers": MAX_DEPTH,
            "decoder_layers": MAX_DEPTH,
            "text_len": MAX_TEXT_LEN,
            "grid": MAX_GRID,
        }
        for name, most in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
                raise ValueError(
                    f"bart config {name} must be an integer in [1, {most}], got {value!r}"
                )
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by heads {self.heads}")
        if self.image_vocab > self.image_rows:
            raise ValueError(
                f"image_vocab {self.image_vocab} exceeds the decoder's {self.image_rows} rows"
            )
        for name, rows in (("start_token", self.image_rows), ("pad_id", self.text_vocab)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < rows:
                raise ValueError(f"bart config {name} must be an id in [0, {rows}), got {value!r}")

    @property
    def image_len(self) -> int:
        return self.grid * self.grid

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_len

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    # ``model.inference.sampling.memory_needed`` sizes a cache as depth * 2 * rows * seq_len * dim
    # values: exactly ``BartCache`` (self-attention over image_len slots, cross keys over text_len)
    @property
    def dim(self) -> int:
        return self.embed_dim

    @property
    def depth(self) -> int:
        return self.decoder_layers

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> BartConfig:
        """A config read from a file: unknown keys refused, every value checked (ValueError)."""
        if not isinstance(values, dict):
            raise ValueError(f"a bart config must be a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown bart config field(s): {', '.join(map(str, unknown))}")
        return cls(**values)


@dataclass
class BartTextConfig:
    """DALL·E Mega / Mini's caption tokenizer (``model.tokenizers.bart_text.BartTokenizer``): BART's
    BPE, ``<s> … </s>`` padded with id 1. The vocabulary itself lives in the tokenizer JSON."""

    vocab_size: int = 50265  # one past the largest id of vocab.json (BART's: 50265 tokens)
    text_len: int = 64  # min-dalle's text_token_count


@dataclass
class YttmTextConfig:
    """ruDALL-E's caption tokenizer for a ``layout="rudalle"`` transformer
    (``model.tokenizers.yttm_text.RudallePrompt``): youtokentome's BPE, BOS, at most ``text_len -
    2`` ids, EOS, then one padding id per position. The vocabulary itself lives in the tokenizer
    JSON."""

    vocab_size: int = 16384  # BPE ids, the four special ones included (ruDALL-E's bpe.model)
    text_len: int = 127  # ruDALL-E's 128 text positions less the last, which is our slot 0
