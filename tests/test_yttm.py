"""ruDALL-E's caption tokenizer (model/tokenizers/yttm_text.py) against youtokentome and rudalle
themselves.

The reference is youtokentome 1.0.6's ``BPE.encode`` on models that youtokentome trains here
(``BPE.train`` on a synthetic Russian/English caption corpus), and rudalle 1.1.3's
``YTTMTokenizerWrapper.encode_text`` and ``decode_text`` around it (its ``tokenizer.py`` loaded
alone: the package's ``__init__`` pulls in the whole model, and its
``huggingface_hub.cached_download`` is gone from current huggingface_hub, so that name is stubbed;
it is only used for downloading). Both are optional: youtokentome needs Cython and a C++ compiler
to build (``pip install Cython && pip install --no-build-isolation youtokentome``) and rudalle is
installed with ``--no-deps``. Without them the tests that need them skip, and a model file
written by hand in youtokentome's format, with ids youtokentome gave for it as literals, still
checks the converter.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
import types

import pytest
import torch

from model.tokenizers import yttm_text
from model.tokenizers.yttm_text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    RudallePrompt,
    RudalleTokenizer,
)

# -- test strings ---------------------------------------------------------------------------------

RUSSIAN = (
    "кошка собака дом красный синий зелёный большой маленький город река лес небо солнце луна "
    "звезда машина девушка мальчик картина художник улица ночь утро зима лето осень весна море "
    "гора цветок птица рыба в на и с под над старый новый портрет пейзаж масло акварель ёжик "
    "Москва Санкт-Петербург"
).split()
ENGLISH = (
    "a the of on in with cat dog house red blue green big small city river forest sky sun moon "
    "painting photo sketch avocado armchair portrait oil watercolor by van gogh"
).split()
ODD = [
    "😀", "🐶🐱", "👍🏽", "🇷🇺", "👨‍👩‍👧", "✨", "日本", "Ωμέγα", "ΣΑΣ", "İstanbul", "straße",
    "\u212a", "café", "e\u0301", "ǅ", "ﬁ", "1234567890", "3.14", "2024!", "«ёлка»", "—", "…",
    "(скобки)", "#хэштег", "@user", "e-mail", "don't", "C++", "<UNK>", "<pad>", "<BOS>", "\x00",
    "\x01", "\x7f", "\x1c", "\x85", "\xa0", "\u3000", "\u2028", "\u200b", "\ufeff", "▁", "▁▁x",
    "x▁y", "ⅷ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ЁЖИК", "ЁжИк", "мЕдВеДь",
]  # fmt: skip
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "   \t ", "\xa0", "\u3000", "▁", " ▁ "]
EDGE = [
    "", " ", "   ", "\t\n", "▁", "▁▁▁", "a", "A", "я", "Я", "ё", "Ё", "кот", "  кот  ",
    "кот\n", "\nкот", "кот▁", "▁кот", "кот\xa0", "\x00", "😀", "😀😀😀", "x😀y", "1", "12345",
    "!!!", ".", "...", "кот,собака", "кот-собака", "ΣΑΣ ΣΑΣ", "İ", "\u212a", "\U0010ffff",
    "\ud7ff", "\ue000", "а" * 3000, "кот " * 700, "ab" * 2000,
]  # fmt: skip


def strings(count: int, seed: int) -> list[str]:
    """``EDGE`` and then random captions of 1 to 300 words: Russian and English words in mixed
    case, digits, punctuation, emoji, characters the model never saw, and whitespace runs of
    every kind between and around them."""
    rng = random.Random(seed)
    out = list(EDGE)
    while len(out) < count:
        words = []
        for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 30, 300])):
            pick = rng.random()
            if pick < 0.5:
                word = rng.choice(RUSSIAN)
            elif pick < 0.8:
                word = rng.choice(ENGLISH)
            elif pick < 0.9:
                word = rng.choice(ODD)
            else:
                word = str(rng.randint(0, 10 ** rng.randint(1, 9)))
            style = rng.random()
            if style < 0.1:
                word = word.upper()
            elif style < 0.2:
                word = word.title()
            elif style < 0.25:
                word = "".join(c.upper() if rng.random() < 0.5 else c for c in word)
            if rng.random() < 0.15:
                word += rng.choice(".,!?:;»)…")
            if rng.random() < 0.05:
                word = rng.choice(ODD) + word
            words.append(word)
        text = ""
        for word in words:
            text += (rng.choice(SPACES) if rng.random() < 0.2 else " ") + word
        if rng.random() < 0.5:
            text = text[1:]
        if rng.random() < 0.1:
            text += rng.choice(SPACES)
        out.append(text)
    return out


def corpus(lines: int, seed: int) -> str:
    """Captions to train youtokentome on: mostly Russian, some English, a little of the rest
    (so a few emoji and odd letters are in the model and most are not)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(1, 12)):
            pick = rng.random()
            if pick < 0.65:
                word = rng.choice(RUSSIAN)
            elif pick < 0.93:
                word = rng.choice(ENGLISH)
            elif pick < 0.97:
                word = str(rng.randint(0, 2024))
            else:
                word = rng.choice(ODD[:12])
            words.append(word.title() if rng.random() < 0.1 else word)
        if rng.random() < 0.3:
            words[-1] += rng.choice(".,!?")
        out.append(" ".join(words))
    return "\n".join(out)


