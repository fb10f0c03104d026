"""``dalle data``, ``dalle train`` and ``dalle bundle``: a model made from data, stage by stage.

The stage recipes (``model/training/train.py``) take typed configs and know nothing of arguments;
this module turns flags, presets and ``--set KEY=VALUE`` (parsed by ``model.config``) into those
configs, shows the Trainer's progress, and assembles the finished bundle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from model.cli.common import CLIError, ProgressBar, check_can_create, output_folder
from model.cli.overwrite import given, refuse_overwrite
from model.config import DVAE_TRAINING, TEXT_TRAINING

# what a training run writes into --out (model/training/train.py, model/training/trainer.py);
# --resume reads the checkpoint and metrics back on purpose, so they are not inputs
RUN_FILES = (
    "vae.safetensors",
    "vq.safetensors",
    "tokenizer.json",
    "tokens.pt",
    "model.dalle.safetensors",
    "checkpoint.pt",
    "metrics.jsonl",
)


def cmd_data(args) -> int:
    from model.data.scenes import write_scenes

    if args.count <= 0:
        raise CLIError(f"--count must be positive, got {args.count}")
    out = Path(args.out)
    check_can_create(out)
    bar = None if args.quiet else ProgressBar(args.count, "scenes", "images")
    with output_folder(out):
        try:
            written = write_scenes(
                out,
                args.count,
                seed=args.seed,
                size=args.size,
                split=args.split,
                workers=args.workers,
                progress=(lambda done, total: bar.update(done)) if bar else None,
            )
        except ValueError as error:  # a size the generator cannot draw, say
            raise CLIError(str(error)) from None
    if bar:
        bar.close()
    print(f"wrote {written} scenes to {out}")
    return 0


# -- train -------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    """``dalle train STAGE``: stage configs from a preset, overridden by --set and flags."""
    from model.config import moved_sets, parse_sets, preset, sets_under

    try:
        chosen = preset(args.preset)
        train_sets, sets = sets_under(parse_sets(args.set), "train.")
        train_sets, moved = moved_sets(train_sets, args.stage)  # train.KEY of a stage's field
        sets = {**moved, **sets}
        config = train_config(args, chosen["train"], train_sets)
        if not Path(args.data).is_dir():
            raise FileNotFoundError(f"{args.data}: no such data folder")
        callbacks = [] if args.quiet else progress_callbacks(config.steps, args.stage)
        check_stage_flags(args, sets)
        refuse_overwrite(
            [Path(args.out) / name for name in RUN_FILES],
            given(
                ("--vae", args.vae),
                ("--bundle", args.bundle),
                ("--init", args.init),
                ("--tokenizer", args.tokenizer),
            ),
            args.overwrite,
        )
        path = train_stage(args, chosen, config, sets, callbacks)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from None
    print(path)
    return 0


def train_config(args, preset_values: dict, sets: dict[str, str]):
    """The TrainConfig of a run: the preset's values (under VQ_TRAIN's for ``train vq``), the
    flags given, then ``--set train.*``."""
    from model.config import VQ_TRAIN, apply_sets
    from model.training.trainer import TrainConfig

    values = {**VQ_TRAIN, **preset_values} if args.stage == "vq" else dict(preset_values)
    for key, value in (
        ("steps", args.steps),
        ("batch_size", args.batch_size),
        ("lr", args.lr),
        ("checkpoint_every", args.checkpoint_every),
    ):
        if value is not None:
            values[key] = value
    values.update(seed=args.seed, device=args.device)
    config = apply_sets(TrainConfig(**values), sets, "train.")
    if config.steps <= 0 or config.batch_size <= 0:
        raise ValueError("--steps and --batch-size must be positive")
    return config


def progress_callbacks(steps: int, label: str) -> list:
    """The Trainer callbacks that draw a progress bar of ``steps`` steps with the loss."""
    state = {}

    def on_step(trainer, metrics):
        bar = state.setdefault("bar", ProgressBar(steps, label, "steps"))
        bar.update(trainer.step, f"loss {metrics['loss']:.4f}")

    return [
        ("on_step", on_step),
        ("on_end", lambda trainer: state.get("bar") and state["bar"].close()),
    ]


# what --set may change with --init --decoder-only: the decoder's size (dVAE), or the picture
# size the decoder draws (VQ: pool with image_size) and the loss's edge weight
DECODER_KEYS = {
    "vae": {"dec_n_hid", "dec_n_blk_per_group"},
    "vq": {"pool", "image_size", "edge_weight"},
}
# what --set may change with --init, decoder-only or not: the stage's training-only fields
TRAINING_KEYS = {
    "vae": set(DVAE_TRAINING),
    "transformer": {f"text.{name}" for name in TEXT_TRAINING},
}


def check_stage_flags(args, sets: dict[str, str]) -> None:
    """Flags that do not fit the stage, refused before any work."""
    if args.reconstructed and args.stage != "reranker":
        raise ValueError("--reconstructed is for train reranker only")
    if args.stage in ("vae", "vq"):
        from model.training.train import check_start

        check_start(args.stage, args.init or None, args.decoder_only)
    if args.init:
        # the model's config comes from --init's file: a --set that would be ignored is refused
        decoder_keys = DECODER_KEYS.get(args.stage, set())
        training_keys = TRAINING_KEYS.get(args.stage, set())
        other = sorted(set(sets) - decoder_keys - training_keys)
        if other:
            allowed = [f"{', '.join(sorted(decoder_keys))} can change (with --decoder-only)"]
            allowed = allowed if decoder_keys else []
            if training_keys:
                allowed.append(f"{', '.join(sorted(training_keys))} (training only)")
            if not decoder_keys:
                allowed.append("train.* fields can change")
            raise ValueError(
                f"--set {', '.join(other)}: with --init the {args.stage}'s config comes from "
                f"that file; only {', and '.join(allowed)}"
            )


def train_stage(args, chosen: dict, config, sets: dict[str, str], callbacks) -> Path:
    """Build the stage's configs from the preset and ``--set``, and run its recipe."""
    from model.config import (
        DVAEConfig,
        RerankerConfig,
        TextConfig,
        TransformerConfig,
        VQConfig,
        apply_sets,
        set_values,
        sets_under,
    )
    from model.training import train

    common = dict(resume=args.resume, callbacks=callbacks)
    if args.stage in ("vae", "vq"):  # an image tokenizer: from the preset, or from --init's file
        kind, recipe = {"vae": (DVAEConfig, train.train_vae), "vq": (VQConfig, train.train_vq)}[
            args.stage
        ]
        # with --init: its file's config, changed by the preset's training-only values and the
        # --set that check_stage_flags allowed
        training = TRAINING_KEYS.get(args.stage, set())
        start_sets = {k: v for k, v in chosen[args.stage].items() if k in training}
        return recipe(
            args.data,
            args.out,
            None if args.init else apply_sets(kind(**chosen[args.stage]), sets),
            config,
            init=args.init or None,
            decoder_only=args.decoder_only,
            decoder_sets={**start_sets, **set_values(kind, sets)} if args.init else None,
            **common,
        )
    if args.stage == "transformer":
        if not args.vae:
            raise ValueError(
                "train transformer needs --vae PATH (a trained vae.safetensors or vq.safetensors)"
            )
        text_sets, tf_sets = sets_under(sets, "text.")
        text_config = apply_sets(TextConfig(**chosen["text"]), text_sets, "text.")
        tf_config = apply_sets(TransformerConfig(**chosen["transformer"]), tf_sets)
        return train.train_transformer(
            args.data,
            args.out,
            args.vae,
            text_config,
            tf_config,
            config,
            tokenizer_file=args.tokenizer,
            init=args.init,
            **common,
        )
    if not args.bundle:
        raise ValueError("train reranker needs --bundle PATH (the bundle it will join)")
    reranker_config = apply_sets(RerankerConfig(**chosen.get("reranker", {})), sets)
    return train.train_reranker(
        args.data,
        args.out,
        args.bundle,
        reranker_config,
        config,
        init=args.init,
        reconstructed=args.reconstructed,
        **common,
    )


