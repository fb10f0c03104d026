"""Decoder-only transformer with DALL·E's sparse attention and a preallocated KV cache.

The model reads one stream of ``seq_len = text_len + grid**2`` positions:

    position t < text_len         caption BPE token t (padding ids are per position)
    position text_len + s         image slot s: slot 0 holds start-of-image, slot s > 0 holds the
                                  token of cell s - 1; the output at slot s predicts cell s

so slot s carries the row and column embedding of the cell it predicts. Image slots see every text
position; text is causal; image slots see each other through the paper's row, column and
convolutional masks (Ramesh et al. 2021, appendix B.1), all defined on slots in raster order.

``layout="rudalle"`` (``RudalleTransformer``) is ruDALL-E v3's convention, kept under the same
sampler contract (research/importers.md 2.3-2.4): slot 0 is ruDALL-E's last text position (start
embedding, no row or column embedding, seen by every image slot), slot s >= 1 holds cell s - 1 with
that cell's own row and column embedding, and the masks are the paper's on held-cell coordinates.

The sampling precisions (bf16, weight-only int8) and the compiled decode step are
``model.networks.precision``'s: this module is the architecture, trained and saved in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import TRANSFORMER_LAYOUTS, TransformerConfig

ROW, COLUMN, CONV = "row", "column", "conv"


def layer_kinds(depth: int, layout: str = "studio") -> list[str]:
    """The paper's schedule: column where (i - 2) mod 4 == 0 (1-based i), else row; last conv.

    ruDALL-E's ``_get_layer_mask`` tests for a column layer before the last, so under
    ``layout="rudalle"`` a last layer on the column schedule (depth 2, 6, 10, ...) stays column.
    """
    kinds = [COLUMN if (i - 2) % 4 == 0 else ROW for i in range(1, depth + 1)]
    if layout != "rudalle" or kinds[-1] != COLUMN:
        kinds[-1] = CONV
    return kinds


def image_mask(kind: str, grid: int, kernel: int = 3) -> torch.Tensor:
    """(N, N) bool, True where image slot i may attend to slot j; N = grid**2, raster order."""
    n = grid * grid
    i = torch.arange(n).view(n, 1)
    j = torch.arange(n).view(1, n)
    causal = j <= i
    if kind == ROW:
        # the previous W + 1 slots, wrapping over row ends: reaches the same column one row up
        return causal & (i - j <= grid)
    if kind == COLUMN:
        return causal & (i % grid == j % grid)
    if kind == CONV:
        half = kernel // 2
        near_rows = (i // grid - j // grid).abs() <= half
        near_cols = (i % grid - j % grid).abs() <= half
        return causal & near_rows & near_cols
    raise ValueError(f"unknown attention kind {kind!r}; expected one of row, column, conv")


def held_cell_mask(kind: str, grid: int, kernel: int = 3) -> torch.Tensor:
    """(N, N) bool over image slots for ``layout="rudalle"``: slot s >= 1 holds cell s - 1 and the
    paper's mask applies to the cells the slots hold; slot 0 is ruDALL-E's last text position,
    which every image slot sees. Equal to ruDALL-E v3's ``get_{row,col,conv}_mask`` (with its
    kernel) on those positions."""
    n = grid * grid
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:, 0] = True
    mask[1:, 1:] = image_mask(kind, grid, kernel)[:-1, :-1]  # cells 0 .. N-2 in slots 1 .. N-1
    return mask


def stream_mask(kind: str, config: TransformerConfig) -> torch.Tensor:
    """(L, L) bool mask over the whole stream: text causal, image sees all text + sparse image."""
    t, n = config.text_len, config.image_len
    mask = torch.zeros(t + n, t + n, dtype=torch.bool)
    mask[:t, :t] = torch.ones(t, t, dtype=torch.bool).tril()
    mask[t:, :t] = True
    image = held_cell_mask if config.layout == "rudalle" else image_mask
    mask[t:, t:] = image(kind, config.grid, config.conv_kernel)
    return mask


def decode_keys(kind: str, config: TransformerConfig) -> tuple[torch.Tensor, list[int]]:
    """Each stream position's visible keys as a gather table, for one-position decode steps.

    Returns ``(index, counts)``: ``index[p, :counts[p]]`` lists, in increasing order, the positions
    that position p attends to under ``stream_mask(kind)``. A decode step gathers just those keys
    (text + the row window, the column, or the conv window) instead of masking all seq_len keys.
    Rows are padded with p itself so the table is one rectangular tensor.
    """
    mask = stream_mask(kind, config)
    counts = mask.sum(dim=1)
    index = torch.arange(config.seq_len).view(-1, 1).repeat(1, int(counts.max()))
    for p in range(config.seq_len):
        index[p, : counts[p]] = mask[p].nonzero().squeeze(1)
    return index, counts.tolist()


def attention_table_bytes(config: TransformerConfig) -> int:
    """Bytes the attention tables of a model built from ``config`` take while they are made.

    They are not parameters and grow with the square of the stream: three (L, L) bool masks kept,
    int64 and bool (N, N) temporaries while ``image_mask`` runs (N = grid**2), and per kind a
    padded (L, K) gather table of int64 keys and fp32 biases. A bundle's file pays for its
    parameters; this is what its config alone can ask for (``model.bundle`` bounds it).
    """
    length, cells = config.seq_len, config.image_len
    window = config.text_len + max(config.grid + 1, min(config.conv_kernel, config.grid) ** 2)
    return 3 * length**2 + 11 * cells**2 + 3 * length * window * (8 + 4)


def attention_dtype(x: torch.Tensor) -> torch.Tensor:
    """Attention runs in fp32 on CPU whatever the weights: CPU bf16 attention kernels are 2-7x
    slower than fp32 at these sizes (measured: 42 vs 20 us for one query, 940 vs 180 us for a
    masked 8x9-query chunk), and fp32 keys keep the cache exact. GPUs keep the model's dtype."""
    return x.float() if x.device.type == "cpu" else x


