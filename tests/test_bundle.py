import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import model.bundle as bundle_module
from model.bundle import (
    FORMAT,
    Bundle,
    BundleError,
    default_bundle_path,
    load,
    read_card,
    read_config,
    save,
)
from model.config import BundleConfig, DVAEConfig, TextConfig, TransformerConfig
from model.networks.dvae import DVAE
from model.networks.transformer import Transformer
from model.tokenizers.text import CaptionTokenizer

TEXT_LEN = 8
CAPTIONS = ["a red circle", "two blue squares", "a green star in the top left"] * 4
CARD = {"stage": "transformer", "steps": 3, "example_captions": CAPTIONS[:2], "loss": 1.25}


def tiny_bundle() -> Bundle:
    tokenizer = CaptionTokenizer.train(CAPTIONS, vocab_size=300, text_len=TEXT_LEN)
    config = BundleConfig(
        vae=DVAEConfig(
            image_size=32, n_groups=3, n_hid=8, n_blk_per_group=1, vocab_size=32, n_init=16
        ),
        text=TextConfig(vocab_size=300, text_len=TEXT_LEN),
        transformer=TransformerConfig(
            text_vocab=tokenizer.vocab_size,
            text_len=TEXT_LEN,
            image_vocab=32,
            grid=8,
            dim=32,
            depth=2,
            heads=2,
            conv_kernel=3,
        ),
    )
    vae = DVAE(config.vae)
    transformer = Transformer(config.transformer)
    return Bundle(config, vae, transformer, tokenizer, card=dict(CARD))


@pytest.fixture(scope="module")
def original() -> Bundle:
    torch.manual_seed(0)
    return tiny_bundle()


@pytest.fixture
def saved(original, tmp_path) -> Path:
    return save(original, tmp_path / "tiny.dalle.safetensors")


