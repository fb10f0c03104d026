"""VQ-VAE image tokenizer (van den Oord et al. 2017) in the layout of taming-transformers' VQGAN
(Esser et al. 2021: ``taming/models/vqgan.py``, ``modules/diffusionmodules/model.py``,
``modules/vqvae/quantize.py``), parametrised small enough to train on a CPU.

An image (B, C, S, S) in [0, 1] becomes a grid (B, G, G) of token ids, G = S / (patch * pool), and
back:

    encoder          area average by pool (pool 1: none), 2x - 1 -> PixelUnshuffle(patch): every
                     patch x patch square of pixels becomes
                     C * patch**2 channels of one cell -> 3x3 conv_in -> residual blocks ->
                     norm, swish, 3x3 conv_out; every convolution runs at G x G
    quant_conv       1x1 to the code dimension
    quantize         the nearest of K codes (hard), straight-through gradients; the codebook is an
                     EMA of the encoder outputs assigned to each code, not trained by gradients
    post_quant_conv  1x1 back, then the decoder mirrored: conv_in, residual blocks, norm, swish,
                     conv_out to C * (patch * pool)**2 channels, PixelShuffle(patch * pool),
                     (x + 1) / 2

``pool`` 2 is issue 17's 128 px tokenizer on the 64 px one's codes: the picture is averaged to
64 px and read by the unchanged 64 px encoder (the same codes, bit for bit), and a decoder trained
on those frozen codes (``decoder_loss``, ``dalle train vq --init --decoder-only``) draws each cell
as 8x8 pixels. Everything downstream sees a 128 px tokenizer with a 16x16 grid.

Training (``VQVAE.loss``) sees exactly the hard codes that ``encode`` gives the transformer. The
pixel loss (L1 + L2) weighs pixels near colour edges ``edge_weight`` times, and codes that no
encoder output chose since the last check are restarted at the batch's worst-reconstructed cells
(``EMAVectorQuantizer.restart_dead``). Both come from issue 17's tokenizer study: at equal
images seen they roughly double the scenes ceiling of the Gumbel dVAE, at a quarter of its CPU
cost per image, because no convolution runs above the grid's resolution.

Parameter names follow taming's (``encoder.conv_in``, ``encoder.down.0.block.1.norm1``,
``quantize.embedding.weight``, ``quant_conv``, ``post_quant_conv``, ``decoder.up.0.block.0``,
``decoder.conv_out``), so that the VQGANs of DALL·E Mega and ruDALL-E can later reuse these
modules once they learn taming's down- and upsampling levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VQConfig
from model.networks.image_tokenizer import ConfigFacts, check_image_batch, check_token_grid

# A pixel is "near a colour edge" when some channel varies by more than this within its 3x3
# neighbourhood: the scenes are flat colours, so anything above quantisation noise is an edge.
EDGE_THRESHOLD = 0.05
# taming normalises with GroupNorm(32, C, eps=1e-6); narrower test models use fewer groups
NORM_GROUPS = 32
NORM_EPS = 1e-6
# Laplace smoothing of the EMA cluster sizes (taming's EmbeddingEMA eps): no division by zero
CLUSTER_EPS = 1e-5


def check_config(config: VQConfig) -> None:
    """Refuse a configuration that cannot build a working tokenizer, saying which value is wrong."""
    if config.patch < 1:
        raise ValueError(f"VQ patch must be at least 1, got {config.patch}")
    if config.pool < 1:
        raise ValueError(f"VQ pool must be at least 1, got {config.pool}")
    factor = config.patch * config.pool
    if config.image_size < factor or config.image_size % factor:
        raise ValueError(
            f"VQ image_size {config.image_size} must be a positive multiple of patch * pool "
            f"= {config.patch} * {config.pool}"
        )
    if config.vocab_size < 2:
        raise ValueError(f"VQ vocab_size must be at least 2, got {config.vocab_size}")
    if min(config.width, config.z_channels, config.embed_dim, config.channels) < 1:
        raise ValueError("VQ width, z_channels, embed_dim and channels must be positive")
    if config.res_blocks < 0:
        raise ValueError(f"VQ res_blocks must be 0 or more, got {config.res_blocks}")
    if not 0 <= config.decay < 1:
        raise ValueError(f"VQ decay must be in [0, 1), got {config.decay}")


def normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(NORM_GROUPS, channels), channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """taming's ResnetBlock without its timestep input:
    x + conv2(swish(norm2(conv1(swish(norm1(x))))))."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.norm1 = normalize(n_in)
        self.conv1 = nn.Conv2d(n_in, n_out, 3, padding=1)
        self.norm2 = normalize(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class Level(nn.Module):
    """One resolution level, ``down.i`` / ``up.i`` in taming: its residual blocks (``block.j``).
    taming's levels also downsample or upsample; here the patch (un)shuffle does that."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(width, width) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x


class Encoder(nn.Module):
    """Pixels in [-1, 1] (B, C, S / pool, S / pool) -> features (B, z_channels, G, G): the
    picture's pooling happens before (``VQVAE.latent``), so pool 2 keeps pool 1's weights."""

    def __init__(self, config: VQConfig):
        super().__init__()
        check_config(config)
        self.patch = nn.PixelUnshuffle(config.patch)
        self.conv_in = nn.Conv2d(config.channels * config.patch**2, config.width, 3, padding=1)
        self.down = nn.ModuleList([Level(config.width, config.res_blocks)])
        self.norm_out = normalize(config.width)
        self.conv_out = nn.Conv2d(config.width, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.patch(x))  # (B, C * p * p, G, G) -> (B, width, G, G)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, G, G)


class Decoder(nn.Module):
    """Features (B, z_channels, G, G) -> pixels in about [-1, 1] (B, C, S, S), unclamped: each
    cell becomes factor x factor pixels, factor = patch * pool."""

    def __init__(self, config: VQConfig):
        super().__init__()
        check_config(config)
        self.conv_in = nn.Conv2d(config.z_channels, config.width, 3, padding=1)
        self.up = nn.ModuleList([Level(config.width, config.res_blocks)])
        self.norm_out = normalize(config.width)
        self.conv_out = nn.Conv2d(config.width, config.channels * config.factor**2, 3, padding=1)
        self.unpatch = nn.PixelShuffle(config.factor)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, width, G, G)
        for level in self.up:
            h = level(h)
        h = self.conv_out(F.silu(self.norm_out(h)))  # (B, C * f * f, G, G)
        return self.unpatch(h)  # (B, C, S, S)


class EmbeddingEMA(nn.Module):
    """The codebook, as taming's ``EmbeddingEMA``: ``weight`` (K, D) is ``embed_avg`` divided by
    the smoothed ``cluster_size``, both exponential moving averages of the encoder outputs
    assigned to each code. Parameters without gradients, so that they load by name."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        weight = torch.randn(vocab_size, dim)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(vocab_size), requires_grad=False)
        self.embed_avg = nn.Parameter(weight.clone(), requires_grad=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.weight)


def _all_reduce(*tensors: torch.Tensor) -> None:
    """Sum over data-parallel processes (torchrun), so every process keeps the same codebook."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for tensor in tensors:
            torch.distributed.all_reduce(tensor)


def _broadcast(*tensors: torch.Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for tensor in tensors:
            torch.distributed.broadcast(tensor, src=0)


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantisation with an EMA codebook (taming's ``EMAVectorQuantizer``).

    ``usage`` counts each code's hits since the last ``restart_dead``; it is a buffer so that a
    run resumed from a checkpoint restarts the same codes as an uninterrupted one.
    """

    def __init__(self, vocab_size: int, dim: int, decay: float, commitment: float):
        super().__init__()
        self.vocab_size = vocab_size
        self.dim = dim
        self.decay = decay
        self.commitment = commitment
        self.embedding = EmbeddingEMA(vocab_size, dim)
        self.register_buffer("usage", torch.zeros(vocab_size))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, G, G) -> (B, G, G): the id of each cell's nearest code (squared L2)."""
        b, d, g, h = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # (B*G*G, D)
        weight = self.embedding.weight.float()  # (K, D)
        # |z - e|^2 = |z|^2 - 2 z.e + |e|^2, without a (N, K, D) tensor
        distance = (
            flat.pow(2).sum(1, keepdim=True) - 2 * flat @ weight.t() + weight.pow(2).sum(1)
        )  # (N, K)
        return distance.argmin(dim=1).view(b, g, h)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, G, G) ids -> (B, D, G, G) code vectors."""
        return self.embedding(codes).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantised z with straight-through gradients, commitment loss, codes)."""
        with torch.autocast(z.device.type, enabled=False):  # distances and averages in fp32
            z = z.float()
            codes = self.codes(z.detach())
            quantised = self.lookup(codes)  # (B, D, G, G), from the codebook before this update
            commit = self.commitment * F.mse_loss(z, quantised)
            if self.training:
                self._ema_update(z.detach(), codes)
        return z + (quantised - z).detach(), commit, codes

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # (N, D)
        ids = codes.flatten()
        counts = torch.bincount(ids, minlength=self.vocab_size).float()  # (K,)
        sums = torch.zeros_like(self.embedding.embed_avg).index_add_(0, ids, flat)  # (K, D)
        _all_reduce(counts, sums)
        emb = self.embedding
        emb.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        emb.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = emb.cluster_size.sum()
        smoothed = (emb.cluster_size + CLUSTER_EPS) / (n + self.vocab_size * CLUSTER_EPS) * n
        emb.weight.copy_(emb.embed_avg / smoothed.unsqueeze(1))
        self.usage.add_(counts)

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, error: torch.Tensor) -> int:
        """Move every code that no encoder output chose since the last call onto the encoder
        outputs ``z`` (B, D, G, G) of the cells with the highest ``error`` (B, G, G), the worst
        first, and start counting again. Returns how many codes moved.

        A restarted code starts where the model is most wrong, so it is chosen at once; random
        outputs would mostly land in flat backgrounds that other codes already cover."""
        dead = (self.usage == 0).nonzero().flatten()
        self.usage.zero_()
        if len(dead) == 0:
            return 0
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, self.dim)  # (N, D)
        worst = error.detach().flatten().topk(min(len(dead), error.numel())).indices
        worst = worst.repeat(math.ceil(len(dead) / len(worst)))[: len(dead)]
        emb = self.embedding
        emb.weight[dead] = flat[worst]
        emb.embed_avg[dead] = flat[worst]
        emb.cluster_size[dead] = 1.0  # embed_avg / cluster_size is the new vector itself
        _broadcast(emb.weight, emb.embed_avg, emb.cluster_size)  # every process: rank 0's choice
        return len(dead)


