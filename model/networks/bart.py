"""DALL·E Mega and Mini: min-dalle's BART encoder-decoder behind the sampler's stream interface.

min-dalle 0.4.11 (kuprel/min-dalle, ``models/dalle_bart_encoder.py`` and
``dalle_bart_decoder.py``) is a BART-style pair: an encoder reads the 64 caption tokens
(bidirectional, padding id 1 masked out of every attention), and a decoder writes the 256 image
tokens of a 16x16 raster one at a time (full causal self-attention, cross-attention to the
encoder's states). Every sublayer is sandwich-normed (``x + LN_post(f(LN_pre x))``), the
feed-forward is a GLU with exact (erf) GELU, and no projection has a bias. The modules below keep
min-dalle's state-dict names, so its ``encoder*.pt`` / ``decoder*.pt`` load as they are.

``BartDalle`` reads the same stream as ``model.networks.transformer.Transformer``:

    position t < text_len         caption token t (BART ids, padded with id 1)
    position text_len + s         image slot s: slot 0 holds the start token, slot s > 0 the
                                  token of cell s - 1; the output at slot s predicts cell s

so ``model.inference.sampling.sample_tokens`` drives it unchanged. A chunk that covers the caption
runs the encoder once and keeps, in the cache, its text mask and every decoder layer's
cross-attention keys and values (min-dalle recomputes those at every step; they never change). Later
chunks run the decoder only: a chunk of several slots prefills them in one call (causal within the
chunk), and a one-slot step attends over all ``grid**2`` cached slots with a mask, as min-dalle
does, so its shapes are the same at every position.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BartConfig
from model.networks.transformer import Logits

log = logging.getLogger(__name__)


MEGA = BartConfig()
MINI = BartConfig(
    text_vocab=50264,
    image_rows=16385,
    embed_dim=1024,
    heads=16,
    glu_dim=2730,
    encoder_layers=12,
    decoder_layers=12,
)


class GLU(nn.Module):
    """fc2(LN1(gelu(fc0 z) * fc1 z)) with z = LN0 x; exact (erf) GELU, no biases."""

    def __init__(self, config: BartConfig):
        super().__init__()
        self.ln0 = nn.LayerNorm(config.embed_dim)
        self.ln1 = nn.LayerNorm(config.glu_dim)
        self.fc0 = nn.Linear(config.embed_dim, config.glu_dim, bias=False)
        self.fc1 = nn.Linear(config.embed_dim, config.glu_dim, bias=False)
        self.fc2 = nn.Linear(config.glu_dim, config.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.ln0(x)
        return self.fc2(self.ln1(F.gelu(self.fc0(z)) * self.fc1(z)))


class Attention(nn.Module):
    """Multi-head attention without biases; keys and values come in already split into heads,
    from the same stream (self-attention, possibly cached) or the encoder (cross-attention)."""

    def __init__(self, config: BartConfig):
        super().__init__()
        self.heads = config.heads
        dim = config.embed_dim
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k_proj(source)), self.split(self.v_proj(source))

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, T, C) queries; k, v (B, nh, S, hs); mask broadcastable to (B, nh, T, S), True
        where a query may look. min-dalle adds -1e12 where it may not; after softmax both are 0.
        """
        B, T, C = x.shape
        q = self.split(self.q_proj(x))  # (B, nh, T, hs)
        # scores scaled by 1/sqrt(hs), as min-dalle's queries are
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class EncoderLayer(nn.Module):
    def __init__(self, config: BartConfig):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.self_attn = Attention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.glu = GLU(config)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        h = self.pre_self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)  # (B, nh, text_len, hs)
        x = x + self.self_attn_layer_norm(self.self_attn(h, k, v, text_mask))
        return x + self.glu(x)