def rewrite(src: Path, dst: Path, tensors=None, metadata=None) -> Path:
    """Copy a bundle, letting ``tensors`` / ``metadata`` edit its contents in place."""
    contents = load_file(src)
    with safe_open(src, framework="pt") as f:
        meta = dict(f.metadata())
    if tensors:
        tensors(contents)
    if metadata:
        metadata(meta)
    save_file(contents, dst, metadata=meta)
    return dst


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(BundleError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return module.state_dict()


# -- round trip ----------------------------------------------------------------------------------


def test_round_trip_is_bitwise(original, saved):
    loaded = load(saved)
    assert loaded.config == original.config
    assert loaded.card == original.card
    assert loaded.tokenizer == original.tokenizer
    assert loaded.tokenizer.to_json() == original.tokenizer.to_json()
    assert loaded.reranker is None and loaded.path == saved
    for name in ("vae", "transformer"):
        before, after = state(getattr(original, name)), state(getattr(loaded, name))
        assert before.keys() == after.keys()
        for key in before:
            assert before[key].dtype == after[key].dtype, key
            assert torch.equal(before[key], after[key]), key
    assert not loaded.vae.training and not loaded.transformer.training


def split_file(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def test_saving_a_loaded_bundle_gives_the_same_contents(saved, tmp_path):
    again = save(load(saved), tmp_path / "again.dalle.safetensors")
    # same header (safetensors writes its metadata map in no fixed order) and same tensor bytes
    assert split_file(again) == split_file(saved)


def test_loaded_bundle_runs_and_moves(saved):
    loaded = load(saved, device="cpu")
    assert loaded.device == torch.device("cpu")
    assert loaded.to("cpu") is loaded
    text = loaded.tokenizer.encode(["a red circle"])
    image = torch.zeros(1, loaded.config.transformer.image_len, dtype=torch.long)
    with torch.inference_mode():
        logits = loaded.transformer(loaded.transformer.stream(text, image))
    assert torch.isfinite(logits.image).all()


def test_header_only_readers_touch_no_weights(original, saved, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("read weights or built models")

    monkeypatch.setattr("model.bundle.io.read_tensors", boom)
    monkeypatch.setattr("model.bundle.io.build_models", boom)
    assert read_card(saved) == CARD
    assert read_config(saved) == original.config


def test_tied_weights_are_saved_as_copies(tmp_path):
    torch.manual_seed(1)
    tied = tiny_bundle()
    tied.transformer.to_text.weight = tied.transformer.text_embed.weight  # same shape: tie them
    loaded = load(save(tied, tmp_path / "tied.dalle.safetensors"))
    assert torch.equal(loaded.transformer.to_text.weight, tied.transformer.text_embed.weight)


def test_metadata_is_plain_json(saved):
    with safe_open(saved, framework="pt") as f:
        meta = f.metadata()
    assert set(meta) == {"format", "config", "tokenizer", "card"}
    assert meta["format"] == FORMAT
    assert json.loads(meta["card"]) == CARD
    assert json.loads(meta["config"])["text"]["text_len"] == TEXT_LEN
    assert json.loads(meta["tokenizer"])["model"]["type"] == "BPE"


# -- refusals ------------------------------------------------------------------------------------


def test_missing_file_is_refused(tmp_path):
    refused(tmp_path / "nowhere.dalle.safetensors", "no such file")
    with pytest.raises(BundleError, match="no such file"):
        read_card(tmp_path / "nowhere.dalle.safetensors")


def test_truncated_file_is_refused(saved, tmp_path):
    data = saved.read_bytes()
    half = tmp_path / "half.dalle.safetensors"
    half.write_bytes(data[: len(data) // 2])
    refused(half, "truncated")
    header_cut = tmp_path / "header-cut.dalle.safetensors"
    header_cut.write_bytes(data[:100])
    refused(header_cut, "truncated or not a safetensors file")
    last_byte = tmp_path / "last-byte.dalle.safetensors"
    last_byte.write_bytes(data[:-1])
    refused(last_byte, "truncated")


def test_garbage_file_is_refused(tmp_path):
    garbage = tmp_path / "garbage.dalle.safetensors"
    garbage.write_bytes(os.urandom(4096))
    refused(garbage, "not a safetensors file")
    text = tmp_path / "notes.dalle.safetensors"
    text.write_text("these are not the weights you are looking for")
    refused(text, "not a safetensors file")
    tiny = tmp_path / "tiny.dalle.safetensors"
    tiny.write_bytes(b"abc")
    refused(tiny, "not a safetensors file")
    refused(tmp_path, "not a file")


def test_bad_json_header_is_refused(tmp_path):
    bad = tmp_path / "bad.dalle.safetensors"
    body = b"{not json at all"
    bad.write_bytes(len(body).to_bytes(8, "little") + body)
    refused(bad, "header is not JSON")


def test_missing_tensor_is_refused(saved, tmp_path):
    def drop(tensors):
        del tensors["transformer.text_pos.weight"]
        del tensors["vae.encoder.blocks.output.conv.w"]

    path = rewrite(saved, tmp_path / "missing.dalle.safetensors", tensors=drop)
    message = refused(path, "missing tensors (2)", "transformer.text_pos.weight")
    assert "vae.encoder.blocks.output.conv.w" in message


def test_many_missing_tensors_are_named_a_few_at_a_time(saved, tmp_path):
    def drop_vae(tensors):
        for name in [n for n in tensors if n.startswith("vae.")]:
            del tensors[name]

    message = refused(rewrite(saved, tmp_path / "m.dalle.safetensors", tensors=drop_vae), "more")
    assert message.count("vae.") <= bundle_module.NAMES_SHOWN


def test_extra_tensor_is_refused(saved, tmp_path):
    def add(tensors):
        tensors["transformer.surprise.weight"] = torch.zeros(3)

    path = rewrite(saved, tmp_path / "extra.dalle.safetensors", tensors=add)
    refused(path, "unexpected tensors", "transformer.surprise.weight")


def test_reranker_tensors_without_a_reranker_config_are_refused(saved, tmp_path):
    def add(tensors):
        tensors["reranker.proj.weight"] = torch.zeros(2, 2)

    path = rewrite(saved, tmp_path / "extra.dalle.safetensors", tensors=add)
    refused(path, "unexpected tensors", "reranker.proj.weight")


def test_wrong_shape_is_refused(saved, tmp_path):
    def reshape(tensors):
        tensors["transformer.text_pos.weight"] = torch.zeros(TEXT_LEN + 1, 32)

    path = rewrite(saved, tmp_path / "shape.dalle.safetensors", tensors=reshape)
    refused(path, "wrong shape", "transformer.text_pos.weight", "expected [8, 32]", "got [9, 32]")


def test_wrong_dtype_kind_is_refused(saved, tmp_path):
    def to_int(tensors):
        tensors["transformer.ln_f.weight"] = tensors["transformer.ln_f.weight"].long()

    path = rewrite(saved, tmp_path / "dtype.dalle.safetensors", tensors=to_int)
    refused(path, "transformer.ln_f.weight", "I64")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused(saved, tmp_path, bad):
    def poison(tensors):
        tensors["transformer.blocks.1.mlp.fc.weight"][0, 0] = bad

    path = rewrite(saved, tmp_path / "nan.dalle.safetensors", tensors=poison)
    names = {n for n in load_file(saved) if n.startswith("transformer.blocks.1.mlp")}
    assert "transformer.blocks.1.mlp.fc.weight" in names  # the poisoned tensor exists
    refused(path, "non-finite", "transformer.blocks.1.mlp.fc.weight")


def test_unknown_format_is_refused(saved, tmp_path):
    def bump(meta):
        meta["format"] = "dalle-studio/2"

    path = rewrite(saved, tmp_path / "v2.dalle.safetensors", metadata=bump)
    refused(path, "unknown format 'dalle-studio/2'", FORMAT)
    with pytest.raises(BundleError, match="unknown format"):
        read_card(path)


def test_missing_format_is_refused(saved, tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)  # a valid safetensors file, but not a bundle
    refused(plain, "no 'format'", "not a DALL·E Studio bundle")


def test_missing_metadata_is_refused(saved, tmp_path):
    def drop(meta):
        del meta["tokenizer"]
        del meta["card"]

    path = rewrite(saved, tmp_path / "meta.dalle.safetensors", metadata=drop)
    refused(path, "missing metadata: tokenizer, card")


@pytest.mark.parametrize(
    "config, problem",
    [
        ("{oops", "invalid config metadata"),
        ('["a list"]', "not a JSON object"),
        ('{"vae": {}, "text": {}}', "missing 'transformer'"),
        ('{"vae": {"wings": 2}, "text": {}, "transformer": {}}', "wings"),
    ],
)
def test_invalid_config_is_refused(saved, tmp_path, config, problem):
    def replace(meta):
        meta["config"] = config

    path = rewrite(saved, tmp_path / "config.dalle.safetensors", metadata=replace)
    refused(path, problem)
    with pytest.raises(BundleError, match="invalid config"):
        read_config(path)


def test_inconsistent_config_is_refused(saved, tmp_path):
    def mismatch(meta):
        config = json.loads(meta["config"])
        config["transformer"]["image_vocab"] = 64
        meta["config"] = json.dumps(config)

    path = rewrite(saved, tmp_path / "mismatch.dalle.safetensors", metadata=mismatch)
    refused(path, "inconsistent config", "image_vocab")


def test_unbuildable_config_is_refused(saved, tmp_path):
    def even_kernel(meta):
        config = json.loads(meta["config"])
        config["transformer"]["conv_kernel"] = 4
        meta["config"] = json.dumps(config)

    path = rewrite(saved, tmp_path / "kernel.dalle.safetensors", metadata=even_kernel)
    refused(path, "cannot build its models", "conv_kernel")


def test_invalid_tokenizer_is_refused(saved, tmp_path):
    def garble(meta):
        meta["tokenizer"] = '{"model": "nope"}'

    path = rewrite(saved, tmp_path / "tok.dalle.safetensors", metadata=garble)
    refused(path, "invalid tokenizer metadata")


def test_reranker_config_without_the_module_is_refused(saved, tmp_path, monkeypatch):
    from model.config import RerankerConfig

    def add_reranker(meta):
        config = json.loads(meta["config"])
        config["reranker"] = RerankerConfig().__dict__
        meta["config"] = json.dumps(config)

    path = rewrite(saved, tmp_path / "rerank.dalle.safetensors", metadata=add_reranker)
    # as if model/networks/rerank.py were absent
    monkeypatch.setitem(sys.modules, "model.networks.rerank", None)
    refused(path, "no reranker")


def test_default_bundle_path_points_into_resources():
    path = default_bundle_path()
    assert path.parts[-3:] == ("resources", "models", "default.dalle.safetensors")
    if not path.exists():
        with pytest.raises(BundleError, match="default model is missing"):
            load()


# -- saving --------------------------------------------------------------------------------------


def test_save_into_a_missing_folder_leaves_nothing(original, tmp_path):
    target = tmp_path / "absent" / "m.dalle.safetensors"
    with pytest.raises(BundleError, match="does not exist"):
        save(original, target)
    assert list(tmp_path.iterdir()) == []


def test_a_save_that_fails_midway_leaves_nothing(original, tmp_path, monkeypatch):
    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("model.bundle.io.save_file", half_written)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save(original, tmp_path / "m.dalle.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_previous_file(original, saved, monkeypatch):
    before = saved.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("model.bundle.io.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(original, saved)
    assert saved.read_bytes() == before
    assert list(saved.parent.iterdir()) == [saved]


def test_save_refuses_an_inconsistent_bundle(original, tmp_path):
    other = CaptionTokenizer.train(CAPTIONS + ["purple"] * 3, vocab_size=400, text_len=TEXT_LEN)
    assert other.vocab_size != original.tokenizer.vocab_size
    broken = Bundle(original.config, original.vae, original.transformer, other)
    with pytest.raises(BundleError, match="BPE ids"):
        save(broken, tmp_path / "m.dalle.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_a_card_that_is_not_json(original, tmp_path):
    odd = Bundle(
        original.config, original.vae, original.transformer, original.tokenizer, card={"x": {1, 2}}
    )
    with pytest.raises(BundleError, match="card is not JSON"):
        save(odd, tmp_path / "m.dalle.safetensors")


# -- hostile configs and headers: refused from the header alone, before any allocation ------------


def with_config(saved: Path, dst: Path, **changes) -> Path:
    """``saved`` with config sections edited (``transformer={"depth": 9}``, ``vae=None``)."""

    def edit(meta):
        config = json.loads(meta["config"])
        for section, values in changes.items():
            if not isinstance(values, dict) or not isinstance(config.get(section), dict):
                config[section] = values
            else:
                config[section].update(values)
        meta["config"] = json.dumps(config)

    return rewrite(saved, dst, metadata=edit)


def peak_rss_mb() -> float:
    import resource

    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # kB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


@pytest.mark.parametrize(
    "section, values, fragments",
    [
        ("transformer", {"depth": 1_000_000}, ["transformer.depth", "1000000", "at most 256"]),
        ("transformer", {"dim": 20_000}, ["transformer.dim", "20000", "at most 16384"]),
        ("transformer", {"heads": 0}, ["transformer.heads", "at least 1"]),
        ("transformer", {"heads": 5}, ["transformer.heads", "divide", "dim 32"]),
        ("transformer", {"grid": 1000}, ["transformer.grid"]),
        ("transformer", {"text_len": 10**9}, ["transformer.text_len"]),
        ("transformer", {"image_vocab": 2**40}, ["transformer.image_vocab"]),
        ("transformer", {"dim": "32"}, ["transformer.dim", "'32'", "integer"]),
        ("transformer", {"dim": True}, ["transformer.dim", "True", "integer"]),
        ("transformer", {"dim": 32.0}, ["transformer.dim", "32.0", "integer"]),
        ("transformer", {"depth": [2]}, ["transformer.depth", "integer"]),
        ("transformer", {"dropout": "0.1"}, ["transformer.dropout", "number"]),
        ("transformer", {"dropout": float("nan")}, ["transformer.dropout", "nan"]),
        ("vae", {"n_groups": 40}, ["vae.n_groups"]),
        ("vae", {"image_size": 10**6}, ["vae.image_size"]),
        ("vae", {"vocab_size": -1}, ["vae.vocab_size"]),
        ("text", {"text_len": 0}, ["text.text_len"]),
        ("transformer", None, ["transformer", "JSON object", "None"]),
        ("vae", [1, 2], ["vae", "JSON object"]),
        ("reranker", {"dim": 8, "heads": 0}, ["reranker.heads"]),
        ("reranker", "yes", ["reranker", "JSON object"]),
    ],
)
def test_config_fields_are_bounded_and_typed(saved, tmp_path, section, values, fragments):
    path = with_config(saved, tmp_path / "hostile.dalle.safetensors", **{section: values})
    message = refused(path, "invalid config", *fragments)
    assert "\n" not in message
    with pytest.raises(BundleError, match="invalid config"):
        read_config(path)


def test_real_dalle_family_configs_are_within_bounds():
    from model.config import (
        DVAEConfig,
        RerankerConfig,
        TextConfig,
        TransformerConfig,
        config_from_dict,
    )

    mega = TransformerConfig(
        text_vocab=50264, text_len=64, image_vocab=16384, grid=16, dim=2048, depth=48, heads=32
    )
    surrealist = TransformerConfig(
        text_vocab=16384, text_len=128, image_vocab=8192, grid=32, dim=2560, depth=32, heads=32
    )
    for config in (mega, surrealist):
        assert config_from_dict(TransformerConfig, config.__dict__, "transformer") == config
    openai = DVAEConfig(image_size=256, n_hid=256, n_blk_per_group=2, vocab_size=8192)
    assert config_from_dict(DVAEConfig, openai.__dict__, "vae") == openai
    assert config_from_dict(TextConfig, {"vocab_size": 50264, "text_len": 64}, "text")
    assert config_from_dict(RerankerConfig, {"text_vocab": 50328, "image_size": 256}, "reranker")


def test_a_large_config_with_small_tensors_allocates_nothing(saved, tmp_path):
    # within bounds, 800 MB of weights by its config, a few hundred KB in the file: the shapes
    # are compared on the meta device and nothing the size of the config is ever allocated
    path = with_config(
        saved, tmp_path / "big.dalle.safetensors", transformer={"dim": 1024, "depth": 16}
    )
    before = peak_rss_mb()
    refused(path, "transformer.blocks")
    assert peak_rss_mb() - before < 300


def forged(path: Path, grid: int, text_len: int) -> Path:
    """A bundle written by hand, every tensor the right shape (zeros) but as few as possible,
    for a config whose models would be costly to build: a real save would build them."""
    from model.bundle import build_models

    tokenizer = CaptionTokenizer.train(CAPTIONS, vocab_size=300, text_len=text_len)
    config = BundleConfig(
        vae=DVAEConfig(image_size=grid * 4, n_groups=3, n_hid=4, vocab_size=8, n_init=4),
        text=TextConfig(vocab_size=tokenizer.vocab_size, text_len=text_len),
        transformer=TransformerConfig(
            text_vocab=tokenizer.vocab_size,
            text_len=text_len,
            image_vocab=8,
            grid=grid,
            dim=4,
            depth=1,
            heads=1,
            conv_kernel=3,
        ),
    )
    tensors = {
        f"{prefix}.{name}": torch.zeros(tensor.shape, dtype=tensor.dtype, device="cpu")
        for prefix, module in build_models(config, device="meta").items()
        for name, tensor in module.state_dict().items()
    }
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config.to_dict()),
        "tokenizer": tokenizer.to_json(),
        "card": "{}",
    }
    save_file(tensors, path, metadata=metadata)
    return path


def test_attention_tables_beyond_what_the_file_justifies_are_refused(tmp_path):
    small = load(forged(tmp_path / "small.dalle.safetensors", grid=8, text_len=8))
    assert small.config.transformer.grid == 8  # the forged layout is a valid bundle
    # a 128x128 grid after 2048 text positions: gigabytes of attention tables, for a tiny file
    path = forged(tmp_path / "tables.dalle.safetensors", grid=128, text_len=2048)
    assert path.stat().st_size < 2**20
    before = peak_rss_mb()
    message = refused(path, "attention tables", "128x128")
    assert peak_rss_mb() - before < 300
    assert "\n" not in message


def test_models_build_on_the_meta_device():
    from model.bundle import build_models
    from model.config import RerankerConfig

    config = BundleConfig(
        vae=DVAEConfig(image_size=256, n_hid=256, n_blk_per_group=2, vocab_size=8192),
        text=TextConfig(vocab_size=16384, text_len=128),
        transformer=TransformerConfig(
            text_vocab=16384, text_len=128, image_vocab=8192, grid=32, dim=2560, depth=32, heads=32
        ),
        reranker=RerankerConfig(text_vocab=16384 + 128, text_len=128, image_size=256),
    )
    before = peak_rss_mb()
    models = build_models(config, device="meta")
    assert peak_rss_mb() - before < 300  # ~3 billion parameters, none allocated
    weights = models["transformer"].state_dict()
    assert weights["text_pos.weight"].shape == (128, 2560) and weights["text_pos.weight"].is_meta
    assert all(t.is_meta for m in models.values() for t in m.state_dict().values())


def deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("key", ["config", "card", "tokenizer"])
def test_deeply_nested_metadata_is_refused(saved, tmp_path, key):
    def nest(meta):
        meta[key] = deep()

    path = rewrite(saved, tmp_path / "deep.dalle.safetensors", metadata=nest)
    message = refused(path, key)
    assert "\n" not in message


def raw_bundle(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def test_deeply_nested_header_is_refused(tmp_path):
    path = raw_bundle(tmp_path / "deep.dalle.safetensors", deep().encode())
    refused(path, "not a safetensors file", "nested")
    with pytest.raises(BundleError, match="nested"):
        read_card(path)


def test_huge_tensor_counts_and_headers_are_refused(saved, tmp_path):
    entry = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    many = {f"t{i}": entry for i in range(bundle_module.MAX_TENSORS + 1)}
    path = raw_bundle(tmp_path / "many.dalle.safetensors", json.dumps(many).encode())
    refused(path, "tensors", str(bundle_module.MAX_TENSORS + 1))
    big = tmp_path / "big-header.dalle.safetensors"
    with open(big, "wb") as f:
        f.write((bundle_module.MAX_HEADER_BYTES + 1).to_bytes(8, "little"))
        f.truncate(bundle_module.MAX_HEADER_BYTES + 16)  # sparse: the length is not a lie
    refused(big, "header", str(bundle_module.MAX_HEADER_BYTES + 1))


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": "12", "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},
        {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]},
        {"dtype": "F32", "shape": [2] * 40, "data_offsets": [0, 8]},
        ["not", "an", "object"],
    ],
)
def test_malformed_tensor_entries_are_refused(tmp_path, entry):
    header = json.dumps({"__metadata__": {"format": FORMAT}, "w": entry}).encode()
    path = raw_bundle(tmp_path / "entry.dalle.safetensors", header, b"\x00" * 8)
    refused(path, "tensor w")


@pytest.mark.parametrize(
    "offsets, data, words",
    [
        ({"a": [0, 8], "b": [4, 12]}, 12, ["tensor b overlaps"]),
        ({"a": [0, 8], "b": [12, 20]}, 20, ["leaves a gap before it"]),
        ({"a": [0, 8], "b": [8, 16]}, 24, ["24 bytes of data for tensors of 16"]),
    ],
)
def test_tensor_bytes_must_tile_the_data_section(tmp_path, offsets, data, words):
    """The weights are read tensor by tensor (``read_tensors``), each into memory of its own; the
    data section must be their bytes back to back, as safetensors itself requires."""
    header = {
        name: {"dtype": "F32", "shape": [2], "data_offsets": o} for name, o in offsets.items()
    }
    path = raw_bundle(tmp_path / "tiles.safetensors", json.dumps(header).encode(), bytes(data))
    with pytest.raises(BundleError) as caught:
        bundle_module.read_tensors(path)
    assert all(word in str(caught.value) for word in words), caught.value


def test_loaded_weights_are_their_own_memory(saved):
    """Not views of one mapping of the file: a model converted in place frees what it replaces."""
    tensors = bundle_module.read_tensors(saved)
    for name, tensor in tensors.items():
        assert tensor.untyped_storage().nbytes() == tensor.nbytes, name  # a storage of its own
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: no mapping of the file is left behind
        assert str(saved) not in maps.read_text()
