"""ruDALL-E's caption tokenizer: youtokentome's BPE (``bpe.model``) on ``tokenizers``' BPE.

ruDALL-E 1.1.3 encodes a caption as ``generate_images`` does: ``text.lower().strip()``, then
``YTTMTokenizerWrapper.encode_text(text, text_seq_length)``, which is youtokentome's BPE ids with
BOS (2) before and EOS (3) after, padded with 0 to ``text_seq_length`` or cut to it (a caption
that needs more keeps its first ``text_seq_length`` ids: EOS is then lost). ``RudalleTokenizer``
gives the same ids from a ``tokenizers`` pipeline built from the ``bpe.model`` file, so a bundle
holds the vocabulary as JSON and the app never needs youtokentome. Padding stays the literal 0
that ``encode_text`` gives: ruDALL-E's ``DalleModel`` itself turns a 0 at text position t into id
``vocab_size + t``, so that is the transformer's business, not the tokenizer's.

youtokentome 1.0.6 (``cpp/utils.cpp``, ``cpp/bpe.cpp``), on which this is modelled:

- ``bpe.model`` is whitespace-separated decimal integers: ``n_chars n_rules``; ``n_chars`` pairs
  ``codepoint id``; ``n_rules`` triples ``x y z`` ("token x then token y merge into token z", in
  priority order); ``unk pad bos eos``. Every other id is a character or a rule's ``z``.
- Encoding strips trailing spaces, splits the text into words at spaces, and encodes each word
  as "▁" (U+2581, YTTM's ``SPACE_TOKEN``) followed by its characters. A space is an ASCII one
  (C's ``isspace`` below 256: tab, newline, VT, FF, CR, space) or "▁" itself. A run of
  characters that are not in the model becomes one ``unk`` token, which never merges.
- Merges go by rule priority, leftmost first among equal rules: ``tokenizers``' BPE with the
  rules as ranked merges does the same, so the ids agree as long as no two ids spell the same
  text (youtokentome keeps tokens apart by id, ``tokenizers`` by text; ``from_yttm`` refuses
  such a file, and youtokentome's own training was not seen to make one).

Not modelled: youtokentome decides "space" with the C library's ``isspace`` in the process's
locale, so under a single-byte locale where, say, U+00A0 is a space, it splits words there; here
it never is (the C and UTF-8 locales agree with this). BPE dropout (ruDALL-E samples at 0).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from model.config import MAX_TEXT_LEN, MAX_VOCAB
from model.tokenizers.bpe_json import bpe_from_json, bpe_to_json, first_line

log = logging.getLogger(__name__)

# ruDALL-E's YTTMTokenizerWrapper hard-codes these ids (and pads with a literal 0); a model file
# that numbers its special tokens otherwise is not one ruDALL-E can read
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
PAD, UNK, BOS, EOS = "<PAD>", "<UNK>", "<BOS>", "<EOS>"  # youtokentome's own names for them
SPECIALS = {PAD: PAD_ID, UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
TEXT_LEN = 128  # ruDALL-E Malevich's text_seq_length
SPACE = "\u2581"  # youtokentome's SPACE_TOKEN, the mark of a word's start
JSON_FORMAT = "rudalle-yttm-bpe/1"

# Bounds on a model file, checked before its content is trusted. ruDALL-E's has 16384 ids and is
# a few hundred kB; a rule's text is its two parts' texts joined, so a chain of rules could
# otherwise spell tokens of a million characters each.
MAX_FILE_BYTES = 64 * 2**20
MAX_TOKEN_CHARS = 1024
MAX_TOTAL_CHARS = 64 * 2**20
_INTEGER = re.compile(r"-?[0-9]{1,10}")

# youtokentome's is_space below 256 (C isspace: \t \n \v \f \r and " ") and its SPACE_TOKEN
_WORD_BREAK = Regex(f"[\\t\\n\\x0b\\x0c\\r {SPACE}]+")
_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Split(_WORD_BREAK, "removed"),
        # no spaces are left to replace: this only puts SPACE before every word
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=False),
    ]
)
# youtokentome's decode: a token's leading SPACE is a space, and the text's first space goes
_DECODER = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=False)
_POST_PROCESSOR = processors.TemplateProcessing(
    single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
)


def normalize(caption: str) -> str:
    """What ruDALL-E's ``generate_images`` does to a caption before ``encode_text``."""
    return caption.lower().strip()