class KVCache:
    """Keys and values of every layer, allocated once and written in place (as min-dalle does).

    ``layers[i]`` is layer i's (2, batch, heads, seq_len, head_dim): static shapes, nothing
    reallocated while sampling. One tensor per layer, not one for all: a compiled decode step
    writes each in place, where a view into a shared tensor makes inductor copy the whole tensor.
    """

    def __init__(self, config: TransformerConfig, batch: int, device, dtype=torch.float32):
        head_dim = config.dim // config.heads
        shape = (2, batch, config.heads, config.seq_len, head_dim)
        self.layers = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.depth)]
        self.length = 0  # positions [0, length) hold valid keys and values


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig, index: int, kind: str):
        super().__init__()
        self.heads = config.heads
        self.index = index
        self.kind = kind
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        start: int,
        cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.heads
        q, k, v = attention_dtype(self.qkv(x)).split(C, dim=2)
        q = q.view(B, T, self.heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            layer = cache.layers[self.index]  # (2, B, nh, L, hs)
            layer[0, :, :, start : start + T] = k
            layer[1, :, :, start : start + T] = v
            k = layer[0, :, :, : start + T]  # (B, nh, start+T, hs)
            v = layer[1, :, :, : start + T]
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y.to(x.dtype))

    def decode(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        cache: list[torch.Tensor],
        keys: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """One position: write its key and value, gather the padded window of keys it sees.

        Shape-static: ``pos`` is a (1,) tensor, ``cache`` the ``KVCache.layers``, and ``keys`` and
        ``bias`` the position's row of the padded gather table and its mask (0, or -inf on the
        padding): no Python value depends on ``pos``.
        """
        B, _, C = x.shape
        hs = C // self.heads
        qkv = attention_dtype(self.qkv(x)).view(B, 3, self.heads, hs)  # (B, 3, nh, hs)
        layer = cache[self.index]  # (2, B, nh, L, hs)
        layer.index_copy_(3, pos, qkv[:, 1:].transpose(0, 1).unsqueeze(3))  # k and v, one copy
        kv = layer.index_select(3, keys)  # (2, B, nh, K, hs)
        q = qkv[:, 0].unsqueeze(2)  # (B, nh, 1, hs)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=bias)  # (B, nh, 1, hs)
        return self.proj(y.view(B, 1, C).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.dim, 4 * config.dim)
        self.proj = nn.Linear(4 * config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, index: int, kind: str):
        super().__init__()
        self.kind = kind
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = SelfAttention(config, index, kind)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config)

    def forward(self, x, mask, start, cache):
        x = x + self.attn(self.ln_1(x), mask, start, cache)
        return x + self.mlp(self.ln_2(x))

    def decode(self, x, pos, cache, keys, bias):
        x = x + self.attn.decode(self.ln_1(x), pos, cache, keys, bias)
        return x + self.mlp(self.ln_2(x))


