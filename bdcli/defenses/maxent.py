"""The maximum-entropy defense (Maximum Entropy Loss, the Silver Bullet..., ACL 2023), and the
two-stage procedure it shares with the variational baseline.

Stage 1 pulls the label groups of clean samples together (maximum entropy: eq. 3) until the Stop
Distance between their centroids falls below a threshold; stage 2 re-trains with cross-entropy on the
same clean data so that the model regains its accuracy without the trigger shortcut. In the transfer
scenario a head is first trained on the frozen encoder to simulate the attacker's (section 4.3).
"""

from __future__ import annotations

from typing import Any, Callable

from ..data.dataset import TextDataset
from ..engine.device import resolve_device
from ..engine.loop import ObjectiveSpec, TrainConfig, train
from ..errors import UsageError
from ..models.load import LoadedModel
from .specs.maxent import PRESETS, MaxEntConfig, PullConfig  # noqa: F401  (re-exported)
from .head import HEAD_PREFIXES, simulate_head
from .stop_distance import StopDistanceHook, label_pair, probe_rows

def stage1_setup(cfg: Any, victim: LoadedModel, clean: TextDataset, threshold: float):
    """What stage 1 starts from, for ``defend maxent`` and ``probe-sd`` alike: the model on its device,
    the transfer scenario's simulated head (in the summary), the SD label pair, and the Stop Distance
    hook at ``threshold``. Returns (device, summary, pair, hook)."""
    if clean.num_labels < 2:
        raise UsageError("the Stop Distance needs at least two labels")
    model = victim.model
    device = resolve_device(cfg.device)
    model.to(device)
    summary: dict[str, Any] = {}
    if cfg.scenario == "transfer":
        summary["simulated_head"] = simulate_head(
            model, victim.tokenizer, clean, lr=cfg.head_lr, epochs=cfg.head_epochs, batch_size=cfg.batch_size,
            seed=cfg.seed, max_length=cfg.max_length, device=cfg.device, precision=cfg.precision,
        )
    pair = label_pair(clean.num_labels, cfg.sd_pair, cfg.seed)
    hook = StopDistanceHook(
        victim.tokenizer, probe_rows(clean, cfg.sd_samples, cfg.seed), pair=pair, rep=cfg.sd_on,
        every=cfg.sd_every, threshold=threshold, max_length=cfg.max_length, precision=cfg.precision,
        min_steps=cfg.maxent_min_steps,
    )
    return device, summary, pair, hook


def pull_then_retrain(
    cfg: PullConfig,
    victim: LoadedModel,
    clean: TextDataset,
    *,
    objective: ObjectiveSpec,
    name: str,
    after_stage1: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Stage 1 with ``objective`` until SD < threshold (or the step budget), then CE re-training.
    ``after_stage1`` runs between the stages (to detach modules stage 1 alone trained)."""
    model = victim.model
    device, summary, pair, hook = stage1_setup(cfg, victim, clean, cfg.sd)
    sd_start = hook.measure(model, device, 0)
    if cfg.sd_relative:
        hook.threshold = cfg.sd * sd_start
    params = [p for n, p in model.named_parameters() if cfg.train_head or not n.startswith(HEAD_PREFIXES)]
    stage1 = None
    if sd_start >= hook.threshold or cfg.maxent_min_steps > 0:
        stage1_cfg = TrainConfig.take(cfg, lr=cfg.maxent_lr, max_steps=cfg.maxent_max_steps, schedule="constant",
                                      warmup_ratio=0.0, entropy_alpha=0.0)
        stage1 = train(model, victim.tokenizer, clean, stage1_cfg, objective=objective, params=params,
                       hooks=[hook], desc=f"defend: {name} stage 1")
    sd_end = hook.trace[-1][1]
    reached = sd_end < hook.threshold and (stage1.steps if stage1 else 0) >= cfg.maxent_min_steps
    after_stage1()
    stage2 = train(model, victim.tokenizer, clean, TrainConfig.take(cfg), desc=f"defend: {name} stage 2 (CE)")
    warnings = []
    if not reached:
        warnings.append(
            f"SD never fell below {hook.threshold:.4g} within {cfg.maxent_max_steps} stage-1 steps "
            f"(last SD {sd_end:.4g}); stage 2 ran on the model as it was at the budget"
        )
    summary.update({
        "stage1": {
            "steps": stage1.steps if stage1 else 0,
            "reached_threshold": reached,
            "sd_threshold": hook.threshold,
            "sd_start": sd_start,
            "sd_end": sd_end,
            "sd_pair": list(pair) if pair else "mean",
            "sd_on": cfg.sd_on,
            "sd_trace": hook.trace,
            "training": stage1.summary() if stage1 else None,
        },
        "stage2": {"steps": stage2.steps, "training": stage2.summary()},
        "warnings": warnings,
    })
    return summary


def maxent_defense(cfg: MaxEntConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    return pull_then_retrain(cfg, victim, clean, objective="maxent", name="maxent")
