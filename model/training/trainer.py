"""The Trainer (after minGPT's ``mingpt/trainer.py``): one training loop, knowing nothing of the
models it trains, of the command line or of the studio.

It owns the loop: AdamW, warm-up + cosine learning rate, gradient clipping, EMA of weights, bf16
autocast on CUDA, checkpoints with exact ``resume``, JSONL metrics and data parallelism through
``torchrun`` (DDP). What a step computes comes from a ``step_fn``; what is shown comes from
callbacks (``on_step``, ``on_checkpoint``, ``on_end``). The stage recipes that use it (the dVAE,
the VQ tokenizer, the transformer, the reranker) are in ``model/training/train.py``.

Exact resume: every random draw of step k (batch order, augmentation, gumbel noise, dropout)
comes from generators seeded by (seed, k), so a run stopped and resumed at any checkpoint takes
the same steps as an uninterrupted one.
"""

from __future__ import annotations

import copy
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
from typing import TextIO

import numpy as np
import torch
from torch import nn

from model.device import device_name, pick_device
from model.files import atomic_write, open_append, symlink_refused, write_text

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
    # what only one stage's training reads lives in that stage's config (DVAEConfig's beta and
    # tau schedules, TextConfig's dropouts; model.config.recipes.MOVED_TRAIN_FIELDS)


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
        self._metrics: TextIO | None = None  # metrics.jsonl, opened at the first record
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
        if self.dist.main:
            self._keep_metrics_until(self.step)
        log.info("resumed %s at step %d", path, self.step)

    def _keep_metrics_until(self, step: int) -> None:
        """Drop the records of steps a resume will redo (and a line a killed run cut short), so
        that the resumed run appends after the records it continues."""
        path = self.out_dir / METRICS
        if path.is_symlink():
            raise symlink_refused(path)
        if not path.exists():
            return
        text = path.read_text()
        lines = text.splitlines()
        if not text.endswith("\n"):  # a line a killed run cut short (or none at all)
            lines = lines[:-1]
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        write_text(path, "".join(line + "\n" for line in kept))

    def _append_metrics(self, record: dict) -> None:
        """One more line of metrics.jsonl, appended: the file is opened once per run (refused if
        a symlink stands at its name, see ``open_append``) and each line flushed, not fsynced."""
        if self._metrics is None:
            self._metrics = open_append(self.out_dir / METRICS)
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()

    def _close_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    # -- the loop --------------------------------------------------------------------------

    def run(self, resume: bool = False) -> nn.Module:
        cfg = self.config
        if resume:
            self.load_checkpoint()
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model.train()
        try:
            self._train_steps(use_amp=cfg.amp and self.device.type == "cuda")
        finally:
            self._close_metrics()
        self.model.eval()
        self._emit("on_end")
        return self.final_model

    def _train_steps(self, use_amp: bool) -> None:
        """The steps from ``self.step`` to ``config.steps``: metrics every ``log_every`` and at
        the end, a checkpoint every ``checkpoint_every`` and at the end."""
        cfg = self.config
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


def read_metrics(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def wall_seconds_total(records: list[dict]) -> float:
    """Training seconds over every run of a resumed stage: each run's ``seconds`` count from its
    own start, so a drop marks a resume and the run before it ends at its last record."""
    total, last = 0.0, 0.0
    for record in records:
        if record["seconds"] < last:
            total += last
        last = record["seconds"]
    return total + last
