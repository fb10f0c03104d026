"""Discrete VAE of DALL·E (Ramesh et al. 2021, §2.1 and appendix A), in the layout of OpenAI's
released dVAE (``dall_e/encoder.py``, ``dall_e/decoder.py``) so that its weights load by name.

An image (B, C, S, S) in [0, 1] becomes a grid (B, G, G) of token ids, G = S / 2**(n_groups - 1),
and back:

    encoder   pixels mapped into (eps, 1 - eps) -> 7x7 conv -> groups of bottleneck blocks, every
              group but the last ending in a 2x max-pool -> relu -> 1x1 conv to K logits
    tokens    argmax of the logits (no noise): what the transformer is trained on and predicts
    decoder   one-hot (B, K, G, G) -> 1x1 conv -> groups from widest to narrowest, every group but
              the last ending in a nearest 2x upsample -> relu -> 1x1 conv to (mu, ln b) per channel

Training replaces the argmax by a gumbel-softmax relaxation and minimises the negative evidence
lower bound: a logit-Laplace likelihood on the pixels and a KL to the uniform prior over codes
(``DVAE.loss``). ``tau_at`` and ``beta_at`` are the paper's temperature and KL-weight schedules.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from model.config import DVAEConfig
from model.networks.image_tokenizer import ConfigFacts, check_image_batch, check_token_grid

logger = logging.getLogger(__name__)

# Paper, appendix A.2: tau is cosine-annealed 1 -> 1/16 over the first 150,000 of 3,000,000
# updates; the KL weight beta is cosine-warmed 0 -> 6.6 over the first 5,000 updates.
PAPER_TAU_START = 1.0
PAPER_TAU_END = 1 / 16
PAPER_BETA = 6.6
# The schedules below share one `total` (the tau-anneal length), so beta's warm-up keeps the
# paper's ratio of the two lengths: 5,000 / 150,000.
PAPER_BETA_WARMUP_FRACTION = 5_000 / 150_000

# The released dVAE was trained at 256x256; its convolutions do not record the resolution.
OPENAI_IMAGE_SIZE = 256


# -----------------------------------------------------------------------------------------------
# pixels and likelihood


def map_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """[0, 1] -> [eps, 1 - eps], as released: the logit-Laplace density lives on the open
    interval (0, 1), and keeping pixels away from its ends keeps logit(x) bounded."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Inverse of ``map_pixels``, clamped to [0, 1] as released (sigmoid outputs may fall outside
    [eps, 1 - eps])."""
    return torch.clamp((x - eps) / (1 - 2 * eps), 0, 1)


def logit_laplace_nll(y: torch.Tensor, mu: torch.Tensor, ln_b: torch.Tensor) -> torch.Tensor:
    """Elementwise -log f(y | mu, b) of the logit-Laplace density on y in (0, 1) (paper, A.3):

        f(y | mu, b) = 1 / (2 b y (1 - y)) * exp(-|logit(y) - mu| / b)

    i.e. logit(y) is Laplace(mu, b). The y (1 - y) Jacobian does not depend on the model; it is
    kept so that the value is a true negative log-density of the mapped pixel values.
    """
    return (
        math.log(2)
        + ln_b
        + torch.log(y)
        + torch.log1p(-y)
        + (torch.logit(y) - mu).abs() / ln_b.exp()
    )


# -----------------------------------------------------------------------------------------------
# schedules


def _cosine_ramp(progress: float) -> float:
    """0 -> 1 along half a cosine period; ``progress`` is clamped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return 0.5 * (1 - math.cos(math.pi * progress))


def tau_at(
    step: int, total: int, start: float = PAPER_TAU_START, end: float = PAPER_TAU_END
) -> float:
    """Gumbel-softmax temperature at ``step``: cosine from ``start`` to ``end`` over ``total``
    steps, then held at ``end``. Paper: 1 -> 1/16 over 150,000 updates. A high temperature early
    gives smooth gradients while the codebook forms; a low one late makes the relaxed one-hot
    close to the hard one-hot the decoder sees at inference."""
    progress = step / total if total > 0 else 1.0
    return start + (end - start) * _cosine_ramp(progress)