# -- youtokentome and rudalle --------------------------------------------------------------------


def youtokentome() -> types.ModuleType:
    """The module, or a skip: missing, or built without its compiled part (an ImportError)."""
    try:
        import youtokentome
    except ImportError as error:
        pytest.skip(f"youtokentome is not importable ({error}); see the module docstring")
    return youtokentome


# (vocab size, character coverage): a model of everyday size, and a small one whose coverage
# below 1 drops the rarest characters, so that more text is unknown
MODELS = {"vocab1500": (1500, 1.0), "vocab200_rare": (200, 0.995)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request, tmp_path_factory):
    """(path, youtokentome.BPE) of a model youtokentome trained on ``corpus``."""
    yttm = youtokentome()
    vocab_size, coverage = MODELS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    data, path = folder / "corpus.txt", folder / "bpe.model"
    data.write_text(corpus(20000, seed=len(request.param)), encoding="utf-8")
    yttm.BPE.train(
        data=str(data),
        model=str(path),
        vocab_size=vocab_size,
        coverage=coverage,
        n_threads=1,
    )
    return path, yttm.BPE(model=str(path), n_threads=1)


@pytest.fixture(scope="module")
def rudalle_tokenizer_module():
    """rudalle 1.1.3's ``rudalle/tokenizer.py``, run alone (see the module docstring)."""
    youtokentome()
    spec = importlib.util.find_spec("rudalle")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("rudalle is not installed (pip install --no-deps rudalle==1.1.3)")
    source = f"{spec.submodule_search_locations[0]}/tokenizer.py"
    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_url = hub.cached_download = None  # download helpers; never called here
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "huggingface_hub", hub)
        module_spec = importlib.util.spec_from_file_location("_rudalle_tokenizer", source)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    return module


def mismatches(ours: list, theirs: list, texts: list[str]) -> list[str]:
    return [
        f"{t[:60]!r}: ours {a[:12]} theirs {b[:12]}"
        for t, a, b in zip(texts, ours, theirs, strict=True)
        if a != b
    ]


def test_the_vocabulary_is_youtokentomes(trained):
    path, bpe = trained
    ours = RudalleTokenizer.from_yttm(path)
    by_id = {index: token for token, index in ours._vocab.items()}
    assert ours.vocab_size == bpe.vocab_size()
    assert [by_id[i] for i in range(ours.vocab_size)] == bpe.vocab()


def test_bpe_ids_equal_youtokentomes_on_3000_strings(trained):
    """Raw text, mixed case and all: the BPE step alone against ``BPE.encode``."""
    path, bpe = trained
    ours = RudalleTokenizer.from_yttm(path)
    texts = strings(3000, seed=1)
    theirs = bpe.encode(texts)
    assert mismatches([ours.bpe_ids(t) for t in texts], theirs, texts) == []
    # the strings reach the parts that matter: unknown runs, many merges, long input
    flat = [i for ids in theirs for i in ids]
    assert flat.count(UNK_ID) > 100 and max(flat) > ours.vocab_size * 0.9
    assert max(map(len, theirs)) > 1000


