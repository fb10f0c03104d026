"""The stage recipes of ``dalle train``: the dVAE or the VQ tokenizer on a caption folder's images,
then the transformer on their tokens, then the reranker beside it.

Each recipe takes typed configs (``model.config``, ``model.training.trainer.TrainConfig``), builds
its model, hands the Trainer (``model/training/trainer.py``) a ``step_fn`` and writes one file: a
``vae.safetensors`` or ``vq.safetensors`` (``model/bundle/tokenizer_files.py``) or a bundle. None of
them changes a config it is given (new ones are made with ``dataclasses.replace``), parses arguments
or prints: progress reaches the caller through the Trainer's callbacks.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from model.bundle.tokenizer_files import load_image_tokenizer, load_vae, load_vq, save_vae, save_vq
from model.config import DVAE_TRAINING, TEXT_TRAINING
from model.device import pick_device
from model.files import write_text
from model.training.trainer import (
    Objective,
    TrainConfig,
    Trainer,
    atomic_torch_save,
    read_metrics,
    run_stage,
    seed_everything,
    wall_seconds_total,
)

log = logging.getLogger(__name__)


def check_start(stage: str, init, decoder_only: bool, decoder_sets=None) -> None:
    """Refuse what an image tokenizer's stage (``vae``, ``vq``) cannot start from: a dVAE trains
    from scratch or from ``init`` (its decoder alone with ``decoder_only``, which may resize it
    with ``decoder_sets``); a VQ tokenizer from scratch, or its decoder alone from ``init``."""
    if stage == "vq" and (init is None) == bool(decoder_only):
        raise ValueError(
            "train vq takes --init PATH and --decoder-only together (a new decoder on that "
            "tokenizer's frozen codes), or neither"
        )
    if decoder_only and init is None:
        raise ValueError("--decoder-only needs --init PATH (the dVAE whose decoder to fine-tune)")
    if set(decoder_sets or ()) - set(DVAE_TRAINING) and not decoder_only:
        raise ValueError("dec_n_hid / dec_n_blk_per_group with --init need --decoder-only")


def train_vae(
    data_dir,
    out_dir,
    vae_config,
    config: TrainConfig,
    resume=False,
    callbacks=(),
    init=None,
    decoder_only=False,
    decoder_sets=None,
):
    """Train a dVAE on a caption folder's images; returns the path of ``vae.safetensors``.

    ``init`` starts from a trained ``vae.safetensors`` (its config wins over ``vae_config``).
    ``decoder_only`` (needs ``init``) freezes the encoder and fine-tunes the decoder on its hard
    codes (``DVAE.decoder_loss``): every image keeps its tokens, so a transformer trained on the
    old dVAE works unchanged with the new one. Its images are not augmented: the tokens a
    transformer learns are those of uncropped images. ``decoder_sets`` changes ``init``'s config:
    its training-only fields (``DVAE_TRAINING``: beta's and tau's schedules, the code-usage
    term), and with ``decoder_only`` the decoder's size (``dec_n_hid``,
    ``dec_n_blk_per_group``; a new size starts the decoder from scratch).
    """
    from model.networks.dvae import DVAE, beta_at, tau_at

    check_start("vae", init, decoder_only, decoder_sets)
    seed_everything(config.seed)  # the same initial weights for the same seed
    init_card = None
    if init is not None:
        vae, init_card = load_vae(init)
        vae_config = dataclasses.replace(vae.config, **(decoder_sets or {}))
        if vae_config.architecture() != vae.config.architecture():  # a new decoder size
            encoder = vae.encoder.state_dict()  # same encoder, fresh decoder
            vae = DVAE(vae_config)
            vae.encoder.load_state_dict(encoder)
        vae.config = vae_config  # this run's training-only fields, written with it
    else:
        vae = DVAE(vae_config)

    def loss(model, images, step):
        recipe = vae_config  # its training-only fields
        beta = beta_at(step, config.steps, recipe.kl_weight, recipe.kl_warmup)
        tau = tau_at(step, config.steps, recipe.tau_start, recipe.tau_end)
        return model(images, tau, beta, recipe.code_usage)

    run = TokenizerRun("vae", init, init_card, decoder_only, augment=not decoder_only)
    return run.train(vae, loss, data_dir, Path(out_dir), config, resume, callbacks)


def train_vq(
    data_dir,
    out_dir,
    vq_config,
    config: TrainConfig,
    resume=False,
    callbacks=(),
    init=None,
    decoder_only=False,
    decoder_sets=None,
):
    """Train a VQ tokenizer (``model/networks/vq.py``) on a caption folder's images; returns the
    path of ``vq.safetensors``. Images are not augmented: a crop resized back to S blurs the
    flat-colour edges that the transformer's tokens must keep. The codebook follows its own EMA
    inside the model; dead codes restart every ``vq_config.restart_every`` steps (a function of the
    step, so a resumed run restarts the same codes as an uninterrupted one).

    ``init`` with ``decoder_only``: start from that ``vq.safetensors`` (its config wins over
    ``vq_config``), freeze its encoder, quant_conv and codebook, and train its decoder on their
    hard codes (``VQVAE.decoder_loss``): every image keeps its tokens, so a transformer trained
    on them works unchanged. ``decoder_sets`` may change ``pool`` with ``image_size`` (issue 17:
    pool 2, image_size 128 draws the 64 px codes at 128 px; the decoder starts as the old one
    upscaled nearest-neighbour, ``vq.pooled_from``) and the training-only fields."""
    from model.networks.vq import VQVAE, pooled_from

    check_start("vq", init, decoder_only)
    seed_everything(config.seed)  # the same initial weights for the same seed
    init_card = None
    if init is not None:
        start, init_card = load_vq(init)
        vq = pooled_from(start, dataclasses.replace(start.config, **(decoder_sets or {})))
    else:
        vq = VQVAE(vq_config)

    def loss(model, images, step):
        # step 0 included: the random codebook moves onto the first batch's outputs
        return model(images, restart=step % vq.config.restart_every == 0)

    run = TokenizerRun("vq", init, init_card, decoder_only, augment=False)
    return run.train(vq, loss, data_dir, Path(out_dir), config, resume, callbacks)


@dataclasses.dataclass(frozen=True)
class TokenizerRun:
    """What the dVAE's and the VQ tokenizer's runs share: the caption folder's images, the
    reconstruction metrics, decoder-only training (the token-choosing part frozen, the decoder
    trained on its hard codes), the card naming the file started from, and the file written."""

    stage: str  # "vae" or "vq": the file's name and the card's stage
    init: object  # the file started from, or None
    init_card: dict | None
    decoder_only: bool
    augment: bool

    def train(self, model, loss, data_dir, out_dir: Path, config, resume, callbacks) -> Path:
        """Train ``model`` by ``loss(model, images, step)`` (its decoder alone by
        ``decoder_loss`` when decoder-only) and write ``out_dir/<stage>.safetensors``."""
        from model.data.folder import CaptionFolder

        dataset = CaptionFolder(data_dir, model.config.image_size, augment=self.augment)
        if self.decoder_only:
            model.freeze_tokens()

        def step_fn(objective, indices, step, generator):
            images = torch.stack([dataset[i][0] for i in indices]).to(trainer.device)
            metrics = objective(images) if self.decoder_only else loss(objective, images, step)
            mse = metrics["mse"].detach().clamp_min(1e-10)
            return {**metrics, "psnr": -10 * torch.log10(mse)}

        objective = Objective(model, "decoder_loss" if self.decoder_only else "loss")
        trainer = Trainer(objective, step_fn, len(dataset), config, out_dir)
        data = {"folder": str(data_dir), "images": len(dataset)}
        final, card = run_stage(trainer, self.stage, data, callbacks, resume)
        if self.stage == "vq":
            card.update(
                kind="vq",
                config=asdict(model.config),
                parameters=model.num_parameters(),
                wall_seconds_total=wall_seconds_total(read_metrics(out_dir)),
            )
        if self.init is not None:
            card["init"] = {"path": str(self.init), "card": self.init_card}
            card["decoder_only"] = self.decoder_only
        path = out_dir / f"{self.stage}.safetensors"
        if trainer.dist.main:
            (save_vq if self.stage == "vq" else save_vae)(final.cpu(), path, card)
        return path


def caption_picker(dataset):
    """A function (index, generator) -> one of that image's caption lines, drawn at random."""
    lines = [captions for _, captions in dataset.samples]

    def pick(index: int, generator: torch.Generator) -> str:
        options = lines[index]
        if len(options) == 1:
            return options[0]
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    return pick