def beta_at(
    step: int,
    total: int,
    end: float = PAPER_BETA,
    warmup_fraction: float = PAPER_BETA_WARMUP_FRACTION,
) -> float:
    """KL weight at ``step``: cosine from 0 to ``end`` over ``warmup_fraction * total`` steps, then
    held. ``total`` is the same tau-anneal length given to ``tau_at``; the default fraction is the
    paper's 5,000 / 150,000. The paper found the large final weight 6.6 improves codebook usage;
    starting at 0 lets the encoder become informative before the prior pulls it to uniform."""
    warmup = warmup_fraction * total
    progress = step / warmup if warmup > 0 else 1.0
    return end * _cosine_ramp(progress)


# -----------------------------------------------------------------------------------------------
# modules, small to big


def check_config(config: DVAEConfig) -> None:
    """Refuse a configuration that cannot build a working dVAE, saying which value is wrong."""
    if config.n_groups < 1:
        raise ValueError(f"dVAE n_groups must be at least 1, got {config.n_groups}")
    if config.n_blk_per_group < 1:
        raise ValueError(f"dVAE n_blk_per_group must be at least 1, got {config.n_blk_per_group}")
    if config.n_hid < 4 or config.n_hid % 4:
        # every block's bottleneck is a quarter of its width, and group 1 is n_hid wide
        raise ValueError(f"dVAE n_hid must be a positive multiple of 4, got {config.n_hid}")
    if config.dec_n_hid < 0 or config.dec_n_hid % 4 or 0 < config.dec_n_hid < 4:
        raise ValueError(
            "dVAE dec_n_hid must be 0 (as n_hid) or a positive multiple of 4, "
            f"got {config.dec_n_hid}"
        )
    if config.dec_n_blk_per_group < 0:
        raise ValueError(
            f"dVAE dec_n_blk_per_group must be 0 (as n_blk_per_group) or positive, "
            f"got {config.dec_n_blk_per_group}"
        )
    if config.vocab_size < 2:
        raise ValueError(f"dVAE vocab_size must be at least 2, got {config.vocab_size}")
    if config.channels < 1 or config.n_init < 1:
        raise ValueError(
            f"dVAE channels and n_init must be positive, got {config.channels}, {config.n_init}"
        )
    if config.image_size < config.factor or config.image_size % config.factor:
        raise ValueError(
            f"dVAE image_size {config.image_size} must be a positive multiple of the downsampling "
            f"factor 2**(n_groups - 1) = {config.factor}"
        )
    if not 0 < config.logit_laplace_eps < 0.5:
        raise ValueError(f"logit_laplace_eps must be in (0, 0.5), got {config.logit_laplace_eps}")


class Conv2d(nn.Module):
    """Square "same" convolution whose parameters are named ``w`` and ``b``, as released.

    torch's ``nn.Conv2d`` calls them ``weight`` and ``bias``; keeping the released names lets
    ``load_state_dict`` take OpenAI's weights without a renaming table.
    """

    def __init__(self, n_in: int, n_out: int, kernel: int):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so that padding keeps the size, got {kernel}")
        self.kernel = kernel
        # fan-in scaled normal init, as released: unit-variance activations at the start
        self.w = nn.Parameter(
            torch.randn(n_out, n_in, kernel, kernel) / math.sqrt(n_in * kernel**2)
        )
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=self.kernel // 2)

    def extra_repr(self) -> str:
        n_out, n_in = self.w.shape[:2]
        return f"{n_in}, {n_out}, kernel={self.kernel}"