class RudalleTokenizer:
    """ruDALL-E's caption ids: BOS, youtokentome BPE ids, EOS, zeros up to ``text_len``."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        text_len: int = TEXT_LEN,
    ):
        """``vocab``: every token's text (youtokentome's spelling, "▁" for a word start) to its
        id, the four special tokens at 0-3; ``merges``: pairs of token texts, highest priority
        first. Both as ``from_yttm`` makes them."""
        if isinstance(text_len, bool) or not isinstance(text_len, int):
            raise ValueError(f"text_len must be an integer, got {text_len!r}")
        if not 2 <= text_len <= MAX_TEXT_LEN:
            raise ValueError(
                f"text_len must be from 2 (BOS and EOS) to {MAX_TEXT_LEN}, got {text_len}"
            )
        vocab = _checked_vocab(vocab)
        merges = _checked_merges(merges, vocab)
        try:
            # fuse_unk: youtokentome makes one unk of a whole run of unknown characters
            bpe = models.BPE(vocab=dict(vocab), merges=merges, unk_token=UNK, fuse_unk=True)
        except Exception as error:  # tokenizers raises a bare Exception
            raise ValueError(f"vocab and merges disagree: {first_line(error)}") from None
        tokenizer = Tokenizer(bpe)
        tokenizer.pre_tokenizer = _PRE_TOKENIZER
        tokenizer.decoder = _DECODER
        tokenizer.post_processor = _POST_PROCESSOR
        self._tokenizer = tokenizer
        self._vocab = vocab
        self._merges = merges
        self._text_len = text_len

    # -- construction and serialisation -------------------------------------------------------

    @classmethod
    def from_yttm(cls, path: str | os.PathLike, text_len: int = TEXT_LEN) -> RudalleTokenizer:
        """A youtokentome ``bpe.model`` file (ruDALL-E's ``shonenkov/rudalle-utils/bpe.model``);
        every problem with it is one ValueError naming the file."""
        path = Path(path)
        try:
            vocab, merges = _read_yttm(path)
            return cls(vocab, merges, text_len)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def to_json(self) -> str:
        """The vocab, merges and text length as one JSON string (a bundle's metadata)."""
        return bpe_to_json(JSON_FORMAT, self._text_len, self._vocab, self._merges)

    @classmethod
    def from_json(cls, text: str) -> RudalleTokenizer:
        vocab, merges, text_len = bpe_from_json(text, JSON_FORMAT, "ruDALL-E tokenizer")
        return cls(vocab, merges, text_len)

    @property
    def tokenizer(self) -> Tokenizer:
        """The ``tokenizers`` pipeline: BOS, BPE ids, EOS of text that is already ``normalize``d
        (it does not lowercase), never cut or padded."""
        return self._tokenizer

    # -- sizes --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Every id, the four special ones included (youtokentome's ``vocab_size()``)."""
        return len(self._vocab)

    @property
    def text_len(self) -> int:
        return self._text_len

    # -- encoding -----------------------------------------------------------------------------

    normalize = staticmethod(normalize)

    def bpe_ids(self, text: str) -> list[int]:
        """youtokentome's ``BPE.encode([text])[0]``: ``text`` as it is, no BOS or EOS."""
        return self._tokenizer.encode(_checked_text(text), add_special_tokens=False).ids

    def ids(self, caption: str) -> list[int]:
        """BOS, the normalised caption's BPE ids, EOS: not cut to ``text_len``."""
        return self._tokenizer.encode(normalize(_checked_text(caption))).ids

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, text_len) long ids: for each caption, ruDALL-E's
        ``encode_text(caption.lower().strip(), text_len)``."""
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
        """(batch, text_len) BOS, EOS, then padding: the empty caption's ids (the unconditional
        caption of guidance)."""
        out = torch.full((batch, self._text_len), PAD_ID, dtype=torch.long)
        out[:, 0], out[:, 1] = BOS_ID, EOS_ID
        return out

    def length(self, caption: str) -> int:
        """Tokens ``caption`` uses, BOS and EOS included: it fits when this is at most
        ``text_len`` (the studio's counter)."""
        return len(self.ids(caption))

    def kept(self, caption: str) -> str:
        """The part of ``caption`` the model reads, as (normalised) text."""
        return self.decode(self.encode([caption])[0])

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of one caption's ids, as ruDALL-E's ``decode_text``: the special ids and unknown
        characters are left out."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside [0, {self.vocab_size})")
        kept = [i for i in ids if i not in SPECIALS.values()]
        return self._tokenizer.decode(kept, skip_special_tokens=False)

    # -- comparison ---------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RudalleTokenizer):
            return NotImplemented
        return (self._text_len, self._vocab, self._merges) == (
            other._text_len,
            other._vocab,
            other._merges,
        )

    __hash__ = None  # compared by content

    def __repr__(self) -> str:
        return f"RudalleTokenizer(vocab_size={self.vocab_size}, text_len={self._text_len})"


