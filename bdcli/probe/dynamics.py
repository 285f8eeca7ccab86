"""--record-dynamics N: the maximum-entropy paper's Figures 2-4 while a model trains.

Every N optimiser steps (and once before the first), on fixed probes of clean target-label rows,
clean non-target rows and poisoned rows, it records the centroid distances between the three groups,
the within-group variance of each (``metrics.geometry.group_geometry``), ACC on the clean probes and ASR
on the poisoned one. The representation is the one the Stop Distance is measured on (``--sd-on``; the
last layer's [CLS] by default). Measuring runs without gradients in eval mode and draws no random
number, so a recorded run trains exactly as an unrecorded one.

The command attaches the recorder to every ``train()`` call it makes through
``engine.loop.EXTRA_HOOKS``; each call's rows are hook state, so a resumed run keeps them.
"""

from __future__ import annotations

import csv
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..data.dataset import TextDataset
from ..engine.batching import encode
from ..engine.inference import forward_all
from ..engine.loop import EXTRA_HOOKS, TrainState
from ..errors import UsageError
from ..metrics import accuracy, attack_success_rate
from ..metrics.geometry import GEOMETRY_GROUPS, group_geometry

GEOMETRY_COLUMNS = ("d_target_nontarget", "d_target_poison", "d_nontarget_poison", "var_target", "var_nontarget",
                    "var_poison")
COLUMNS = ("stage", "step", *GEOMETRY_COLUMNS, "acc", "asr")
PROBE_ROWS = 200  # rows per group


@dataclass
class Probes:
    """Fixed rows per group; ``poison`` is None when the data holds no poisoned rows."""

    target: int
    groups: dict[str, TextDataset | None]
    notes: list[str] = field(default_factory=list)


def pick_probes(clean: TextDataset, poison: TextDataset | None, target: int | None, *, n: int = PROBE_ROWS,
                seed: int = 42, what: str = "--record-dynamics") -> Probes:
    """At most ``n`` seeded rows of each group: clean rows of the target label and of the other labels
    (from a held-out clean split), and poisoned rows (the ASR set)."""
    if target is None:
        raise UsageError(f"{what} needs the target label, and neither the data nor the model records one "
                         "(use poisoned data, or a model bdcli attacked)")
    target = int(target)
    rng = random.Random(f"{seed}-dynamics-probe")

    def take(ds: TextDataset, rows: list[int]) -> TextDataset:
        rng.shuffle(rows)
        return ds.subset(sorted(rows[:n]))

    groups: dict[str, TextDataset | None] = {
        "target": take(clean, [i for i, y in enumerate(clean.labels) if y == target]),
        "nontarget": take(clean, [i for i, y in enumerate(clean.labels) if y != target]),
        "poison": take(poison, list(range(len(poison)))) if poison is not None and len(poison) else None,
    }
    notes = []
    if groups["poison"] is None:
        notes.append(f"{what}: the data holds no poisoned rows, so dynamics.csv records the clean groups only "
                     "(the poison columns and ASR are empty)")
    return Probes(target, groups, notes)


def stage_of(desc: str) -> str:
    """The ``stage`` column from a training call's description: attack, stage1, stage2 or train; a
    description ending in ``@<threshold>`` (probe-sd's stage-2 runs) keeps that suffix."""
    low = desc.lower()
    stage = ("stage1" if "stage 1" in low else "stage2" if "stage 2" in low
             else "attack" if low.startswith("attack") else "train")
    return stage + ("@" + desc.rsplit("@", 1)[1].strip() if "@" in desc else "")


def measure(model, tokenizer, probes: Probes, *, rep: str, max_length: int, precision: str,
            device: torch.device | None = None, batch_size: int = 128) -> dict[str, Any]:
    """Geometry, ACC and ASR of ``model`` on ``probes`` at one point."""
    device = device or next(model.parameters()).device
    reps: dict[str, torch.Tensor | None] = {}
    preds: dict[str, list[int]] = {}
    for g in GEOMETRY_GROUPS:
        ds = probes.groups.get(g)
        if ds is None or not len(ds):
            reps[g] = None
            continue
        enc = encode(tokenizer, ds, max_length)
        kw = dict(batch_size=batch_size, device=device, precision=precision)
        reps[g] = forward_all(model, enc, what=rep, **kw)
        preds[g] = forward_all(model, enc, **kw).argmax(-1).tolist()
    out: dict[str, Any] = group_geometry(reps)
    clean_preds = preds.get("target", []) + preds.get("nontarget", [])
    clean_gold = [y for g in ("target", "nontarget") if reps[g] is not None for y in probes.groups[g].labels]
    out["acc"] = accuracy(clean_preds, clean_gold) if clean_gold else None
    out["asr"] = attack_success_rate(preds["poison"], probes.target) if "poison" in preds else None
    out["_reps"] = reps
    return out


