"""The product's own model family: the dVAE and VQ image tokenizers, the BPE caption tokenizer, the
decoder-only transformer and the reranker (``model/networks/dvae.py``, ``vq.py``, ``text.py``,
``transformer.py``, ``rerank.py``). A bundle stores them without a ``kind`` key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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
    # training only (the weights do not depend on them; a resumed run needs the same values): the
    # ELB's beta and the gumbel-softmax temperature tau, and the batch code-usage term
    kl_weight: float = 6.6  # beta's final value (paper's)
    kl_warmup: float = 5_000 / 150_000  # beta's warm-up as a fraction of the steps (paper's)
    tau_start: float = 1.0  # tau follows a cosine from start to end
    tau_end: float = 1 / 16
    code_usage: float = 0.0  # weight of the batch code-usage term (DVAE.loss); 0 = paper

    @property
    def decoder_n_hid(self) -> int:
        return self.dec_n_hid or self.n_hid

    @property
    def decoder_blocks(self) -> int:
        return self.dec_n_blk_per_group or self.n_blk_per_group

    def architecture(self) -> DVAEConfig:
        """This config with the training-only fields at their defaults: equal for dVAEs of the
        same shapes."""
        return _training_defaults(self, DVAE_TRAINING)

    def encoder_config(self) -> DVAEConfig:
        """This config with the decoder-only and training-only fields cleared: equal for dVAEs
        whose encoders (and so tokens) can be the same."""
        return dataclasses.replace(self.architecture(), dec_n_hid=0, dec_n_blk_per_group=0)

    @property
    def factor(self) -> int:
        return 2 ** (self.n_groups - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.factor


@dataclass
class VQConfig:
    """VQ-VAE tokenizer in the layout of taming-transformers' VQGAN (``model/networks/vq.py``).

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
        return dataclasses.replace(
            _training_defaults(self, VQ_TRAINING), image_size=self.image_size // self.pool, pool=1
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
    # training only
    bpe_dropout: float = 0.1  # the paper's BPE dropout
    caption_dropout: float = 0.1  # an empty caption this often, for classifier-free guidance


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


# the fields of each config that only training reads: a run's recipe, not the model's shape
DVAE_TRAINING = ("kl_weight", "kl_warmup", "tau_start", "tau_end", "code_usage")
VQ_TRAINING = ("decay", "commitment", "edge_weight", "restart_every")
TEXT_TRAINING = ("bpe_dropout", "caption_dropout")


def _training_defaults(config, names: tuple[str, ...]):
    """``config`` with the fields ``names`` at their class defaults."""
    defaults = type(config)()
    return dataclasses.replace(config, **{name: getattr(defaults, name) for name in names})
