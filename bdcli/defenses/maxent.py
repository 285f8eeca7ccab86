"""The maximum-entropy defense (Maximum Entropy Loss, the Silver Bullet..., ACL 2023).

Stage 1 fine-tunes the classifier on clean data with the maximum-entropy loss (eq. 3), which undoes
the entropy-minimising pull of the attacker's cross-entropy, until the Stop Distance between the label
centroids of clean samples falls below a threshold. Stage 2 re-trains with cross-entropy on the same
clean data so that the model regains its accuracy without the trigger shortcut.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from ..data.dataset import TextDataset
from ..engine.batching import encode
from ..engine.device import resolve_device
from ..engine.inference import REPRESENTATIONS, forward_all
from ..engine.loop import TrainConfig, TrainState, train
from ..errors import UsageError
from ..metrics.geometry import SD_PAIRS, pick_label_pair, stop_distance
from ..models.load import LoadedModel
from ..registry import Procedure
from .base import DEFENSES, DefenseConfig

# Appendix D.1: Ours-lite stops at SD 0.02, Ours at 0.01.
PRESETS = {"lite": 0.02, "full": 0.01}
HEAD_PREFIXES = ("classifier.", "score.")


@dataclass
class MaxEntConfig(DefenseConfig):
    sd: float = 0.01  # Stop Distance threshold: stage 1 stops once SD < sd
    maxent_lr: float = 2e-5  # stage 1's learning rate (the paper leaves it open; FT's 2e-5 here)
    maxent_max_steps: int = 5000  # stage 1's budget when SD never falls below the threshold
    sd_every: int = 10  # measure SD every this many steps
    sd_samples: int = 512  # clean rows (stratified) SD is measured on
    sd_on: str = "cls"  # representation: the last layer's [CLS] state (the paper's h) or the pooler
    sd_pair: str = "random"  # multi-class: one random label pair (the paper) or the mean over all pairs
    train_head: bool = True  # whether stage 1 also updates the classification head

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sd <= 0:
            raise UsageError(f"the Stop Distance threshold must be positive, got {self.sd}")
        if self.maxent_lr <= 0:
            raise UsageError(f"maxent learning rate must be positive, got {self.maxent_lr}")
        if self.maxent_max_steps < 1 or self.sd_every < 1 or self.sd_samples < 2:
            raise UsageError("maxent max steps and SD interval must be >= 1, SD samples >= 2")
        if self.sd_on not in REPRESENTATIONS:
            raise UsageError(f"unknown representation {self.sd_on!r}; use one of {', '.join(REPRESENTATIONS)}")
        if self.sd_pair not in SD_PAIRS:
            raise UsageError(f"unknown SD pair rule {self.sd_pair!r}; use one of {', '.join(SD_PAIRS)}")


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


class StopDistanceHook:
    """Measures SD on the probe every ``every`` steps and stops training once SD < threshold."""

    def __init__(self, cfg: MaxEntConfig, tokenizer, probe: TextDataset, pair: tuple[int, int] | None):
        self.cfg = cfg
        self.enc = encode(tokenizer, probe, cfg.max_length)
        self.labels = torch.tensor(probe.labels)
        self.num_labels = probe.num_labels
        self.pair = pair
        self.trace: list[tuple[int, float]] = []

    def measure(self, model, device, step: int) -> float:
        reps = forward_all(
            model, self.enc, batch_size=128, device=device, precision=self.cfg.precision, what=self.cfg.sd_on
        )
        sd = stop_distance(reps, self.labels, self.num_labels, self.pair)
        self.trace.append((step, sd))
        return sd

    def state_dict(self) -> dict[str, Any]:
        return {"trace": self.trace}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.trace = [tuple(x) for x in d["trace"]]

    def on_step(self, state: TrainState) -> bool:
        if state.step % self.cfg.sd_every:
            return False
        sd = self.measure(state.model, state.device, state.step)
        state.info["sd"] = f"SD {sd:.4g}"
        return sd < self.cfg.sd


def maxent_defense(cfg: MaxEntConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    model = victim.model
    k = clean.num_labels
    if k < 2:
        raise UsageError("the Stop Distance needs at least two labels")
    pair = None if (k > 2 and cfg.sd_pair == "mean") else ((0, 1) if k == 2 else pick_label_pair(k, cfg.seed))
    hook = StopDistanceHook(cfg, victim.tokenizer, probe_rows(clean, cfg.sd_samples, cfg.seed), pair)

    stage1_cfg = TrainConfig.take(cfg, lr=cfg.maxent_lr, max_steps=cfg.maxent_max_steps, schedule="constant", warmup_ratio=0.0)
    device = resolve_device(cfg.device)
    model.to(device)
    sd_start = hook.measure(model, device, 0)
    params = [p for n, p in model.named_parameters() if cfg.train_head or not n.startswith(HEAD_PREFIXES)]
    if sd_start < cfg.sd:
        stage1 = None
    else:
        stage1 = train(model, victim.tokenizer, clean, stage1_cfg, objective="maxent", params=params, hooks=[hook], desc="defend: maxent stage 1")
    sd_end = hook.trace[-1][1]
    reached = sd_end < cfg.sd
    stage2 = train(model, victim.tokenizer, clean, TrainConfig.take(cfg), desc="defend: maxent stage 2 (CE)")
    warnings = []
    if not reached:
        warnings.append(
            f"SD never fell below {cfg.sd} within {cfg.maxent_max_steps} maximum-entropy steps "
            f"(last SD {sd_end:.4g}); stage 2 ran on the model as it was at the budget"
        )
    return {
        "stage1": {
            "steps": stage1.steps if stage1 else 0,
            "reached_threshold": reached,
            "sd_threshold": cfg.sd,
            "sd_start": sd_start,
            "sd_end": sd_end,
            "sd_pair": list(pair) if pair else "mean",
            "sd_trace": hook.trace,
            "training": stage1.summary() if stage1 else None,
        },
        "stage2": {"steps": stage2.steps, "training": stage2.summary()},
        "warnings": warnings,
    }


DEFENSES.register("maxent")(
    Procedure(
        "maxent",
        MaxEntConfig,
        maxent_defense,
        "Maximum-entropy fine-tuning on clean data until the Stop Distance < --sd, then cross-entropy re-training.",
    )
)