class DynamicsHook:
    def __init__(self, model, tokenizer, probes: Probes, *, every: int, stage: str, rep: str, max_length: int,
                 precision: str):
        self.tokenizer, self.probes, self.every, self.stage = tokenizer, probes, every, stage
        self.rep, self.max_length, self.precision = rep, max_length, precision
        self.rows: list[dict[str, Any]] = []
        self.record(model, 0, None)  # the model as the stage starts

    def record(self, model, step: int, device) -> None:
        m = measure(model, self.tokenizer, self.probes, rep=self.rep, max_length=self.max_length,
                    precision=self.precision, device=device)
        m.pop("_reps")
        self.rows.append({"stage": self.stage, "step": step, **m})

    def on_step(self, state: TrainState) -> bool:
        if state.step % self.every == 0 or state.step == state.total_steps:
            self.record(state.model, state.step, state.device)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rows = list(d["rows"])


class DynamicsRecorder:
    """Gives every ``train()`` call of a command its own DynamicsHook and gathers their rows."""

    def __init__(self, probes: Probes, *, every: int, rep: str = "cls", max_length: int = 128,
                 precision: str = "auto"):
        self.probes, self.every, self.rep, self.max_length, self.precision = probes, every, rep, max_length, precision
        self.hooks: list[DynamicsHook] = []

    def __call__(self, model, tokenizer, desc: str) -> list[DynamicsHook]:
        hook = DynamicsHook(model, tokenizer, self.probes, every=self.every, stage=stage_of(desc), rep=self.rep,
                            max_length=self.max_length, precision=self.precision)
        self.hooks.append(hook)
        return [hook]

    def rows(self) -> list[dict[str, Any]]:
        return [r for h in self.hooks for r in h.rows]

    def write_csv(self, path: Path) -> None:
        write_rows(self.rows(), path)


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in COLUMNS])


@contextmanager
def recording(recorder: DynamicsRecorder | None) -> Iterator[DynamicsRecorder | None]:
    """Attach ``recorder`` to every training call inside (nothing when None)."""
    if recorder is None:
        yield None
        return
    token = EXTRA_HOOKS.set(recorder)
    try:
        yield recorder
    finally:
        EXTRA_HOOKS.reset(token)


def lineage_poison(model_path: str, depth: int = 3):
    """The poisoned corpus a bdcli model was made from (its manifest's data input, or its base model's),
    when that folder is still on disk; None otherwise. A defense's data is clean, so this is where its
    dynamics find poisoned rows."""
    from ..api import DataSpec
    from ..artifacts import read_manifest

    path = model_path
    for _ in range(depth):
        m = read_manifest(Path(path)) or {}
        inputs = m.get("inputs") or {}
        data = (inputs.get("data") or {}).get("path")
        if data and Path(data).is_dir():
            try:
                corpus = DataSpec(data).load()
            except Exception:  # a folder that no longer reads is no lineage
                corpus = None
            if corpus is not None and corpus.poison is not None and "test-poison" in corpus.splits:
                return corpus
        path = (inputs.get("model") or {}).get("path") or (inputs.get("victim") or {}).get("path")
        if not path:
            return None
    return None


def recorder_for(cfg: Any, clean: TextDataset, poison: TextDataset | None, target: int | None) -> DynamicsRecorder | None:
    """The recorder a command's ``--record-dynamics`` asks for (None when off)."""
    every = getattr(cfg, "record_dynamics", 0)
    if not every:
        return None
    probes = pick_probes(clean, poison, target, seed=cfg.seed)
    return DynamicsRecorder(probes, every=every, rep=getattr(cfg, "sd_on", "cls"), max_length=cfg.max_length,
                            precision=cfg.precision)


def finish(recorder: DynamicsRecorder | None, folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write dynamics.csv and add the recorder's notes to the summary's warnings."""
    if recorder is None:
        return summary
    recorder.write_csv(folder / "dynamics.csv")
    return {**summary, "warnings": list(summary.get("warnings", [])) + recorder.probes.notes}