# -- bundle ------------------------------------------------------------------------------------


def cmd_bundle(args) -> int:
    inputs = given(
        ("--transformer", args.transformer),
        ("--reranker", args.reranker),
        ("--eval", args.eval),
        ("--vae", args.vae),
    )
    refuse_overwrite([Path(args.out)], inputs, args.overwrite)
    try:
        path = assemble_bundle(
            args.transformer,
            args.out,
            reranker=args.reranker,
            evaluation=args.eval,
            name=args.name,
            vae=args.vae,
        )
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error)) from None
    print(path)
    return 0


def assemble_bundle(
    transformer_bundle,
    out,
    reranker=None,
    evaluation=None,
    name: str | None = None,
    vae=None,
) -> Path:
    """``dalle bundle``: a transformer run's bundle, optionally with a reranker run's scorer,
    a ``dalle eval`` report (its path) summarised into the card, a display name, and an image
    tokenizer whose decoder was retrained on the bundle's frozen codes (``train vae|vq
    --decoder-only``; a VQ one may draw at another size, e.g. 128 px) in place of its own."""
    from model.bundle import load, save
    from model.bundle.tokenizer_files import replace_decoder
    from model.training.train import reranker_source

    bundle = load(transformer_bundle)
    if vae is not None:
        replace_decoder(bundle, vae)
    if name:
        bundle.card["name"] = name
    if evaluation is not None:
        summary = eval_summary(evaluation)
        bundle.card["eval"] = {k: v for k, v in summary.items() if k != "example_captions"}
        if summary["example_captions"]:
            bundle.card["example_captions"] = summary["example_captions"]
    if reranker is not None:
        source = reranker_source(reranker, bundle.tokenizer)
        bundle.reranker = source.reranker
        bundle.config = dataclasses.replace(bundle.config, reranker=source.config.reranker)
        bundle.card["reranker"] = source.card.get("reranker", {})
    return save(bundle, out)


def eval_summary(path) -> dict:
    """What a bundle's card keeps of the ``dalle eval --json`` report at ``path``."""
    from model.evaluation.eval_report import card_summary

    try:
        return card_summary(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such eval report") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a dalle eval report ({error})") from None
