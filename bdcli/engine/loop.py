"""The one training loop every attack and defense runs: pluggable objective, optional parameter
subset, hooks that observe steps and may stop training (a Stop Distance threshold, say)."""

from __future__ import annotations

import math
import os
import random
import signal
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Protocol, Union

import torch

from ..data.dataset import TextDataset
from ..errors import BdcliError, UsageError
from ..progress import progress_bar
from .batching import collate, encode, train_batches
from .checkpoint import next_slot, optimizer_from_flat, optimizer_to_flat
from .device import autocast, resolve_device
from .objectives import OBJECTIVES, prediction_entropy

SCHEDULES = ("linear", "constant")
OPTIMIZERS = ("adamw", "sgd")
# A registered name of a (logits, labels) loss, or a callable (model, batch) -> loss for procedures
# whose loss is not a function of the logits alone (RIPPLe's gradient penalty, NeuBA's MLM loss).
# ``batch`` holds input_ids, attention_mask and labels on the device.
ObjectiveSpec = Union[str, Callable[[torch.nn.Module, dict], torch.Tensor]]


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
    # Save a resumable checkpoint every this many steps (0: never). It changes no result, so it is not
    # part of an output's fingerprint.
    checkpoint_every: int = 200
    # Maximum entropy as a regulariser of cross-entropy (the maximum-entropy paper's de-biasing use,
    # section 5.6): loss = CE - alpha * H(q). 0 turns it off.
    entropy_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.entropy_alpha < 0:
            raise UsageError(f"entropy alpha must be >= 0, got {self.entropy_alpha}")
        if self.checkpoint_every < 0:
            raise UsageError(f"checkpoint interval must be >= 0, got {self.checkpoint_every}")
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

    # Optional, for resumable training: hooks that keep state (an SD trace) also define
    # state_dict() -> JSON-able dict and load_state_dict(d).


@dataclass
class TrainResult:
    steps: int
    stopped_by_hook: bool
    seconds: float
    samples: int
    final_loss: float
    loss_trace: list[tuple[int, float]]
    # Where a --resume picked this stage up: {"stage": "train-2", "step": 6}; None for a fresh run.
    resumed_from: dict | None = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"steps": self.steps, "stopped_by_hook": self.stopped_by_hook, "seconds": self.seconds,
                "samples": self.samples, "final_loss": self.final_loss, "loss_trace": self.loss_trace,
                "resumed_from": self.resumed_from}

    @classmethod
    def from_json(cls, d: dict) -> "TrainResult":
        return cls(d["steps"], d["stopped_by_hook"], d["seconds"], d["samples"], d["final_loss"],
                   [tuple(x) for x in d["loss_trace"]], d.get("resumed_from"))

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "stopped_by_hook": self.stopped_by_hook,
            "seconds": round(self.seconds, 2),
            "samples_per_s": round(self.samples_per_s, 2),
            "final_loss": self.final_loss,
            "resumed_from": self.resumed_from,
        }


class TrainingDiverged(BdcliError):
    """The loss stopped being a finite number: nothing trained from here on would mean anything."""