class SandwichBlock(Block):
    """CogView's sandwich LayerNorm (``sandwich_norm``; ruDALL-E's
    ``before_{first,second}_addition_layernorm``): each branch's output is normalised before it
    is added to the residual stream. A class of its own so that plain blocks pay nothing for it."""

    def __init__(self, config: TransformerConfig, index: int, kind: str):
        super().__init__(config, index, kind)
        self.ln_attn_out = nn.LayerNorm(config.dim)
        self.ln_mlp_out = nn.LayerNorm(config.dim)

    def forward(self, x, mask, start, cache):
        x = x + self.ln_attn_out(self.attn(self.ln_1(x), mask, start, cache))
        return x + self.ln_mlp_out(self.mlp(self.ln_2(x)))

    def decode(self, x, pos, cache, keys, bias):
        x = x + self.ln_attn_out(self.attn.decode(self.ln_1(x), pos, cache, keys, bias))
        return x + self.ln_mlp_out(self.mlp(self.ln_2(x)))


@dataclass
class Logits:
    text: torch.Tensor | None  # (B, Tt, text_vocab_padded) for the text positions in the chunk
    image: torch.Tensor | None  # (B, Ti, image_vocab) for the image slots in the chunk


def _tables_once_assigned(model: Transformer, incompatible_keys) -> None:
    """``load_state_dict`` hook of a model built on the meta device: once its weights are real
    (``assign=True``), build its tables, on their device."""
    weight = model.ln_f.weight
    if weight.is_meta or "mask_row" in model._buffers:
        return
    with torch.device(weight.device):
        model._build_tables()