class _ResBlock(nn.Module):
    """Bottleneck residual block: x -> id_path(x) + post_gain * res_path(x).

    ``res_path`` is four (relu, conv) pairs through a bottleneck of a quarter of the output width.
    ``post_gain = 1 / n_layers**2`` (n_layers = blocks in the whole stack) scales the residual
    branch down so that the deep stack starts close to the identity and trains stably (paper §2.1
    and appendix A.1). ``id_path`` is a 1x1 conv only where the width changes.
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, n_hid, n_hid, n_hid, n_out)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, kernel in enumerate(kernels, start=1):
            layers[f"relu_{i}"] = nn.ReLU()  # not in place: id_path still needs x
            layers[f"conv_{i}"] = Conv2d(widths[i - 1], widths[i], kernel)
        self.res_path = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class EncoderBlock(_ResBlock):
    """Encoder block; residual convs 3x3, 3x3, 3x3, 1x1 as released."""

    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__(n_in, n_out, n_layers, kernels=(3, 3, 3, 1))


class DecoderBlock(_ResBlock):
    """Decoder block; residual convs 1x1, 3x3, 3x3, 3x3 as released."""

    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__(n_in, n_out, n_layers, kernels=(1, 3, 3, 3))


class Encoder(nn.Module):
    """Mapped pixels (B, C, S, S) -> code logits (B, K, G, G).

    ``blocks`` is ``input`` (7x7 conv to n_hid), ``group_1`` .. ``group_N`` (group g is
    2**(g-1) * n_hid wide and, except the last, ends in a 2x max-pool) and ``output`` (relu, 1x1
    conv to K). With N = 4 the parameter names and shapes are those of the released encoder.
    """

    def __init__(self, config: DVAEConfig):
        super().__init__()
        check_config(config)
        n_layers = config.n_groups * config.n_blk_per_group
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["input"] = Conv2d(config.channels, config.n_hid, 7)
        n_in = config.n_hid
        for g in range(1, config.n_groups + 1):
            width = 2 ** (g - 1) * config.n_hid
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(1, config.n_blk_per_group + 1):
                group[f"block_{i}"] = EncoderBlock(n_in, width, n_layers)
                n_in = width
            if g < config.n_groups:
                group["pool"] = nn.MaxPool2d(kernel_size=2)
            layers[f"group_{g}"] = nn.Sequential(group)
        layers["output"] = nn.Sequential(
            OrderedDict(relu=nn.ReLU(), conv=Conv2d(n_in, config.vocab_size, 1))
        )
        self.blocks = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)  # (B, C, S, S) -> (B, K, G, G)


class Decoder(nn.Module):
    """(Relaxed) one-hot codes (B, K, G, G) -> pixel statistics (B, 2C, S, S): mu then ln b.

    ``blocks`` is ``input`` (1x1 conv K -> n_init), ``group_1`` .. ``group_N`` from widest
    (2**(N-1) * n_hid) to narrowest (n_hid), every group but the last ending in a nearest 2x
    upsample, and ``output`` (relu, 1x1 conv to 2C). With N = 4 the parameter names and shapes are
    those of the released decoder.
    """

    def __init__(self, config: DVAEConfig):
        super().__init__()
        check_config(config)
        n_layers = config.n_groups * config.decoder_blocks
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["input"] = Conv2d(config.vocab_size, config.n_init, 1)
        n_in = config.n_init
        for g in range(1, config.n_groups + 1):
            width = 2 ** (config.n_groups - g) * config.decoder_n_hid
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(1, config.decoder_blocks + 1):
                group[f"block_{i}"] = DecoderBlock(n_in, width, n_layers)
                n_in = width
            if g < config.n_groups:
                group["upsample"] = nn.Upsample(scale_factor=2, mode="nearest")
            layers[f"group_{g}"] = nn.Sequential(group)
        layers["output"] = nn.Sequential(
            OrderedDict(relu=nn.ReLU(), conv=Conv2d(n_in, 2 * config.channels, 1))
        )
        self.blocks = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)  # (B, K, G, G) -> (B, 2C, S, S)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same as ``forward(one_hot(tokens))`` without building the (B, K, G, G) one-hot: a 1x1
        conv of a one-hot input is a column lookup of its weight."""
        conv = self.blocks.input
        table = conv.w[:, :, 0, 0].t()  # (K, n_init)
        h = F.embedding(tokens, table) + conv.b  # (B, G, G, n_init)
        h = h.permute(0, 3, 1, 2)  # (B, n_init, G, G)
        return self.blocks[1:](h)  # (B, 2C, S, S)


def _group_layout(state_dict: Mapping[str, torch.Tensor], which: str) -> tuple[int, int]:
    """(n_groups, n_blk_per_group) read from ``blocks.group_g.block_k.*`` keys, checked to form
    groups 1..N, each with blocks 1..k."""
    pattern = re.compile(r"^blocks\.group_(\d+)\.block_(\d+)\.")
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        match = pattern.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    if not blocks:
        raise ValueError(f"{which} state dict has no 'blocks.group_<g>.block_<k>.' parameters")
    n_groups = max(blocks)
    n_blk = max(blocks[1]) if 1 in blocks else 0
    expected = set(range(1, n_blk + 1))
    if set(blocks) != set(range(1, n_groups + 1)) or any(b != expected for b in blocks.values()):
        layout = {g: sorted(b) for g, b in sorted(blocks.items())}
        raise ValueError(
            f"{which} state dict groups/blocks {layout} are not groups 1..N with blocks 1..k each"
        )
    return n_groups, n_blk


