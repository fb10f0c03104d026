"""Configuration dataclasses for every stage, in dependency order.

A bundle stores these as JSON (``asdict``) and rebuilds its models from them alone, as nanoGPT's
checkpoints do with ``GPTConfig(**checkpoint["model_args"])``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

# Bounds for every config read from a file (a bundle, a dVAE), checked before a model is built
# from it: wide enough for the DALL·E family that importers bring (DALL·E Mega: dim 2048, 24 + 24
# layers, 50264 text and 16384 image codes, text_len 64; ruDALL-E XL: dim 2560, depth 32,
# text_len 128, a 32x32 grid of 8192 codes at 256 px), narrow enough that a file cannot make
# the loader build a million layers or a 20000-wide model before its tensors are checked.
MAX_DIM = 16384
MAX_DEPTH = 256
MAX_VOCAB = 2**20
MAX_TEXT_LEN = 4096
MAX_GRID = 128
MAX_IMAGE_SIZE = 4096
MAX_GROUPS = 8  # dVAE downsampling 2**7 = 128
MAX_BLOCKS = 64  # dVAE blocks per group
MAX_CHANNELS = 4
MAX_PATCH = 64  # VQ PixelUnshuffle factor: 3 * 64**2 = 12288 channels into the first conv


@dataclass
class DVAEConfig:
    """Discrete VAE in the layout of OpenAI's released DALL·E dVAE (``dall_e/encoder.py``)."""

    image_size: int = 128  # S: the model's own resolution; the grid is S / 2**(n_groups - 1)
    channels: int = 3
    n_groups: int = 4  # downsampling factor 2**(n_groups-1) = 8, as in the paper
    n_hid: int = 64  # width of group 1; group g is 2**(g-1) * n_hid wide (paper: 256)
    n_blk_per_group: int = 1  # paper: 2; one keeps the CPU default small
    vocab_size: int = 1024  # K codes (paper: 8192; a 16x16 grid of simple scenes needs far fewer)
    n_init: int = 128  # decoder's first 1x1 conv width, as released
    logit_laplace_eps: float = 0.1  # pixels are mapped into (eps, 1 - eps)
    # the decoder's own width and depth (0 = same as the encoder's): a decoder retrained on a
    # frozen encoder's codes (`train vae --decoder-only`) can be bigger without changing a token
    dec_n_hid: int = 0
    dec_n_blk_per_group: int = 0

    @property
    def decoder_n_hid(self) -> int:
        return self.dec_n_hid or self.n_hid

    @property
    def decoder_blocks(self) -> int:
        return self.dec_n_blk_per_group or self.n_blk_per_group

    def encoder_config(self) -> DVAEConfig:
        """This config with the decoder-only fields cleared: equal for dVAEs whose encoders (and
        so tokens) can be the same."""
        return dataclasses.replace(self, dec_n_hid=0, dec_n_blk_per_group=0)

    @property
    def factor(self) -> int:
        return 2 ** (self.n_groups - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.factor


@dataclass
class VQConfig:
    """VQ-VAE tokenizer in the layout of taming-transformers' VQGAN (``model/vq.py``).

    The defaults are the tokenizer study's best recipe for the 64 px scenes (issue 17, "psw64e"):
    31.4 dB and twice the dVAE's scenes ceiling at equal images seen.
    """

    image_size: int = 64  # S
    channels: int = 3
    patch: int = 4  # PixelUnshuffle factor: a 4x4 pixel patch per cell, so a 16x16 grid at 64 px
    width: int = 64  # every convolution's width; all run at grid resolution (w96 was slower)
    res_blocks: int = 2  # residual blocks in the encoder and again in the decoder
    z_channels: int = 32  # encoder output / decoder input (taming's z_channels)
    embed_dim: int = 32  # code vector dimension
    vocab_size: int = 512  # K codes, as the shipped dVAE
    # training only (the weights do not depend on them; a resumed run needs the same values)
    decay: float = 0.99  # EMA of the codebook; 0.99 follows the encoder within ~100 steps
    commitment: float = 0.25  # weight of |z - sg(e)|^2 (VQ-VAE paper's beta)
    edge_weight: float = 4.0  # pixel loss weight near colour edges (study: the largest gain)
    restart_every: int = 25  # steps between dead-code restarts at the worst-reconstructed cells
    # the encoder first area-averages the picture by this factor, and the decoder ends in a
    # PixelShuffle(patch * pool): issue 17's 128 px model reads and writes 128 px (image_size)
    # with the 64 px encoder's codes (pool 2), its decoder retrained on them (`train vq
    # --decoder-only`), so one cell is 8x8 px. Pool 1 is the plain VQ-VAE.
    pool: int = 1

    def encoder_config(self) -> VQConfig:
        """This config with the training-only fields at their defaults, and a pooled one as its
        encoder reads the picture (image_size / pool at pool 1): equal for VQ tokenizers whose
        tokens can be the same (as ``DVAEConfig.encoder_config``), so the 128 px default's
        tokenizer and its 64 px twin compare equal."""
        defaults = VQConfig()
        training = ("decay", "commitment", "edge_weight", "restart_every")
        return dataclasses.replace(
            self,
            image_size=self.image_size // self.pool,
            pool=1,
            **{name: getattr(defaults, name) for name in training},
        )

    @property
    def factor(self) -> int:
        return self.patch * self.pool

    @property
    def grid(self) -> int:
        return self.image_size // self.factor


@dataclass
class TextConfig:
    """BPE tokenizer settings; the vocabulary itself lives in the tokenizer JSON."""

    vocab_size: int = 1024  # BPE merges target, specials included (paper: 16384)
    text_len: int = 32  # caption length in tokens, padded per position (paper: 256)
    bpe_dropout: float = 0.1  # applied only while training, as in the paper


@dataclass
class TransformerConfig:
    """Decoder-only transformer over ``[text ; start-of-image ; image]``."""

    text_vocab: int = 1024  # BPE ids; the per-position padding ids follow them
    text_len: int = 32
    image_vocab: int = 1024  # equals the dVAE's vocab_size
    grid: int = 16  # image tokens form a grid x grid raster
    dim: int = 256
    depth: int = 8
    heads: int = 8
    conv_kernel: int = (
        7  # paper: 11 on a 32x32 grid; conv_kernel_for(16) scales it and keeps it odd
    )
    dropout: float = 0.0
    text_loss_weight: float = 1 / 8  # paper: 1/8 text, 7/8 image
    # "studio": slot s holds cell s - 1 with the row/column embedding of the cell it predicts.
    # "rudalle": ruDALL-E v3's convention (research/importers.md 2.3-2.4): slot s >= 1 holds cell
    # s - 1 with that cell's own row/column embedding, slot 0 (the last text position) gets no
    # row/column embedding and every image slot sees it; masks are on held-cell coordinates.
    layout: str = "studio"
    sandwich_norm: bool = False  # CogView's extra LayerNorm on each residual branch's output
    head_norm: bool = False  # a second LayerNorm before the image head (ruDALL-E's to_logits.0)
    head_bias: bool = False  # the image (and text) head has a bias

    @property
    def image_len(self) -> int:
        return self.grid * self.grid

    @property
    def seq_len(self) -> int:
        # text positions, then one slot per image cell; slot 0 holds start-of-image and slot s
        # holds cell s - 1, so the output at slot s predicts cell s.
        return self.text_len + self.image_len

    @property
    def text_vocab_padded(self) -> int:
        return self.text_vocab + self.text_len


TRANSFORMER_LAYOUTS = ("studio", "rudalle")


def conv_kernel_for(grid: int) -> int:
    """The paper's 11x11 window on a 32x32 grid, scaled to ``grid`` and kept odd (at least 3)."""
    k = max(3, round(11 * grid / 32))
    return k if k % 2 == 1 else k + 1


@dataclass
class RerankerConfig:
    """Small contrastive image-caption scorer (a CLIP stand-in trained on our data)."""

    text_vocab: int = 1024  # the bundle tokenizer's padded vocabulary (BPE ids + padding ids)
    text_len: int = 32
    image_size: int = 128  # scores images at the bundle's resolution
    dim: int = 128  # shared embedding width
    text_layers: int = 2
    heads: int = 4
    image_width: int = 32  # channels of the first conv stage; doubled at each downsampling


# -- imported model families (model/importers): DALL·E Mega and Mini -----------------------------
# Their modules live in model/vqgan.py, model/bart.py and model/bart_text.py; their configs live
# here, with the others, so that reading a bundle's config (and the studio's project files, which
# import this module) needs no torch.

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

    # ``model.sampling.memory_needed`` sizes a cache as depth * 2 * rows * seq_len * dim values:
    # exactly ``BartCache`` (self-attention over image_len slots, cross keys over text_len)
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
    """DALL·E Mega / Mini's caption tokenizer (``model.bart_text.BartTokenizer``): BART's BPE,
    ``<s> … </s>`` padded with id 1. The vocabulary itself lives in the tokenizer JSON."""

    vocab_size: int = 50265  # one past the largest id of vocab.json (BART's: 50265 tokens)
    text_len: int = 64  # min-dalle's text_token_count


@dataclass
class YttmTextConfig:
    """ruDALL-E's caption tokenizer for a ``layout="rudalle"`` transformer
    (``model.yttm_text.RudallePrompt``): youtokentome's BPE, BOS, at most ``text_len - 2`` ids,
    EOS, then one padding id per position. The vocabulary itself lives in the tokenizer JSON."""

    vocab_size: int = 16384  # BPE ids, the four special ones included (ruDALL-E's bpe.model)
    text_len: int = 127  # ruDALL-E's 128 text positions less the last, which is our slot 0


# Sampling options' bounds: logits divided by MIN_TEMPERATURE stay far from fp32's overflow; a
# guidance scale beyond MAX_GUIDANCE only saturates (DALL·E Mega samples at 10-16); a seed is
# what torch.Generator.manual_seed takes.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0
MAX_GUIDANCE = 100.0
MAX_SEED = 2**64 - 1


@dataclass
class SamplingOptions:
    """How to sample a completion; every field is exposed in the CLI and the studio."""

    n: int = 1  # candidates, sampled in one batch
    temperature: float = 1.0  # the paper samples at 1
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    guidance: float = 1.0  # classifier-free guidance scale; 1 = conditional only
    seed: int | None = None  # None = fresh randomness

    @staticmethod
    def add_arguments(parser, skip: tuple[str, ...] = ()) -> None:
        """The CLI flags for every field (``--n --seed --temperature --top-k --top-p
        --guidance``), their defaults this class's. ``skip`` leaves out the flags of those
        fields (``dalle eval`` has its own ``--samples`` and a ``--seed`` for its scenes)."""
        if "n" not in skip:
            parser.add_argument("--n", type=int, default=1, help="candidates, sampled in one batch")
        if "seed" not in skip:
            parser.add_argument(
                "--seed", type=int, default=None, help="fixed seed (default: random)"
            )
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--top-k", type=int, default=0, help="0 = off")
        parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
        parser.add_argument(
            "--guidance", type=float, default=1.0, help="classifier-free guidance scale"
        )

    @classmethod
    def from_args(cls, args, *, validate: bool = True, **changes: Any) -> SamplingOptions:
        """The options ``add_arguments``' flags parsed into ``args`` (``changes`` override, and
        stand for skipped flags), validated (ValueError naming the field) unless ``validate`` is
        False: a holder that checks its own fields first validates them later."""
        values = {
            f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in changes
        }
        options = cls(**{**values, **changes})
        if validate:
            options.validate()
        return options

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (a project's history entry, a bundle card, a server reply)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> SamplingOptions:
        """Options read from a file: unknown keys refused, each field's type and range checked
        (ValueError naming the field)."""
        if not isinstance(values, dict):
            raise ValueError(f"sampling options must be a JSON object, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown sampling option(s): {', '.join(map(str, unknown))}")
        types = {"n": int, "top_k": int, "temperature": float, "top_p": float, "guidance": float}
        for name, kind in types.items():
            value = values.get(name, getattr(cls, name))
            ok = isinstance(value, int | float) if kind is float else isinstance(value, int)
            if isinstance(value, bool) or not ok:
                raise ValueError(f"sampling option {name} must be a number, got {value!r}")
        seed = values.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"sampling option seed must be an integer or null, got {seed!r}")
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        if self.n <= 0:
            raise ValueError(f"number of candidates must be at least 1, got {self.n}")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:  # also refuses NaN
            raise ValueError(
                f"temperature must be from {MIN_TEMPERATURE} to {MAX_TEMPERATURE}, "
                f"got {self.temperature}"
            )
        if self.top_k < 0:
            raise ValueError(f"top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:
            raise ValueError(
                f"guidance scale must be from 0 to {MAX_GUIDANCE}, got {self.guidance}"
            )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be from 0 to 2**64 - 1, got {self.seed}")


@dataclass
class BundleConfig:
    """Everything needed to rebuild a bundle's models.

    Each of vae, text and transformer is one of several kinds (``VAE_KINDS``, ``TEXT_KINDS``,
    ``TRANSFORMER_KINDS``): the config's class, stored as the section's ``kind``. The product's
    own kinds (a dVAE, our BPE, our transformer) are written without one, so every bundle made
    before kinds existed reads, and is written, byte for byte as it was.
    """

    vae: DVAEConfig | VQConfig | VQGANConfig = field(default_factory=DVAEConfig)
    text: TextConfig | BartTextConfig | YttmTextConfig = field(default_factory=TextConfig)
    transformer: TransformerConfig | BartConfig = field(default_factory=TransformerConfig)
    reranker: RerankerConfig | None = None  # scores captions in our BPE's ids: ours only

    @property
    def vae_kind(self) -> str:
        return vae_kind(self.vae)

    @property
    def text_kind(self) -> str:
        return _kind_of(self.text, TEXT_KINDS, "caption tokenizer")

    @property
    def transformer_kind(self) -> str:
        return _kind_of(self.transformer, TRANSFORMER_KINDS, "transformer")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for section in ("vae", "transformer"):
            for name, default in LATER_FIELDS.get(type(getattr(self, section)), {}).items():
                if data[section][name] == default:
                    del data[section][name]
        for section, kind, default in (
            ("vae", self.vae_kind, DEFAULT_VAE_KIND),
            ("text", self.text_kind, DEFAULT_TEXT_KIND),
            ("transformer", self.transformer_kind, DEFAULT_TRANSFORMER_KIND),
        ):
            if kind != default:
                data[section] = {"kind": kind, **data[section]}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleConfig:
        """A config read from a file: every section a JSON object, its ``kind`` (absent: the
        product's own) one of the known kinds, every field of the right type and within
        ``FIELD_RANGES`` (ValueError naming ``section.field``, its value and what was expected).
        Only the reranker may be absent (None)."""
        reranker = data.get("reranker")
        return cls(
            vae=vae_config_from_dict(data["vae"]),
            text=_config_of_kind(data["text"], "text", TEXT_KINDS, DEFAULT_TEXT_KIND),
            transformer=_config_of_kind(
                data["transformer"], "transformer", TRANSFORMER_KINDS, DEFAULT_TRANSFORMER_KIND
            ),
            reranker=None
            if reranker is None
            else config_from_dict(RerankerConfig, reranker, "reranker"),
        )


# The kinds a bundle's sections can hold, by the name its ``kind`` key stores. A bundle written
# before a section had kinds has no key there: it is the first kind listed (the product's own).
VAE_KINDS: dict[str, type] = {"dvae": DVAEConfig, "vq": VQConfig, "vqgan": VQGANConfig}
DEFAULT_VAE_KIND = "dvae"
TEXT_KINDS: dict[str, type] = {"bpe": TextConfig, "bart": BartTextConfig, "yttm": YttmTextConfig}
DEFAULT_TEXT_KIND = "bpe"
TRANSFORMER_KINDS: dict[str, type] = {"dalle": TransformerConfig, "bart": BartConfig}
DEFAULT_TRANSFORMER_KIND = "dalle"
# Fields added after bundles of their kind shipped, with the value every earlier bundle has: a
# bundle writes one only where it differs, so earlier bundles are written byte for byte as before.
LATER_FIELDS: dict[type, dict[str, Any]] = {
    VQConfig: {"pool": 1},
    TransformerConfig: {
        "layout": "studio",
        "sandwich_norm": False,
        "head_norm": False,
        "head_bias": False,
    },
    VQGANConfig: {"quantize": "vq"},
}


def _kind_of(config: Any, kinds: dict[str, type], what: str) -> str:
    for name, kind in kinds.items():
        if type(config) is kind:
            return name
    raise TypeError(f"not a {what} config: {type(config).__name__}")


def vae_kind(config: DVAEConfig | VQConfig | VQGANConfig) -> str:
    """``"dvae"``, ``"vq"`` or ``"vqgan"``: the kind of image tokenizer ``config`` builds."""
    return _kind_of(config, VAE_KINDS, "image tokenizer")


def _config_of_kind(values: Any, section: str, kinds: dict[str, type], default: str):
    """A section's config from a file: ``values["kind"]`` (absent: ``default``) picks the class,
    the other fields are checked by ``config_from_dict``."""
    if not isinstance(values, dict):
        raise ValueError(f"{section} must be a JSON object, got {values!r:.40}")
    values = dict(values)
    kind = values.pop("kind", default)
    if type(kind) is not str or kind not in kinds:
        raise ValueError(f"{section}.kind is {kind!r:.40}; expected one of {sorted(kinds)}")
    return config_from_dict(kinds[kind], values, section)


def vae_config_from_dict(values: Any, section: str = "vae") -> DVAEConfig | VQConfig | VQGANConfig:
    """The image tokenizer's config from a file: ``values["kind"]`` (absent: a dVAE) picks the
    class, the other fields are checked by ``config_from_dict``."""
    return _config_of_kind(values, section, VAE_KINDS, DEFAULT_VAE_KIND)


# (lowest, highest) of every field a file may set; ints must be JSON integers, floats numbers
FIELD_RANGES: dict[type, dict[str, tuple]] = {
    DVAEConfig: {
        "image_size": (1, MAX_IMAGE_SIZE),
        "channels": (1, MAX_CHANNELS),
        "n_groups": (1, MAX_GROUPS),
        "n_hid": (1, MAX_DIM),
        "n_blk_per_group": (1, MAX_BLOCKS),
        "vocab_size": (2, MAX_VOCAB),
        "n_init": (1, MAX_DIM),
        "logit_laplace_eps": (0.0, 0.5),
        "dec_n_hid": (0, MAX_DIM),
        "dec_n_blk_per_group": (0, MAX_BLOCKS),
    },
    VQConfig: {
        "image_size": (1, MAX_IMAGE_SIZE),
        "channels": (1, MAX_CHANNELS),
        "patch": (1, MAX_PATCH),
        "width": (1, MAX_DIM),
        "res_blocks": (0, MAX_BLOCKS),
        "z_channels": (1, MAX_DIM),
        "embed_dim": (1, MAX_DIM),
        "vocab_size": (2, MAX_VOCAB),
        "decay": (0.0, 0.9999),
        "commitment": (0.0, 100.0),
        "edge_weight": (0.0, 100.0),
        "restart_every": (1, 2**31 - 1),
        "pool": (1, 8),
    },
    TextConfig: {
        "vocab_size": (1, MAX_VOCAB),
        "text_len": (1, MAX_TEXT_LEN),
        "bpe_dropout": (0.0, 1.0),
    },
    TransformerConfig: {
        "text_vocab": (1, MAX_VOCAB),
        "text_len": (1, MAX_TEXT_LEN),
        "image_vocab": (2, MAX_VOCAB),
        "grid": (1, MAX_GRID),
        "dim": (1, MAX_DIM),
        "depth": (1, MAX_DEPTH),
        "heads": (1, MAX_DIM),
        "conv_kernel": (1, 2 * MAX_GRID + 1),
        "dropout": (0.0, 1.0),
        "text_loss_weight": (0.0, 1.0),
        "layout": TRANSFORMER_LAYOUTS,
        "sandwich_norm": (),
        "head_norm": (),
        "head_bias": (),
    },
    RerankerConfig: {
        "text_vocab": (1, MAX_VOCAB + MAX_TEXT_LEN),  # BPE ids and the padding ids
        "text_len": (1, MAX_TEXT_LEN),
        "image_size": (8, MAX_IMAGE_SIZE),
        "dim": (1, MAX_DIM),
        "text_layers": (1, MAX_DEPTH),
        "heads": (1, MAX_DIM),
        "image_width": (1, MAX_DIM),
    },
    # a tuple field's range is each item's; a str field lists its choices; a bool has none
    VQGANConfig: {
        "resolution": (1, MAX_IMAGE_SIZE),
        "in_channels": (1, MAX_CHANNELS),
        "ch": (1, MAX_DIM),
        "ch_mult": (1, MAX_DIM),
        "num_res_blocks": (1, MAX_BLOCKS),
        "attn_resolutions": (1, MAX_IMAGE_SIZE),
        "z_channels": (1, MAX_DIM),
        "embed_dim": (1, MAX_DIM),
        "n_embed": (1, MAX_VOCAB),
        "norm_eps": (0.0, 0.1),
        "double_z": (),
        "value_range": VALUE_RANGES,
        "quantize": VQGAN_QUANTIZERS,
    },
    BartConfig: {
        "text_vocab": (1, MAX_VOCAB),
        "image_vocab": (1, MAX_VOCAB),
        "image_rows": (1, MAX_VOCAB),
        "embed_dim": (1, MAX_DIM),
        "heads": (1, MAX_DIM),
        "glu_dim": (1, 4 * MAX_DIM),
        "encoder_layers": (1, MAX_DEPTH),
        "decoder_layers": (1, MAX_DEPTH),
        "text_len": (1, MAX_TEXT_LEN),
        "grid": (1, MAX_GRID),
        "start_token": (0, MAX_VOCAB - 1),
        "pad_id": (0, MAX_VOCAB - 1),
    },
    YttmTextConfig: {
        "vocab_size": (5, MAX_VOCAB),  # four special ids and the word-start token
        "text_len": (3, MAX_TEXT_LEN),  # BOS, one id, EOS
    },
    BartTextConfig: {
        # Mini's vocab_mini.json holds one id more than its encoder has rows (see bundle.py)
        "vocab_size": (4, MAX_VOCAB + 1),
        "text_len": (2, MAX_TEXT_LEN),
    },
}
MAX_ITEMS = 16  # items of a tuple field (VQGAN levels, attention resolutions)


def config_from_dict(kind: type, values: Any, section: str):
    """``kind(**values)`` for values read from a file, each checked against ``FIELD_RANGES``.

    Raises ValueError naming ``section.field``, the value and what was expected; missing fields
    take their defaults.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{section} must be a JSON object, got {values!r:.40}")
    ranges = FIELD_RANGES[kind]
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    for name, value in values.items():
        rule, annotation = ranges[name], fields[name].type
        where = f"{section}.{name} is {value!r:.40}"
        if annotation == "bool":
            if type(value) is not bool:
                raise ValueError(f"{where}; expected true or false")
        elif annotation == "str":
            if type(value) is not str or value not in rule:
                raise ValueError(f"{where}; expected one of {list(rule)}")
        elif annotation.startswith("tuple["):  # tuple[int, ...]: a JSON list of integers
            if type(value) not in (list, tuple) or len(value) > MAX_ITEMS:
                raise ValueError(f"{where}; expected a list of at most {MAX_ITEMS} integers")
            for item in value:
                _check_number(item, "int", rule, f"{section}.{name} holds {item!r:.40}")
        else:
            _check_number(value, annotation, rule, where)
    try:
        config = kind(**values)
    except ValueError as error:  # the class's own checks across fields (VQGAN, BART)
        raise ValueError(f"{section}: {error}") from None
    heads = getattr(config, "heads", None)
    if heads is not None and config.dim % heads:
        raise ValueError(
            f"{section}.heads is {heads}; expected a number that divides dim {config.dim}"
        )
    return config


def _check_number(value: Any, annotation: str, rule: tuple[float, float], where: str) -> None:
    low, high = rule
    if annotation == "int":
        if type(value) is not int:  # not a bool, a float or a string
            raise ValueError(f"{where}; expected an integer from {low} to {high}")
    elif type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"{where}; expected a number from {low} to {high}")
    if value < low:
        raise ValueError(f"{where}; expected at least {low}")
    if value > high:
        raise ValueError(f"{where}; expected at most {high}")


# -- presets and --set -----------------------------------------------------------------------------

# Model sizes for `dalle train --preset`: each stage's config fields, and the TrainConfig fields
# the preset changes (model.train.TrainConfig; its own defaults are the rest).
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
        "vae": dict(image_size=64, n_groups=3, n_hid=32, n_blk_per_group=1, vocab_size=512),
        # the tokenizer study's best recipe (issue 17, "psw64e"): 64 px, a 16x16 grid, K = 512
        "vq": dict(image_size=64, patch=4, width=64, res_blocks=2, vocab_size=512),
        "text": dict(vocab_size=512, text_len=32),
        "transformer": dict(dim=192, depth=6, heads=6, conv_kernel=5),
        "train": dict(kl_warmup=0.5, code_usage=1.0),
    },
}

# train vq's defaults under every preset's own train values (the study's: Adam at 2e-3 with 100
# warm-up steps, then cosine; its batch of 32 is TrainConfig's)
VQ_TRAIN: dict[str, Any] = dict(lr=2e-3, warmup=100)

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def preset(name: str) -> dict[str, dict[str, Any]]:
    """The preset called ``name``, as a fresh copy (changing it changes no other run's)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return {stage: dict(values) for stage, values in PRESETS[name].items()}


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
