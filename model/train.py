"""Training for the image tokenizers (dVAE, VQ), the transformer and the reranker: one Trainer,
knowing nothing of any of them.

The Trainer (after minGPT's) owns the loop: AdamW, warm-up + cosine learning rate, gradient
clipping, EMA of weights, bf16 autocast on CUDA, checkpoints with exact ``resume``, JSONL metrics
and data parallelism through ``torchrun`` (DDP). What a step computes comes from a ``step_fn``;
what is shown comes from callbacks (``on_step``, ``on_checkpoint``, ``on_end``).

Exact resume: every random draw of step k (batch order, augmentation, gumbel noise, dropout)
comes from generators seeded by (seed, k), so a run stopped and resumed at any checkpoint takes
the same steps as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.device import device_name, pick_device
from model.files import atomic_write, write_text
from model.tokenizer_files import load_image_tokenizer, load_vae, replace_decoder, save_vae, save_vq

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 32  # global batch, split across data-parallel ranks
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.96)  # the paper's beta2 for the transformer
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 disables the EMA copy
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; CPU runs stay fp32 (bf16 is slower there)
    caption_dropout: float = 0.1  # transformer: empty caption this often, for guidance
    bpe_dropout: float = 0.1  # transformer: the paper's BPE dropout
    kl_warmup: float = 5_000 / 150_000  # dVAE: beta's warm-up as a fraction of steps (paper's)
    code_usage: float = 0.0  # dVAE: weight of the batch code-usage term (DVAE.loss); 0 = paper
    kl_weight: float = 6.6  # dVAE: beta's final value (paper's)
    tau_start: float = 1.0  # dVAE: gumbel-softmax temperature, cosine from start to end
    tau_end: float = 1 / 16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 9_176 + rank * 7_919) % 2**31


def lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_write(path) as handle:
        torch.save(obj, handle)


class EMA:
    """Exponential moving average of a model's weights (the paper evaluates EMA weights)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # warm start: early on the average follows the weights closely
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