def test_decode_equals_youtokentomes(trained):
    path, bpe = trained
    ours = RudalleTokenizer.from_yttm(path)
    ids = bpe.encode(strings(500, seed=2))
    specials = [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    assert [ours.decode(i) for i in ids] == bpe.decode(ids, ignore_ids=specials)


@pytest.mark.parametrize("text_len", [128, 16, 3, 2])
def test_encode_equals_rudalles_encode_text(trained, rudalle_tokenizer_module, text_len):
    """BOS, EOS, zero padding and truncation (EOS lost) exactly as ruDALL-E's wrapper, on the
    caption lowercased and stripped as its ``generate_images`` does."""
    path, bpe = trained
    wrapper = rudalle_tokenizer_module.YTTMTokenizerWrapper(bpe)
    ours = RudalleTokenizer.from_yttm(path, text_len=text_len)
    texts = strings(1000, seed=3)
    theirs = [wrapper.encode_text(t.lower().strip(), text_seq_length=text_len) for t in texts]
    got = ours.encode(texts)
    assert got.dtype == theirs[0].dtype == torch.long
    assert mismatches(got.tolist(), [t.tolist() for t in theirs], texts) == []
    if text_len == 128:
        kept = [wrapper.decode_text(row) for row in theirs[:300]]
        assert [ours.kept(t) for t in texts[:300]] == kept
    assert ours.empty(2).tolist() == [wrapper.encode_text("", text_len).tolist()] * 2
    assert wrapper.vocab_size() == ours.vocab_size


def test_json_round_trip_keeps_the_ids(trained):
    path, bpe = trained
    ours = RudalleTokenizer.from_yttm(path, text_len=64)
    again = RudalleTokenizer.from_json(ours.to_json())
    assert again == ours and again.text_len == 64
    texts = strings(300, seed=4)
    assert [again.bpe_ids(t) for t in texts] == bpe.encode(texts)


# -- without youtokentome: a model file written by hand in its format -----------------------------

# n_chars n_rules; "codepoint id" per character; "x y z" per rule, highest priority first;
# "unk pad bos eos". Ids: 4 ▁, 5 к, 6 о, 7 т, 8 а, 9 c, 10 a, 11 t, 12 1, 13 !, then
# 14 ▁к, 15 от, 16 ▁кот, 17 ▁кота, 18 ca, 19 ▁ca, 20 ▁cat, 21 11, 22 оо, 23 ▁!, 24 ко
HAND_MODEL = """10 11
9601 4
1082 5
1086 6
1090 7
1072 8
99 9
97 10
116 11
49 12
33 13
4 5 14
6 7 15
14 15 16
16 8 17
9 10 18
4 18 19
19 11 20
12 12 21
6 6 22
4 13 23
5 6 24
1 0 2 3
"""
# youtokentome 1.0.6's BPE(model).encode([text])[0] for HAND_MODEL
HAND_IDS = {
    "": [],
    "   ": [],
    "кот": [16],
    "кота котик": [17, 16, 1, 5],  # "ик" is one unknown run
    "cat CAT Cat": [20, 4, 1, 4, 1, 10, 11],  # no capitals in the model
    "оооо": [4, 22, 22],
    "ооо": [4, 22, 6],  # equal rules merge leftmost first
    "1111 111": [4, 21, 21, 4, 21, 12],
    "кот!": [16, 13],
    "!кот !!": [23, 5, 15, 23, 13],
    "😀 кот": [4, 1, 16],
    "x": [4, 1],
    "котxкот": [16, 1, 5, 15],
    "cat\tкот\nкот\x0bcat\x0ccat\rкот": [20, 16, 16, 20, 20, 16],  # ASCII whitespace splits
    "▁кот▁▁cat": [16, 20],  # so does "▁"
    "ко": [14, 6],
    "ткот": [4, 7, 5, 15],
    "кот\xa0кот": [16, 1, 5, 15],  # U+00A0 is not a space to youtokentome
    "ca😀😀t": [19, 1, 11],
    "кокот  ": [14, 6, 5, 15],  # "▁к" and "от" come before "ко"
}
HAND_VOCAB = [
    "<PAD>", "<UNK>", "<BOS>", "<EOS>", "▁", "к", "о", "т", "а", "c", "a", "t", "1", "!", "▁к",
    "от", "▁кот", "▁кота", "ca", "▁ca", "▁cat", "11", "оо", "▁!", "ко",
]  # fmt: skip


@pytest.fixture
def hand_model(tmp_path):
    path = tmp_path / "bpe.model"
    path.write_text(HAND_MODEL, encoding="ascii")
    return path


def test_hand_model_ids_are_youtokentomes_literals(hand_model):
    ours = RudalleTokenizer.from_yttm(hand_model)
    assert {text: ours.bpe_ids(text) for text in HAND_IDS} == HAND_IDS
    assert ours.vocab_size == len(HAND_VOCAB)
    assert sorted(ours._vocab, key=ours._vocab.get) == HAND_VOCAB


def test_hand_model_literals_are_what_youtokentome_gives(hand_model):
    """The literals above, re-derived wherever youtokentome is installed."""
    yttm = youtokentome()
    bpe = yttm.BPE(model=str(hand_model), n_threads=1)
    assert dict(zip(HAND_IDS, bpe.encode(list(HAND_IDS)), strict=True)) == HAND_IDS
    assert bpe.vocab() == HAND_VOCAB


def test_encode_lowercases_wraps_pads_and_truncates_like_rudalle(hand_model):
    ours = RudalleTokenizer.from_yttm(hand_model, text_len=6)
    got = ours.encode(["  КОТ ", "", "КоТа кот кот кот кот", "cat кот"])
    assert got.dtype == torch.long and got.shape == (4, 6)
    assert got.tolist() == [
        [BOS_ID, 16, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
        [BOS_ID, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
        [BOS_ID, 17, 16, 16, 16, 16],  # seven ids: the first six, EOS lost as in ruDALL-E
        [BOS_ID, 20, 16, EOS_ID, PAD_ID, PAD_ID],
    ]
    assert torch.equal(ours.empty(3), ours.encode(["", " ", "\n"]))
    assert ours.length("КоТа кот кот кот кот") == 7 and ours.length("") == 2
    assert ours.kept("КоТа кот кот кот кот") == "кота кот кот кот кот"
    assert ours.kept("cat кот!") == "cat кот!"
    assert ours.kept("кот😀 котик") == "кот котк"  # decode_text leaves unknown text out
    assert ours.tokenizer.encode("кот").ids == [BOS_ID, 16, EOS_ID]
    assert RudalleTokenizer.from_yttm(hand_model).text_len == 128


def test_lowercasing_is_pythons(hand_model):
    """ruDALL-E lowercases with ``str.lower`` (final sigma, "İ" -> "i̇"), not char by char."""
    ours = RudalleTokenizer.from_yttm(hand_model)
    assert ours.normalize(" ΣΑΣ İ ") == "σας i̇"
    assert ours.ids("ΣΑΣ") == [BOS_ID, 4, UNK_ID, EOS_ID]


def test_captions_must_be_text(hand_model):
    ours = RudalleTokenizer.from_yttm(hand_model)
    with pytest.raises(TypeError, match="list of captions"):
        ours.encode("кот")
    with pytest.raises(TypeError, match="string"):
        ours.encode([None])
    with pytest.raises(ValueError, match="surrogate at 3"):
        ours.encode(["кот\ud800"])
    with pytest.raises(ValueError, match="outside"):
        ours.decode([0, 99])


def test_json_round_trip_without_youtokentome(hand_model):
    ours = RudalleTokenizer.from_yttm(hand_model, text_len=9)
    text = ours.to_json()
    assert json.loads(text)["format"] == yttm_text.JSON_FORMAT
    again = RudalleTokenizer.from_json(text)
    assert again == ours and again.text_len == 9 and again != RudalleTokenizer.from_yttm(hand_model)
    assert {t: again.bpe_ids(t) for t in HAND_IDS} == HAND_IDS


# -- missing, corrupt and hostile files -----------------------------------------------------------


def with_lines(replace: dict[int, str] | None = None, extra: str = "") -> str:
    lines = HAND_MODEL.splitlines()
    for number, line in (replace or {}).items():
        lines[number] = line
    return "\n".join(lines) + "\n" + extra


CORRUPT = {
    "empty": ("", "no 'n_chars n_rules' header"),
    "not numbers": ("hello world\n", "'hello' is not an integer"),
    "binary": ("10 11\n\xff\xfe", "non-ASCII"),
    "spaced digits": (with_lines({1: "9601 4_0"}), "not an integer"),
    "huge number": (with_lines({1: "96010000000000 4"}), "not an integer"),
    "short": ("\n".join(HAND_MODEL.splitlines()[:15]), "the file holds"),
    "trailing": (with_lines(extra="7\n"), "the file holds"),
    "header": ("2000000 0\n", "out of range"),
    "negative": ("-1 0\n", "out of range"),
    "specials": (with_lines({22: "0 1 2 3"}), "ruDALL-E uses 1 0 2 3"),
    "surrogate": (with_lines({2: "55296 5"}), "not a Unicode code point"),
    "beyond unicode": (with_lines({2: "1114112 5"}), "not a Unicode code point"),
    "no word start": (with_lines({1: "98 4"}), "U+2581"),
    "id taken twice": (with_lines({3: "1086 5"}), "already 'к'"),
    "special id for a char": (with_lines({3: "1086 1"}), "already '<UNK>'"),
    "id out of range": (with_lines({3: "1086 25"}), "outside [0, 25)"),
    "rule before its parts": (with_lines({11: "4 14 14"}), "rule 0 joins id 14"),
    "rule on a special": (with_lines({11: "4 2 14"}), "rule 0 joins id 2"),
    "rule id taken": (with_lines({12: "6 7 5"}), "rule 1 has id 5"),
    "same text twice": (  # ▁к + от and ▁ко + т
        "\n".join(["10 12", *HAND_MODEL.splitlines()[1:21], "14 6 24", "24 7 25", "1 0 2 3"]),
        "ids 16 and 25 both spell '▁кот'",
    ),
    "special spelled": (
        "6 4\n9601 4\n60 5\n85 6\n78 7\n75 8\n62 9\n5 6 10\n10 7 11\n11 8 12\n12 9 13\n1 0 2 3\n",
        "both spell '<UNK>'",
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_model_files_raise_one_line_errors(tmp_path, name):
    text, message = CORRUPT[name]
    path = tmp_path / "bpe.model"
    path.write_bytes(text.encode("latin-1") if name == "binary" else text.encode("utf-8"))
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        RudalleTokenizer.from_yttm(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_missing_and_odd_paths(tmp_path):
    for path, message in [(tmp_path / "nothing.model", "no such"), (tmp_path, "is a folder")]:
        with pytest.raises(ValueError, match=message):
            RudalleTokenizer.from_yttm(path)


def test_sizes_are_bounded_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "bpe.model"
    path.write_text(HAND_MODEL, encoding="ascii")
    monkeypatch.setattr(yttm_text, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValueError, match="bytes; a youtokentome model is under 100"):
        RudalleTokenizer.from_yttm(path)


def test_a_chain_of_rules_cannot_spell_huge_tokens(tmp_path):
    """Each rule doubles the last token: 40 rules would spell 2**40 characters."""
    rules = "\n".join(f"{4 + i} {4 + i} {5 + i}" for i in range(40))
    path = tmp_path / "bpe.model"
    path.write_text(f"1 40\n9601 4\n{rules}\n1 0 2 3\n", encoding="ascii")
    with pytest.raises(ValueError, match="rule 10 makes a token of 2048 characters; too long"):
        RudalleTokenizer.from_yttm(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="other/1"), "expected format"),
        (lambda d: d.update(text_len=1), "text_len must be from 2"),
        (lambda d: d.update(text_len=True), "text_len must be an integer"),
        (lambda d: d.update(vocab=[]), "non-empty mapping"),
        (lambda d: d["vocab"].update({"<UNK>": 5}), "both have id 5"),
        (lambda d: d["vocab"].pop("<BOS>"), "id 2 as ruDALL-E expects|not in \\[0, 24\\)"),
        (lambda d: d["vocab"].update({"zz": 99}), "not in \\[0, 26\\)"),
        (lambda d: d.update(merges="ab"), "list of pairs"),
        (lambda d: d["merges"].append(["к", "x"]), "joins 'x'"),
        (lambda d: d["merges"].append(["<UNK>", "к"]), "joins '<UNK>'"),
        (lambda d: d["merges"].append(["т", "т"]), "makes 'тт'"),
        (lambda d: d["merges"].append(["▁к", "о"]), "both make '▁ко'|makes '▁ко'"),
        (lambda d: d["merges"].append(["к", "о"]), "both make 'ко'"),
        (lambda d: d["merges"].append(["к"]), "not a pair"),
    ],
)
def test_hostile_json_raises_value_errors(hand_model, change, message):
    data = json.loads(RudalleTokenizer.from_yttm(hand_model).to_json())
    change(data)
    with pytest.raises(ValueError, match=message):
        RudalleTokenizer.from_json(json.dumps(data))


def test_not_json():
    for text in ("{", "[]", None):
        with pytest.raises(ValueError, match="not a ruDALL-E tokenizer JSON"):
            RudalleTokenizer.from_json(text)


# -- RudallePrompt: the caption ids of a layout="rudalle" bundle ----------------------------------


def test_prompt_is_rudalles_input_with_positional_padding(trained, rudalle_tokenizer_module):
    """ruDALL-E's first 127 text positions as its DalleModel sees them: encode_text's ids with
    each 0 at position t made ``vocab_size + t`` (for captions of at most 125 ids, as all of
    these are)."""
    path, bpe = trained
    wrapper = rudalle_tokenizer_module.YTTMTokenizerWrapper(bpe)
    ours = RudallePrompt.of(RudalleTokenizer.from_yttm(path))
    assert ours.text_len == 127 and ours.padded_vocab_size == ours.vocab_size + 127
    texts = [t[:200] for t in strings(500, seed=4)]
    texts = [t for t in texts if len(bpe.encode([t.lower().strip()])[0]) <= 125]
    assert len(texts) > 300
    positions = torch.arange(128)
    theirs = []
    for text in texts:
        ids = wrapper.encode_text(text.lower().strip(), text_seq_length=128)
        ids = torch.where(ids == 0, ours.vocab_size + positions, ids)  # DalleModel.forward
        theirs.append(ids[:127].tolist())
    assert mismatches(ours.encode(texts).tolist(), theirs, texts) == []
    empty = wrapper.encode_text("", 128)
    empty = torch.where(empty == 0, ours.vocab_size + positions, empty)[:127]
    assert ours.empty(2).tolist() == [empty.tolist()] * 2


def test_prompt_keeps_eos_when_it_cuts(hand_model):
    ours = RudallePrompt.of(RudalleTokenizer.from_yttm(hand_model), text_len=6)
    pad = ours.vocab_size
    got = ours.encode(["  КОТ ", "КоТа кот кот кот кот"])
    assert got.tolist() == [
        [BOS_ID, 16, EOS_ID, pad + 3, pad + 4, pad + 5],
        [BOS_ID, 17, 16, 16, 16, EOS_ID],  # cut to four ids so that EOS stays
    ]
    assert ours.empty(1).tolist() == [[BOS_ID, EOS_ID, pad + 2, pad + 3, pad + 4, pad + 5]]
    assert ours.decode(got[0]) == "кот" and ours.kept("КоТа кот кот кот кот") == "кота кот кот кот"
    with pytest.raises(ValueError, match=r"outside \[0, "):
        ours.decode([pad + 6])
    again = RudallePrompt.from_json(ours.to_json())
    assert isinstance(again, RudallePrompt) and torch.equal(
        again.encode(["кот"]), ours.encode(["кот"])
    )


def test_a_bundle_pairs_rudalle_captions_with_the_rudalle_layout_only(hand_model):
    from model.bundle import config_problems
    from model.config import BundleConfig, TransformerConfig, VQGANConfig, YttmTextConfig

    tokenizer = RudallePrompt.of(RudalleTokenizer.from_yttm(hand_model), text_len=6)
    vae = VQGANConfig(resolution=32, ch=32, ch_mult=(1, 1), attn_resolutions=(), n_embed=16,
                      quantize="gumbel", value_range="-1,1")  # fmt: skip
    layout = dict(text_vocab=tokenizer.vocab_size, text_len=6, image_vocab=16, grid=16, dim=8,
                  heads=2, depth=1, conv_kernel=3)  # fmt: skip
    text = YttmTextConfig(vocab_size=tokenizer.vocab_size, text_len=6)
    good = BundleConfig(
        vae=vae, text=text, transformer=TransformerConfig(**layout, layout="rudalle")
    )
    assert config_problems(good, tokenizer) == []
    studio = BundleConfig(vae=vae, text=text, transformer=TransformerConfig(**layout))
    assert any("layout 'rudalle' and only with it" in p for p in config_problems(studio))
    other = BundleConfig(vae=vae, text=YttmTextConfig(vocab_size=99, text_len=6),
                         transformer=TransformerConfig(**layout, layout="rudalle"))  # fmt: skip
    problems = config_problems(other, tokenizer)
    assert any("text.vocab_size 99 != transformer.text_vocab" in p for p in problems)
    assert any(f"the tokenizer has {tokenizer.vocab_size} ids" in p for p in problems)