class DecoderLayer(nn.Module):
    def __init__(self, config: BartConfig):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.self_attn = Attention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.pre_encoder_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.encoder_attn = Attention(config)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.glu = GLU(config)

    def forward(
        self,
        x: torch.Tensor,
        slot: int,
        causal: torch.Tensor | None,
        cross: torch.Tensor,
        text_mask: torch.Tensor,
        cache: torch.Tensor | None,
    ) -> torch.Tensor:
        """Slots [slot, slot + T) of x (B, T, C); with a cache, earlier slots' keys come from it.

        cross: (2, B, nh, text_len, hs) the encoder states' keys and values for this layer;
        cache: (2, B, nh, image_len, hs) this layer's self-attention keys and values, or None.
        """
        T = x.shape[1]
        h = self.pre_self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)  # (B, nh, T, hs)
        if cache is not None:
            cache[0, :, :, slot : slot + T] = k
            cache[1, :, :, slot : slot + T] = v
            k, v = cache[0, :, :, : slot + T], cache[1, :, :, : slot + T]  # (B, nh, slot+T, hs)
        x = x + self.self_attn_layer_norm(self.self_attn(h, k, v, causal))
        return self.attend_text_and_mix(x, cross, text_mask)

    def decode(
        self,
        x: torch.Tensor,
        slot: torch.Tensor,
        visible: torch.Tensor,
        cross: torch.Tensor,
        text_mask: torch.Tensor,
        cache: torch.Tensor,
    ) -> torch.Tensor:
        """One slot (a (1,) tensor): write its key and value, attend over every cached slot with
        ``visible`` (1, 1, 1, image_len) masking the ones after it. Shape-static."""
        h = self.pre_self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)  # (B, nh, 1, hs)
        cache.index_copy_(3, slot, torch.stack([k, v]).to(cache.dtype))  # k and v, one copy
        x = x + self.self_attn_layer_norm(self.self_attn(h, cache[0], cache[1], visible))
        return self.attend_text_and_mix(x, cross, text_mask)

    def attend_text_and_mix(
        self, x: torch.Tensor, cross: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        h = self.pre_encoder_attn_layer_norm(x)
        x = x + self.encoder_attn_layer_norm(self.encoder_attn(h, cross[0], cross[1], text_mask))
        return x + self.glu(x)


class BartCache:
    """Everything a decoder step needs besides its own input, allocated once, written in place.

    ``layers[i]``: decoder layer i's self-attention keys and values, (2, B, nh, image_len, hs);
    ``cross[i]``: its cross-attention keys and values of the encoded caption,
    (2, B, nh, text_len, hs); ``text_mask``: (B, 1, 1, text_len), True on caption tokens.
    The cross entries and the mask are written once, by the chunk that covers the caption.
    """

    def __init__(self, config: BartConfig, batch: int, device, dtype=torch.float32):
        hs, nh = config.head_dim, config.heads
        self.layers = [
            torch.zeros((2, batch, nh, config.image_len, hs), device=device, dtype=dtype)
            for _ in range(config.decoder_layers)
        ]
        self.cross = [
            torch.zeros((2, batch, nh, config.text_len, hs), device=device, dtype=dtype)
            for _ in range(config.decoder_layers)
        ]
        self.text_mask = torch.zeros(
            (batch, 1, 1, config.text_len), device=device, dtype=torch.bool
        )
        self.batch = batch
        self.encoded = False  # whether cross and text_mask hold a caption
        self.length = 0  # stream positions [0, length) have been run


class BartEncoder(nn.Module):
    """min-dalle's ``DalleBartEncoder``: (B, text_len) ids -> (B, text_len, C) states."""

    def __init__(self, config: BartConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.text_vocab, config.embed_dim)
        self.embed_positions = nn.Embedding(config.text_len, config.embed_dim)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layernorm_embedding = nn.LayerNorm(config.embed_dim)
        self.final_ln = nn.LayerNorm(config.embed_dim)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(text.shape[1], device=text.device)
        x = self.layernorm_embedding(self.embed_tokens(text) + self.embed_positions(positions))
        for layer in self.layers:
            x = layer(x, text_mask)
        return self.final_ln(x)


class BartDecoder(nn.Module):
    """min-dalle's ``DalleBartDecoder``: image slots -> logits over its image rows."""

    def __init__(self, config: BartConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.image_rows, config.embed_dim)
        self.embed_positions = nn.Embedding(config.image_len, config.embed_dim)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.layernorm_embedding = nn.LayerNorm(config.embed_dim)
        self.final_ln = nn.LayerNorm(config.embed_dim)
        self.lm_head = nn.Linear(config.embed_dim, config.image_rows, bias=False)

    def embed(self, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(B, T) ids at image slots ``slots`` (T,) -> (B, T, C)."""
        return self.layernorm_embedding(self.embed_tokens(ids) + self.embed_positions(slots))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        # the rows past the codebook (1 in Mini, 32 in Mega) are never sampled
        return self.lm_head(self.final_ln(x))[..., : self.config.image_vocab]

    def forward(
        self,
        ids: torch.Tensor,
        slot: int,
        cross: list[torch.Tensor],
        text_mask: torch.Tensor,
        cache: BartCache | None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Slots [slot, slot + T) given their ids (B, T) -> (B, T or 1, image_vocab) logits."""
        T = ids.shape[1]
        x = self.embed(ids, torch.arange(slot, slot + T, device=ids.device))
        keys = slot + T if cache is not None else T  # without a cache, slot is 0
        query = torch.arange(slot, slot + T, device=ids.device).view(T, 1)
        causal = torch.arange(keys, device=ids.device).view(1, keys) <= query  # (T, keys)
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x = layer(x, slot, causal, cross[i], text_mask, layer_cache)
        return self.head(x[:, -1:] if last_only else x)


class BartDalle(nn.Module):
    """DALL·E Mega / Mini with ``Transformer``'s sampler interface (see the module docstring).

    ``forward`` returns ``Logits(text=None, image=...)``: an encoder-decoder has no text head.
    """

    # 2.6B parameters (Mega) cannot be held twice: model.inference.sampling.prepared converts this
    # model to bf16 or int8 in place (model.networks.precision.convert_in_place) instead of copying
    # it
    converts_in_place = True

    def __init__(self, config: BartConfig):
        super().__init__()
        self.config = config
        # fp32, bf16, fp16 or int8: model.bundle.load sets the stored dtype's, and
        # model.inference.sampling.prepared converts the model itself (see converts_in_place)
        self.precision = "fp32"
        self.start_of_image = config.start_token
        self.encoder = BartEncoder(config)
        self.decoder = BartDecoder(config)

    @property
    def ln_f(self) -> nn.LayerNorm:
        """The decoder's final LayerNorm: where the sampler reads the model's device and dtype."""
        return self.decoder.final_ln

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> BartCache:
        param = self.ln_f.weight  # stays floating point when linears are quantized
        return BartCache(self.config, batch, param.device, dtype or param.dtype)

    def stream(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, text_len) caption ids and (B, N) cell tokens -> (B, seq_len) input stream."""
        start = torch.full_like(image[:, :1], self.start_of_image)
        return torch.cat([text, start, image[:, :-1]], dim=1)

    def encode(self, text: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, text_len) ids -> every decoder layer's cross keys and values
        (2, B, nh, text_len, hs) and the text mask (B, 1, 1, text_len)."""
        text_mask = (text != self.config.pad_id).view(text.shape[0], 1, 1, -1)
        states = self.encoder(text, text_mask)  # (B, text_len, C)
        cross = [
            torch.stack(layer.encoder_attn.keys_values(states)) for layer in self.decoder.layers
        ]
        return cross, text_mask

    def forward(
        self,
        ids: torch.Tensor,
        start: int = 0,
        cache: BartCache | None = None,
        last_only: bool = False,
    ) -> Logits:
        """Run stream positions [start, start + T); with a cache, earlier positions come from it.

        A chunk that starts in the caption must start at 0 and cover all of it (the encoder is
        bidirectional). ``last_only`` computes logits for the final position only.
        """
        cfg = self.config
        B, T = ids.shape
        end = start + T
        if end > cfg.seq_len:
            raise ValueError(f"positions up to {end} exceed seq_len {cfg.seq_len}")
        if cache is None and start != 0:
            raise ValueError("a chunk that starts after position 0 needs a cache")
        if cache is not None and cache.batch != B:
            raise ValueError(f"the cache holds {cache.batch} rows but the chunk has {B}")
        if start < cfg.text_len:
            if start != 0 or end < cfg.text_len:
                raise ValueError(
                    f"the encoder reads the whole caption at once: a chunk that starts in it must "
                    f"cover positions [0, {cfg.text_len}), got [{start}, {end})"
                )
            cross, text_mask = self.encode(ids[:, : cfg.text_len])
            if cache is not None:
                for stored, new in zip(cache.cross, cross, strict=True):
                    stored.copy_(new)
                cache.text_mask.copy_(text_mask)
                cache.encoded = True
            ids = ids[:, cfg.text_len :]
        elif not cache.encoded:
            raise ValueError(f"the caption is not encoded yet: run positions [0, {cfg.text_len})")
        else:
            cross, text_mask = cache.cross, cache.text_mask
        if cache is not None:
            cache.length = end
        if ids.shape[1] == 0:
            return Logits(text=None, image=None)
        slot = max(start - cfg.text_len, 0)
        if cache is not None and T == 1:  # one image slot: the shape-static step
            pos = torch.tensor([start], device=ids.device)
            return Logits(text=None, image=self.decode_step(ids, pos, cache).unsqueeze(1))
        image = self.decoder(ids, slot, cross, text_mask, cache, last_only)
        return Logits(text=None, image=image)

    def decode_step(self, ids: torch.Tensor, pos: torch.Tensor, cache: BartCache) -> torch.Tensor:
        """One image slot with a cache: (B, 1) ids at stream position ``pos`` (a (1,) tensor) ->
        (B, image_vocab) logits. Every shape is the same at every position (the slot attends over
        all image_len cached slots, the later ones masked), as ``Transformer.decode_step``; the
        sampler takes this path for every one-slot step."""
        decoder = self.decoder
        slot = pos - self.config.text_len  # (1,)
        x = decoder.embed(ids, slot)  # (B, 1, C)
        slots = torch.arange(self.config.image_len, device=ids.device)
        visible = (slots <= slot).view(1, 1, 1, -1)  # (1, 1, 1, image_len)
        for i, layer in enumerate(decoder.layers):
            x = layer.decode(x, slot, visible, cache.cross[i], cache.text_mask, cache.layers[i])
        return decoder.head(x)[:, 0]

    # -- min-dalle's files ----------------------------------------------------------------------

    def load_min_dalle(
        self, encoder: Mapping[str, torch.Tensor], decoder: Mapping[str, torch.Tensor]
    ) -> None:
        """Load min-dalle's encoder and decoder state dicts (see ``load_min_dalle_half``)."""
        self.load_min_dalle_half("encoder", encoder)
        self.load_min_dalle_half("decoder", decoder)

    def load_min_dalle_half(self, name: str, state: Mapping[str, torch.Tensor]) -> None:
        """Load min-dalle's ``name`` ("encoder" or "decoder") state dict, checked first (see
        ``check_state_dict``); keys min-dalle's modules do not have are ignored with a warning,
        as min-dalle loads with ``strict=False``. A model built on the meta device takes the
        tensors themselves, converted to its dtype (no second copy in memory); any other copies
        them into its own. One half at a time lets a caller free one file before reading the
        next (``model.importers.dalle_mega``)."""
        module = {"encoder": self.encoder, "decoder": self.decoder}[name]
        extra = check_state_dict(module, state, f"the {name} state dict", allow_extra=True)
        if extra:
            log.warning("ignoring %d unknown %s key(s): %s", len(extra), name, ", ".join(extra))
        expected = module.state_dict()
        kept = {k: state[k].to(expected[k].dtype) for k in expected}
        # a meta-built model takes the tensors themselves; a real one copies into its own
        module.load_state_dict(kept, strict=True, assign=self.ln_f.weight.is_meta)


def check_state_dict(
    module: nn.Module, state: Mapping[str, Any], source: str, allow_extra: bool = False
) -> list[str]:
    """Check ``state`` against ``module``'s parameters; return the keys ``module`` lacks.

    Raises a one-line ValueError naming the first missing key, the first value that is not a
    floating-point tensor of the module's shape, or (unless ``allow_extra``) the first unknown key.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} is a {type(state).__name__}, not a mapping of names to tensors")
    expected = module.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise ValueError(f"{source} lacks {name!r} (expected shape {tuple(tensor.shape)})")
        value = state[name]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{source}: {name!r} is {kind}, expected a floating-point tensor")
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(
                f"{source}: {name!r} has shape {tuple(value.shape)}, expected {tuple(tensor.shape)}"
            )
    extra = sorted(str(name) for name in set(state) - set(expected))
    if extra and not allow_extra:
        raise ValueError(f"{source} has unknown key {extra[0]!r} ({len(extra)} unknown in all)")
    return extra


def weights_only_detail(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words: the global a pickle
    names, the pickle operation it does not allow, or a damaged zip. Never torch's advice to load
    with ``weights_only=False``, which would run whatever the file holds."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line]
    if named:
        return f"it names code: {named[0]}"
    if "WeightsUnpickler error:" in str(error):
        after = str(error).split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        cause = after[0].strip().rstrip(".") if after else "an unsupported pickle"
        return f"{cause[:1].lower()}{cause[1:]}: not a torch file, or one holding more than weights"
    if lines and "zip archive" in lines[0]:
        return "a damaged or truncated torch zip archive"
    if lines and lines[0].startswith("Weights only load failed"):
        return "refused by torch's weights-only loader"
    return lines[0] if lines else type(error).__name__


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A min-dalle ``.pt`` file, read without running pickled code (``weights_only``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as error:  # a zip, pickle or allowlist error: one line for the user
        detail = weights_only_detail(error)
        raise ValueError(f"{path}: not a weights-only torch state dict ({detail})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


def from_min_dalle(
    encoder_path: str | os.PathLike,
    decoder_path: str | os.PathLike,
    config: BartConfig,
    dtype: torch.dtype = torch.float32,
) -> BartDalle:
    """A ``BartDalle`` from min-dalle's ``encoder*.pt`` and ``decoder*.pt`` in ``dtype``.

    Built on the meta device and filled from the files' tensors, so Mega (2.6B parameters) needs
    its weights in memory once, not twice.
    """
    with torch.device("meta"):
        model = BartDalle(config).to(dtype)
    encoder, decoder = read_state_dict(encoder_path), read_state_dict(decoder_path)
    try:
        model.load_min_dalle(encoder, decoder)
    except ValueError as error:
        raise ValueError(f"{encoder_path} / {decoder_path}: {error}") from None
    return model.eval()