def edge_weights(images: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, C, S, S) in [0, 1] -> (B, 1, S, S): ``weight`` where a colour edge lies within one
    pixel (some channel varies by more than EDGE_THRESHOLD in the 3x3 neighbourhood), else 1."""
    high = F.max_pool2d(images, 3, stride=1, padding=1)
    low = -F.max_pool2d(-images, 3, stride=1, padding=1)
    near_edge = (high - low).amax(dim=1, keepdim=True) > EDGE_THRESHOLD
    return 1 + (weight - 1) * near_edge.float()


class VQVAE(ConfigFacts, nn.Module):
    """The tokenizer: encoder, quantiser and decoder, with ``encode``/``decode`` as the dVAE's."""

    def __init__(self, config: VQConfig):
        super().__init__()
        check_config(config)
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = EMAVectorQuantizer(
            config.vocab_size, config.embed_dim, config.decay, config.commitment
        )
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = Decoder(config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> continuous codes (B, D, G, G) before quantisation."""
        what = "the patch" if self.config.pool == 1 else "patch * pool"
        check_image_batch(images, self.config.channels, self.factor, what)
        if self.config.pool > 1:  # in [0, 1], so pool 2 reads exactly what pool 1 reads
            images = F.avg_pool2d(images, self.config.pool)  # (B, C, S / pool, S / pool)
        return self.quant_conv(self.encoder(2 * images - 1))

    def pixels(self, quantised: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, D, G, G) -> pixels (B, C, S, S), about [-1, 1], unclamped."""
        return self.decoder(self.post_quant_conv(quantised))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> token ids (B, G, G): the nearest codes."""
        return self.quantize.codes(self.latent(images))

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, G, G) -> images (B, C, S, S) in [0, 1]."""
        check_token_grid(tokens, self.config.vocab_size)
        x = self.pixels(self.quantize.lookup(tokens.long())).float()
        return ((x + 1) / 2).clamp(0, 1)

    def loss(self, images: torch.Tensor, restart: bool = False) -> dict[str, torch.Tensor]:
        """Training objective on a batch (B, C, S, S) in [0, 1], through the hard codes.

        ``loss = rec + commit``: ``rec`` is the edge-weighted mean of |x - y| + (x - y)**2 per
        pixel value (x the reconstruction, y the image, both in [0, 1]); ``commit`` pulls the
        encoder towards its codes (the codebook itself follows its EMA in training mode). With
        ``restart``, dead codes move to the worst-reconstructed cells of this batch (after the
        step's reconstruction, so they serve from the next step on). Also returns ``mse``
        (unweighted, for PSNR), ``perplexity`` of the batch's codes and ``live_codes``, the codes
        chosen since the last restart check."""
        images = images.float()
        z = self.latent(images)  # (B, D, G, G)
        quantised, commit, codes = self.quantize(z)
        recon = (self.pixels(quantised).float() + 1) / 2  # (B, C, S, S)
        diff = recon - images
        per_pixel = edge_weights(images, self.config.edge_weight) * (diff.abs() + diff.pow(2))
        rec = per_pixel.mean()
        live = (self.quantize.usage > 0).sum()
        if restart:
            cell_error = F.avg_pool2d(per_pixel.detach().mean(1, keepdim=True), self.factor)
            self.quantize.restart_dead(z, cell_error.squeeze(1))  # (B, G, G) errors
        with torch.no_grad():
            counts = torch.bincount(codes.flatten(), minlength=self.vocab_size).float()
            p = counts / counts.sum()
            entropy = -(p[p > 0] * p[p > 0].log()).sum()
            mse = F.mse_loss(recon.clamp(0, 1), images)
        return {
            "loss": rec + commit,
            "rec": rec.detach(),
            "commit": commit.detach(),
            "mse": mse,
            "perplexity": entropy.exp(),
            "live_codes": live.float(),
        }

    def decoder_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training objective of the decoder alone (``--decoder-only``): the frozen encoder's hard
        codes of ``images`` (B, C, S, S) in [0, 1] drawn back at S, ``rec`` as in ``loss``. The
        encoder, quant_conv and codebook get no gradient and no EMA update, so every image keeps
        its tokens; ``post_quant_conv`` and the decoder learn."""
        images = images.float()
        with torch.no_grad():
            quantised = self.quantize.lookup(self.quantize.codes(self.latent(images)))
        recon = (self.pixels(quantised).float() + 1) / 2  # (B, C, S, S)
        diff = recon - images
        per_pixel = edge_weights(images, self.config.edge_weight) * (diff.abs() + diff.pow(2))
        rec = per_pixel.mean()
        with torch.no_grad():
            mse = F.mse_loss(recon.clamp(0, 1), images)
        return {"loss": rec, "rec": rec.detach(), "mse": mse}

    def freeze_tokens(self) -> None:
        """No gradient for the parts that choose the tokens (encoder, quant_conv, codebook)."""
        for part in (self.encoder, self.quant_conv, self.quantize):
            part.requires_grad_(False)


def token_part_problem(old: VQConfig, new: VQConfig) -> str | None:
    """Why a tokenizer of ``new`` could not read the same tokens as one of ``old`` (None when it
    can): the same encoder and codebook shapes on the same picture once pooled. Either pool may
    be the larger: a 64 px decoder can take a 128 px one's place again."""
    if new.image_size * old.pool != old.image_size * new.pool:
        return (
            f"image_size {new.image_size} / pool {new.pool} must equal the tokenizer's "
            f"{old.image_size} / {old.pool} (the encoder reads the picture pooled to that size)"
        )
    same = ("channels", "patch", "width", "res_blocks", "z_channels", "embed_dim", "vocab_size")
    changed = [name for name in same if getattr(old, name) != getattr(new, name)]
    if changed:
        return f"{', '.join(changed)} would change the encoder or codebook"
    return None


@torch.no_grad()
def pooled_from(vq: VQVAE, config: VQConfig) -> VQVAE:
    """A tokenizer of ``config`` (a larger ``pool`` and image_size, see ``token_part_problem``)
    with ``vq``'s encoder, quant_conv and codebook, so the same tokens, and ``vq``'s decoder
    whose ``conv_out`` is repeated so that it first draws ``vq``'s picture upscaled
    nearest-neighbour: decoder-only training starts from that rather than from noise."""
    check_config(config)
    problem = token_part_problem(vq.config, config)
    if not problem and config.pool % vq.config.pool:
        problem = f"pool {config.pool} is not a multiple of the tokenizer's pool {vq.config.pool}"
    if problem:
        raise ValueError(f"VQ pool {config.pool}: {problem}")
    out = VQVAE(config)
    state = vq.state_dict()
    f, ratio = vq.config.factor, config.pool // vq.config.pool
    big = f * ratio
    # PixelShuffle(r) puts channel c * r * r + i * r + j at pixel (i, j) of its cell: the new
    # channel for pixel (I, J) copies the old one for pixel (I // ratio, J // ratio)
    c = torch.arange(config.channels).view(-1, 1, 1)
    i = torch.arange(big).view(1, -1, 1) // ratio
    j = torch.arange(big).view(1, 1, -1) // ratio
    source = (c * f * f + i * f + j).flatten()  # (C * big * big,)
    for name in ("decoder.conv_out.weight", "decoder.conv_out.bias"):
        state[name] = state[name][source]
    out.load_state_dict(state)
    return out