def encode_dataset(vae, dataset, device, batch_size: int = 64) -> torch.Tensor:
    """Every image's token grid, (len, grid, grid) int16 — what the transformer trains on."""
    grids = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            stop = min(len(dataset), start + batch_size)
            images = torch.stack([dataset[i][0] for i in range(start, stop)]).to(device)
            grids.append(vae.encode(images).to(torch.int16).cpu())
    return torch.cat(grids)


def fine_tuning_start(init, vae, tokenizer_file=None):
    """The bundle at ``init`` that a transformer run starts from, checked to fit ``vae`` (the run's
    image tokenizer: same kind, same encoder shape) and to need no ``--tokenizer``."""
    from model.bundle import load
    from model.config import vae_kind

    start = load(init, "cpu")
    ours, theirs = start.config.vae, vae.config
    if type(ours) is not type(theirs):
        raise ValueError(
            f"{init}: its image tokenizer is a {start.config.vae_kind} but --vae's is a "
            f"{vae_kind(theirs)}"
        )
    if ours.encoder_config() != theirs.encoder_config():
        raise ValueError(
            f"{init}: its {start.config.vae_kind} has another shape ({ours.grid} grid, "
            f"{ours.vocab_size} codes) than --vae's"
        )
    if tokenizer_file is not None:
        raise ValueError("--init brings its own tokenizer; leave out --tokenizer")
    return start


