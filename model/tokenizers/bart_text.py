"""DALL·E Mega / Mini's caption tokenizer: min-dalle's ``TextTokenizer`` on ``tokenizers``' BPE.

min-dalle 0.4.11 (``min_dalle/text_tokenizer.py``) turns emoji into their names
(``emoji.demojize``), lowercases, drops every non-ASCII character, splits on " " only, prefixes
each word with "Ġ" (BART's byte-level space) and applies BPE merges to the word's characters;
``MinDalle.generate_raw_image_stream`` wraps the ids in ``<s> … </s>``, keeps the first 64 and pads
with id 1. Here the BPE is ``tokenizers``' own (same merges, same ranks) and the rest a pipeline
that gives min-dalle's ids, with two deliberate differences:

- ASCII whitespace other than " " (tab, newline, CR, VT, FF) counts as a space. min-dalle keeps
  it inside a word, where it is not a vocabulary symbol and becomes ``<unk>``: "a\\nb" would
  read as "a <unk> b" rather than "a b".
- Emoji are named with ``emoji.demojize`` when the ``emoji`` package is importable (as min-dalle
  does, so "🐶" reads "dog_face"); without it they are dropped with the other non-ASCII text.
  ``BartTokenizer.demojizes`` says which.

Other ASCII control characters are ``<unk>``, as in min-dalle. A caption that needs more than 64
tokens keeps its first 64 (min-dalle's truncation: the last one is then not ``</s>``); min-dalle
also builds its unconditional caption from that truncated list, ``[<s>, tokens[-1]]``, whereas
``empty`` is always ``<s></s>`` (min-dalle's own unconditional caption for every caption that
fits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from model.tokenizers.bpe_json import bpe_from_json, bpe_to_json, first_line

try:  # optional: min-dalle names emoji; without the package they are dropped (see above)
    from emoji import demojize as _demojize
except ImportError:  # pragma: no cover - depends on the environment
    _demojize = None

log = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
PAD_ID = 1  # min-dalle pads with a literal 1 (BART's <pad>), whatever the vocab says
TEXT_LEN = 64  # min-dalle's text_token_count
WORD_PREFIX = "Ġ"  # chr(ord(" ") + 256): the byte-level symbol of the space before each word
JSON_FORMAT = "min-dalle-bart-bpe/1"

# lowercase before dropping non-ASCII, as min-dalle's text.lower().encode("ascii", "ignore"): a
# few non-ASCII capitals lowercase to ASCII ("İ" -> "i" + a combining dot, Kelvin "K" -> "k")
_NORMALIZER = normalizers.Sequence(
    [
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[^\x00-\x7f]"), ""),
        normalizers.Replace(Regex(r"[\t\n\r\x0b\x0c]"), " "),  # our one deviation, see above
    ]
)
# text.split(" ") without the empty words, then WORD_PREFIX before each word; no byte mapping:
# a character that is not in the vocabulary becomes <unk>, as in min-dalle
_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Split(" ", "removed"),
        pre_tokenizers.Metaspace(replacement=WORD_PREFIX, prepend_scheme="always", split=False),
    ]
)


def _name_emoji(caption: str) -> str:
    """min-dalle's first step: "🐶" -> "dog_face" (no delimiters); unchanged without ``emoji``."""
    return caption if _demojize is None else _demojize(caption, delimiters=("", ""))


