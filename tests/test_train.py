"""The trainer: exact resume, data-parallel steps on gloo, and clear errors for bad datasets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from model.config import PRESETS, DVAEConfig
from model.data.scenes import write_scenes
from model.training.train import train_vae
from model.training.trainer import TrainConfig, Trainer, lr_at, read_metrics
from tests.helpers import edit_stored_config

TINY_VAE = DVAEConfig(**PRESETS["tiny"]["vae"])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, 24, seed=1, size=32, workers=1)
    return folder


def tiny_train_config(**overrides) -> TrainConfig:
    values = dict(
        steps=6,
        batch_size=4,
        lr=1e-3,
        warmup=2,
        checkpoint_every=3,
        log_every=1,
        ema=0.9,
        seed=5,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def tiny_transformer(scenes, out, vae, **train):
    """A transformer run on the tiny preset (2 steps unless told); returns its bundle's path."""
    from model.config import TextConfig, TransformerConfig
    from model.training.train import train_transformer

    return train_transformer(
        scenes,
        out,
        vae,
        TextConfig(**PRESETS["tiny"]["text"]),
        TransformerConfig(**PRESETS["tiny"]["transformer"]),
        tiny_train_config(**{"steps": 2, **train}),
    )


class Stop(Exception):
    pass


def test_resume_equals_uninterrupted_run(scenes, tmp_path):
    straight = tmp_path / "straight"
    train_vae(scenes, straight, TINY_VAE, tiny_train_config())

    broken = tmp_path / "broken"

    def stop_at_first_checkpoint(trainer, path):
        raise Stop

    with pytest.raises(Stop):
        train_vae(
            scenes,
            broken,
            TINY_VAE,
            tiny_train_config(),
            callbacks=[("on_checkpoint", stop_at_first_checkpoint)],
        )
    state = torch.load(broken / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    train_vae(scenes, broken, TINY_VAE, tiny_train_config(), resume=True)

    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(broken / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert [m["step"] for m in read_metrics(broken)] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in read_metrics(broken)] == [m["loss"] for m in read_metrics(straight)]


def test_resume_without_checkpoint_is_refused(scenes, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_vae(scenes, tmp_path / "new", TINY_VAE, tiny_train_config(), resume=True)


def test_batches_cover_the_dataset_each_epoch():
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, lambda *a: None, 10, tiny_train_config(batch_size=5), Path("unused"))
    epoch = trainer.batch_indices(0) + trainer.batch_indices(1)
    assert sorted(epoch) == list(range(10))
    assert trainer.batch_indices(2) != trainer.batch_indices(0)  # reshuffled next epoch
    assert trainer.batch_indices(1) == trainer.batch_indices(1)  # deterministic


def test_learning_rate_schedule():
    config = tiny_train_config(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(99, config) == pytest.approx(0.1, abs=1e-3)
    values = [lr_at(s, config) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_empty_and_corrupt_dataset_folders_give_clear_errors(tmp_path, capsys):
    from model.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(
        [
            "train",
            "vae",
            "--data",
            str(empty),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "tiny",
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "no image–caption pairs found" in err and str(empty) in err
    assert len(err.splitlines()) == 1
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png at all")
    (corrupt / "a.txt").write_text("a red circle")
    code = main(
        [
            "train",
            "vae",
            "--data",
            str(corrupt),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "tiny",
            "--quiet",
        ]
    )
    assert code == 2
    assert "no image–caption pairs found" in capsys.readouterr().err
    code = main(
        [
            "train",
            "vae",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "tiny",
            "--quiet",
        ]
    )
    assert code == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_gloo_data_parallel_takes_two_steps(scenes, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "model.cli",
        "train",
        "vae",
        "--data",
        str(scenes),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "1",
        "--device",
        "cpu",
        "--quiet",
    ]
    # torchrun's launcher failed once in about 30 runs here, in a way not seen again; one retry
    # (in a fresh folder) keeps that from failing CI, and a real failure still fails twice
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        warnings.warn(f"torchrun failed once, retrying: {result.stderr[-1000:]}", stacklevel=1)
        shutil.rmtree(out, ignore_errors=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][-1] == 2
    assert (out / "vae.safetensors").is_file()
    assert records[-1]["world_size"] == 2


def test_set_reaches_training_fields_and_names_unknown_ones():
    from model.config import apply_sets

    config = apply_sets(TrainConfig(steps=5), {"lr": "0.5", "warmup": "7"})
    assert (config.steps, config.lr, config.warmup) == (5, 0.5, 7)
    vae = apply_sets(TINY_VAE, {"code_usage": "1.5", "kl_warmup": "0.25"})  # the dVAE's own
    assert (vae.code_usage, vae.kl_warmup, vae.n_hid) == (1.5, 0.25, TINY_VAE.n_hid)
    with pytest.raises(ValueError, match="unknown TrainConfig field 'code_usge'"):
        apply_sets(TrainConfig(), {"code_usge": "1"})


def test_recipe_fields_named_the_old_way_reach_their_stage_configs():
    """TrainConfig's dVAE and caption fields moved to DVAEConfig and TextConfig: a recipe with
    them in its "train" section, and --set train.KEY, still reach them (another stage's are
    dropped, as TrainConfig took and ignored them)."""
    from model.config import moved_sets, moved_to_stages, preset

    old = {"vae": {"n_hid": 32}, "train": {"steps": 9, "kl_warmup": 0.5, "bpe_dropout": 0.2}}
    assert moved_to_stages(old) == {
        "vae": {"n_hid": 32, "kl_warmup": 0.5},
        "text": {"bpe_dropout": 0.2},
        "train": {"steps": 9},
    }
    assert old["train"] == {"steps": 9, "kl_warmup": 0.5, "bpe_dropout": 0.2}  # not changed
    assert preset("default")["vae"]["kl_warmup"] == 0.5 and preset("default")["train"] == {}
    sets = {"lr": "1", "code_usage": "0.1", "caption_dropout": "0.3"}
    assert moved_sets(sets, "vae") == ({"lr": "1"}, {"code_usage": "0.1"})
    assert moved_sets(sets, "transformer") == ({"lr": "1"}, {"text.caption_dropout": "0.3"})
    assert moved_sets(sets, "reranker") == ({"lr": "1"}, {})


def test_old_set_train_names_train_the_dvae_and_are_written_in_its_file(scenes, tmp_path):
    from model import cli
    from model.bundle.tokenizer_files import load_vae

    out = tmp_path / "run"
    argv = ["train", "vae", "--preset", "tiny", "--data", str(scenes), "--out", str(out)]
    argv += ["--steps", "2", "--device", "cpu", "--quiet", "--set", "train.code_usage=0.5"]
    assert cli.main([*argv, "--set", "kl_weight=2", "--set", "train.warmup=1"]) == 0
    vae, card = load_vae(out / "vae.safetensors")
    assert (vae.config.code_usage, vae.config.kl_weight) == (0.5, 2.0)
    assert card["train"]["warmup"] == 1 and "code_usage" not in card["train"]
    again = tmp_path / "again"  # --init: the file's fields, the preset's and --set's on top
    argv = ["train", "vae", "--preset", "default", "--data", str(scenes), "--out", str(again)]
    argv += ["--init", str(out / "vae.safetensors"), "--steps", "1", "--device", "cpu"]
    assert cli.main([*argv, "--quiet", "--set", "train.tau_end=0.5"]) == 0
    tuned, _ = load_vae(again / "vae.safetensors")
    assert (tuned.config.kl_warmup, tuned.config.code_usage) == (0.5, 1.0)  # default preset's
    assert (tuned.config.tau_end, tuned.config.kl_weight) == (0.5, 2.0)
    assert tuned.config.architecture() == vae.config.architecture()


def test_set_values_take_their_fields_types():
    """--set text becomes the field's own type: "false" is False (it used to be a truthy string),
    betas a pair of floats; a value the type cannot take is one line naming the key."""
    from model.config import apply_sets

    texts = {"amp": "false", "betas": "0.9, 0.95", "steps": "12", "lr": "1e-3", "device": "cpu"}
    config = apply_sets(TrainConfig(), texts, "train.")
    assert config.amp is False and config.betas == (0.9, 0.95)
    assert (config.steps, config.lr, config.device) == (12, 1e-3, "cpu")
    assert type(config.steps) is int and type(config.lr) is float
    for text, value in [("true", True), ("1", True), ("YES", True), ("no", False), ("0", False)]:
        assert apply_sets(TrainConfig(amp=not value), {"amp": text}).amp is value
    refused = {
        "amp": ("maybe", "expected true or false"),
        "steps": ("1.5", "expected an integer"),
        "lr": ("fast", "expected a number"),
        "betas": ("0.9", "expected 2 comma-separated values"),
    }
    for key, (text, expected) in refused.items():
        with pytest.raises(ValueError) as error:
            apply_sets(TrainConfig(), {key: text}, "train.")
        message = str(error.value)
        assert f"train.{key}" in message and expected in message and "\n" not in message
    with pytest.raises(ValueError, match=r"--set train.nope: unknown TrainConfig field") as error:
        apply_sets(TrainConfig(), {"nope": "1"}, "train.")
    assert "'amp'" in str(error.value) and "'betas'" in str(error.value)  # the known ones


def test_presets_and_configs_given_are_never_changed():
    import copy

    from model.config import apply_sets, preset

    before = copy.deepcopy(PRESETS)
    chosen = preset("tiny")
    chosen["train"]["steps"] = 1
    chosen["vae"].clear()
    assert PRESETS == before
    config = TrainConfig()
    changed = apply_sets(config, {"amp": "false", "steps": "3"})
    assert config == TrainConfig() and (changed.amp, changed.steps) == (False, 3)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_train_command_sets_typed_fields_and_refuses_bad_ones(scenes, tmp_path, capsys):
    import copy

    from model import cli
    from model.bundle.tokenizer_files import load_vae

    before = copy.deepcopy(PRESETS)
    argv = ["train", "vae", "--data", str(scenes), "--preset", "tiny", "--steps", "1"]
    argv += ["--batch-size", "4", "--device", "cpu", "--quiet"]
    sets = ["--set", "train.amp=false", "--set", "train.betas=0.8,0.9", "--set", "n_hid=8"]
    assert cli.main(argv + sets + ["--out", str(tmp_path / "run")]) == 0
    vae, card = load_vae(tmp_path / "run" / "vae.safetensors")
    assert card["train"]["amp"] is False and card["train"]["betas"] == [0.8, 0.9]
    assert vae.config.n_hid == 8
    assert PRESETS == before
    capsys.readouterr()
    bad = argv + ["--set", "train.amp=maybe", "--out", str(tmp_path / "bad")]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.amp" in err and "true or false" in err
    assert not (tmp_path / "bad").exists()


def test_transformer_run_reuses_a_given_tokenizer_and_reranker_joins_it(scenes, tmp_path):
    """A reranker trained beside a transformer run shares its tokenizer, so `dalle bundle` can put
    them together; a run given --tokenizer keeps that tokenizer exactly. Neither run changes the
    configs it is given (the transformer's vocabulary and grid come from its tokenizer and dVAE,
    into a new config)."""
    from model.bundle import load
    from model.cli.training import assemble_bundle
    from model.config import RerankerConfig, TextConfig, TransformerConfig
    from model.tokenizers.text import CaptionTokenizer
    from model.training.train import train_reranker, train_transformer

    vae = train_vae(scenes, tmp_path / "vae", TINY_VAE, tiny_train_config(steps=2))
    first = tiny_transformer(scenes, tmp_path / "tf1", vae)
    tokenizer_file = tmp_path / "tf1" / "tokenizer.json"
    text_config = TextConfig(**PRESETS["tiny"]["text"])
    tf_config = TransformerConfig(**PRESETS["tiny"]["transformer"])
    second = train_transformer(
        scenes,
        tmp_path / "tf2",
        vae,
        text_config,
        tf_config,
        tiny_train_config(steps=2, seed=9),
        tokenizer_file=tokenizer_file,
    )
    assert text_config == TextConfig(**PRESETS["tiny"]["text"])
    assert tf_config == TransformerConfig(**PRESETS["tiny"]["transformer"])
    assert load(second).config.transformer.text_vocab != tf_config.text_vocab
    given = CaptionTokenizer.from_json(tokenizer_file.read_text(), load(first).tokenizer.text_len)
    assert load(second).tokenizer == given
    reranker_config = RerankerConfig(dim=16, text_layers=1, image_width=8)
    reranker = train_reranker(
        scenes, tmp_path / "rr", first, reranker_config, tiny_train_config(steps=2)
    )
    assert reranker_config == RerankerConfig(dim=16, text_layers=1, image_width=8)
    metrics = read_metrics(tmp_path / "rr")
    assert all(0.0 <= m["hard_accuracy"] <= 1.0 for m in metrics)
    out = assemble_bundle(second, tmp_path / "joined.dalle.safetensors", reranker)
    assert load(out).reranker is not None


def test_decoder_only_keeps_every_token_and_joins_the_bundle(scenes, tmp_path, capsys):
    """`train vae --decoder-only --init` changes the decoder and nothing the transformer reads:
    encoder weights and every image's tokens stay the same, and `dalle bundle --vae` accepts it
    only over the dVAE it started from."""
    from model.bundle import load
    from model.bundle.tokenizer_files import load_vae
    from model.data.folder import CaptionFolder

    base = train_vae(scenes, tmp_path / "vae", TINY_VAE, tiny_train_config(steps=2))
    tuned = train_vae(
        scenes,
        tmp_path / "dec",
        DVAEConfig(),  # ignored: --init's config wins
        tiny_train_config(steps=3, lr=1e-2),
        init=base,
        decoder_only=True,
    )
    old, _ = load_vae(base)
    new, card = load_vae(tuned)
    assert new.config == old.config and card["decoder_only"] and card["init"]["path"] == str(base)
    for name, value in old.encoder.state_dict().items():
        assert torch.equal(value, new.encoder.state_dict()[name]), name
    assert any(
        not torch.equal(value, new.decoder.state_dict()[name])
        for name, value in old.decoder.state_dict().items()
    )
    images = torch.stack([CaptionFolder(scenes, 32, augment=False)[i][0] for i in range(8)])
    assert torch.equal(old.encode(images), new.encode(images))
    assert not torch.equal(old.decode(old.encode(images)), new.decode(new.encode(images)))

    bundle = tiny_transformer(scenes, tmp_path / "tf", base, steps=1)
    out = tmp_path / "tuned.dalle.safetensors"
    argv = ["bundle", "--transformer", str(bundle), "--vae", str(tuned), "--out", str(out)]
    from model import cli

    assert cli.main(argv) == 0
    joined = load(out)
    for name, value in new.state_dict().items():
        assert torch.equal(value, joined.vae.state_dict()[name]), name
    assert joined.card["vae"]["decoder_only"]

    other = train_vae(scenes, tmp_path / "other", TINY_VAE, tiny_train_config(steps=2, seed=8))
    argv[4], argv[-1] = str(other), str(tmp_path / "never.dalle.safetensors")
    capsys.readouterr()
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encoder differs" in err
    assert not (tmp_path / "never.dalle.safetensors").exists()


def test_decoder_only_needs_init(scenes, tmp_path):
    with pytest.raises(ValueError, match="--decoder-only needs --init"):
        train_vae(scenes, tmp_path / "x", TINY_VAE, tiny_train_config(), decoder_only=True)


@pytest.mark.parametrize(
    "stage, init, decoder_only, decoder_sets, refusal",
    [
        ("vae", None, False, None, None),
        ("vae", "v.safetensors", False, None, None),  # a whole dVAE fine-tuned from a file
        ("vae", "v.safetensors", True, {"dec_n_hid": 8}, None),
        ("vae", None, True, None, "--decoder-only needs --init PATH"),
        ("vae", "v.safetensors", False, {"dec_n_hid": 8}, "need --decoder-only"),
        ("vq", None, False, None, None),
        ("vq", "q.safetensors", True, {"pool": 2}, None),
        ("vq", "q.safetensors", False, None, "--init PATH and --decoder-only together"),
        ("vq", None, True, None, "--init PATH and --decoder-only together"),
    ],
)
def test_check_start_is_the_one_rule_for_init_and_decoder_only(
    stage, init, decoder_only, decoder_sets, refusal
):
    """The recipes and the command line refuse by the same function: its verdict per case."""
    from model.training.train import check_start

    if refusal is None:
        check_start(stage, init, decoder_only, decoder_sets)
    else:
        with pytest.raises(ValueError, match=refusal):
            check_start(stage, init, decoder_only, decoder_sets)


def test_the_command_line_refuses_decoder_only_without_init_before_any_work(
    scenes, tmp_path, capsys
):
    from model import cli

    out = tmp_path / "run"
    argv = ["train", "vae", "--preset", "tiny", "--data", str(scenes), "--out", str(out)]
    assert cli.main([*argv, "--decoder-only"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--decoder-only needs --init PATH" in err
    assert not out.exists()


def test_freezing_a_dvae_s_tokens_leaves_only_its_decoder_to_train():
    from model.networks.dvae import DVAE

    vae = DVAE(TINY_VAE)
    vae.freeze_tokens()
    assert not any(p.requires_grad for p in vae.encoder.parameters())
    assert all(p.requires_grad for p in vae.decoder.parameters())


def test_decoder_only_can_grow_the_decoder(scenes, tmp_path, capsys):
    """--set dec_n_hid / dec_n_blk_per_group with --decoder-only: a bigger, fresh decoder on the
    same encoder; the tokens stay and the bundle takes it. Other --set keys are refused."""
    from model import cli
    from model.bundle import load
    from model.bundle.tokenizer_files import load_vae
    from model.data.folder import CaptionFolder

    base = train_vae(scenes, tmp_path / "vae", TINY_VAE, tiny_train_config(steps=2))
    argv = ["train", "vae", "--data", str(scenes), "--out", str(tmp_path / "big"), "--quiet"]
    argv += ["--init", str(base), "--decoder-only", "--steps", "2", "--batch-size", "4"]
    argv += ["--device", "cpu", "--set", "dec_n_hid=24", "--set", "dec_n_blk_per_group=2"]
    assert cli.main(argv) == 0
    old, _ = load_vae(base)
    big, _ = load_vae(tmp_path / "big" / "vae.safetensors")
    assert (big.config.decoder_n_hid, big.config.decoder_blocks) == (24, 2)
    assert big.config.encoder_config() == old.config.encoder_config()
    assert sum(p.numel() for p in big.decoder.parameters()) > sum(
        p.numel() for p in old.decoder.parameters()
    )
    images = torch.stack([CaptionFolder(scenes, 32, augment=False)[i][0] for i in range(8)])
    tokens = old.encode(images)
    assert torch.equal(big.encode(images), tokens)
    assert big.decode(tokens).shape == images.shape

    bundle = tiny_transformer(scenes, tmp_path / "tf", base, steps=1)
    out = tmp_path / "big.dalle.safetensors"
    bundle_argv = ["bundle", "--transformer", str(bundle), "--out", str(out)]
    assert cli.main(bundle_argv + ["--vae", str(tmp_path / "big" / "vae.safetensors")]) == 0
    joined = load(out)
    assert joined.config.vae == big.config
    assert torch.equal(joined.vae.decode(tokens), big.decode(tokens))

    capsys.readouterr()
    bad = argv[:-4] + ["--set", "n_hid=8", "--out", str(tmp_path / "bad")]
    assert cli.main(bad) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_hid" in err and "--init" in err


def test_transformer_init_fine_tunes_a_bundle(scenes, tmp_path, capsys):
    """`train transformer --init BUNDLE` starts from that bundle's weights, config and tokenizer:
    zero steps of learning rate leave the transformer exactly as it was."""
    from model import cli
    from model.bundle import load

    vae = train_vae(scenes, tmp_path / "vae", TINY_VAE, tiny_train_config(steps=2))
    first = tiny_transformer(scenes, tmp_path / "tf1", vae)
    argv = ["train", "transformer", "--data", str(scenes), "--vae", str(vae), "--quiet"]
    argv += ["--init", str(first), "--steps", "2", "--batch-size", "4", "--device", "cpu"]
    argv += ["--preset", "small", "--out", str(tmp_path / "tuned")]  # preset ignored: --init wins
    assert cli.main(argv + ["--lr", "0", "--set", "train.ema=0"]) == 0
    before, after = load(first), load(tmp_path / "tuned" / "model.dalle.safetensors")
    assert after.config.transformer == before.config.transformer
    assert after.tokenizer == before.tokenizer
    for name, value in before.transformer.state_dict().items():
        assert torch.equal(value, after.transformer.state_dict()[name]), name
    assert after.card["init"]["path"] == str(first)

    capsys.readouterr()
    assert cli.main(argv[:-1] + [str(tmp_path / "t2"), "--tokenizer", "x.json"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--init brings its own tokenizer" in err
    assert cli.main(argv[:-1] + [str(tmp_path / "t3"), "--set", "dim=96"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dim" in err and "--init" in err


def test_reranker_init_and_reconstructed_images(scenes, tmp_path, capsys):
    """`train reranker --init B` starts from B's reranker (zero learning rate keeps it exactly);
    `--reconstructed` trains on the bundle's dVAE reconstructions, recorded in the card."""
    from model import cli
    from model.bundle import load
    from model.config import RerankerConfig
    from model.training.train import reconstructions, train_reranker

    vae = train_vae(scenes, tmp_path / "vae", TINY_VAE, tiny_train_config(steps=2))
    bundle = tiny_transformer(scenes, tmp_path / "tf", vae)
    tiny = RerankerConfig(dim=16, text_layers=1, image_width=8)
    first = train_reranker(scenes, tmp_path / "rr", bundle, tiny, tiny_train_config(steps=2))

    from model.data.folder import CaptionFolder

    dataset = CaptionFolder(scenes, 32, augment=False)
    seen = reconstructions(load(bundle).vae, dataset, batch_size=5)
    assert seen.shape == (len(dataset), 3, 32, 32) and seen.dtype == torch.uint8
    original = dataset[0][0].mul(255).round()
    assert not torch.equal(seen[0].float(), original)  # a tiny dVAE does not reproduce pixels

    argv = ["train", "reranker", "--data", str(scenes), "--bundle", str(bundle), "--quiet"]
    argv += ["--init", str(first), "--steps", "2", "--batch-size", "4", "--device", "cpu"]
    argv += ["--reconstructed", "--out", str(tmp_path / "tuned")]
    assert cli.main(argv + ["--lr", "0", "--set", "train.ema=0"]) == 0
    before, after = load(first), load(tmp_path / "tuned" / "model.dalle.safetensors")
    assert after.config.reranker == before.config.reranker
    for name, value in before.reranker.state_dict().items():
        assert torch.equal(value, after.reranker.state_dict()[name]), name
    assert after.card["reranker"]["data"]["reconstructed"] is True

    capsys.readouterr()
    assert cli.main(argv[:-1] + [str(tmp_path / "t2"), "--init", str(bundle)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "carries no reranker" in err
    vae_argv = ["train", "vae", "--data", str(scenes), "--out", str(tmp_path / "v2")]
    assert cli.main(vae_argv + ["--reconstructed", "--quiet"]) != 0
    assert "--reconstructed is for train reranker only" in capsys.readouterr().err


# -- dVAE files are read through the bundle's checks ------------------------------------------


def saved_vae(tmp_path, **config_changes) -> Path:
    """A tiny dVAE file whose stored config (not its tensors) is edited by ``config_changes``."""
    from model.bundle.tokenizer_files import save_vae
    from model.networks.dvae import DVAE

    path = tmp_path / "vae.safetensors"
    save_vae(DVAE(TINY_VAE), path, {"steps": 1})
    if config_changes:
        edit_stored_config(path, **config_changes)
    return path


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"n_hid": 1_000_000}, ["n_hid", "1000000", "at most"]),
        ({"n_groups": "4"}, ["n_groups", "integer"]),
        ({"vocab_size": True}, ["vocab_size", "integer"]),
        ({"n_hid": 512}, ["wrong shape"]),  # within bounds: shapes compared on the meta device
    ],
)
def test_a_hostile_vae_file_is_refused_in_one_line(tmp_path, changes, fragments):
    from model.bundle.tokenizer_files import load_vae

    path = saved_vae(tmp_path, **changes)
    with pytest.raises(ValueError) as caught:
        load_vae(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_vae_file_with_deep_json_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from model.bundle.tokenizer_files import load_vae

    path = saved_vae(tmp_path)
    for key in ("config", "card"):
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata())
        meta[key] = "[" * 100_000 + "]" * 100_000
        save_file(load_file(path), path, metadata=meta)
        with pytest.raises(ValueError, match="nested too deeply"):
            load_vae(path)


def test_vae_round_trip_and_atomic_save(tmp_path):
    from model.bundle.tokenizer_files import load_vae, save_vae
    from model.networks.dvae import DVAE

    vae = DVAE(TINY_VAE)
    path = tmp_path / "vae.safetensors"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "vae.safetensors.tmp").symlink_to(victim)  # the old predictable temp name
    save_vae(vae, path, {"steps": 1})
    assert victim.read_text() == "keep me"
    loaded, card = load_vae(path)
    assert card == {"steps": 1}
    assert all(
        torch.equal(a, b)
        for a, b in zip(vae.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vae.safetensors",
        "vae.safetensors.tmp",
        "victim.txt",
    ]


def test_training_writers_do_not_follow_planted_symlinks(scenes, tmp_path):
    # checkpoint, metrics (rewritten on resume) and the tokenizer: none may write through a
    # symlink at its old predictable temporary name
    from model.training.trainer import CHECKPOINT, METRICS

    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (CHECKPOINT + ".tmp", METRICS + ".tmp", "tokenizer.json.tmp", "tokens.pt.tmp"):
        (out / name).symlink_to(victim)
    train_vae(scenes, out, TINY_VAE, tiny_train_config(steps=2, checkpoint_every=1))
    train_vae(scenes, out, TINY_VAE, tiny_train_config(steps=3, checkpoint_every=1), resume=True)
    assert victim.read_text() == "keep me"
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def tiny_trainer(out, **config):
    """A Trainer of one linear layer (no data to read): for what the loop writes."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)

    def step_fn(model, indices, step, generator):
        return {"loss": (model(torch.ones(1, 2)) ** 2).sum()}

    values = {"steps": 4, "checkpoint_every": 1, "warmup": 0, "ema": 0.0, **config}
    return Trainer(model, step_fn, 8, tiny_train_config(**values), out)


def test_metrics_lines_are_appended_to_the_one_file_opened_for_the_run(tmp_path):
    from model.training.trainer import METRICS

    trainer = tiny_trainer(tmp_path / "run")
    seen = []  # (inode, lines) after each record: a rewrite would give a new inode each time
    trainer.add_callback(
        "on_step",
        lambda t, metrics: seen.append(
            (os.stat(t.out_dir / METRICS).st_ino, len(read_metrics(t.out_dir)))
        ),
    )
    trainer.run()
    assert [lines for _, lines in seen] == [1, 2, 3, 4]
    assert len({inode for inode, _ in seen}) == 1
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_a_resumed_run_appends_after_the_lines_it_continues(tmp_path):
    from model.training.trainer import METRICS

    out = tmp_path / "run"
    tiny_trainer(out, steps=2).run()
    before = (out / METRICS).read_text()
    with open(out / METRICS, "a") as torn:  # a later run killed mid-line, after the checkpoint
        torn.write('{"step": 3, "lo')
    tiny_trainer(out, steps=4).run(resume=True)
    text = (out / METRICS).read_text()
    assert text.startswith(before) and text.endswith("\n")
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]


def test_a_symlink_at_the_metrics_path_is_refused_and_never_written_through(tmp_path):
    from model.training.trainer import METRICS

    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (out / METRICS).symlink_to(victim)
    with pytest.raises(ValueError, match="a symbolic link; refusing to write through it"):
        tiny_trainer(out).run()
    tiny_trainer(tmp_path / "fine", steps=2).run()  # a checkpoint to resume from, moved in
    shutil.copy(tmp_path / "fine" / "checkpoint.pt", out / "checkpoint.pt")
    with pytest.raises(ValueError, match="a symbolic link; refusing to write through it"):
        tiny_trainer(out).run(resume=True)
    assert victim.read_text() == "keep me\n"
    assert (out / METRICS).is_symlink()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_open_append_refuses_what_is_not_a_regular_file(tmp_path):
    from model.files import open_append

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        open_append(tmp_path / "pipe")  # nobody reads it: without the refusal, a hang
    with pytest.raises(ValueError, match="not a regular file"):
        open_append(tmp_path)  # a folder
    with open_append(tmp_path / "log.jsonl") as log:
        log.write("one\n")
    with open_append(tmp_path / "log.jsonl") as log:
        log.write("two\n")
    assert (tmp_path / "log.jsonl").read_text() == "one\ntwo\n"