def config_from_openai(
    encoder_state_dict: Mapping[str, torch.Tensor],
    decoder_state_dict: Mapping[str, torch.Tensor],
    image_size: int = OPENAI_IMAGE_SIZE,
) -> DVAEConfig:
    """The ``DVAEConfig`` of an encoder/decoder pair in the released naming, read from key names
    and tensor shapes. ``image_size`` is not stored in convolution weights, so it is given (the
    released model was trained at 256)."""
    required = ("blocks.input.w", "blocks.output.conv.w")
    for which, sd in (("encoder", encoder_state_dict), ("decoder", decoder_state_dict)):
        missing = [k for k in required if k not in sd]
        if missing:
            raise ValueError(f"{which} state dict lacks {missing}; is it in the released naming?")
    enc_in = encoder_state_dict["blocks.input.w"].shape  # (n_hid, C, 7, 7)
    enc_out = encoder_state_dict["blocks.output.conv.w"].shape  # (K, top width, 1, 1)
    dec_in = decoder_state_dict["blocks.input.w"].shape  # (n_init, K, 1, 1)
    dec_out = decoder_state_dict["blocks.output.conv.w"].shape  # (2C, n_hid, 1, 1)
    n_hid, channels, vocab = int(enc_in[0]), int(enc_in[1]), int(enc_out[0])
    n_groups, n_blk = _group_layout(encoder_state_dict, "encoder")
    if _group_layout(decoder_state_dict, "decoder") != (n_groups, n_blk):
        raise ValueError(
            f"decoder groups/blocks {_group_layout(decoder_state_dict, 'decoder')} differ from "
            f"the encoder's {(n_groups, n_blk)}"
        )
    if int(dec_in[1]) != vocab:
        raise ValueError(f"decoder reads {int(dec_in[1])} codes but the encoder emits {vocab}")
    if tuple(int(d) for d in dec_out[:2]) != (2 * channels, n_hid):
        raise ValueError(
            f"decoder output conv is {tuple(dec_out[:2])} (out, in); expected (2 * {channels}, "
            f"{n_hid}) for {channels} channels and n_hid {n_hid}"
        )
    return DVAEConfig(
        image_size=image_size,
        channels=channels,
        n_groups=n_groups,
        n_hid=n_hid,
        n_blk_per_group=n_blk,
        vocab_size=vocab,
        n_init=int(dec_in[0]),
    )