class BartTokenizer:
    """BART byte-level BPE ids of captions, ``<s> … </s>``, padded with id 1 to ``text_len``."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        text_len: int = TEXT_LEN,
    ):
        if not isinstance(text_len, int) or text_len < 2:
            raise ValueError(f"text_len must be at least 2 (<s> and </s>), got {text_len!r}")
        if not isinstance(vocab, dict) or not vocab:
            raise ValueError("the vocab must be a non-empty mapping of tokens to ids")
        for token, index in vocab.items():
            if not isinstance(token, str) or isinstance(index, bool) or not isinstance(index, int):
                raise ValueError(f"vocab entry {token!r}: {index!r} is not a token and an id")
            if index < 0:
                raise ValueError(f"vocab entry {token!r} has a negative id {index}")
        missing = [token for token in (BOS, EOS, UNK) if token not in vocab]
        if missing:
            raise ValueError(f"the vocab lacks the special token {missing[0]!r}")
        merges = [tuple(pair) for pair in merges]
        for pair in merges:
            if len(pair) != 2 or not all(isinstance(part, str) and part for part in pair):
                raise ValueError(f"merge {pair!r} is not a pair of tokens")
        try:
            bpe = models.BPE(vocab=dict(vocab), merges=merges, unk_token=UNK)
        except Exception as error:  # tokenizers raises a bare Exception
            raise ValueError(f"vocab and merges disagree: {first_line(error)}") from None
        tokenizer = Tokenizer(bpe)
        tokenizer.normalizer = _NORMALIZER
        tokenizer.pre_tokenizer = _PRE_TOKENIZER
        tokenizer.decoder = decoders.ByteLevel()  # "Ġ" back to " "; ASCII symbols are themselves
        self._tokenizer = tokenizer
        self._vocab = dict(vocab)
        self._merges = merges
        self._text_len = text_len
        self._bos, self._eos, self._unk = vocab[BOS], vocab[EOS], vocab[UNK]
        self._specials = {self._bos, self._eos, PAD_ID}
        # the encoder's embedding rows, when it has fewer than the vocabulary has ids (DALL·E
        # Mini: 50264 rows, 50265 ids, "<mask>" last): an id at or past them reads as <unk>
        # (min-dalle would index past its embedding). BPE never produces "<mask>" from its merges.
        self.rows: int | None = None

    # -- construction and serialisation -------------------------------------------------------

    @classmethod
    def from_files(
        cls,
        vocab_path: str | os.PathLike,
        merges_path: str | os.PathLike,
        text_len: int = TEXT_LEN,
    ) -> BartTokenizer:
        """min-dalle's ``vocab*.json`` and ``merges*.txt`` (one "a b" pair a line after a
        ``#version`` header; blank lines are skipped)."""
        vocab = _read_vocab(Path(vocab_path))
        merges = _read_merges(Path(merges_path))
        try:
            return cls(vocab, merges, text_len)
        except ValueError as error:
            raise ValueError(f"{vocab_path} / {merges_path}: {error}") from None

    def to_json(self) -> str:
        """The vocab, merges and text length as one JSON string (a bundle's metadata): the app
        never needs the original files."""
        return bpe_to_json(JSON_FORMAT, self._text_len, self._vocab, self._merges)

    @classmethod
    def from_json(cls, text: str) -> BartTokenizer:
        vocab, merges, text_len = bpe_from_json(text, JSON_FORMAT, "BART tokenizer")
        return cls(vocab, merges, text_len)

    # -- sizes --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Rows the encoder's embedding needs: one past the largest id."""
        return max(self._vocab.values()) + 1

    @property
    def text_len(self) -> int:
        return self._text_len

    @property
    def demojizes(self) -> bool:
        """Whether emoji are named (the ``emoji`` package is importable) rather than dropped."""
        return _demojize is not None

    # -- encoding -----------------------------------------------------------------------------

    @staticmethod
    def normalize(caption: str) -> str:
        """Emoji named (or dropped), lowercased, ASCII only, whitespace as spaces: BPE's input."""
        return _NORMALIZER.normalize_str(_name_emoji(caption))

    def ids(self, caption: str) -> list[int]:
        """``<s>``, the caption's BPE ids, ``</s>``: not cut to ``text_len``."""
        if not isinstance(caption, str):
            raise TypeError(f"a caption must be a string, got {type(caption).__name__}")
        ids = [self._bos, *self._tokenizer.encode(_name_emoji(caption)).ids, self._eos]
        if self.rows is not None:
            ids = [i if i < self.rows else self._unk for i in ids]
        return ids

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, text_len) long ids; a caption longer than ``text_len`` keeps its first ones."""
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not a single string")
        out = torch.full((len(captions), self._text_len), PAD_ID, dtype=torch.long)
        for row, caption in enumerate(captions):
            ids = self.ids(caption)
            if len(ids) > self._text_len:
                log.debug("caption %r is %d tokens; keeping %d", caption, len(ids), self._text_len)
                ids = ids[: self._text_len]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def empty(self, batch: int) -> torch.Tensor:
        """(batch, text_len) ``<s></s>`` then padding: min-dalle's unconditional caption."""
        out = torch.full((batch, self._text_len), PAD_ID, dtype=torch.long)
        out[:, 0], out[:, 1] = self._bos, self._eos
        return out

    def count(self, caption: str) -> int:
        """Tokens ``caption`` uses, ``<s>`` and ``</s>`` included: it fits when this is at most
        ``text_len`` (the studio's counter)."""
        return len(self.ids(caption))

    length = count  # the name the studio's counter calls (``CaptionTokenizer.length``)

    def kept(self, caption: str) -> str:
        """The part of ``caption`` the model reads, as (normalised) text."""
        return self.decode(self.encode([caption])[0])

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of one caption's ids; ``<s>``, ``</s>`` and padding are left out."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        kept = [i for i in ids if i not in self._specials]
        return self._tokenizer.decode(kept, skip_special_tokens=False).strip()

    # -- comparison ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BartTokenizer):
            return NotImplemented
        return (self._text_len, self._vocab, self._merges) == (
            other._text_len,
            other._vocab,
            other._merges,
        )

    __hash__ = None  # compared by content

    def __repr__(self) -> str:
        return f"BartTokenizer(vocab_size={self.vocab_size}, text_len={self._text_len})"


def _read_vocab(path: Path) -> dict[str, int]:
    from model.files import read_json

    data: Any = read_json(path, "vocab file")  # size, nesting and digits bounded
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of tokens to ids")
    return data


def _read_merges(path: Path) -> list[tuple[str, str]]:
    from model.files import read_text

    lines = read_text(path, "merges file").split("\n")  # refused over its size cap unread
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(f"{path}: line {number} is not a pair of tokens: {line[:40]!r}")
        merges.append((pair[0], pair[1]))
    if not merges:
        raise ValueError(f"{path}: holds no merges")
    return merges