class Distributed:
    """torchrun's environment, or a single process when it is absent."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.device = device
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.item() / self.world


StepFn = Callable[[nn.Module, list[int], int, torch.Generator], dict[str, torch.Tensor]]


class Trainer:
    """Runs ``step_fn(model, batch_indices, step, generator)`` for ``config.steps`` steps.

    ``step_fn`` returns a dict whose ``loss`` is minimised; its other entries are logged.
    """

    def __init__(
        self,
        model: nn.Module,
        step_fn: StepFn,
        dataset_size: int,
        config: TrainConfig,
        out_dir: str | Path,
        extra_state: dict | None = None,
    ):
        if dataset_size <= 0:
            raise ValueError("the dataset is empty: nothing to train on")
        self.config = config
        self.out_dir = Path(out_dir)
        self.dist = Distributed(pick_device(config.device))
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.step_fn = step_fn
        self.dataset_size = dataset_size
        self.extra_state = extra_state or {}
        self.step = 0
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
            betas=tuple(config.betas),
        )
        self.ema = EMA(model, config.ema) if config.ema > 0 else None
        self.ddp_model = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.dist.enabled and config.batch_size % self.dist.world:
            raise ValueError(
                f"batch size {config.batch_size} is not divisible by {self.dist.world} processes"
            )

    def add_callback(self, event: str, fn: Callable) -> None:
        self.callbacks[event].append(fn)

    def _emit(self, event: str, **kwargs) -> None:
        for fn in self.callbacks[event]:
            fn(self, **kwargs)

    @property
    def final_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    # -- data order ------------------------------------------------------------------------

    def batch_indices(self, step: int) -> list[int]:
        """This rank's share of the global batch of ``step``: epochs of seeded permutations."""
        size = self.config.batch_size
        first = step * size
        indices: list[int] = []
        while len(indices) < size:
            epoch, offset = divmod(first + len(indices), self.dataset_size)
            order = np.random.default_rng([self.config.seed, epoch]).permutation(self.dataset_size)
            indices.extend(order[offset : offset + size - len(indices)].tolist())
        per_rank = size // self.dist.world
        return indices[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "config": asdict(self.config),
            "extra": self.extra_state,
        }

    def save_checkpoint(self) -> None:
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(self.state_dict(), self.out_dir / CHECKPOINT)
            self._emit("on_checkpoint", path=self.out_dir / CHECKPOINT)
        self.dist.barrier()

    def load_checkpoint(self) -> None:
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        metrics = self.out_dir / METRICS
        if self.dist.main and metrics.exists():  # drop records of steps the resume will redo
            kept = [
                line
                for line in metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= self.step
            ]
            write_text(metrics, "".join(line + "\n" for line in kept))
        log.info("resumed %s at step %d", path, self.step)

    def _append_metrics(self, record: dict) -> None:
        """One more line of metrics.jsonl, through the atomic writer like every file: the file is
        rewritten whole (a few KB per thousand steps) rather than opened for appending, which
        would follow a symlink planted at its name."""
        path = self.out_dir / METRICS
        before = path.read_text() if path.is_file() else ""
        write_text(path, before + json.dumps(record) + "\n")

    # -- the loop --------------------------------------------------------------------------

    def run(self, resume: bool = False) -> nn.Module:
        cfg = self.config
        if resume:
            self.load_checkpoint()
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        use_amp = cfg.amp and self.device.type == "cuda"
        self.model.train()
        started = time.perf_counter()
        first_step = self.step
        while self.step < cfg.steps:
            seed = step_seed(cfg.seed, self.step, self.dist.rank)
            seed_everything(seed)  # augmentation, gumbel noise and dropout of this step
            generator = torch.Generator().manual_seed(seed)
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, cfg)
            indices = self.batch_indices(self.step)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                metrics = self.step_fn(self.ddp_model, indices, self.step, generator)
            loss = metrics["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - started
                record = {k: self.dist.mean(float(v.detach())) for k, v in metrics.items()}
                record.update(
                    step=self.step,
                    lr=lr_at(self.step - 1, cfg),
                    grad_norm=float(grad_norm),
                    seconds=elapsed,
                    samples_per_s=(self.step - first_step) * cfg.batch_size / max(elapsed, 1e-9),
                    world_size=self.dist.world,
                )
                if self.dist.main:
                    self._append_metrics(record)
                self._emit("on_step", metrics=record)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        self.model.eval()
        self._emit("on_end")
        return self.final_model


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- stage recipes: the dVAE, then the transformer on its tokens ---------------------------------


class Objective(nn.Module):
    """Puts a model's ``loss`` (or another method) behind ``forward``, which
    DistributedDataParallel requires."""

    def __init__(self, model: nn.Module, method: str = "loss"):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.model, self.method)(*args, **kwargs)


