"""Caption tokenizer: lowercased byte-level BPE with one padding id per text position.

DALL·E (Ramesh et al. 2021, section 2.2) lowercases captions, encodes them with BPE (10% BPE
dropout in training) and pads them not with one shared token but with *a separate padding token
for each text position*. Here the padding id at position t is ``vocab_size + t``, so the
transformer's text embedding has ``vocab_size + text_len`` rows. A caption that is empty after
normalisation is all padding: the "unconditional" caption of classifier-free guidance.

The BPE itself is the ``tokenizers`` library's, byte-level (GPT-2 style): every character of every
script is some sequence of bytes, so no caption can fail to encode and no [UNK] token is needed.

BPE dropout is done here in Python rather than by ``tokenizers``' own ``dropout`` attribute: that
one draws from an unseeded thread-local RNG (training would not be reproducible) and is a setting
on a shared model (changing it would leak into concurrent deterministic encodes). Ours draws from
a ``torch.Generator`` and never touches the wrapped tokenizer.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from model.tokenizers.bpe_json import first_line

logger = logging.getLogger(__name__)

# NFKC first so that compatibility forms ("ＲＥＤ", "ﬁ") become plain letters before lowercasing;
# whitespace runs collapse so that "red  circle" and "red circle" encode alike.
_NORMALIZER = normalizers.Sequence(
    [
        normalizers.NFKC(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
)

# Byte-level BPE needs all 256 byte symbols in its vocabulary before it learns any merge.
_BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()

# A merge seen once in the captions is noise, not structure.
_MIN_MERGE_FREQUENCY = 2


def normalize(caption: str) -> str:
    """NFKC, lowercase, whitespace collapsed and stripped: exactly what the tokenizer sees."""
    return _NORMALIZER.normalize_str(caption)


def is_empty(caption: str) -> bool:
    """True when nothing of ``caption`` survives normalisation (it would encode to all padding)."""
    return not normalize(caption)


class CaptionTokenizer:
    """A trained byte-level BPE ``tokenizers.Tokenizer`` plus the text length it pads to."""

    def __init__(self, tokenizer: Tokenizer, text_len: int):
        if text_len < 1:
            raise ValueError(f"text_len must be at least 1, got {text_len}")
        if not isinstance(tokenizer.model, models.BPE):
            raise ValueError(f"expected a BPE tokenizer, got {type(tokenizer.model).__name__}")
        # Our padding is per position and our dropout is our own; a tokenizer JSON from elsewhere
        # must not bring its own padding, truncation or (unseeded) dropout along.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        tokenizer.model.dropout = None
        self._tokenizer = tokenizer
        self._text_len = text_len
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._vocab = tokenizer.get_vocab(with_added_tokens=True)
        model = json.loads(tokenizer.to_str())["model"]
        # merges are [a, b] pairs in current tokenizers JSON and "a b" strings in older files
        pairs = [
            tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]
        ]
        self._merge_rank = {pair: rank for rank, pair in enumerate(pairs)}
        self._padding = torch.arange(self._vocab_size, self._vocab_size + text_len)

    # -- construction and serialisation -------------------------------------------------------

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int, text_len: int) -> CaptionTokenizer:
        """Learn BPE merges from ``captions`` in memory.

        ``vocab_size`` counts every id (the 256 byte symbols included) and is an upper bound: a
        small corpus may support fewer merges, so read the result's ``vocab_size``.
        """
        if vocab_size < len(_BYTE_ALPHABET):
            raise ValueError(
                f"vocab_size must be at least {len(_BYTE_ALPHABET)} (the byte alphabet), "
                f"got {vocab_size}"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = _NORMALIZER
        # add_prefix_space: "red" opening a caption is the same token as " red" inside one
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=_MIN_MERGE_FREQUENCY,
            initial_alphabet=_BYTE_ALPHABET,
            show_progress=False,
        )
        tokenizer.train_from_iterator(captions, trainer)
        return cls(tokenizer, text_len)

    def to_json(self) -> str:
        """The ``tokenizers`` JSON; ``text_len`` is not in it (the bundle's config holds it)."""
        return self._tokenizer.to_str()

    @classmethod
    def from_json(cls, data: str, text_len: int) -> CaptionTokenizer:
        try:
            tokenizer = Tokenizer.from_str(data)
        except Exception as error:  # tokenizers raises a bare Exception
            raise ValueError(f"not a valid tokenizers JSON: {first_line(error)}") from None
        return cls(tokenizer, text_len)

    # -- sizes --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of BPE ids; the padding ids follow them."""
        return self._vocab_size

    @property
    def text_len(self) -> int:
        return self._text_len

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the transformer's text embedding: BPE ids, then one padding id per position."""
        return self._vocab_size + self._text_len

    def padding_id(self, position: int) -> int:
        if not 0 <= position < self._text_len:
            raise IndexError(f"text position {position} is outside [0, {self._text_len})")
        return self._vocab_size + position

    # -- encoding -----------------------------------------------------------------------------

    normalize = staticmethod(normalize)
    is_empty = staticmethod(is_empty)

    def empty(self, batch: int) -> torch.Tensor:
        """(batch, text_len) all-padding captions: the unconditional input of guidance."""
        return self._padding.expand(batch, -1).clone()

    def encode(
        self,
        captions: Sequence[str],
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, text_len) long ids; captions longer than ``text_len`` tokens are truncated.

        ``dropout`` > 0 applies BPE dropout (the paper trains with 0.1), drawing from
        ``generator`` (torch's default generator when None); ``dropout`` = 0 is deterministic.
        """
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not a single string")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"BPE dropout must be in [0, 1], got {dropout}")
        rng = None
        if dropout > 0:
            seed = torch.randint(0, 2**62, (1,), generator=generator).item()
            rng = random.Random(seed)
        out = self.empty(len(captions))
        for row, caption in enumerate(captions):
            if rng is None:
                ids = self._tokenizer.encode(caption).ids
            else:
                ids = self._encode_with_dropout(caption, dropout, rng)
            if len(ids) > self._text_len:
                logger.debug(
                    "caption %r is %d tokens long; keeping the first %d",
                    caption,
                    len(ids),
                    self._text_len,
                )
                ids = ids[: self._text_len]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def _encode_with_dropout(self, caption: str, dropout: float, rng: random.Random) -> list[int]:
        """BPE with dropout (Provilkov et al. 2020), on the wrapped tokenizer's own pipeline.

        At every step each applicable merge is dropped with probability ``dropout`` and the
        best-ranked survivor (leftmost on ties) is applied; the word is done when none survives.
        With ``dropout`` = 0 this is plain BPE and equals ``tokenizers``' encoding.
        """
        text = self._tokenizer.normalizer.normalize_str(caption)
        words = self._tokenizer.pre_tokenizer.pre_tokenize_str(text)
        ids = []
        for word, _ in words:
            symbols = list(word)
            while len(symbols) > 1:
                candidates = sorted(
                    (self._merge_rank[pair], i)
                    for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))
                    if pair in self._merge_rank
                )
                chosen = next((i for _, i in candidates if rng.random() >= dropout), None)
                if chosen is None:
                    break
                symbols[chosen : chosen + 2] = [symbols[chosen] + symbols[chosen + 1]]
            ids.extend(self._vocab[symbol] for symbol in symbols)
        return ids

    def length(self, caption: str) -> int:
        """How many BPE tokens ``caption`` has, before ``encode`` cuts it to ``text_len``."""
        return len(self._tokenizer.encode(caption).ids)

    def kept(self, caption: str) -> str:
        """The part of ``caption`` the model reads: its first ``text_len`` tokens, as text."""
        return self.decode(self.encode([caption])[0])

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of one caption's ids, padding ids (wherever they are) ignored."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if ids and not isinstance(ids[0], int):
            raise ValueError("decode takes the ids of one caption; use decode_batch for a batch")
        bad = [i for i in ids if not 0 <= i < self.padded_vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside [0, {self.padded_vocab_size})")
        kept = [i for i in ids if i < self._vocab_size]
        # the byte-level pre-tokenizer added a space before the first word
        return self._tokenizer.decode(kept).strip()

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        """(B, T) ids -> B captions."""
        return [self.decode(row) for row in ids]

    # -- comparison ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CaptionTokenizer):
            return NotImplemented
        return self._text_len == other._text_len and self.to_json() == other.to_json()

    __hash__ = None  # mutable wrapper, compared by content

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self._vocab_size}, text_len={self._text_len})"