class DVAE(ConfigFacts, nn.Module):
    """Encoder and decoder with the pixel mapping, token conversion and training loss."""

    def __init__(self, config: DVAEConfig):
        super().__init__()
        check_config(config)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @classmethod
    def load_openai(
        cls,
        encoder_state_dict: Mapping[str, torch.Tensor],
        decoder_state_dict: Mapping[str, torch.Tensor],
        image_size: int = OPENAI_IMAGE_SIZE,
    ) -> DVAE:
        """A dVAE holding OpenAI's released weights (or any pair in that naming).

        The model's parameters are the given tensors themselves (no copy), on their device and
        in their dtype; clone the state dicts first if the originals must stay untouched.
        """
        config = config_from_openai(encoder_state_dict, decoder_state_dict, image_size)
        # built on the meta device and filled by assignment: no random init of tensors that are
        # overwritten at once (the released pair has ~100M parameters)
        with torch.device("meta"):
            model = cls(config)
        model.encoder.load_state_dict(encoder_state_dict, assign=True)
        model.decoder.load_state_dict(decoder_state_dict, assign=True)
        logger.info("loaded released-layout dVAE weights: %s", config)
        return model

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> code logits (B, K, G, G)."""
        check_image_batch(
            images, self.config.channels, self.config.factor, "the downsampling factor"
        )
        return self.encoder(map_pixels(images, self.config.logit_laplace_eps))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> token ids (B, G, G): argmax, no noise (paper §2.1)."""
        return self.logits(images).argmax(dim=1)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, G, G) -> images (B, C, S, S) in [0, 1]: the decoder's mu, squashed by a
        sigmoid and unmapped, as in the released usage notebook."""
        check_token_grid(tokens, self.config.vocab_size)
        stats = self.decoder.forward_tokens(tokens.long()).float()  # (B, 2C, S, S)
        mu = stats[:, : self.config.channels]  # (B, C, S, S), logit space
        return unmap_pixels(torch.sigmoid(mu), self.config.logit_laplace_eps)

    def freeze_tokens(self) -> None:
        """No gradient for the part that chooses the tokens (the encoder): decoder-only training,
        as ``VQVAE.freeze_tokens``."""
        self.encoder.requires_grad_(False)

    def decoder_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoder fine-tuning on the encoder's own hard codes: NLL of ``images`` (B, C, S, S) in
        [0, 1] given ``decode``'s input, the argmax tokens.

        The ELB trains the decoder on gumbel-relaxed mixtures of codes, but at sampling time it
        only ever sees one-hot codes. With the encoder (and so every token grid) held fixed, this
        closes that gap without touching what a transformer trained on those tokens has learned.
        Gradients reach the decoder only. Returns ``loss`` (= ``nll``) and ``mse`` as ``loss``.
        """
        c, eps = self.config.channels, self.config.logit_laplace_eps
        with torch.no_grad():
            tokens = self.logits(images).argmax(dim=1)  # (B, G, G)
        stats = self.decoder.forward_tokens(tokens).float()  # (B, 2C, S, S)
        mu, ln_b = stats[:, :c], stats[:, c:]
        nll = logit_laplace_nll(map_pixels(images.float(), eps), mu, ln_b).mean()
        with torch.no_grad():
            mse = F.mse_loss(unmap_pixels(torch.sigmoid(mu), eps), images.float())
        return {"loss": nll, "nll": nll, "mse": mse}

    def loss(
        self, images: torch.Tensor, tau: float, beta: float, usage_weight: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """Negative relaxed ELB of a batch of images (B, C, S, S) in [0, 1].

        Returns scalars: ``nll`` (logit-Laplace negative log-likelihood per pixel value, on
        pixels mapped into (eps, 1 - eps)), ``kl`` (KL of softmax(logits) to the uniform prior
        per latent position, in nats), ``mse`` (of the mu reconstruction in [0, 1], for PSNR; no
        gradient) and ``loss`` to minimise.

        Normalisation follows the paper (appendix A.2): the ELB sums the NLL over all C * S * S
        pixel values and the KL over all G * G positions, and the sum is divided by C * S * S.
        So ``loss = nll + beta * (G * G) / (C * S * S) * kl``; at 256x256x3 with a 32x32 grid
        the KL weight is beta / 192.

        ``usage_weight`` adds ``usage_weight * usage``, where ``usage`` is the KL of the batch's
        average code distribution to uniform (wav2vec 2.0's "diversity" term for gumbel
        codebooks). The per-position KL above cannot stop every position from choosing among
        the same few codes; this term can, and without it a small dVAE trained for a few
        thousand steps collapses onto a few dozen codes. 0 is the paper's objective.
        ``perplexity`` (exp of the average distribution's entropy) reports how many codes the
        batch spreads over.
        """
        c, eps = self.config.channels, self.config.logit_laplace_eps
        logits = self.logits(images).float()  # (B, K, G, G)
        # soft relaxation (not straight-through): the decoder sees a convex mix of codes
        relaxed = F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)  # (B, K, G, G)
        stats = self.decoder(relaxed).float()  # (B, 2C, S, S)
        mu, ln_b = stats[:, :c], stats[:, c:]  # (B, C, S, S) each
        nll = logit_laplace_nll(map_pixels(images.float(), eps), mu, ln_b).mean()

        log_q = F.log_softmax(logits, dim=1)  # (B, K, G, G)
        # KL(q || uniform) = sum_k q log q + log K
        kl = (log_q.exp() * (log_q + math.log(self.config.vocab_size))).sum(dim=1).mean()

        average = log_q.exp().mean(dim=(0, 2, 3))  # (K,)
        entropy = -(average * torch.log(average.clamp_min(1e-12))).sum()
        usage = math.log(self.config.vocab_size) - entropy

        positions = logits.shape[2] * logits.shape[3]
        pixel_values = images.shape[1] * images.shape[2] * images.shape[3]
        loss = nll + beta * positions / pixel_values * kl + usage_weight * usage

        with torch.no_grad():
            reconstruction = unmap_pixels(torch.sigmoid(mu), eps)
            mse = F.mse_loss(reconstruction, images.float())
        return {
            "loss": loss,
            "nll": nll,
            "kl": kl,
            "usage": usage.detach(),
            "perplexity": entropy.detach().exp(),
            "mse": mse,
        }
