"""``bdcli probe-sd``: the maximum-entropy paper's Figure 5 (the effect of the Stop Distance threshold)
from ONE stage-1 pass.

Stage 1 of the maximum-entropy defense trains at a constant learning rate with no warm-up, so its
trajectory does not depend on the threshold: a run stopping at SD < t is the prefix of a run stopping at
any smaller threshold. One pass to the smallest threshold therefore serves them all: at the first SD
measurement below each threshold (and past ``--maxent-min-steps``, the same rule as ``defend maxent``)
the weights are saved; each snapshot is then re-trained (stage 2, the same seed and settings as
``defend maxent``) and evaluated. On CPU each threshold's stage-1 weights and defended model equal, bit
for bit, what ``defend maxent --sd t`` produces (tests/test_probe.py).

Snapshots, stage-2 runs and their metrics live in the command's checkpoint folder, so a killed probe
resumed with ``--resume`` redoes nothing that finished.
"""

from __future__ import annotations

import json
import os
import time

from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_model, save_model

from ..data.dataset import TextDataset
from ..defenses.head import HEAD_PREFIXES
from ..defenses.maxent import stage1_setup
from ..defenses.stop_distance import StopDistanceHook
from ..engine.loop import TrainConfig, TrainState, train
from ..errors import BdcliError
from ..models.load import LoadedModel
from .spec import DEFAULT_THRESHOLDS, ProbeSDConfig, parse_thresholds  # noqa: E402,F401  (re-exported)


def threshold_name(t: float) -> str:
    """The folder of a threshold's defended model, relative to the probe's output."""
    return f"sd-{t:g}"


class SnapshotHook:
    """Runs after the StopDistanceHook: the first time a measurement falls below a threshold (at or past
    ``min_steps``) it saves the weights for that threshold."""

    def __init__(self, sd_hook: StopDistanceHook, thresholds: list[float], min_steps: int, folder: Path):
        self.sd_hook, self.thresholds, self.min_steps, self.folder = sd_hook, thresholds, min_steps, folder
        self.crossed: dict[str, dict[str, Any]] = {}  # threshold index -> step, SD, seconds into the pass
        self.seconds = 0.0
        self._last = time.perf_counter()

    def path(self, i: int) -> Path:
        return self.folder / f"snapshot-{i}.safetensors"

    def check(self, model, step: int) -> None:
        now = time.perf_counter()
        self.seconds += now - self._last
        self._last = now
        if not self.sd_hook.trace or self.sd_hook.trace[-1][0] != step or step < self.min_steps:
            return
        sd = self.sd_hook.trace[-1][1]
        for i, t in enumerate(self.thresholds):
            if str(i) not in self.crossed and sd < t:
                tmp = self.path(i).with_suffix(".tmp")
                save_model(model, str(tmp))
                os.replace(tmp, self.path(i))  # a kill mid-write leaves no half snapshot
                self.crossed[str(i)] = {"step": step, "sd": sd, "seconds": self.seconds}

    def on_step(self, state: TrainState) -> bool:
        self.check(state.model, state.step)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"crossed": self.crossed, "seconds": self.seconds}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.crossed, self.seconds = dict(d["crossed"]), d["seconds"]
        self._last = time.perf_counter()


