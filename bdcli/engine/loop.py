"""The one training loop every attack and defense runs: pluggable objective, optional parameter
subset, hooks that observe steps and may stop training (a Stop Distance threshold, say)."""

from __future__ import annotations

import math
import os
import random
import signal
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Union

import torch
from torch.profiler import record_function

from ..data.dataset import TextDataset
from ..errors import BdcliError, UsageError
from ..progress import progress_bar
from .batching import collate, encode, train_batches
from .checkpoint import next_slot, optimizer_from_flat, optimizer_to_flat, restore_rng, rng_tensors
from .device import autocast, grad_scaler, resolve_device
from .distributed import init as init_distributed
from .distributed import shard, sum_across, world
from .objectives import OBJECTIVES, prediction_entropy
# The config lives in a torch-free module, so that the CLI and recipes build it without importing torch.
from ..train_config import SCHEDULES, TrainConfig  # noqa: F401  (re-exported)

# Hooks a command adds to every train() call it makes (the --record-dynamics recorder), so that no
# procedure has to pass them along: a callable (model, tokenizer, desc) -> list of hooks.
EXTRA_HOOKS: ContextVar[Callable | None] = ContextVar("bdcli_extra_hooks", default=None)

OPTIMIZERS = ("adamw", "sgd")
# A registered name of a (logits, labels) loss, or a callable (model, batch) -> loss for procedures
# whose loss is not a function of the logits alone (RIPPLe's gradient penalty, NeuBA's MLM loss).
# ``batch`` holds input_ids, attention_mask and labels on the device.
ObjectiveSpec = Union[str, Callable[[torch.nn.Module, dict], torch.Tensor]]


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


def _plain() -> bool:
    """``BDCLI_ENGINE_PLAIN=1``: the plain reference loop (for-loop AdamW, a host read of the loss
    every step, every progress update), which the fast paths are tested and benchmarked against."""
    return os.environ.get("BDCLI_ENGINE_PLAIN", "") not in ("", "0")


