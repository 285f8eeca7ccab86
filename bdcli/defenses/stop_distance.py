"""Measuring the Stop Distance while a model trains, and stopping on it."""

from __future__ import annotations

import random
from typing import Any

import torch

from ..data.dataset import TextDataset
from ..engine.batching import encode
from ..engine.inference import forward_all
from ..engine.loop import TrainState
from ..metrics.geometry import pick_label_pair, stop_distance


def probe_rows(data: TextDataset, n: int, seed: int) -> TextDataset:
    """A fixed, label-stratified probe of at most ``n`` clean rows for measuring SD."""
    rng = random.Random(f"{seed}-sd-probe")
    per_label = max(1, n // data.num_labels)
    picked: list[int] = []
    for y in range(data.num_labels):
        rows = [i for i, lab in enumerate(data.labels) if lab == y]
        rng.shuffle(rows)
        picked.extend(rows[:per_label])
    return data.subset(sorted(picked))


def label_pair(num_labels: int, rule: str, seed: int) -> tuple[int, int] | None:
    """The labels SD compares: both of a binary task; with more, one seeded random pair (the paper's
    rule) or None for the mean over all pairs."""
    if num_labels == 2:
        return (0, 1)
    return None if rule == "mean" else pick_label_pair(num_labels, seed)


class StopDistanceHook:
    """Measures SD on a clean probe every ``every`` steps; stops training once SD < ``threshold`` and at
    least ``min_steps`` steps ran."""

    def __init__(self, tokenizer, probe: TextDataset, *, pair, rep: str, every: int, threshold: float,
                 max_length: int, precision: str, min_steps: int = 0):
        self.enc = encode(tokenizer, probe, max_length)
        self.labels = torch.tensor(probe.labels)
        self.num_labels = probe.num_labels
        self.pair, self.rep, self.every, self.threshold, self.precision = pair, rep, every, threshold, precision
        self.min_steps = min_steps
        self.trace: list[tuple[int, float]] = []

    def measure(self, model, device, step: int) -> float:
        reps = forward_all(model, self.enc, batch_size=128, device=device, precision=self.precision, what=self.rep)
        sd = stop_distance(reps, self.labels, self.num_labels, self.pair)
        self.trace.append((step, sd))
        return sd

    def state_dict(self) -> dict[str, Any]:
        return {"trace": self.trace, "threshold": self.threshold}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.trace = [tuple(x) for x in d["trace"]]
        self.threshold = d["threshold"]

    def on_step(self, state: TrainState) -> bool:
        if state.step % self.every:
            return False
        sd = self.measure(state.model, state.device, state.step)
        state.info["sd"] = f"SD {sd:.4g}"
        return sd < self.threshold and state.step >= self.min_steps
