import logging
import random

import pytest
import torch

from model.tokenizers.text import CaptionTokenizer, is_empty, normalize

COLOURS = ["red", "green", "blue", "purple", "yellow", "pink"]
SHAPES = ["circle", "square", "star", "heart", "triangle", "ring"]
PLACES = ["top left", "bottom right", "centre"]
CAPTIONS = [
    f"a {size} {colour} {shape} in the {place}"
    for size in ("small", "large")
    for colour in COLOURS
    for shape in SHAPES
    for place in PLACES
] + ["three blue stars on a yellow background", "a green ring above a pink square"] * 3

TEXT_LEN = 12


@pytest.fixture(scope="module")
def tokenizer() -> CaptionTokenizer:
    return CaptionTokenizer.train(CAPTIONS, vocab_size=400, text_len=TEXT_LEN)


def bpe_ids(tokenizer: CaptionTokenizer, caption: str) -> list[int]:
    """Unpadded, untruncated ids of one caption."""
    wide = CaptionTokenizer.from_json(tokenizer.to_json(), text_len=256)
    return [i for i in wide.encode([caption])[0].tolist() if i < wide.vocab_size]


def test_training_learns_merges_within_the_requested_size(tokenizer):
    # the corpus supports fewer merges than asked for: vocab_size reports what was learned
    assert 256 < tokenizer.vocab_size < 400
    assert tokenizer.text_len == TEXT_LEN
    assert tokenizer.padded_vocab_size == tokenizer.vocab_size + TEXT_LEN
    # frequent caption words are single tokens once merged
    assert len(bpe_ids(tokenizer, "red circle")) == 2


def test_training_refuses_a_vocabulary_smaller_than_the_byte_alphabet():
    with pytest.raises(ValueError, match="at least 256"):
        CaptionTokenizer.train(CAPTIONS, vocab_size=100, text_len=8)


def test_padding_has_one_id_per_position(tokenizer):
    v = tokenizer.vocab_size
    ids = tokenizer.encode(["red circle", ""])
    assert ids.shape == (2, TEXT_LEN) and ids.dtype == torch.long
    n = len(bpe_ids(tokenizer, "red circle"))
    assert (ids[0, :n] < v).all()
    assert ids[0, n:].tolist() == list(range(v + n, v + TEXT_LEN))
    assert ids[1].tolist() == list(range(v, v + TEXT_LEN))
    assert tokenizer.padding_id(3) == v + 3


def test_empty_caption_is_all_padding(tokenizer):
    empty = tokenizer.empty(3)
    assert empty.shape == (3, TEXT_LEN)
    assert torch.equal(empty, tokenizer.encode(["", "   ", "\n\t"]))
    empty[0, 0] = 0  # a fresh tensor each call, not a view of shared state
    assert tokenizer.empty(1)[0, 0] == tokenizer.vocab_size


def test_long_captions_are_truncated(tokenizer, caplog):
    caption = " ".join(CAPTIONS[:4])
    full = bpe_ids(tokenizer, caption)
    assert len(full) > TEXT_LEN
    with caplog.at_level(logging.DEBUG, logger="model.tokenizers.text"):
        ids = tokenizer.encode([caption])
    assert ids[0].tolist() == full[:TEXT_LEN]
    assert "keeping the first 12" in caplog.text
    # what the studio's caption box reports: the full length, and the part the model reads
    assert tokenizer.length(caption) == len(full)
    kept = tokenizer.kept(caption)
    assert kept == tokenizer.decode(full[:TEXT_LEN])
    assert normalize(caption).startswith(kept) and len(kept) < len(normalize(caption))
    short = CAPTIONS[0]
    assert tokenizer.length(short) <= TEXT_LEN and tokenizer.kept(short) == normalize(short)


def test_normalisation_is_nfkc_lowercase_and_collapsed_whitespace(tokenizer):
    assert normalize("  ＲＥＤ \t Circle\n") == "red circle"
    assert normalize("a ﬁne STAR") == "a fine star"
    assert torch.equal(tokenizer.encode(["ＲＥＤ Circle"]), tokenizer.encode(["red circle"]))
    assert torch.equal(tokenizer.encode(["A  Red\tCircle "]), tokenizer.encode(["a red circle"]))
    assert is_empty(" \n\t ") and is_empty("")
    assert not is_empty(" x ")
    assert tokenizer.is_empty("  ") and tokenizer.normalize("ＲＥＤ") == "red"