def make_optimizer(groups: list[dict], lr: float, plain: bool = False, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW, fused into one kernel per parameter group where torch has one for the parameters' device
    (CPU and CUDA): the for-loop version launches a dozen small ops per parameter tensor, which cost
    more than the arithmetic on a model of MiniLM's size (docs/speed.md). ``kind="sgd"``: plain SGD."""
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if not plain:
        try:
            return torch.optim.AdamW(groups, lr=lr, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not cover
            return torch.optim.AdamW(groups, lr=lr, foreach=True)
    return torch.optim.AdamW(groups, lr=lr, foreach=False)


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
    ``optimizer``: "adamw" (every paper's default) or "sgd" (plain SGD, no momentum: GBA's eq. 2).

    Under torchrun (WORLD_SIZE > 1) the processes train one model together (engine/distributed.py)."""
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if len(data) == 0:
        raise UsageError("no training rows: the data (or the chosen fraction of it) is empty")
    w = world()
    if callable(objective):
        if w.distributed:
            raise UsageError(f"{desc}: this procedure's own training objective runs on one process only; "
                             "launch it without torchrun")
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
    if (extra := EXTRA_HOOKS.get()) is not None:
        hooks += extra(model, tokenizer, desc)
    plain = _plain()
    device = resolve_device(cfg.device)
    if w.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", w.local_rank)
    init_distributed(w, device)
    seed_everything(cfg.seed)
    if w.distributed:
        # Each rank draws its own dropout masks for its share of the batch (the same seed on every
        # rank would give correlated masks); the batches come from ``rng`` below, the same on all.
        torch.manual_seed(cfg.seed + 7919 * w.rank)
    rng = random.Random(cfg.seed)
    enc = encode(tokenizer, data, cfg.max_length)
    per_epoch = math.ceil(len(enc) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))

    model.to(device)
    model.train()
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = make_optimizer(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        cfg.lr, plain, optimizer,
    )
    scaler = grad_scaler(device, cfg.precision)
    net = model
    if w.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
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
    if saved is not None and saved.get("threads", torch.get_num_threads()) != torch.get_num_threads():
        # Intra-op reductions are split by thread count, so a different count changes every weight from
        # the first step (docs/trust-resume.md): the rest of the run goes on at the checkpoint's count.
        torch.set_num_threads(saved["threads"])
    if saved is not None:
        for hook, hs in zip(hooks, saved["hooks"]):
            if hs is not None:
                hook.load_state_dict(hs)  # type: ignore[attr-defined]
        if saved["done"]:
            model.eval()
            return TrainResult.from_json(saved["result"])
        optimizer_from_flat(opt, saved["optimizer"], saved["tensors"])
        sched.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        restore_rng(saved["tensors"], device)
        if w.distributed and not w.main:  # rank 0's checkpoint holds rank 0's generator
            torch.manual_seed(cfg.seed + 7919 * w.rank + saved["step"])
        step, samples, epoch, skip = saved["step"], saved["samples"], saved["epoch"], saved["next_batch"]
        loss_val, elapsed = saved["loss"], saved["elapsed"]
        trace = [tuple(x) for x in saved["loss_trace"]]
        resumed_from = {"stage": slot.path.name, "step": step}  # type: ignore[union-attr]
        rng.setstate(_rng_from_json(saved["epoch_rng"]))

    # Losses not yet read on the host. Reading one waits for the GPU to finish the step, so on CUDA
    # they are read every log_every steps (and before every checkpoint and at the end); on a CPU the
    # read costs nothing and happens every step, so a non-finite loss stops the run at once.
    pending: list[tuple[int, torch.Tensor]] = []
    sync_every = 1 if plain or device.type != "cuda" or hooks else log_every

    def read_losses() -> None:
        nonlocal loss_val
        if not pending:
            return
        values = torch.stack([x for _, x in pending]).tolist()
        for (at, _), value in zip(pending, values):
            if not math.isfinite(value):
                raise TrainingDiverged(f"{desc}: the loss became {value} at step {at}; "
                                       "lower the learning rate (nothing was published)")
            if at % log_every == 0 or at == total:
                trace.append((at, value))
        loss_val = values[-1]
        pending.clear()

    def checkpoint(done: bool, epoch_rng, next_batch: int, result: TrainResult | None = None) -> None:
        meta, tensors = optimizer_to_flat(opt)
        tensors.update(rng_tensors(device))
        state = {
            "done": done, "step": step, "samples": samples, "epoch": epoch, "next_batch": next_batch,
            "loss": loss_val, "elapsed": elapsed + time.perf_counter() - start, "loss_trace": trace,
            "epoch_rng": _rng_to_json(epoch_rng), "optimizer": meta, "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks],  # type: ignore[attr-defined]
            "result": result.to_json() if result else None,
            "threads": torch.get_num_threads(),
        }
        slot.save(model, state, tensors)  # type: ignore[union-attr]

    start = time.perf_counter()
    with progress_bar(total, desc) as update:
        update(step)  # a resumed run's bar starts at the checkpoint's step
        shown, last_shown = step, 0.0
        while step < total and not stopped:
            epoch_rng = rng.getstate()
            batches = train_batches(enc, cfg.batch_size, rng)
            for b, rows in enumerate(batches):
                if b < skip:
                    continue
                mine, weight = shard(rows, w) if w.distributed else (rows, 1.0)
                with record_function("bdcli.data"):
                    batch = collate(enc, mine, device)
                with record_function("bdcli.forward"), autocast(device, cfg.precision):
                    loss = step_loss(net, batch)
                with record_function("bdcli.backward"):
                    opt.zero_grad(set_to_none=True)
                    scaled = loss * weight if w.distributed else loss
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                with record_function("bdcli.optimizer"):
                    if scaler is not None:
                        scaler.unscale_(opt)
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    sched.step()
                step += 1
                samples += len(rows)
                # The whole batch's mean loss: each rank's share, weighted by its rows, summed.
                pending.append((step, sum_across(loss.detach() * (weight / w.size), w) if w.distributed
                                else loss.detach()))
                if step % sync_every == 0 or step == total:
                    read_losses()
                state = TrainState(step, total, epoch, loss_val, model, device)
                for hook in hooks:
                    stopped = bool(hook.on_step(state)) or stopped
                # Redrawing the bar every step costs more than a tiny model's step; 4 times a second is enough.
                now = time.monotonic()
                if plain or now - last_shown >= 0.25 or step >= total or stopped:
                    update(step - shown, " ".join([f"loss {loss_val:.4f}", *state.info.values()]))
                    shown, last_shown = step, now
                if stopped or step >= total:
                    break
                if slot is not None and slot.due(step):
                    read_losses()
                    if w.main:
                        checkpoint(False, epoch_rng, b + 1)
                    if fault is not None and fault == (slot.path.name, step):
                        os.kill(os.getpid(), signal.SIGKILL)
            skip = 0
            epoch += 1
    read_losses()
    result = TrainResult(step, stopped, elapsed + time.perf_counter() - start, samples, loss_val, trace,
                         resumed_from)
    if slot is not None and w.main:
        checkpoint(True, rng.getstate(), 0, result)
    model.eval()
    return result


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