class Transformer(nn.Module):
    """The stream model. ``Transformer(config)`` of ``layout="rudalle"`` builds a
    ``RudalleTransformer``: the layout is chosen once, here, so that neither layout's decode step
    tests it per step."""

    def __new__(cls, config: TransformerConfig | None = None, *args, **kwargs):
        # config is None when copy.deepcopy or pickle rebuild an instance of the class they name
        if cls is Transformer and config is not None and config.layout == "rudalle":
            cls = RudalleTransformer
        return super().__new__(cls)

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if config.dim % config.heads:
            raise ValueError(f"dim {config.dim} is not divisible by heads {config.heads}")
        if config.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {config.conv_kernel}")
        if config.layout not in TRANSFORMER_LAYOUTS:
            expected = ", ".join(TRANSFORMER_LAYOUTS)
            raise ValueError(f"unknown layout {config.layout!r}; expected one of {expected}")
        if config.head_norm and config.layout != "rudalle":
            raise ValueError(
                f"head_norm (ruDALL-E's second LayerNorm before the head) is built for layout "
                f"'rudalle' only, not {config.layout!r}"
            )
        self.config = config
        self.precision = "fp32"  # model.networks.precision.for_inference makes bf16 and int8 copies
        self.start_of_image = config.image_vocab  # the extra image-embedding row
        self.text_embed = nn.Embedding(config.text_vocab_padded, config.dim)
        self.text_pos = nn.Embedding(config.text_len, config.dim)
        self.image_embed = nn.Embedding(config.image_vocab + 1, config.dim)
        self.row_embed = nn.Embedding(config.grid, config.dim)
        self.col_embed = nn.Embedding(config.grid, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.kinds = layer_kinds(config.depth, config.layout)
        block = SandwichBlock if config.sandwich_norm else Block
        self.blocks = nn.ModuleList(block(config, i, k) for i, k in enumerate(self.kinds))
        self.ln_f = nn.LayerNorm(config.dim)
        if config.head_norm:
            self.ln_head = nn.LayerNorm(config.dim)  # ruDALL-E's to_logits.0, after ln_f
        bias = config.head_bias
        self.to_text = nn.Linear(config.dim, config.text_vocab_padded, bias=bias)
        self.to_image = nn.Linear(config.dim, config.image_vocab, bias=bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.depth))
        if self.ln_f.weight.is_meta:
            # built under torch.device("meta") to know its parameters' shapes (model.bundle
            # checks a file's tensors against them): no tables, they are not parameters; a model
            # that then takes real weights by assignment (an imported one) builds them then
            self.register_load_state_dict_post_hook(_tables_once_assigned)
            return
        self._build_tables()

    def _build_tables(self) -> None:
        """The masks and the decode steps' gather tables (buffers, not in a state dict)."""
        config = self.config
        for kind in (ROW, COLUMN, CONV):
            self.register_buffer(f"mask_{kind}", stream_mask(kind, config), persistent=False)
            index, counts = decode_keys(kind, config)
            padding = torch.arange(index.shape[1]) >= torch.tensor(counts).view(-1, 1)  # (L, K)
            bias = torch.zeros(padding.shape).masked_fill(padding, float("-inf"))
            self.register_buffer(f"keys_{kind}", index, persistent=False)
            self.register_buffer(f"bias_{kind}", bias, persistent=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the stream -------------------------------------------------------------------------

    def stream(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, text_len) caption ids and (B, N) cell tokens -> (B, seq_len) input stream."""
        soi = torch.full_like(image[:, :1], self.start_of_image)
        return torch.cat([text, soi, image[:, :-1]], dim=1)

    def embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Embed stream positions [start, start + T) given their ids (B, T)."""
        cfg = self.config
        T = ids.shape[1]
        positions = torch.arange(start, start + T, device=ids.device)
        n_text = max(0, min(cfg.text_len, start + T) - start)
        parts = []
        if n_text:
            pos = positions[:n_text]
            parts.append(self.text_embed(ids[:, :n_text]) + self.text_pos(pos))
        if n_text < T:
            slots = positions[n_text:] - cfg.text_len
            parts.append(self.embed_slots(ids[:, n_text:], slots))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def embed_slots(self, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """(B, T) ids at (T,) image slots -> (B, T, dim): each id's embedding plus the row and
        column embedding of the cell its slot predicts (``decode_step`` inlines it)."""
        grid = self.config.grid
        return self.image_embed(ids) + self.row_embed(slots // grid) + self.col_embed(slots % grid)

    def forward(
        self,
        ids: torch.Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> Logits:
        """Run stream positions [start, start + T); with a cache, earlier positions come from it.

        ``last_only`` computes logits for the final position only (what sampling needs).
        """
        T = ids.shape[1]
        end = start + T
        if end > self.config.seq_len:
            raise ValueError(f"positions up to {end} exceed seq_len {self.config.seq_len}")
        if cache is None and start != 0:
            raise ValueError("a chunk that starts after position 0 needs a KV cache")
        if cache is not None and T == 1 and start >= self.config.text_len and not self.training:
            pos = torch.tensor([start], device=ids.device)
            image = self.decode_step(ids, pos, cache.layers)  # one image slot: the static step
            cache.length = end
            return Logits(text=None, image=image.unsqueeze(1))
        x = self.drop(self.embed(ids, start))
        seen = end if cache is not None else T
        masks = {
            kind: getattr(self, f"mask_{kind}")[start:end, end - seen : end]
            for kind in (ROW, COLUMN, CONV)
        }
        for block in self.blocks:
            x = block(x, masks[block.kind], start, cache)
        if cache is not None:
            cache.length = end
        x = self.final_norm(x)
        text_end = max(0, min(self.config.text_len, end) - start)  # text positions in the chunk
        if last_only:
            last = x[:, -1:]
            if text_end == T:
                return Logits(text=self.to_text(last), image=None)
            return Logits(text=None, image=self.to_image(last))
        text = self.to_text(x[:, :text_end]) if text_end else None
        image = self.to_image(x[:, text_end:]) if text_end < T else None
        return Logits(text=text, image=image)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The normalisation before the heads (``decode_step`` inlines it)."""
        return self.ln_f(x)

    def decode_step(
        self, ids: torch.Tensor, pos: torch.Tensor, cache: list[torch.Tensor]
    ) -> torch.Tensor:
        """One image slot with a KV cache: (B, 1) ids at stream position ``pos`` -> (B, V) logits.

        ``pos`` is a (1,) tensor and ``cache`` the ``KVCache.layers``, written in place. Every shape
        is the same at every position (each layer gathers its padded key window and masks the
        padding), so ``torch.compile`` builds one graph per batch size and CUDA graphs could replay
        it; ``forward`` takes this path for every one-slot step.
        """
        cfg = self.config
        slot = pos - cfg.text_len
        x = self.image_embed(ids) + self.row_embed(slot // cfg.grid)
        x = x + self.col_embed(slot % cfg.grid)
        windows = {  # per kind: the positions ``pos`` sees, padded, and -inf on the padding
            kind: (
                getattr(self, f"keys_{kind}").index_select(0, pos)[0],  # (K,)
                attention_dtype(getattr(self, f"bias_{kind}").index_select(0, pos)),  # (1, K)
            )
            for kind in (ROW, COLUMN, CONV)
        }
        for block in self.blocks:
            x = block.decode(x, pos, cache, *windows[block.kind])
        return self.to_image(self.ln_f(x))[:, 0]

    def loss(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy on every token: text and image each averaged, weighted 1/8 and 7/8."""
        cfg = self.config
        logits = self(self.stream(text, image))
        # text position t predicts text token t + 1; the last text position precedes start-of-image
        text_loss = F.cross_entropy(
            logits.text[:, :-1].reshape(-1, cfg.text_vocab_padded), text[:, 1:].reshape(-1)
        )
        image_loss = F.cross_entropy(logits.image.reshape(-1, cfg.image_vocab), image.reshape(-1))
        w = cfg.text_loss_weight
        return {
            "loss": w * text_loss + (1 - w) * image_loss,
            "text_loss": text_loss.detach(),
            "image_loss": image_loss.detach(),
        }

    def new_cache(self, batch: int, dtype: torch.dtype | None = None) -> KVCache:
        param = self.ln_f.weight  # stays floating point when linears are quantized
        if dtype is None:
            # attention runs in fp32 on CPU (see attention_dtype)
            dtype = torch.float32 if param.device.type == "cpu" else param.dtype
        return KVCache(self.config, batch, param.device, dtype)


class RudalleTransformer(Transformer):
    """``layout="rudalle"``: ruDALL-E v3 (``rudalle.dalle.model.DalleModel``) under this module's
    stream and sampler contract (research/importers.md 2.3-2.4; ``model.importers.rudalle``
    converts its weights). ruDALL-E reads ``[text_len + 1 text][cell 0 .. cell N-1]``; here
    ``text_len`` is one less and its last text position is slot 0:

    - slot 0 holds ``image_embed[start_of_image]`` (the importer stores there ruDALL-E's padding
      id and position embedding of that text position) with no row or column embedding;
    - slot s >= 1 holds cell s - 1 with the row and column embedding of that cell;
    - the masks are the paper's on held-cell coordinates and every image slot sees slot 0
      (``held_cell_mask``); the layer schedule is ruDALL-E's (``layer_kinds``);
    - ``sandwich_norm`` blocks, and ``ln_head`` (``head_norm``) after ``ln_f``, before heads
      with biases (``head_bias``).

    ruDALL-E's other differences leave the forward pass as it is: CogView's PB-relax and its
    -10000 mask fill are softmax-invariant, the +-65504 clamp of attention outputs is inert short
    of fp16 overflow, and its embedding gradient shrink is the identity forward.
    """

    # 1.3B parameters (Malevich) cannot be held twice: model.inference.sampling.prepared converts
    # this model to bf16 or int8 in place, as it does DALL·E Mega (a copy to int8 kept a dense bf16
    # one too: 7.5 GB at its peak for a 2.9 GB bundle, 3.2 GB in place; benchmarks/README.md)
    converts_in_place = True

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        if not config.head_norm:
            self.ln_head = nn.Identity()

    def embed_slots(self, ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        grid = self.config.grid
        cells = (slots - 1).clamp(min=0)  # slot s >= 1 holds cell s - 1
        held = self.row_embed(cells // grid) + self.col_embed(cells % grid)  # ruDALL-E's order
        return self.image_embed(ids) + held.masked_fill((slots == 0).unsqueeze(-1), 0.0)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_head(self.ln_f(x))

    def decode_step(
        self, ids: torch.Tensor, pos: torch.Tensor, cache: list[torch.Tensor]
    ) -> torch.Tensor:
        """``Transformer.decode_step`` with this layout's slot embedding and head (its own copy,
        so that the studio layout's step calls nothing more than it did)."""
        x = self.embed_slots(ids, pos - self.config.text_len)
        windows = {
            kind: (
                getattr(self, f"keys_{kind}").index_select(0, pos)[0],  # (K,)
                attention_dtype(getattr(self, f"bias_{kind}").index_select(0, pos)),  # (1, K)
            )
            for kind in (ROW, COLUMN, CONV)
        }
        for block in self.blocks:
            x = block.decode(x, pos, cache, *windows[block.kind])
        return self.to_image(self.final_norm(x))[:, 0]
