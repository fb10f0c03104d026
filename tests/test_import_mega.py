"""``dalle import mega|mini`` end to end on tiny input files written in the real formats
(min-dalle's ``torch.save`` state dicts under their names, a BART ``vocab.json`` and
``merges.txt``, min-dalle's ``detoker.pt``, dalle-mini's Flax ``flax_model.msgpack`` and
``config.json``); the bundle kinds the import writes ("bart" transformer and caption tokenizer,
"vqgan" image tokenizer); memory refusals; in-place precision for models too large to copy."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import model.bundle as bundle_module
from model.bundle import Bundle, BundleError, load, read_config, save
from model.cli import main
from model.config import (
    BartTextConfig,
    BundleConfig,
    SamplingOptions,
    TextConfig,
    TransformerConfig,
    VQGANConfig,
)
from model.geometry import Geometry, Plan
from model.importers import dalle_mega
from model.inference.images import paste_back, to_pil
from model.inference.sampling import Done, complete, plan_mask, prepared, run, sample_tokens
from model.networks.bart import BartConfig, BartDalle
from model.networks.precision import Int8Linear
from model.networks.transformer import Transformer
from model.networks.vqgan import VQGAN
from model.tokenizers.bart_text import BartTokenizer
from model.tokenizers.text import CaptionTokenizer
from tests.test_vqgan import _flax_tree, _to_bytes

pytest.importorskip("msgpack")

TEXT_LEN = 16
# a 16 px VQGAN of factor 4: a 4x4 grid of 64 codes; attention at the 4 px level and the middle
TINY_VQGAN = VQGANConfig(
    resolution=16,
    ch=32,
    ch_mult=(1, 1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    z_channels=32,
    embed_dim=8,
    n_embed=64,
)
VQGAN_CONFIG_JSON = {  # config.json as dalle-mini's, at TINY_VQGAN's sizes
    **{
        k: v
        for k, v in dataclasses.asdict(TINY_VQGAN).items()
        if k not in ("norm_eps", "value_range")
    },
    "ch_mult": list(TINY_VQGAN.ch_mult),
    "attn_resolutions": list(TINY_VQGAN.attn_resolutions),
    "out_ch": 3,
    "resamp_with_conv": True,
    "give_pre_end": False,
    "dropout": 0.0,
    "transformers_version": "4.9.0.dev0",
}
CAPTIONS = ["a red horse on the beach", "two dogs in the snow", "a painting of a city at night"]


def tiny_bart(text_vocab: int, **changes) -> BartConfig:
    values = dict(
        text_vocab=text_vocab,
        image_vocab=64,
        image_rows=72,  # rows past the codebook, as Mega's 16416 > 16384
        embed_dim=64,
        heads=4,
        glu_dim=40,  # not a multiple of 16, as Mini's 2730 (see Int8Linear.in_multiple)
        encoder_layers=2,
        decoder_layers=2,
        text_len=TEXT_LEN,
        grid=4,
        start_token=63,
    )
    return BartConfig(**{**values, **changes})


@torch.no_grad()
def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight random, LayerNorms and GroupNorms included (weight 1 +- 0.2, bias +- 0.2)."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=generator)
        if p.dim() == 1:
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
        else:
            p.copy_(noise / math.sqrt(p[0].numel()))
    return module.eval()


def write_bpe_files(folder: Path) -> tuple[Path, Path]:
    """A byte-level BPE saved as min-dalle's vocab.json and merges.txt ("#version" header), with
    BART's special ids <s> 0, <pad> 1, </s> 2, <unk> 3 (also docs/import_screenshots.py)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CAPTIONS * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = (Path(p) for p in tokenizer.model.save(str(folder)))
    return vocab, merges


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    return write_bpe_files(tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def text_vocab(bpe_files) -> int:
    return BartTokenizer.from_files(*bpe_files).vocab_size


def write_sources(
    folder: Path,
    bpe_files,
    config: BartConfig,
    which: str = "mega",
    seed: int = 0,
    detoker: bool = True,
) -> tuple[BartDalle, VQGAN]:
    """min-dalle's and dalle-mini's files for a random ``config`` model in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = dalle_mega.MODELS[which]
    model = randomised(BartDalle(config), seed)
    torch.save(model.encoder.state_dict(), folder / names.encoder)
    torch.save(model.decoder.state_dict(), folder / names.decoder)
    vocab, merges = bpe_files
    (folder / names.vocab).write_bytes(vocab.read_bytes())
    (folder / names.merges).write_bytes(merges.read_bytes())
    vqgan = randomised(VQGAN(TINY_VQGAN), seed + 1)
    state = vqgan.state_dict()
    (folder / "flax_model.msgpack").write_bytes(_to_bytes(_flax_tree(state), chunk_bytes=4000))
    (folder / "config.json").write_text(json.dumps(VQGAN_CONFIG_JSON))
    if detoker:  # min-dalle's VQGanDetokenizer names the codebook "embedding"
        half = {k: v for k, v in state.items() if k.startswith(("decoder.", "post_quant_conv."))}
        half["embedding.weight"] = state["quantize.embedding.weight"]
        torch.save(half, folder / "detoker.pt")
    return model, vqgan


def run_import(*args) -> int:
    return main(["import", *map(str, args)])


def last_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("dalle import: error: "), lines
    return lines[-1]


@pytest.fixture
def tiny_preset(monkeypatch, text_vocab) -> BartConfig:
    """The "mega" preset at a tiny size (``dalle_mega.PRESETS`` is looked up at call time)."""
    config = tiny_bart(text_vocab)
    monkeypatch.setitem(dalle_mega.PRESETS, "mega", config)
    return config


@pytest.fixture
def imported(tmp_path, bpe_files, tiny_preset, capsys):
    source = tmp_path / "min-dalle"
    reference, vqgan = write_sources(source, bpe_files, tiny_preset)
    out = tmp_path / "out" / "mega.dalle.safetensors"
    assert run_import("mega", "--from", source, "--out", out, "--dtype", "fp32") == 0
    err = capsys.readouterr().err
    assert "hashing encoder.pt" in err and "writing" in err  # progress on stderr
    return out, source, reference, vqgan


# -- end to end --------------------------------------------------------------------------------


def test_import_writes_a_bundle_that_completes_a_rectangle(imported):
    out, source, reference, vqgan = imported
    bundle = load(out)
    config = bundle.config
    assert (config.vae_kind, config.text_kind, config.transformer_kind) == ("vqgan", "bart", "bart")
    assert isinstance(bundle.transformer, BartDalle) and isinstance(bundle.vae, VQGAN)
    assert isinstance(bundle.tokenizer, BartTokenizer) and bundle.reranker is None
    assert bundle.transformer.precision == "fp32"
    # the weights are the files', bit for bit (fp32)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(bundle.transformer.state_dict()[name], tensor), name
    for name, tensor in vqgan.state_dict().items():
        assert torch.equal(bundle.vae.state_dict()[name], tensor), name

    card = bundle.card
    files = card["imported"]["files"]
    inputs = ["encoder.pt", "decoder.pt", "vocab.json", "merges.txt", "flax_model.msgpack"]
    for name in [*inputs, "config.json", "detoker.pt"]:
        assert files[name] == hashlib.sha256((source / name).read_bytes()).hexdigest(), name
    assert "Apache-2.0" in card["imported"]["licence"]["weights"]
    assert "MIT" in card["imported"]["licence"]["conversion"]
    assert "kuprel/min-dalle" in json.dumps(card) and "vqgan_imagenet_f16_16384" in json.dumps(card)
    assert card["imported"]["dtype"] == "fp32" and "agrees" in card["imported"]["vqgan_decoder"]
    assert card["parameters"] == reference.num_parameters()

    # completion: a 2x3 rectangle from cell (2, 1); everything outside it kept
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    own = bundle.vae.encode(image.unsqueeze(0))[0]
    options = SamplingOptions(n=2, seed=4, guidance=3.0, top_k=16)
    messages = list(complete(bundle, image, (2, 1), CAPTIONS[0], options))
    done = messages[-1]
    assert isinstance(done, Done) and done.images.shape == (2, 3, 16, 16)
    mask = plan_mask(Plan(4, 2, 1))
    assert done.model_calls == int(mask.sum()) == 6 and done.scores is None
    original = to_pil(image)
    geometry = Geometry(16, 16, 16, 4)
    for tokens, decoded in zip(done.tokens, done.images, strict=True):
        assert torch.equal(tokens[~mask], own[~mask])  # kept tokens
        pasted = np.asarray(paste_back(original, decoded, geometry, (2, 1)))
        kept = np.ones((16, 16), dtype=bool)
        kept[8:, 4:] = False
        assert np.array_equal(pasted[kept], np.asarray(original)[kept])  # kept pixels


def test_the_bundle_samples_what_the_source_model_samples(imported, bpe_files):
    out, _, reference, _ = imported
    bundle = load(out)
    tokenizer = BartTokenizer.from_files(*bpe_files, text_len=TEXT_LEN)
    assert bundle.tokenizer == tokenizer
    text, empty = tokenizer.encode([CAPTIONS[1]])[0], tokenizer.empty(1)[0]
    image = torch.randint(0, 64, (4, 4), generator=torch.Generator().manual_seed(0))
    options = SamplingOptions(n=2, seed=9, guidance=2.0)
    ours = run(sample_tokens(bundle.transformer, text, image, Plan(4, 1, 1), options, empty))
    theirs = run(sample_tokens(reference, text, image, Plan(4, 1, 1), options, empty))
    assert torch.equal(ours.tokens, theirs.tokens)


def test_bf16_import_is_stored_and_loaded_in_bf16(tmp_path, bpe_files, tiny_preset, capsys):
    source = tmp_path / "src"
    reference, _ = write_sources(source, bpe_files, tiny_preset, detoker=False)
    out = tmp_path / "mega.dalle.safetensors"
    assert run_import("mega", "--from", source, "--out", out) == 0  # bf16 is the default
    with safe_open(str(out), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if k.startswith("transformer.")}
        vae_dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if k.startswith("vae.")}
    assert dtypes == {"BF16"} and vae_dtypes == {"F32"}
    bundle = load(out)
    assert bundle.transformer.precision == "bf16"
    assert bundle.card["imported"]["dtype"] == "bf16"
    assert "no detoker.pt" in bundle.card["imported"]["vqgan_decoder"]
    weight = bundle.transformer.decoder.lm_head.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, reference.decoder.lm_head.weight.to(torch.bfloat16))
    image = torch.rand(3, 16, 16)
    done = run(complete(bundle, image, (3, 2), "a dog", SamplingOptions(seed=0), precision="bf16"))
    assert done.tokens.shape == (1, 4, 4)


def test_vqgan_dir_may_be_another_folder(tmp_path, bpe_files, tiny_preset, capsys):
    source, vqgan_dir = tmp_path / "min-dalle", tmp_path / "vqgan"
    write_sources(source, bpe_files, tiny_preset)
    vqgan_dir.mkdir()
    for name in ("flax_model.msgpack", "config.json"):
        (source / name).rename(vqgan_dir / name)
    out = tmp_path / "m.dalle.safetensors"
    args = ("mega", "--from", source, "--out", out)
    assert run_import(*args) == 2
    assert "vqgan_imagenet_f16_16384" in last_error(capsys)
    assert run_import(*args, "--vqgan-dir", vqgan_dir) == 0


# -- refusals -----------------------------------------------------------------------------------


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["encoder.pt", "detoker.pt"])
def test_a_malicious_pickle_is_refused_and_never_run(
    tmp_path, bpe_files, tiny_preset, capsys, name
):
    source = tmp_path / "src"
    write_sources(source, bpe_files, tiny_preset)
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, source / name)
    out = tmp_path / "m.dalle.safetensors"
    assert run_import("mega", "--from", source, "--out", out) == 2
    error = last_error(capsys)
    assert name in error and "refused" in error and "system" in error
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    "missing, words",
    [
        ("merges.txt", ["merges.txt: missing", "kuprel/min-dalle"]),
        ("decoder.pt", ["decoder.pt: missing", "kuprel/min-dalle"]),
        ("flax_model.msgpack", ["flax_model.msgpack: missing", "vqgan_imagenet_f16_16384"]),
        ("config.json", ["config.json: missing", "vqgan_imagenet_f16_16384"]),
    ],
)
def test_a_missing_file_is_named_with_its_repository(
    tmp_path, bpe_files, tiny_preset, capsys, missing, words
):
    source = tmp_path / "src"
    write_sources(source, bpe_files, tiny_preset)
    (source / missing).unlink()
    out = tmp_path / "m.dalle.safetensors"
    assert run_import("mega", "--from", source, "--out", out) == 2
    error = last_error(capsys)
    assert all(word in error for word in words), error
    assert not out.exists()


def test_mini_files_given_as_mega_are_named(tmp_path, bpe_files, text_vocab, monkeypatch, capsys):
    mega, mini = tiny_bart(text_vocab), tiny_bart(text_vocab, embed_dim=32, heads=2, glu_dim=48)
    monkeypatch.setitem(dalle_mega.PRESETS, "mega", mega)
    monkeypatch.setitem(dalle_mega.PRESETS, "mini", mini)
    out = tmp_path / "m.dalle.safetensors"
    # Mini's file names in the folder
    source = tmp_path / "mini-named"
    write_sources(source, bpe_files, mini, which="mini")
    assert run_import("mega", "--from", source, "--out", out) == 2
    error = last_error(capsys)
    assert "DALL·E Mini's encoder_mini.pt" in error and "run `dalle import mini`" in error
    # Mini's sizes under Mega's names
    source = tmp_path / "mini-sized"
    write_sources(source, bpe_files, mini, which="mega")
    assert run_import("mega", "--from", source, "--out", out) == 2
    error = last_error(capsys)
    assert "hold DALL·E Mini (embed_dim 32" in error and "run `dalle import mini`" in error
    assert run_import("mini", "--from", tmp_path / "mini-named", "--out", out) == 0
    assert load(out).config.transformer == mini


def test_wrong_shapes_and_sizes_are_one_line(tmp_path, bpe_files, tiny_preset, capsys):
    source = tmp_path / "src"
    reference, _ = write_sources(source, bpe_files, tiny_preset)
    out = tmp_path / "m.dalle.safetensors"
    state = reference.decoder.state_dict()
    state["layers.1.glu.fc2.weight"] = torch.zeros(64, 39)
    torch.save(state, source / "decoder.pt")
    assert run_import("mega", "--from", source, "--out", out) == 2
    error = last_error(capsys)
    assert "'layers.1.glu.fc2.weight' has shape (64, 39), expected (64, 40)" in error
    # an encoder given as the decoder
    torch.save(reference.decoder.state_dict(), source / "encoder.pt")
    assert run_import("mega", "--from", source, "--out", out) == 2
    assert "encoder.pt holds a decoder" in last_error(capsys)
    # a decoder whose sizes are not the preset's
    write_sources(source, bpe_files, dataclasses.replace(tiny_preset, decoder_layers=3))
    assert run_import("mega", "--from", source, "--out", out) == 2
    assert "decoder_layers is 3, expected 2" in last_error(capsys)
    assert not out.exists()


def test_a_corrupt_msgpack_and_a_wrong_vqgan_are_refused(tmp_path, bpe_files, tiny_preset, capsys):
    source = tmp_path / "src"
    write_sources(source, bpe_files, tiny_preset)
    out = tmp_path / "m.dalle.safetensors"
    flax = source / "flax_model.msgpack"
    good = flax.read_bytes()
    flax.write_bytes(good[: len(good) // 2])
    assert run_import("mega", "--from", source, "--out", out) == 2
    assert "flax_model.msgpack" in last_error(capsys)
    flax.write_bytes(b"\xc1" + good)  # 0xc1 is never used in msgpack
    assert run_import("mega", "--from", source, "--out", out) == 2
    assert "flax_model.msgpack" in last_error(capsys)
    flax.write_bytes(good)
    # config.json of another VQGAN
    (source / "config.json").write_text(json.dumps({**VQGAN_CONFIG_JSON, "n_embed": 128}))
    assert run_import("mega", "--from", source, "--out", out) == 2
    assert "128 codes" in last_error(capsys)
    (source / "config.json").write_text(json.dumps(VQGAN_CONFIG_JSON))
    # a detoker.pt of another VQGAN than the Flax file's
    write_sources(tmp_path / "other", bpe_files, tiny_preset, seed=5)
    (tmp_path / "other" / "detoker.pt").rename(source / "detoker.pt")
    assert run_import("mega", "--from", source, "--out", out) == 2
    assert "hold different VQGAN decoders" in last_error(capsys)
    assert not out.exists()


def test_out_must_be_a_bundle_name(tmp_path, bpe_files, tiny_preset, capsys):
    source = tmp_path / "src"
    write_sources(source, bpe_files, tiny_preset)
    assert run_import("mega", "--from", source, "--out", tmp_path / "m.safetensors") == 2
    assert ".dalle.safetensors" in last_error(capsys)
    assert (
        run_import("mega", "--from", tmp_path / "none", "--out", tmp_path / "m.dalle.safetensors")
        == 2
    )
    assert "no such folder" in last_error(capsys)


def test_import_refuses_what_memory_cannot_hold(
    tmp_path, bpe_files, tiny_preset, monkeypatch, capsys
):
    source = tmp_path / "src"
    write_sources(source, bpe_files, tiny_preset)
    monkeypatch.setattr("model.device.available_memory", lambda device: 10**6)
    assert run_import("mega", "--from", source, "--out", tmp_path / "m.dalle.safetensors") == 2
    error = last_error(capsys)
    assert "converting needs about" in error and "1 MB available" in error


# -- the bundle kinds ---------------------------------------------------------------------------


def bart_bundle(bpe_files, dtype=torch.float32, seed=0) -> Bundle:
    tokenizer = BartTokenizer.from_files(*bpe_files, text_len=TEXT_LEN)
    config = BundleConfig(
        vae=TINY_VQGAN,
        text=BartTextConfig(vocab_size=tokenizer.vocab_size, text_len=TEXT_LEN),
        transformer=tiny_bart(tokenizer.vocab_size),
    )
    transformer = randomised(BartDalle(config.transformer), seed).to(dtype)
    transformer.precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    vae = randomised(VQGAN(config.vae), seed + 1)
    return Bundle(config, vae, transformer, tokenizer, card={"name": "tiny bart"})


def stored_config(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["config"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_bart_bundle_round_trips(tmp_path, bpe_files, dtype):
    original = bart_bundle(bpe_files, dtype)
    path = save(original, tmp_path / "b.dalle.safetensors")
    stored = stored_config(path)
    assert stored["vae"]["kind"] == "vqgan" and stored["text"]["kind"] == "bart"
    assert stored["transformer"]["kind"] == "bart"
    assert read_config(path) == original.config
    loaded = load(path)
    assert loaded.config == original.config and loaded.card == original.card
    assert loaded.tokenizer == original.tokenizer
    for prefix in ("vae", "transformer"):
        before, after = getattr(original, prefix).state_dict(), getattr(loaded, prefix).state_dict()
        assert before.keys() == after.keys()
        for name in before:
            assert before[name].dtype == after[name].dtype and torch.equal(
                before[name], after[name]
            )
    assert (
        not loaded.transformer.training
        and loaded.transformer.precision == original.transformer.precision
    )
    again = save(loaded, tmp_path / "again.dalle.safetensors")
    with safe_open(str(path), "pt") as a, safe_open(str(again), "pt") as b:
        assert a.metadata() == b.metadata()


def test_a_vqgan_next_to_our_transformer_round_trips(tmp_path):
    """The image tokenizer kind alone: a VQGAN under our own transformer and BPE."""
    tokenizer = CaptionTokenizer.train(CAPTIONS * 4, vocab_size=300, text_len=8)
    config = BundleConfig(
        vae=TINY_VQGAN,
        text=TextConfig(vocab_size=tokenizer.vocab_size, text_len=8),
        transformer=TransformerConfig(
            text_vocab=tokenizer.vocab_size, text_len=8, image_vocab=64, grid=4, dim=32,
            depth=2, heads=2, conv_kernel=3,
        ),
    )  # fmt: skip
    original = Bundle(
        config, randomised(VQGAN(TINY_VQGAN), 2), Transformer(config.transformer).eval(), tokenizer
    )
    path = save(original, tmp_path / "v.dalle.safetensors")
    stored = stored_config(path)
    assert stored["vae"]["kind"] == "vqgan" and "kind" not in stored["text"]
    assert "kind" not in stored["transformer"]
    loaded = load(path)
    for name, tensor in original.vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[name], tensor)
    done = run(
        complete(loaded, torch.rand(3, 16, 16), (2, 2), "a red circle", SamplingOptions(seed=1))
    )
    assert done.model_calls == 4


def rewrite_bundle(src: Path, dst: Path, config=None, tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    contents = load_file(src)
    if config:
        data = json.loads(meta["config"])
        config(data)
        meta["config"] = json.dumps(data)
    if tensors:
        tensors(contents)
    save_file(contents, dst, metadata=meta)
    return dst


def section(name: str, **values):
    return lambda config: config[name].update(values)


def tensor(name: str, value: torch.Tensor):
    return lambda tensors: tensors.update({name: value})


LM_HEAD, FINAL_LN = "transformer.decoder.lm_head.weight", "transformer.encoder.final_ln.bias"


@pytest.mark.parametrize(
    "config, tensors, words",
    [
        (section("transformer", heads=5), None, ["transformer:", "not divisible by heads 5"]),
        (section("transformer", embed_dim="64"), None, ["transformer.embed_dim", "integer"]),
        (section("transformer", decoder_layers=10**6), None, ["decoder_layers", "at most 256"]),
        (section("transformer", colour=1), None, ["unknown BartConfig fields"]),
        (section("transformer", kind="gpt"), None, ["transformer.kind is 'gpt'"]),
        (section("text", kind="sentencepiece"), None, ["text.kind is 'sentencepiece'"]),
        (section("text", text_len=8), None, ["text.text_len 8 != transformer.text_len 16"]),
        (lambda c: c["text"].pop("kind"), None, ["'bart' cannot read captions of text.kind 'bpe'"]),
        (section("text", vocab_size=10**5), None, ["text.vocab_size 100000 is more than one"]),
        (section("vae", ch_mult=[1, 0]), None, ["vae.ch_mult holds 0", "at least 1"]),
        (section("vae", ch_mult="1,1,2"), None, ["vae.ch_mult", "list"]),
        (section("vae", value_range="0,255"), None, ["vae.value_range", "expected one of"]),
        (section("vae", double_z=1), None, ["vae.double_z", "true or false"]),
        (section("vae", n_embed=128), None, ["vae.vocab_size 128 != transformer.image_vocab 64"]),
        (lambda c: c.update(reranker={}), None, ["a reranker reads 'bpe' caption ids"]),
        (None, tensor(LM_HEAD, torch.zeros(72, 64, dtype=torch.bfloat16)), ["mix BF16, F32"]),
        (None, tensor("vae.quant_conv.bias", torch.zeros(8, dtype=torch.float64)), ["are F64"]),
        (None, tensor(FINAL_LN, torch.full((64,), float("nan"))), ["non-finite"]),
        (None, tensor(FINAL_LN, torch.zeros(65)), ["wrong shape"]),
    ],
)
def test_hostile_bart_bundles_are_one_line_errors(tmp_path, bpe_files, config, tensors, words):
    source = save(bart_bundle(bpe_files), tmp_path / "b.dalle.safetensors")
    target = rewrite_bundle(source, tmp_path / "hostile.dalle.safetensors", config, tensors)
    with pytest.raises(BundleError) as caught:
        load(target)
    message = str(caught.value)
    assert all(word in message for word in words), message
    assert "\n" not in message and str(target) in message


def test_load_refuses_what_memory_cannot_hold(tmp_path, bpe_files, monkeypatch):
    path = save(bart_bundle(bpe_files), tmp_path / "b.dalle.safetensors")
    read = []
    monkeypatch.setattr("model.bundle.io.read_tensors", lambda p: read.append(p))
    monkeypatch.setattr("model.bundle.checks.available_memory", lambda device: 3 * 10**6)
    with pytest.raises(BundleError) as caught:
        load(path)
    message = str(caught.value)
    assert "needs about" in message and "3 MB available" in message
    assert message.endswith("close other programs or use a smaller model") and not read
    needed = int(message.split("needs about ")[1].split(" MB")[0])
    assert needed >= path.stat().st_size // 10**6  # at least the weights themselves


def test_the_memory_estimate_counts_stored_tensors_once_for_imported_kinds(tmp_path, bpe_files):
    path = save(bart_bundle(bpe_files, torch.bfloat16), tmp_path / "b.dalle.safetensors")
    header = bundle_module.read_header(path)
    config = read_config(path)
    shapes = bundle_module.build_models(config, device="meta")
    stored = sum(e.end - e.begin for e in header.tensors.values())
    largest = max(e.end - e.begin for e in header.tensors.values())
    assert bundle_module.memory_to_load(header, config, shapes) == stored + largest


def test_imported_models_are_assigned_not_copied(tmp_path, bpe_files, monkeypatch):
    """The bart transformer and the VQGAN are built on the meta device and take the file's
    tensors: nothing is built for real and copied into."""
    path = save(bart_bundle(bpe_files, torch.bfloat16), tmp_path / "b.dalle.safetensors")
    devices = []
    real_build = bundle_module.build_model

    def build_model(config, prefix, device=None):
        devices.append(str(device))
        return real_build(config, prefix, device)

    monkeypatch.setattr("model.bundle.kinds.build_model", build_model)  # the shape check's
    monkeypatch.setattr("model.bundle.io.build_model", build_model)  # for real
    loaded = load(path)
    assert devices == ["meta", "meta"]  # the shape check's builds; none for real
    assert all(p.dtype == torch.bfloat16 for p in loaded.transformer.parameters())
    assert all(p.dtype == torch.float32 for p in loaded.vae.parameters())


# -- precision: converted in place --------------------------------------------------------------


def test_prepared_converts_a_bart_model_in_place(tmp_path, bpe_files):
    bundle = bart_bundle(bpe_files)
    model = bundle.transformer
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepared(model, "fp32") is model
    assert prepared(model, "bf16") is model and model.precision == "bf16"
    assert model.decoder.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(model.decoder.lm_head.weight, reference["decoder.lm_head.weight"].bfloat16())
    assert prepared(model, "int8") is model and model.precision == "int8"
    linear = model.decoder.layers[0].glu.fc0
    assert isinstance(linear, Int8Linear) and linear.dense is None  # no bf16 copy kept
    assert prepared(model, "auto") is model  # int8 on this CPU, or kept: never widened
    with pytest.raises(ValueError, match="converted to int8 in place.*load the model again"):
        prepared(model, "bf16")
    with pytest.raises(BundleError, match="converted to int8"):
        save(bundle, tmp_path / "x.dalle.safetensors")
    image = torch.rand(3, 16, 16)
    for rows in (1, 6):  # 6 candidates with guidance: 12 rows, past the int8 kernel's 8
        options = SamplingOptions(n=rows, guidance=2.0, seed=0)
        done = run(complete(bundle, image, (2, 2), "a dog", options, precision="int8"))
        assert done.tokens.shape == (rows, 4, 4)


def test_widening_in_place_is_refused_when_memory_is_short(bpe_files, monkeypatch):
    model = bart_bundle(bpe_files, torch.bfloat16).transformer
    monkeypatch.setattr("model.device.available_memory", lambda device: 1000)
    with pytest.raises(ValueError, match="sampling in fp32 needs about .* more memory"):
        prepared(model, "fp32")
    assert model.precision == "bf16"
    monkeypatch.undo()
    assert prepared(model, "auto") is model and model.precision in ("int8", "bf16")


@pytest.mark.parametrize("width", [64, 40, 2730])
def test_int8_without_a_dense_copy_computes_what_the_int8_kernel_does(width):
    """Both paths (the int8 kernel up to 8 rows, the widened weights above) at input widths
    the kernel cannot take as they are (it reads blocks of 16: DALL·E Mini's GLU is 2730)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, 24)
    dense, lean = Int8Linear(linear), Int8Linear(linear, keep_dense=False)
    x = torch.randn(3, 16, width)  # 48 rows: the wide path
    with torch.no_grad():
        exact = linear(x)
        rows = torch.stack([lean(row) for row in x.reshape(-1, 1, width)]).reshape(3, 16, 24)
    for y in (lean(x), dense(x), rows):  # within int8's rounding of the fp32 result
        assert torch.isfinite(y).all()
        assert (y.float() - exact).abs().max() < 0.03 * exact.abs().max()


def test_a_bart_tokenizer_reads_ids_past_the_encoder_as_unk(bpe_files):
    tokenizer = BartTokenizer.from_files(*bpe_files, text_len=TEXT_LEN)
    ids = tokenizer.encode(["painting"])[0]
    top = int(ids.max())
    tokenizer.rows = top  # as bundle.load sets it for an encoder with fewer rows
    assert int(tokenizer.encode(["painting"])[0].max()) < top
    assert 3 in tokenizer.encode(["painting"])[0].tolist()  # <unk>


# -- dalle bench on an imported kind --------------------------------------------------------------


def test_bench_times_a_bart_bundle(tmp_path, capsys):
    from model.evaluation.bench import random_bart_bundle, step_bytes

    config = tiny_bart(120)
    path = random_bart_bundle(config, tmp_path / "r.dalle.safetensors", vqgan=TINY_VQGAN)
    bundle = load(path)
    assert bundle.config.transformer == config and bundle.transformer.precision == "bf16"
    assert bundle.tokenizer.vocab_size == 121  # one id past the encoder, as DALL·E Mini's
    decoder_weights = sum(
        p.numel() * p.element_size()
        for name, p in bundle.transformer.named_parameters()
        if name.startswith("decoder.") and ".embed_" not in name  # rows, not matrices
    )
    cache = 2 * 2 * 64 * (16 + TEXT_LEN) * 2  # per layer: keys and values, every slot, bf16
    assert step_bytes(bundle.transformer, 1) == decoder_weights + cache

    args = ["bench", "--bundle", path, "--batch", "1", "--repeats", "1", "--precision", "int8"]
    assert main([*map(str, args), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "BartDalle" and report["precision"] == "int8"
    assert report["load_seconds"] > 0 and report["peak_memory_after_load_mb"] > 0
    assert [(r["task"], r["cells"]) for r in report["runs"]] == [("full", 16), ("quarter", 4)]