def started_configs(start, text_config):
    """The caption and transformer configs of a run from the bundle ``start``: its own, with the
    run's training-only caption fields (``TEXT_TRAINING``) taken from ``text_config``."""
    training = {name: getattr(text_config, name) for name in TEXT_TRAINING}
    return dataclasses.replace(start.config.text, **training), start.config.transformer


def caption_tokenizer(out_dir: Path, dataset, text_config, start, resume, tokenizer_file):
    """The run's caption tokenizer, written to ``out_dir/tokenizer.json``: the fine-tuned bundle's,
    the resumed run's, the given file's, or one trained on the folder's captions."""
    from model.tokenizers.text import CaptionTokenizer

    path = out_dir / "tokenizer.json"
    if start is not None:
        tokenizer = start.tokenizer
    elif resume and path.exists():
        return CaptionTokenizer.from_json(path.read_text(), text_config.text_len)
    elif tokenizer_file is not None:
        tokenizer = CaptionTokenizer.from_json(
            Path(tokenizer_file).read_text(), text_config.text_len
        )
    else:
        all_lines = [line for _, lines in dataset.samples for line in lines]
        tokenizer = CaptionTokenizer.train(all_lines, text_config.vocab_size, text_config.text_len)
    write_text(path, tokenizer.to_json())
    return tokenizer


def token_grids(out_dir: Path, vae, dataset, device, resume: bool) -> torch.Tensor:
    """(len, N) every image's tokens, encoded once and kept in ``out_dir/tokens.pt`` for resumes."""
    path = out_dir / "tokens.pt"
    if resume and path.exists():
        grids = torch.load(path, weights_only=True)
    else:
        grids = encode_dataset(vae, dataset, device)
        atomic_torch_save(grids, path)
    return grids.long().flatten(1)


def train_transformer(
    data_dir,
    out_dir,
    vae_path,
    text_config,
    tf_config,
    config: TrainConfig,
    resume=False,
    callbacks=(),
    tokenizer_file=None,
    init=None,
):
    """Train the transformer on a caption folder; returns the path of the finished bundle.
    ``tokenizer_file`` reuses a tokenizer.json (so a reranker trained beside it can join).
    ``init`` (a bundle) starts from its transformer, config and tokenizer: fine-tuning the
    default model on one's own folder, or following a dVAE that was trained further."""
    from model.bundle import Bundle, save
    from model.config import BundleConfig
    from model.data.folder import CaptionFolder
    from model.networks.transformer import Transformer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    vae, vae_card = load_image_tokenizer(vae_path, device)  # a dVAE or a VQ tokenizer
    # pre-encoded once, without crops: captions name places that a crop would move
    dataset = CaptionFolder(data_dir, vae.config.image_size, augment=False)
    captions = caption_picker(dataset)
    start = None if init is None else fine_tuning_start(init, vae, tokenizer_file)
    if start is not None:
        text_config, tf_config = started_configs(start, text_config)
    tokenizer = caption_tokenizer(out_dir, dataset, text_config, start, resume, tokenizer_file)
    tf_config = dataclasses.replace(
        tf_config,
        text_vocab=tokenizer.vocab_size,
        text_len=tokenizer.text_len,
        image_vocab=vae.config.vocab_size,
        grid=vae.config.grid,
    )
    grids = token_grids(out_dir, vae, dataset, device, resume)
    empty = tokenizer.empty(1)

    def step_fn(model, indices, step, generator):
        text = tokenizer.encode(
            [captions(i, generator) for i in indices],
            dropout=text_config.bpe_dropout,
            generator=generator,
        )
        drop = torch.rand(len(indices), generator=generator) < text_config.caption_dropout
        text[drop] = empty
        return model(text.to(trainer.device), grids[indices].to(trainer.device))

    seed_everything(config.seed)
    transformer = Transformer(tf_config)
    if start is not None:
        transformer.load_state_dict(start.transformer.state_dict())
    trainer = Trainer(Objective(transformer), step_fn, len(dataset), config, out_dir)
    data = {"folder": str(data_dir), "pairs": len(dataset)}
    final, card = run_stage(trainer, "transformer", data, callbacks, resume)
    if start is not None:
        card["init"] = {"path": str(init), "card": start.card}
    card.update(
        parameters=transformer.num_parameters(),
        vae=vae_card,
        example_captions=[lines[0] for _, lines in dataset.samples[:8]],
    )
    bundle_config = BundleConfig(vae=vae.config, text=text_config, transformer=tf_config)
    path = out_dir / "model.dalle.safetensors"
    if trainer.dist.main:
        bundle = Bundle(
            config=bundle_config,
            vae=vae.cpu(),
            transformer=final.cpu(),
            tokenizer=tokenizer,
            reranker=None,
            card=card,
        )
        save(bundle, path)
    return path