def run_stage(trainer: Trainer, stage: str, data: dict, callbacks=(), resume=False):
    """Run a stage's trainer; returns its final (EMA) model and the card describing the run."""
    for event, fn in callbacks:
        trainer.add_callback(event, fn)
    started = time.perf_counter()
    final = trainer.run(resume=resume).model
    metrics = read_metrics(trainer.out_dir)
    card = {
        "stage": stage,
        "data": data,
        "train": asdict(trainer.config),
        "steps": trainer.step,
        "wall_seconds_this_run": time.perf_counter() - started,
        "device": device_name(trainer.device),
        "final_metrics": metrics[-1] if metrics else {},
    }
    return final, card


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
    transformer learns are those of uncropped images. ``decoder_sets`` (``dec_n_hid``,
    ``dec_n_blk_per_group``) gives the decoder a new size; it then starts from scratch.
    """
    from model.data.folder import CaptionFolder
    from model.dvae import DVAE, beta_at, tau_at

    out_dir = Path(out_dir)
    if decoder_only and init is None:
        raise ValueError("--decoder-only needs --init PATH (the dVAE whose decoder to fine-tune)")
    seed_everything(config.seed)  # the same initial weights for the same seed
    if decoder_sets and not decoder_only:
        raise ValueError("dec_n_hid / dec_n_blk_per_group with --init need --decoder-only")
    if init is not None:
        vae, init_card = load_vae(init)
        vae_config = dataclasses.replace(vae.config, **(decoder_sets or {}))
        if vae_config != vae.config:  # a new decoder size: same encoder, fresh decoder
            encoder = vae.encoder.state_dict()
            vae = DVAE(vae_config)
            vae.encoder.load_state_dict(encoder)
    else:
        vae = DVAE(vae_config)
    dataset = CaptionFolder(data_dir, vae_config.image_size, augment=not decoder_only)

    if decoder_only:
        vae.encoder.requires_grad_(False)

        def step_fn(model, indices, step, generator):
            images = torch.stack([dataset[i][0] for i in indices]).to(trainer.device)
            metrics = model(images)
            mse = metrics["mse"].detach().clamp_min(1e-10)
            return {**metrics, "psnr": -10 * torch.log10(mse)}

        objective = Objective(vae, "decoder_loss")
    else:

        def step_fn(model, indices, step, generator):
            images = torch.stack([dataset[i][0] for i in indices]).to(trainer.device)
            beta = beta_at(step, config.steps, config.kl_weight, config.kl_warmup)
            tau = tau_at(step, config.steps, config.tau_start, config.tau_end)
            metrics = model(images, tau, beta, config.code_usage)
            mse = metrics["mse"].detach().clamp_min(1e-10)
            return {**metrics, "psnr": -10 * torch.log10(mse)}

        objective = Objective(vae)

    trainer = Trainer(objective, step_fn, len(dataset), config, out_dir)
    data = {"folder": str(data_dir), "images": len(dataset)}
    final, card = run_stage(trainer, "vae", data, callbacks, resume)
    if init is not None:
        card["init"] = {"path": str(init), "card": init_card}
        card["decoder_only"] = decoder_only
    path = out_dir / "vae.safetensors"
    if trainer.dist.main:
        save_vae(final.cpu(), path, card)
    return path


def wall_seconds_total(records: list[dict]) -> float:
    """Training seconds over every run of a resumed stage: each run's ``seconds`` count from its
    own start, so a drop marks a resume and the run before it ends at its last record."""
    total, last = 0.0, 0.0
    for record in records:
        if record["seconds"] < last:
            total += last
        last = record["seconds"]
    return total + last


def train_vq(data_dir, out_dir, vq_config, config: TrainConfig, resume=False, callbacks=()):
    """Train a VQ tokenizer (``model/vq.py``) on a caption folder's images; returns the path of
    ``vq.safetensors``. Images are not augmented: a crop resized back to S blurs the flat-colour
    edges that the transformer's tokens must keep. The codebook follows its own EMA inside the
    model; dead codes restart every ``vq_config.restart_every`` steps (a function of the step, so
    a resumed run restarts the same codes as an uninterrupted one)."""
    from model.data.folder import CaptionFolder
    from model.vq import VQVAE

    out_dir = Path(out_dir)
    seed_everything(config.seed)  # the same initial weights for the same seed
    vq = VQVAE(vq_config)
    dataset = CaptionFolder(data_dir, vq_config.image_size, augment=False)

    def step_fn(model, indices, step, generator):
        images = torch.stack([dataset[i][0] for i in indices]).to(trainer.device)
        # step 0 included: the random codebook moves onto the first batch's encoder outputs
        metrics = model(images, restart=step % vq_config.restart_every == 0)
        mse = metrics["mse"].detach().clamp_min(1e-10)
        return {**metrics, "psnr": -10 * torch.log10(mse)}

    trainer = Trainer(Objective(vq), step_fn, len(dataset), config, out_dir)
    data = {"folder": str(data_dir), "images": len(dataset)}
    final, card = run_stage(trainer, "vq", data, callbacks, resume)
    card.update(
        kind="vq",
        config=asdict(vq_config),
        parameters=vq.num_parameters(),
        wall_seconds_total=wall_seconds_total(read_metrics(out_dir)),
    )
    path = out_dir / "vq.safetensors"
    if trainer.dist.main:
        save_vq(final.cpu(), path, card)
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
    from model.bundle import Bundle, load, save
    from model.config import BundleConfig, vae_kind
    from model.data.folder import CaptionFolder
    from model.text import CaptionTokenizer
    from model.transformer import Transformer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    vae, vae_card = load_image_tokenizer(vae_path, device)  # a dVAE or a VQ tokenizer
    # pre-encoded once, without crops: captions name places that a crop would move
    dataset = CaptionFolder(data_dir, vae.config.image_size, augment=False)
    captions = caption_picker(dataset)

    start = None
    if init is not None:
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
        tf_config = start.config.transformer
        text_config = start.config.text
    tokenizer_path = out_dir / "tokenizer.json"
    if start is not None:
        tokenizer = start.tokenizer
        write_text(tokenizer_path, tokenizer.to_json())
    elif resume and tokenizer_path.exists():
        tokenizer = CaptionTokenizer.from_json(tokenizer_path.read_text(), text_config.text_len)
    elif tokenizer_file is not None:
        tokenizer = CaptionTokenizer.from_json(
            Path(tokenizer_file).read_text(), text_config.text_len
        )
        write_text(tokenizer_path, tokenizer.to_json())
    else:
        all_lines = [line for _, lines in dataset.samples for line in lines]
        tokenizer = CaptionTokenizer.train(all_lines, text_config.vocab_size, text_config.text_len)
        write_text(tokenizer_path, tokenizer.to_json())
    tf_config.text_vocab = tokenizer.vocab_size
    tf_config.text_len = tokenizer.text_len
    tf_config.image_vocab = vae.config.vocab_size
    tf_config.grid = vae.config.grid

    tokens_path = out_dir / "tokens.pt"
    if resume and tokens_path.exists():
        grids = torch.load(tokens_path, weights_only=True)
    else:
        grids = encode_dataset(vae, dataset, device)
        atomic_torch_save(grids, tokens_path)
    grids = grids.long().flatten(1)  # (len, N)
    empty = tokenizer.empty(1)

    def step_fn(model, indices, step, generator):
        text = tokenizer.encode(
            [captions(i, generator) for i in indices],
            dropout=config.bpe_dropout,
            generator=generator,
        )
        drop = torch.rand(len(indices), generator=generator) < config.caption_dropout
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


def train_command(args, progress_bar_cls) -> int:
    """``dalle train``: stage configs from a preset, overridden by --set and flags."""
    from model.config import (
        VQ_TRAIN,
        DVAEConfig,
        TextConfig,
        TransformerConfig,
        apply_sets,
        parse_sets,
        preset,
        set_values,
        sets_under,
    )

    chosen = preset(args.preset)
    train_values = chosen["train"]
    if args.stage == "vq":
        train_values = {**VQ_TRAIN, **train_values}
    for key, value in (
        ("steps", args.steps),
        ("batch_size", args.batch_size),
        ("lr", args.lr),
        ("checkpoint_every", args.checkpoint_every),
    ):
        if value is not None:
            train_values[key] = value
    train_values.update(seed=args.seed, device=args.device)
    train_sets, sets = sets_under(parse_sets(args.set), "train.")
    config = apply_sets(TrainConfig(**train_values), train_sets, "train.")
    if config.steps <= 0 or config.batch_size <= 0:
        raise ValueError("--steps and --batch-size must be positive")
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"{args.data}: no such data folder")

    callbacks = []
    if not args.quiet:
        state = {}

        def on_step(trainer, metrics):
            bar = state.setdefault("bar", progress_bar_cls(config.steps, args.stage, "steps"))
            bar.update(trainer.step, f"loss {metrics['loss']:.4f}")

        callbacks = [
            ("on_step", on_step),
            ("on_end", lambda trainer: state.get("bar") and state["bar"].close()),
        ]

    if getattr(args, "reconstructed", False) and args.stage != "reranker":
        raise ValueError("--reconstructed is for train reranker only")
    if args.stage == "vq" and (getattr(args, "init", None) or getattr(args, "decoder_only", False)):
        raise ValueError("train vq takes neither --init nor --decoder-only (yet)")
    if getattr(args, "init", None):
        # the model's config comes from --init's file: a --set that would be ignored is refused
        decoder_keys = {"dec_n_hid", "dec_n_blk_per_group"} if args.stage == "vae" else set()
        other = sorted(set(sets) - decoder_keys)
        if other:
            raise ValueError(
                f"--set {', '.join(other)}: with --init the {args.stage}'s config comes from "
                "that file"
                + (
                    "; only dec_n_hid and dec_n_blk_per_group can change (with --decoder-only)"
                    if decoder_keys
                    else "; only train.* fields can change"
                )
            )
    if args.stage == "vae" and getattr(args, "init", None):
        decoder_sets = set_values(DVAEConfig, sets)
        path = train_vae(
            args.data,
            args.out,
            None,
            config,
            args.resume,
            callbacks,
            init=args.init,
            decoder_only=args.decoder_only,
            decoder_sets=decoder_sets,
        )
    elif args.stage == "vq":
        from model.config import VQConfig

        vq_config = apply_sets(VQConfig(**chosen["vq"]), sets)
        path = train_vq(args.data, args.out, vq_config, config, args.resume, callbacks)
    elif args.stage == "vae":
        if getattr(args, "decoder_only", False):
            raise ValueError(
                "--decoder-only needs --init PATH (the dVAE whose decoder to fine-tune)"
            )
        vae_config = apply_sets(DVAEConfig(**chosen["vae"]), sets)
        path = train_vae(args.data, args.out, vae_config, config, args.resume, callbacks)
    elif args.stage == "transformer":
        if not args.vae:
            raise ValueError(
                "train transformer needs --vae PATH (a trained vae.safetensors or vq.safetensors)"
            )
        text_sets, tf_sets = sets_under(sets, "text.")
        text_config = apply_sets(TextConfig(**chosen["text"]), text_sets, "text.")
        tf_config = apply_sets(TransformerConfig(**chosen["transformer"]), tf_sets)
        path = train_transformer(
            args.data,
            args.out,
            args.vae,
            text_config,
            tf_config,
            config,
            args.resume,
            callbacks,
            tokenizer_file=getattr(args, "tokenizer", None),
            init=getattr(args, "init", None),
        )
    else:
        if not args.bundle:
            raise ValueError("train reranker needs --bundle PATH (the bundle it will join)")
        from model.config import RerankerConfig

        reranker_config = apply_sets(RerankerConfig(**chosen.get("reranker", {})), sets)
        path = train_reranker(
            args.data,
            args.out,
            args.bundle,
            reranker_config,
            config,
            args.resume,
            callbacks,
            init=getattr(args, "init", None),
            reconstructed=getattr(args, "reconstructed", False),
        )
    print(path)
    return 0


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
    from model.rerank import Reranker, hard_negative

    out_dir = Path(out_dir)
    bundle = load(bundle_path)
    start = None
    if init is not None:
        source = reranker_source(init, bundle.tokenizer)
        reranker_config, start = source.config.reranker, source.reranker
    reranker_config.text_vocab = bundle.tokenizer.padded_vocab_size
    reranker_config.text_len = bundle.tokenizer.text_len
    reranker_config.image_size = bundle.config.vae.image_size
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
    bundle.config.reranker = reranker_config
    path = out_dir / "model.dalle.safetensors"
    if trainer.dist.main:
        save(bundle, path)
    return path


def assemble_bundle(
    transformer_bundle,
    out,
    reranker=None,
    evaluation=None,
    name: str | None = None,
    vae=None,
) -> Path:
    """``dalle bundle``: a transformer run's bundle, optionally with a reranker run's scorer,
    a ``dalle eval`` report (its path) summarised into the card, a display name, and a dVAE
    whose decoder was fine-tuned (``train vae --decoder-only``) in place of the bundle's own."""
    from model.bundle import load, save

    bundle = load(transformer_bundle)
    if vae is not None:
        replace_decoder(bundle, vae)
    if name:
        bundle.card["name"] = name
    if evaluation is not None:
        import json

        from model.evaluate import card_summary

        try:
            report = json.loads(Path(evaluation).read_text())
            summary = card_summary(report)
        except FileNotFoundError:
            raise FileNotFoundError(f"{evaluation}: no such eval report") from None
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{evaluation}: not a dalle eval report ({error})") from None
        bundle.card["eval"] = {k: v for k, v in summary.items() if k != "example_captions"}
        if summary["example_captions"]:
            bundle.card["example_captions"] = summary["example_captions"]
    if reranker is not None:
        source = reranker_source(reranker, bundle.tokenizer)
        bundle.reranker, bundle.config.reranker = source.reranker, source.config.reranker
        bundle.card["reranker"] = source.card.get("reranker", {})
    return save(bundle, out)