def test_unseen_characters_encode_and_decode(tokenizer):
    caption = "a 🐶 dog, naïve Ωmega"
    wide = CaptionTokenizer.from_json(tokenizer.to_json(), text_len=64)
    assert wide.decode(wide.encode([caption])[0]) == normalize(caption)


def test_encoding_without_dropout_is_deterministic(tokenizer):
    first = tokenizer.encode(CAPTIONS[:8])
    tokenizer.encode(CAPTIONS[:8], dropout=0.5)
    assert torch.equal(first, tokenizer.encode(CAPTIONS[:8]))
    fresh = CaptionTokenizer.from_json(tokenizer.to_json(), TEXT_LEN)
    assert torch.equal(first, fresh.encode(CAPTIONS[:8]))


def test_dropout_free_python_bpe_equals_tokenizers(tokenizer):
    # the dropout path reimplements BPE merging; at dropout 0 it must be tokenizers' BPE exactly
    for caption in CAPTIONS[::7] + ["a 🐶 dog, naïve Ωmega", "aaaa bbbb", "stars starry"]:
        ours = tokenizer._encode_with_dropout(caption, 0.0, random.Random(0))
        assert ours == bpe_ids(tokenizer, caption)


def test_dropout_varies_segmentation_but_not_the_text(tokenizer):
    wide = CaptionTokenizer.from_json(tokenizer.to_json(), text_len=64)  # room for every split
    caption = "a large purple triangle"
    generator = torch.Generator().manual_seed(0)
    draws = {tuple(wide.encode([caption], 0.3, generator)[0].tolist()) for _ in range(30)}
    assert len(draws) > 3
    assert {wide.decode(list(d)) for d in draws} == {caption}
    # dropout only ever splits: never fewer tokens than plain BPE
    n_plain = len(bpe_ids(tokenizer, caption))
    lengths = [sum(i < wide.vocab_size for i in d) for d in draws]
    assert min(lengths) >= n_plain and max(lengths) > n_plain


def test_dropout_is_reproducible_from_a_generator(tokenizer):
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.stack([tokenizer.encode(CAPTIONS[:4], 0.5, g) for _ in range(3)])

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_full_dropout_leaves_bytes(tokenizer):
    ids = tokenizer.encode(["red"], dropout=1.0)[0]
    assert (ids[:4] < 256).all()  # " red" as four byte symbols
    assert tokenizer.decode(ids) == "red"


def test_encode_rejects_bad_arguments(tokenizer):
    with pytest.raises(TypeError, match="list of captions"):
        tokenizer.encode("red circle")
    with pytest.raises(ValueError, match="dropout"):
        tokenizer.encode(["red"], dropout=1.5)


def test_json_round_trip_is_exact(tokenizer):
    data = tokenizer.to_json()
    again = CaptionTokenizer.from_json(data, TEXT_LEN)
    assert again.to_json() == data
    assert again == tokenizer
    assert again != CaptionTokenizer.from_json(data, TEXT_LEN + 1)
    assert again.vocab_size == tokenizer.vocab_size
    assert torch.equal(again.encode(CAPTIONS), tokenizer.encode(CAPTIONS))


def test_from_json_rejects_garbage():
    with pytest.raises(ValueError, match="not a valid tokenizers JSON"):
        CaptionTokenizer.from_json('{"model": 3}', 8)


def test_decode_ignores_padding(tokenizer):
    ids = tokenizer.encode(["a red circle in the top left", ""])
    assert tokenizer.decode(ids[0]) == "a red circle in the top left"
    assert tokenizer.decode(ids[1]) == ""
    assert tokenizer.decode_batch(ids) == ["a red circle in the top left", ""]
    # padding ids anywhere are skipped, e.g. in sampled text
    red, circle = bpe_ids(tokenizer, "red circle")
    v = tokenizer.vocab_size
    assert tokenizer.decode([v + 0, red, v + 2, circle]) == "red circle"


def test_decode_rejects_ids_outside_the_padded_vocabulary(tokenizer):
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([tokenizer.padded_vocab_size])
    with pytest.raises(ValueError, match="decode_batch"):
        tokenizer.decode(tokenizer.empty(2))