def _fault_point() -> tuple[str, int] | None:
    """Test-only fault injection: ``BDCLI_FAULT_KILL_AT=train-2:6`` makes the process SIGKILL itself
    right after the checkpoint of step 6 of its second training stage, so resume tests kill at a
    chosen step of a chosen stage instead of after a timed delay."""
    spec = os.environ.get("BDCLI_FAULT_KILL_AT")
    if not spec:
        return None
    stage, _, at = spec.rpartition(":")
    return stage, int(at)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: torch.nn.Module,
    tokenizer,
    data: TextDataset,
    cfg: TrainConfig,
    *,
    objective: ObjectiveSpec = "ce",
    params: Iterable[torch.nn.Parameter] | None = None,
    hooks: Iterable[Hook] = (),
    desc: str = "training",
    log_every: int = 10,
    optimizer: str = "adamw",
) -> TrainResult:
    """Train ``model`` in place on ``data``; ``params`` restricts what the optimiser updates.
    ``optimizer``: "adamw" (every paper's default) or "sgd" (plain SGD, no momentum: GBA's eq. 2)."""
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if len(data) == 0:
        raise UsageError("no training rows: the data (or the chosen fraction of it) is empty")
    if callable(objective):
        step_loss = objective
    else:
        logits_loss = OBJECTIVES.get(objective)
        alpha = cfg.entropy_alpha if objective == "ce" else 0.0

        def step_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            loss = logits_loss(logits, batch["labels"])
            return loss - alpha * prediction_entropy(logits).mean() if alpha else loss

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
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)(
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

    step, samples, epoch, skip = 0, 0, 0, 0
    stopped = False
    loss_val = float("nan")
    trace: list[tuple[int, float]] = []
    elapsed = 0.0
    slot = next_slot()
    fault = _fault_point()
    resumed_from = None
    saved = slot.load(model) if slot is not None else None
    if saved is not None:
        for hook, hs in zip(hooks, saved["hooks"]):
            if hs is not None:
                hook.load_state_dict(hs)  # type: ignore[attr-defined]
        if saved["done"]:
            model.eval()
            return TrainResult.from_json(saved["result"])
        optimizer_from_flat(opt, saved["optimizer"], saved["tensors"])
        sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["tensors"]["rng.torch"])
        step, samples, epoch, skip = saved["step"], saved["samples"], saved["epoch"], saved["next_batch"]
        loss_val, elapsed = saved["loss"], saved["elapsed"]
        trace = [tuple(x) for x in saved["loss_trace"]]
        resumed_from = {"stage": slot.path.name, "step": step}  # type: ignore[union-attr]
        rng.setstate(_rng_from_json(saved["epoch_rng"]))

    def checkpoint(done: bool, epoch_rng, next_batch: int, result: TrainResult | None = None) -> None:
        meta, tensors = optimizer_to_flat(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        state = {
            "done": done, "step": step, "samples": samples, "epoch": epoch, "next_batch": next_batch,
            "loss": loss_val, "elapsed": elapsed + time.perf_counter() - start, "loss_trace": trace,
            "epoch_rng": _rng_to_json(epoch_rng), "optimizer": meta, "scheduler": sched.state_dict(),
            "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks],  # type: ignore[attr-defined]
            "result": result.to_json() if result else None,
        }
        slot.save(model, state, tensors)  # type: ignore[union-attr]

    start = time.perf_counter()
    with progress_bar(total, desc) as update:
        update(step)
        while step < total and not stopped:
            epoch_rng = rng.getstate()
            batches = train_batches(enc, cfg.batch_size, rng)
            for b, rows in enumerate(batches):
                if b < skip:
                    continue
                batch = collate(enc, rows, device)
                with autocast(device, cfg.precision):
                    loss = step_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                samples += len(rows)
                loss_val = loss.item()
                if not math.isfinite(loss_val):
                    raise TrainingDiverged(f"{desc}: the loss became {loss_val} at step {step}; "
                                           "lower the learning rate (nothing was published)")
                if step % log_every == 0 or step == total:
                    trace.append((step, loss_val))
                state = TrainState(step, total, epoch, loss_val, model, device)
                for hook in hooks:
                    stopped = bool(hook.on_step(state)) or stopped
                info = " ".join([f"loss {loss_val:.4f}", *state.info.values()])
                update(1, info)
                if stopped or step >= total:
                    break
                if slot is not None and slot.due(step):
                    checkpoint(False, epoch_rng, b + 1)
                    if fault is not None and fault == (slot.path.name, step):
                        os.kill(os.getpid(), signal.SIGKILL)
            skip = 0
            epoch += 1
    result = TrainResult(step, stopped, elapsed + time.perf_counter() - start, samples, loss_val, trace,
                         resumed_from)
    if slot is not None:
        checkpoint(True, rng.getstate(), 0, result)
    model.eval()
    return result


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