def _checked_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # youtokentome fails the same way
        raise ValueError(f"caption is not valid Unicode: lone surrogate at {error.start}") from None
    return text


def _checked_vocab(vocab: object) -> dict[str, int]:
    """Token texts to the ids 0..n-1, each once, the special tokens at their ruDALL-E ids."""
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError("the vocab must be a non-empty mapping of tokens to ids")
    if len(vocab) > MAX_VOCAB:
        raise ValueError(f"the vocab has {len(vocab)} tokens, more than {MAX_VOCAB}")
    seen: dict[int, str] = {}
    for token, index in vocab.items():
        if not isinstance(token, str) or not token or isinstance(index, bool):
            raise ValueError(f"vocab entry {token!r}: {index!r} is not a token and an id")
        if not isinstance(index, int) or not 0 <= index < len(vocab):
            raise ValueError(f"vocab entry {token!r} has id {index!r}, not in [0, {len(vocab)})")
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError(
                f"token {index} is {len(token)} characters, more than {MAX_TOKEN_CHARS}"
            )
        if index in seen:
            raise ValueError(f"tokens {seen[index]!r} and {token!r} both have id {index}")
        seen[index] = token
    for token, index in SPECIALS.items():
        if vocab.get(token) != index:
            raise ValueError(f"the vocab must have {token} at id {index} as ruDALL-E expects")
    if SPACE not in vocab:
        raise ValueError(f"the vocab lacks the word-start token {SPACE!r} (U+2581)")
    return dict(vocab)


def _checked_merges(merges: object, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Pairs of BPE tokens, each making a BPE token that no other pair makes."""
    if not isinstance(merges, Sequence) or isinstance(merges, str):
        raise ValueError("merges must be a list of pairs of tokens")
    out: list[tuple[str, str]] = []
    made: dict[str, tuple[str, str]] = {}
    for number, pair in enumerate(merges):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"merge {number} is {pair!r}, not a pair of tokens")
        left, right = pair
        for part in (left, right):
            if not isinstance(part, str) or part not in vocab or part in SPECIALS:
                raise ValueError(f"merge {number} joins {part!r}, which is not a BPE token")
        result = left + right
        if result not in vocab or result in SPECIALS:
            raise ValueError(f"merge {number} makes {result!r}, which is not a BPE token")
        if result in made:
            other = made[result]
            raise ValueError(
                f"merges {other} and {(left, right)} both make {result!r}; tokenizers' BPE "
                "cannot keep two tokens of the same text apart"
            )
        made[result] = (left, right)
        out.append((left, right))
    return out


# -- youtokentome's file ---------------------------------------------------------------------------


def _read_integers(path: Path) -> list[int]:
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise ValueError(f"{size} bytes; a youtokentome model is under {MAX_FILE_BYTES}")
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ValueError("no such youtokentome model file") from None
    except IsADirectoryError:
        raise ValueError("is a folder, not a youtokentome model file") from None
    except OSError as error:
        raise ValueError(f"cannot be read ({first_line(error)})") from None
    if len(data) > MAX_FILE_BYTES:  # it grew since fstat
        raise ValueError(f"more than {MAX_FILE_BYTES} bytes; a youtokentome model is smaller")
    try:
        words = data.decode("ascii").split()
    except UnicodeDecodeError:
        raise ValueError("not a youtokentome model: it holds non-ASCII bytes") from None
    for word in words:
        if not _INTEGER.fullmatch(word):
            raise ValueError(f"not a youtokentome model: {word[:20]!r} is not an integer")
    return [int(word) for word in words]


def _read_yttm(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """youtokentome's ``BPEState::load``, with every count, id and text length checked."""
    numbers = _read_integers(path)
    if len(numbers) < 2:
        raise ValueError("not a youtokentome model: no 'n_chars n_rules' header")
    n_chars, n_rules = numbers[:2]
    if not 1 <= n_chars <= MAX_VOCAB or not 0 <= n_rules <= MAX_VOCAB:
        raise ValueError(f"header says {n_chars} characters and {n_rules} rules; out of range")
    expected = 2 + 2 * n_chars + 3 * n_rules + 4
    if len(numbers) != expected:
        raise ValueError(
            f"header says {n_chars} characters and {n_rules} rules ({expected} numbers), "
            f"but the file holds {len(numbers)} numbers"
        )
    specials = numbers[-4:]  # unk pad bos eos, in youtokentome's order
    if specials != [UNK_ID, PAD_ID, BOS_ID, EOS_ID]:
        raise ValueError(
            f"special ids (unk pad bos eos) are {' '.join(map(str, specials))}; "
            f"ruDALL-E uses {UNK_ID} {PAD_ID} {BOS_ID} {EOS_ID}"
        )
    vocab_size = n_chars + n_rules + len(SPECIALS)
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"{vocab_size} ids, more than {MAX_VOCAB}")

    texts: dict[int, str] = {index: token for token, index in SPECIALS.items()}

    def fresh(index: int, what: str) -> None:
        if not 0 <= index < vocab_size:
            raise ValueError(f"{what} has id {index}, outside [0, {vocab_size})")
        if index in texts:
            raise ValueError(f"{what} has id {index}, which is already {texts[index]!r}")

    chars = numbers[2 : 2 + 2 * n_chars]
    for codepoint, index in zip(chars[::2], chars[1::2], strict=True):
        if not 0 <= codepoint < 0x110000 or 0xD800 <= codepoint <= 0xDFFF:
            raise ValueError(f"character {codepoint} is not a Unicode code point")
        fresh(index, f"character U+{codepoint:04X}")
        texts[index] = chr(codepoint)
    if SPACE not in texts.values():
        raise ValueError("not a youtokentome model: no word-start character U+2581")

    rules = numbers[2 + 2 * n_chars : -4]
    merges = []
    total_chars = sum(len(text) for text in texts.values())
    for number, (left, right, index) in enumerate(
        zip(rules[::3], rules[1::3], rules[2::3], strict=True)
    ):
        for part in (left, right):
            if part not in texts or part in SPECIALS.values():
                raise ValueError(f"rule {number} joins id {part}, which no earlier line defines")
        fresh(index, f"rule {number}")
        length = len(texts[left]) + len(texts[right])
        total_chars += length
        if length > MAX_TOKEN_CHARS or total_chars > MAX_TOTAL_CHARS:
            raise ValueError(f"rule {number} makes a token of {length} characters; too long")
        texts[index] = texts[left] + texts[right]
        merges.append((texts[left], texts[right]))

    vocab: dict[str, int] = {}
    for index, text in texts.items():
        if text in vocab:
            raise ValueError(
                f"ids {vocab[text]} and {index} both spell {text!r}; tokenizers' BPE cannot "
                "keep two tokens of the same text apart"
            )
        vocab[text] = index
    return vocab, merges