def reranker_source(path, tokenizer, device="cpu"):
    """The bundle at ``path``, checked to carry a reranker trained with ``tokenizer``."""
    from model.bundle import load

    source = load(path, device)
    if source.reranker is None:
        raise ValueError(f"{path}: this bundle carries no reranker")
    if source.tokenizer != tokenizer:
        raise ValueError(f"{path}: its reranker was trained with another tokenizer")
    return source


def reconstructions(vae, dataset, batch_size: int = 128) -> torch.Tensor:
    """(N, 3, S, S) uint8: every image of ``dataset`` through ``vae`` (argmax codes, decoded),
    which is how the transformer's samples look. Kept in memory: N * 3 * S * S bytes."""
    out = torch.empty(
        len(dataset), 3, vae.config.image_size, vae.config.image_size, dtype=torch.uint8
    )
    device = next(vae.parameters()).device
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(dataset), batch_size):
            last = min(first + batch_size, len(dataset))
            images = torch.stack([dataset[i][0] for i in range(first, last)]).to(device)
            decoded = vae.decode(vae.encode(images)).float().clamp(0, 1)
            out[first:last] = decoded.mul(255).round().to(torch.uint8).cpu()
            if first // batch_size % 50 == 0:
                log.info(
                    "reconstructed %d / %d images (%.0f s)",
                    last,
                    len(dataset),
                    time.perf_counter() - started,
                )
    return out


def train_reranker(
    data_dir,
    out_dir,
    bundle_path,
    reranker_config,
    config: TrainConfig,
    resume=False,
    callbacks=(),
    init=None,
    reconstructed=False,
):
    """Train the contrastive scorer on a caption folder; returns the bundle that carries it.

    ``init``: start from that bundle's reranker (its config; same tokenizer as ``bundle_path``).
    ``reconstructed``: score the bundle's dVAE reconstructions of the images instead of the
    images, the look of the samples it will rank.
    """
    from model.bundle import load, save
    from model.data.folder import CaptionFolder
    from model.networks.rerank import Reranker, hard_negative

    out_dir = Path(out_dir)
    bundle = load(bundle_path)
    start = None
    if init is not None:
        source = reranker_source(init, bundle.tokenizer)
        reranker_config, start = source.config.reranker, source.reranker
    reranker_config = dataclasses.replace(
        reranker_config,
        text_vocab=bundle.tokenizer.padded_vocab_size,
        text_len=bundle.tokenizer.text_len,
        image_size=bundle.config.vae.image_size,
    )
    # no crop augmentation: captions name places ("in the top left") that a crop would move
    dataset = CaptionFolder(data_dir, reranker_config.image_size, augment=False)
    captions = caption_picker(dataset)
    tokenizer = bundle.tokenizer
    seen = reconstructions(bundle.vae, dataset) if reconstructed else None

    def step_fn(model, indices, step, generator):
        if seen is None:
            images = torch.stack([dataset[i][0] for i in indices]).to(trainer.device)
        else:
            images = seen[torch.as_tensor(indices)].to(trainer.device).float().div_(255)
        lines = [captions(i, generator) for i in indices]
        swapped = [hard_negative(line, generator) for line in lines]
        has_negative = torch.tensor([n is not None for n in swapped], device=trainer.device)
        negatives = [n if n is not None else line for n, line in zip(swapped, lines, strict=True)]
        text = tokenizer.encode(lines).to(trainer.device)
        negatives = tokenizer.encode(negatives).to(trainer.device)
        return model(images, text, negatives, has_negative)

    seed_everything(config.seed)
    reranker = Reranker(reranker_config)
    if start is not None:
        reranker.load_state_dict(start.state_dict())
    trainer = Trainer(Objective(reranker), step_fn, len(dataset), config, out_dir)
    data = {"folder": str(data_dir), "pairs": len(dataset), "reconstructed": reconstructed}
    if init is not None:
        data["init"] = str(init)
    final, bundle.card["reranker"] = run_stage(trainer, "reranker", data, callbacks, resume)
    bundle.reranker = final.cpu().eval()
    bundle.config = dataclasses.replace(bundle.config, reranker=reranker_config)
    path = out_dir / "model.dalle.safetensors"
    if trainer.dist.main:
        save(bundle, path)
    return path
