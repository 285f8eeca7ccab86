"""The one training loop every attack and defense runs: pluggable objective, optional parameter
subset, hooks that observe steps and may stop training (a Stop Distance threshold, say)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, fields
from typing import Iterable, Protocol

import torch

from ..data.dataset import TextDataset
from ..errors import UsageError
from ..progress import progress_bar
from .batching import collate, encode, train_batches
from .device import autocast, resolve_device
from .objectives import OBJECTIVES

SCHEDULES = ("linear", "constant")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every procedure that trains (AdamW, the papers' defaults)."""

    lr: float = 2e-5
    epochs: float = 3.0
    max_steps: int | None = None  # when set, overrides epochs
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    schedule: str = "linear"
    grad_clip: float | None = 1.0
    max_length: int = 128
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise UsageError(f"learning rate must be positive, got {self.lr}")
        if self.epochs <= 0 and not self.max_steps:
            raise UsageError(f"epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"max steps must be at least 1, got {self.max_steps}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.max_length < 8:
            raise UsageError(f"max length must be at least 8 tokens, got {self.max_length}")

    @classmethod
    def take(cls, cfg: object, **overrides) -> "TrainConfig":
        """The TrainConfig fields of a larger config (an attack's or defense's), with overrides."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        values.update(overrides)
        return cls(**values)


@dataclass
class TrainState:
    step: int
    total_steps: int
    epoch: int
    loss: float
    model: torch.nn.Module
    device: torch.device
    # Hooks may leave a short status for the progress bar (e.g. "SD 0.42").
    info: dict[str, str] = field(default_factory=dict)


class Hook(Protocol):
    def on_step(self, state: TrainState) -> bool:
        """Called after each optimiser step; return True to stop training."""


@dataclass
class TrainResult:
    steps: int
    stopped_by_hook: bool
    seconds: float
    samples: int
    final_loss: float
    loss_trace: list[tuple[int, float]]

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "stopped_by_hook": self.stopped_by_hook,
            "seconds": round(self.seconds, 2),
            "samples_per_s": round(self.samples_per_s, 2),
            "final_loss": self.final_loss,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: torch.nn.Module,
    tokenizer,
    data: TextDataset,
    cfg: TrainConfig,
    *,
    objective: str = "ce",
    params: Iterable[torch.nn.Parameter] | None = None,
    hooks: Iterable[Hook] = (),
    desc: str = "training",
    log_every: int = 10,
) -> TrainResult:
    """Train ``model`` in place on ``data``; ``params`` restricts what the optimiser updates."""
    if len(data) == 0:
        raise UsageError("no training rows: the data (or the chosen fraction of it) is empty")
    loss_fn = OBJECTIVES.get(objective)
    hooks = list(hooks)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    enc = encode(tokenizer, data, cfg.max_length)
    per_epoch = math.ceil(len(enc) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))

    model.to(device)
    model.train()
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    warmup = int(cfg.warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    step, samples, epoch = 0, 0, 0
    stopped = False
    loss_val = float("nan")
    trace: list[tuple[int, float]] = []
    start = time.perf_counter()
    with progress_bar(total, desc) as update:
        while step < total and not stopped:
            for rows in train_batches(enc, cfg.batch_size, rng):
                batch = collate(enc, rows, device)
                labels = batch.pop("labels")
                with autocast(device, cfg.precision):
                    logits = model(**batch).logits
                loss = loss_fn(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                samples += len(rows)
                loss_val = loss.item()
                if step % log_every == 0 or step == total:
                    trace.append((step, loss_val))
                state = TrainState(step, total, epoch, loss_val, model, device)
                for hook in hooks:
                    stopped = bool(hook.on_step(state)) or stopped
                info = " ".join([f"loss {loss_val:.4f}", *state.info.values()])
                update(1, info)
                if stopped or step >= total:
                    break
            epoch += 1
    model.eval()
    return TrainResult(step, stopped, time.perf_counter() - start, samples, loss_val, trace)