class RudallePrompt(RudalleTokenizer):
    """The caption ids a ``layout="rudalle"`` transformer reads (a bundle's text kind "yttm").

    That layout's slot 0 is ruDALL-E's last text position (research/importers.md 2.4), so the
    bundle's text is ruDALL-E's first ``text_len`` = 127 positions: BOS, the caption's BPE ids cut
    to ``text_len - 2`` so that EOS always survives, EOS, then at position t the padding id
    ``vocab_size + t``, which is what ruDALL-E's ``DalleModel`` makes of the 0s ``encode_text``
    pads with. For a caption of at most 125 ids this is exactly ruDALL-E's input; ruDALL-E itself
    cuts a longer one at 128 ids and loses EOS.
    """

    def __init__(self, vocab, merges, text_len: int = TEXT_LEN - 1):
        super().__init__(vocab, merges, text_len)
        self._padding = torch.arange(self.vocab_size, self.vocab_size + self.text_len)

    @classmethod
    def of(cls, tokenizer: RudalleTokenizer, text_len: int = TEXT_LEN - 1) -> RudallePrompt:
        return cls(tokenizer._vocab, tokenizer._merges, text_len)

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the transformer's text embedding: BPE ids, then one padding id per position."""
        return self.vocab_size + self.text_len

    def _cut(self, caption: str) -> list[int]:
        ids = self.ids(caption)
        if len(ids) > self.text_len:
            log.debug("caption %r is %d tokens; keeping %d", caption, len(ids), self.text_len)
            ids = ids[: self.text_len - 1] + [EOS_ID]
        return ids

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not a single string")
        out = self._padding.expand(len(captions), -1).clone()
        for row, caption in enumerate(captions):
            ids = self._cut(caption)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def empty(self, batch: int) -> torch.Tensor:
        """(batch, text_len) BOS, EOS, padding ids: the empty caption (guidance's unconditional
        input; ruDALL-E was not trained for guidance, so its bundles default to a scale of 1)."""
        out = self._padding.expand(batch, -1).clone()
        out[:, 0], out[:, 1] = BOS_ID, EOS_ID
        return out

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of one caption's ids; special and padding ids are left out."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.padded_vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} are outside [0, {self.padded_vocab_size})")
        return super().decode([i for i in ids if i < self.vocab_size])

    def __repr__(self) -> str:
        return f"RudallePrompt(vocab_size={self.vocab_size}, text_len={self.text_len})"