def probe_stop_distance(
    cfg: ProbeSDConfig,
    victim: LoadedModel,
    clean: TextDataset,
    *,
    folder: Path,
    on_model: Callable[[int, float, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """One stage-1 pass to the smallest threshold with a snapshot at each crossing, then stage 2 from
    each snapshot. ``folder`` keeps the snapshots (it must survive a kill for --resume);
    ``on_model(i, threshold, row)`` is called with ``victim.model`` holding threshold i's defended model
    and returns what to add to its row (its metrics, where it was saved)."""
    model = victim.model
    given = list(cfg.sd)
    device, summary, pair, sd_hook = stage1_setup(cfg, victim, clean, given[-1])
    folder.mkdir(parents=True, exist_ok=True)
    sd_start = sd_hook.measure(model, device, 0)
    thresholds = [t * sd_start for t in given] if cfg.sd_relative else given
    sd_hook.threshold = thresholds[-1]
    snaps = SnapshotHook(sd_hook, thresholds, cfg.maxent_min_steps, folder)
    snaps.check(model, 0)  # thresholds already below SD before stage 1 (maxent then skips stage 1)
    params = [p for n, p in model.named_parameters() if cfg.train_head or not n.startswith(HEAD_PREFIXES)]
    stage1 = None
    if len(snaps.crossed) < len(thresholds):
        stage1_cfg = TrainConfig.take(cfg, lr=cfg.maxent_lr, max_steps=cfg.maxent_max_steps, schedule="constant",
                                      warmup_ratio=0.0, entropy_alpha=0.0)
        stage1 = train(model, victim.tokenizer, clean, stage1_cfg, objective="maxent", params=params,
                       hooks=[sd_hook, snaps], desc="probe-sd: stage 1")
    pass_steps = stage1.steps if stage1 else 0
    reached = [i for i in range(len(thresholds)) if str(i) in snaps.crossed]
    unreached = [given[i] for i in range(len(thresholds)) if str(i) not in snaps.crossed]
    if not reached:
        raise BdcliError(
            f"SD never fell below the largest threshold {thresholds[0]:.4g} within {cfg.maxent_max_steps} stage-1 "
            f"steps (last SD {sd_hook.trace[-1][1]:.4g}); raise --maxent-max-steps or --maxent-lr"
        )
    rows = []
    for i in reached:
        c = snaps.crossed[str(i)]
        load_model(model, str(snaps.path(i)))
        stage2 = train(model, victim.tokenizer, clean, TrainConfig.take(cfg),
                       desc=f"probe-sd: stage 2 (CE) @{threshold_name(given[i])[3:]}")
        row = {"threshold": given[i], "sd_threshold": thresholds[i], "stage1_steps": c["step"],
               "sd_reached": c["sd"], "stage2_steps": stage2.steps, "stage1_seconds": round(c["seconds"], 2),
               "stage2_seconds": round(stage2.seconds, 2)}
        row.update(on_model(i, given[i], {**row, "stage2_training": stage2.summary(), "sd_start": sd_start,
                                          "sd_pair": list(pair) if pair else "mean"}))
        rows.append(row)
    independent = sum(r["stage1_steps"] for r in rows) + pass_steps * len(unreached)
    warnings = []
    if unreached:
        warnings.append(
            f"SD never fell below {', '.join(f'{t:g}' for t in unreached)} within {cfg.maxent_max_steps} stage-1 "
            f"steps (last SD {sd_hook.trace[-1][1]:.4g}); the table holds the thresholds that were reached"
        )
    summary.update({
        "thresholds": given,
        "rows": rows,
        "sd_trace": [list(x) for x in sd_hook.trace],
        "unreached": unreached,
        "stage1_steps_single_pass": pass_steps,
        "stage1_steps_independent": independent,
        "saved_steps": independent - pass_steps,
        "sd_start": sd_start,
        "sd_relative": cfg.sd_relative,
        "sd_pair": list(pair) if pair else "mean",
        "sd_on": cfg.sd_on,
        "stage1": {"steps": pass_steps, "training": stage1.summary() if stage1 else None},
        "warnings": warnings,
    })
    return summary


def write_table(summary: dict[str, Any], folder: Path) -> str:
    """probe.json, probe.csv and probe.md; returns the markdown table."""
    keys = ("threshold", "stage1_steps", "sd_reached", "stage2_steps", "acc", "asr", "model")
    probe = {k: summary[k] for k in ("thresholds", "sd_trace", "unreached", "stage1_steps_single_pass",
                                     "stage1_steps_independent", "saved_steps", "sd_start", "sd_relative")}
    probe["rows"] = [{**{k: r.get(k) for k in keys}, **{k: v for k, v in r.items() if k not in keys}}
                     for r in summary["rows"]]
    (folder / "probe.json").write_text(json.dumps(probe, indent=2) + "\n")

    def fmt(v: Any, pct: bool = False) -> str:
        if v is None:
            return "n/a"
        return f"{100 * v:.2f}" if pct else (f"{v:.4g}" if isinstance(v, float) else str(v))

    lines = ["| SD threshold | stage-1 steps | SD reached | stage-2 steps | ACC (%) | ASR (%) |", "|---:|---:|---:|---:|---:|---:|"]
    csv_lines = ["threshold,stage1_steps,sd_reached,stage2_steps,acc,asr,model"]
    for r in summary["rows"]:
        lines.append(f"| {fmt(r['threshold'])} | {r['stage1_steps']} | {fmt(r['sd_reached'])} | {r['stage2_steps']} "
                     f"| {fmt(r.get('acc'), True)} | {fmt(r.get('asr'), True)} |")
        csv_lines.append(",".join("" if r.get(k) is None else str(r.get(k)) for k in keys))
    n, m = summary["stage1_steps_single_pass"], summary["stage1_steps_independent"]
    lines.append("")
    lines.append(f"Stage 1: {n} steps in one pass against {m} for {len(summary['thresholds'])} separate runs "
                 f"({m - n} saved).")
    if summary["unreached"]:
        lines.append(f"Not reached within the stage-1 budget: {', '.join(f'{t:g}' for t in summary['unreached'])}.")
    text = "\n".join(lines) + "\n"
    (folder / "probe.md").write_text(text)
    (folder / "probe.csv").write_text("\n".join(csv_lines) + "\n")
    return text


