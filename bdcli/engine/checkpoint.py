"""Resumable training: periodic checkpoints of everything a ``train()`` call needs to continue bit for
bit (weights, optimizer and scheduler state, RNG states, the position in the epoch, hook state).

Checkpoints are safetensors plus JSON: bdcli never unpickles, not even its own files. A command
activates a ``CheckpointStore`` for its duration; each ``train()`` call inside takes the next slot
(``train-1``, ``train-2``, ...), so a multi-stage procedure resumes in the stage it was killed in, and
stages that had finished are restored from their final checkpoint instead of being re-run.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

_ACTIVE: ContextVar["CheckpointStore | None"] = ContextVar("bdcli_checkpoints", default=None)


class CheckpointStore:
    def __init__(self, root: Path, every: int, resume: bool):
        self.root, self.every, self.resume = Path(root), every, resume
        self._calls = 0

    def next_slot(self) -> "Slot":
        self._calls += 1
        return Slot(self.root / f"train-{self._calls}", self.every, self.resume)


@contextmanager
def checkpointing(root: Path, every: int, resume: bool) -> Iterator[CheckpointStore]:
    store = CheckpointStore(root, every, resume)
    token = _ACTIVE.set(store)
    try:
        yield store
    finally:
        _ACTIVE.reset(token)


def next_slot() -> "Slot | None":
    store = _ACTIVE.get()
    return store.next_slot() if store is not None else None


class Slot:
    def __init__(self, path: Path, every: int, resume: bool):
        self.path, self.every, self.resume = path, every, resume

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def load(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """The saved state (with tensors under ``tensors``), having loaded the weights into ``model``;
        None when there is nothing to resume from."""
        if not self.resume:
            return None
        path = self.path if self.path.exists() else self.path.with_name(self.path.name + ".old")
        if not (path / "state.json").exists():
            return None
        state = json.loads((path / "state.json").read_text())
        load_model(model, str(path / "model.safetensors"))
        state["tensors"] = load_file(str(path / "extra.safetensors")) if (path / "extra.safetensors").exists() else {}
        return state

    def save(self, model: torch.nn.Module, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Write to a fresh folder, then swap it in: a kill during the write leaves the last good one."""
        new = self.path.with_name(self.path.name + ".new")
        old = self.path.with_name(self.path.name + ".old")
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        save_model(model, str(new / "model.safetensors"))
        if tensors:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(new / "extra.safetensors"))
        (new / "state.json").write_text(json.dumps(state))
        if self.path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        os.replace(new, self.path)
        shutil.rmtree(old, ignore_errors=True)


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """AdamW's state as JSON (param groups, scalars) and named tensors, so no pickle is needed."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def optimizer_from_flat(opt: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, idx, k = name.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def active_root() -> Path | None:
    """The folder of the active command's checkpoints (kept on a kill, removed once it published),
    where a command keeps what else must survive a kill (probe-sd's snapshots)."""
    store = _ACTIVE.get()
    return store.root if store is not None else None


def rng_tensors(device: torch.device) -> dict[str, torch.Tensor]:
    """The RNG states a resumed run needs to draw the same dropout masks: the CPU generator's, and on
    a GPU that device's own generator (CUDA kernels draw from it, not from the CPU one)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
