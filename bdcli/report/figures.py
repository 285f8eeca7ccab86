"""Which figures the given run folders allow, drawn as PNG files.

A figure is drawn from what a step wrote, never from numbers re-typed by hand:

* ``manifest.json`` of a Stop Distance defense (``summary.stage1.sd_trace``) -> SD against steps;
* ``probe.json`` (``bdcli probe-sd``) -> SD trace, Figure 5 (ACC / ASR against SD), Figures 9-10 (steps);
* ``dynamics.csv`` (``--record-dynamics``) -> Figures 2-4;
* ``representations.safetensors`` (``evaluate --geometry``) -> t-SNE, Figure 1;
* ``trigger_rmse.json`` -> GBA Figure 3;
* a recipe store (``plan.json`` and its evaluations) whose defenses sweep one numeric option -> ACC and
  ASR against it (prune ratio: Figures 6-8; clean share: GBA Figure 2, Appendix F).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import BdcliError

PROBE, DYNAMICS, MANIFEST, REPRESENTATIONS, RMSE, PLAN = (
    "probe.json", "dynamics.csv", "manifest.json", "representations.safetensors", "trigger_rmse.json", "plan.json")
# Config fields that never make a sweep's x axis: they name or place a run rather than set it.
NOT_SWEPT = {"label", "seed", "device", "precision", "out", "threads", "resume", "force"}


@dataclass
class Figure:
    name: str  # file name inside the figures folder
    path: Path
    caption: str


@dataclass
class Inputs:
    """Files found under the report's paths, by kind; ``labels`` names a folder for legends."""

    probes: list[Path] = field(default_factory=list)
    dynamics: list[Path] = field(default_factory=list)
    sd_manifests: list[Path] = field(default_factory=list)
    representations: list[Path] = field(default_factory=list)
    rmse: list[Path] = field(default_factory=list)
    plans: list[Path] = field(default_factory=list)
    labels: dict[Path, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any((self.probes, self.dynamics, self.sd_manifests, self.representations, self.rmse, self.plans))


def find_inputs(paths: Iterable[Path | str]) -> Inputs:
    """Walk ``paths`` (dot-folders skipped, as the table's ``collect`` does) for every figure input."""
    found = Inputs()
    roots = [Path(p) for p in paths]
    for root in roots:
        if root.is_file():
            walk = [(str(root.parent), [], [root.name])]
        elif root.is_dir():
            walk = os.walk(root)
        else:
            continue
        for folder, subfolders, names in walk:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            here = Path(folder)
            names = set(names)
            if PROBE in names:
                found.probes.append(here / PROBE)
            if DYNAMICS in names:
                found.dynamics.append(here / DYNAMICS)
            if REPRESENTATIONS in names:
                found.representations.append(here / REPRESENTATIONS)
            if RMSE in names:
                found.rmse.append(here / RMSE)
            if PLAN in names:
                found.plans.append(here / PLAN)
            if MANIFEST in names and _sd_trace(here / MANIFEST) is not None:
                found.sd_manifests.append(here / MANIFEST)
    for plan in found.plans:
        found.labels.update(_plan_labels(plan))
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BdcliError(f"{path} is not a readable JSON file: {e}") from None


def _sd_trace(manifest: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # not every manifest.json is ours to read; the table reader reports bad metrics
    stage1 = ((doc.get("summary") or {}) if isinstance(doc, dict) else {}).get("stage1") or {}
    trace = stage1.get("sd_trace") if isinstance(stage1, dict) else None
    return stage1 if isinstance(trace, list) and trace else None


def _plan_labels(plan: Path) -> dict[Path, str]:
    """A store's step folders named by the table cell they serve (``sst2/BadNets/s1/FT``) instead of a hash."""
    doc = _read_json(plan)
    out = {}
    for node in doc.get("nodes") or []:
        cells = node.get("cells") or []
        if node.get("folder"):
            out[(plan.parent / node["folder"]).resolve()] = cells[0] if len(cells) == 1 else node.get("id", "")
    return out


def _label(inputs: Inputs, folder: Path, roots: list[Path]) -> str:
    key = folder.resolve()
    if key in inputs.labels:
        return inputs.labels[key]
    for root in roots:
        try:
            rel = folder.resolve().relative_to(root.resolve())
            return str(rel) if str(rel) != "." else folder.name
        except ValueError:
            continue
    return folder.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "run"


def _unique(name: str, taken: set[str]) -> str:
    stem, ext = os.path.splitext(name)
    n, out = 2, name
    while out in taken:
        out, n = f"{stem}-{n}{ext}", n + 1
    taken.add(out)
    return out


# ------------------------------------------------------------------------------------------- draw


def draw_figures(paths: Iterable[Path | str], out: Path, *, records: list[dict[str, Any]] | None = None,
                 recipe: str | Path | None = None) -> list[Figure]:
    """Draw every figure the inputs under ``paths`` allow into ``out`` (PNG files); ``records`` are the
    table's metrics (for sweeps), ``recipe`` a recipe whose defenses name the swept option."""
    from . import plots

    roots = [Path(p) for p in paths]
    inputs = find_inputs(roots)
    figures: list[Figure] = []
    taken: set[str] = set()

    def add(name: str, caption: str, draw) -> None:
        name = _unique(name, taken)
        figures.append(Figure(name, draw(out / name), caption))

    traces: dict[str, list] = {}
    thresholds: list[float] = []
    for m in inputs.sd_manifests:
        stage1 = _sd_trace(m)
        traces[_label(inputs, m.parent, roots)] = stage1["sd_trace"]
        if isinstance(stage1.get("sd_threshold"), (int, float)):
            thresholds.append(float(stage1["sd_threshold"]))
    probes = [(p, _probe(p)) for p in inputs.probes]
    for p, doc in probes:
        if doc.get("sd_trace"):
            traces[_label(inputs, p.parent, roots) + " (probe-sd)"] = doc["sd_trace"]
            thresholds += [float(t) for t in doc.get("thresholds") or []]
    if traces:
        thresholds = sorted(set(thresholds))
        add("sd-trace.png", "Stop Distance against stage-1 steps (log scale); dashed: the thresholds "
            f"({', '.join(f'{t:g}' for t in thresholds[:8])}{' ...' if len(thresholds) > 8 else ''}).",
            lambda f: plots.sd_against_steps(traces, f, thresholds=thresholds[:8]))

    for p, doc in probes:
        label = _label(inputs, p.parent, roots)
        rows = doc["rows"]
        unreached = doc.get("unreached") or []
        saved = doc.get("saved_steps")
        note = f" Not reached within the budget: {', '.join(f'{t:g}' for t in unreached)}." if unreached else ""
        add(f"sd-effect-{_slug(label)}.png", f"{label}: ACC and ASR against the Stop Distance threshold "
            f"(maximum-entropy Figure 5).{note}", lambda f, r=rows, t=label: plots.sd_effect(r, f, title=f"Effect of SD: {t}"))
        cost = (f" One stage-1 pass of {doc['stage1_steps_single_pass']} steps served every threshold "
                f"(k independent runs: {doc['stage1_steps_independent']}; saved {saved})."
                if saved is not None and doc.get("stage1_steps_single_pass") is not None else "")
        add(f"steps-vs-sd-{_slug(label)}.png", f"{label}: stage-1 and stage-2 steps against the Stop Distance "
            f"threshold (maximum-entropy Figures 9-10).{cost}",
            lambda f, r=rows, t=label: plots.steps_against_sd(r, f, title=f"Steps against SD: {t}"))

    for d in inputs.dynamics:
        label = _label(inputs, d.parent, roots)
        rows = read_dynamics(d)
        stages = list(dict.fromkeys(r["stage"] for r in rows))
        no_poison = all(r.get("asr") is None and r.get("d_target_poison") is None for r in rows)
        add(f"dynamics-{_slug(label)}.png", f"{label}: training dynamics by stage ({', '.join(stages)}): centroid "
            "distances, ACC and ASR, within-group variances (maximum-entropy Figures 2-4)."
            + (" No poisoned probe rows: the clean groups only." if no_poison else ""),
            lambda f, r=rows, t=label: plots.dynamics(r, f, title=f"Training dynamics: {t}"))

    if inputs.representations:
        panels = {_label(inputs, r.parent, roots): read_representations(r) for r in inputs.representations}
        items = list(panels.items())
        for i in range(0, len(items), 4):
            chunk = dict(items[i:i + 4])
            add("tsne.png", "t-SNE (scikit-learn, seed 0) of the representations: clean target label, clean "
                f"non-target and poisoned rows (maximum-entropy Figure 1): {', '.join(chunk)}.",
                lambda f, c=chunk: plots.tsne(c, f))

    for r in inputs.rmse:
        label = _label(inputs, r.parent, roots)
        doc = _read_json(r)
        add(f"trigger-rmse-{_slug(label)}.png", f"{label}: RMSE from each trigger token's embedding to the class "
            "tokens' embeddings (GBA Figure 3).", lambda f, d=doc: plots.trigger_rmse(d, f))

    if records:
        for fig in sweep_figures(records, inputs, recipe):
            add(fig["name"], fig["caption"], lambda f, s=fig: plots.sweep(s["curves"], f, x_label=s["x_label"],
                                                                       title=s["title"], log_x=s["log_x"]))
    return figures


def _probe(path: Path) -> dict[str, Any]:
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise BdcliError(f"{path} has no 'rows' list: not a probe-sd output")
    for r in doc["rows"]:
        for key in ("acc", "asr"):
            v = r.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                raise BdcliError(f"{path}: threshold {r.get('threshold')} has an {key} that is not a fraction: {v!r}")
    return doc


def read_dynamics(path: Path) -> list[dict[str, Any]]:
    """dynamics.csv as rows of floats (None where a cell is empty); stage kept as text."""
    from .plots import DYNAMICS_COLUMNS

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("stage", "step") if c not in (reader.fieldnames or [])]
            if missing:
                raise BdcliError(f"{path} lacks the column(s) {', '.join(missing)}")
            rows = []
            for i, raw in enumerate(reader, start=2):
                row: dict[str, Any] = {"stage": raw["stage"]}
                for c in DYNAMICS_COLUMNS[1:]:
                    cell = (raw.get(c) or "").strip()
                    try:
                        row[c] = float(cell) if cell else None
                    except ValueError:
                        raise BdcliError(f"{path}, line {i}: {c} is not a number: {cell!r}") from None
                if row["step"] is None:
                    raise BdcliError(f"{path}, line {i}: no step")
                rows.append(row)
    except OSError as e:
        raise BdcliError(f"{path} is not readable: {e}") from None
    if not rows:
        raise BdcliError(f"{path} holds no rows")
    return rows


def read_representations(path: Path):
    """``features`` [n, d] and ``group`` [n] from a safetensors file (no pickle is ever read)."""
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
    except Exception as e:  # a corrupt file raises the library's own error types
        raise BdcliError(f"{path} is not a readable safetensors file: {e}") from None
    missing = [k for k in ("features", "group") if k not in tensors]
    if missing:
        raise BdcliError(f"{path} lacks the tensor(s) {', '.join(missing)}")
    return tensors["features"], tensors["group"]


# ------------------------------------------------------------------------------------------- sweeps


def _defense_configs(inputs: Inputs, recipe: str | Path | None) -> tuple[dict[str, tuple[str, dict]], dict[str, tuple[str, dict]], dict]:
    """(by metrics folder, by label) -> (defense name, config), and the recipe's ``report`` section."""
    by_folder: dict[str, tuple[str, dict]] = {}
    by_label: dict[str, tuple[str, dict]] = {}
    report: dict[str, Any] = {}
    for plan in inputs.plans:
        doc = _read_json(plan)
        nodes = {n["id"]: n for n in doc.get("nodes") or []}
        report = report or ((doc.get("resolved") or {}).get("report") or {})
        for n in nodes.values():
            step = n.get("step") or {}
            if step.get("kind") != "evaluate":
                continue
            ref = ((step.get("inputs") or {}).get("model") or {})
            src = nodes.get(ref.get("ref")) if isinstance(ref, dict) else None
            if src and (src.get("step") or {}).get("kind") == "defend":
                by_folder[str((plan.parent / n["folder"]).resolve())] = (src["step"]["name"], src["step"]["config"])
    if recipe is not None:
        from ..recipes import load_recipe
        from ..steps import config_dict

        rec = load_recipe(recipe)
        report = rec.report or report
        for key, comp in rec.defenses:
            by_label[key] = (comp.name, config_dict(comp.config))
    return by_folder, by_label, report


def sweep_figures(records: list[dict[str, Any]], inputs: Inputs, recipe: str | Path | None) -> list[dict[str, Any]]:
    """The sweeps the records allow: defenses that differ in one numeric option (the recipe's
    ``report.sweep`` when it names one), ACC and ASR mean ± std over seeds against it, one figure per
    data set; ``report.average_attacks: true`` averages each seed over the attacks first (GBA Figure 2)."""
    from ..registry import display_name
    from .plots import Curve
    from .table import DATASET_NAMES, _std, attack_display

    by_folder, by_label, report = _defense_configs(inputs, recipe)
    if not by_folder and not by_label:
        return []
    runs = []  # (record, defense name, config)
    for r in records:
        folder = str(Path(r.get("path", "")).parent.resolve())
        found = by_folder.get(folder) or by_label.get(r.get("label") or "")
        if found:
            runs.append((r, *found, r.get("label") or found[0]))
    if not runs:
        return []
    configs = {label: (name, cfg) for _, name, cfg, label in runs}
    if report.get("sweep") is not None and not isinstance(report["sweep"], str):
        raise BdcliError(f"the recipe's report.sweep must name one config option, got {report['sweep']!r}")
    x_field = report.get("sweep") or _swept_field(configs.values())
    if x_field is None:
        return []
    swept = [(label, name, cfg) for label, (name, cfg) in configs.items() if _number(cfg.get(x_field)) is not None]
    if not swept:
        raise BdcliError(f"no defense of the report sets the swept option {x_field!r} to a number")
    series_of: dict[str, str] = {}
    by_name: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for label, name, cfg in swept:
        by_name[name].append((label, cfg))
    for name, members in by_name.items():
        # Options that vary beside the swept one (retrain on/off, say) split a component into several lines.
        others = sorted({k for _, cfg in members for k in cfg if k != x_field and k not in NOT_SWEPT
                         and len({json.dumps(c.get(k), sort_keys=True) for _, c in members}) > 1})
        groups: dict[tuple, list[str]] = defaultdict(list)
        for label, cfg in members:
            groups[tuple(json.dumps(cfg.get(k), sort_keys=True) for k in others)].append(label)
        for key, labels in groups.items():
            words = [lab.split() for lab in labels]
            common = []
            for parts in zip(*words):
                if len(set(parts)) > 1:
                    break
                common.append(parts[0])
            if len(labels) > 1 and common and len(common) < min(len(w) for w in words):
                line = " ".join(common)
            else:
                line = (display_name(name, ("defense",)) or name) + "".join(
                    f" {k}={json.loads(v)}" for k, v in zip(others, key))
            for lab in labels:
                series_of[lab] = line
    average = bool(report.get("average_attacks"))
    # samples[dataset][(series, attack)][x][seed] = (acc, asr)
    samples: dict[str, dict[tuple, dict[float, dict[Any, tuple]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    attacks_of: dict[str, set] = defaultdict(set)
    for r, name, cfg, label in runs:
        if label not in series_of:
            continue
        ds = DATASET_NAMES.get(r.get("dataset") or "", r.get("dataset") or "?")
        atk = attack_display(r["attack"]) if r.get("attack") else "Clean"
        attacks_of[ds].add(atk)
        samples[ds][(series_of[label], atk)][_number(cfg[x_field])][r.get("seed")] = (r["acc"], r.get("asr"))
    figures = []
    for ds, by_line in samples.items():
        attacks = sorted(attacks_of[ds])
        lines: dict[str, dict[float, list[tuple]]] = defaultdict(lambda: defaultdict(list))
        dropped = 0
        if average and len(attacks) > 1:
            series = sorted({s for s, _ in by_line})
            for s in series:
                xs = sorted({x for (s2, _), pts in by_line.items() if s2 == s for x in pts})
                for x in xs:
                    seeds = set.union(*(set(by_line[(s, a)].get(x, {})) for a in attacks))
                    for seed in seeds:
                        vals = [by_line[(s, a)].get(x, {}).get(seed) for a in attacks]
                        if any(v is None for v in vals):
                            dropped += 1
                            continue
                        asr = [v[1] for v in vals if v[1] is not None]
                        lines[s][x].append((sum(v[0] for v in vals) / len(vals),
                                            sum(asr) / len(asr) if len(asr) == len(vals) else None))
        else:
            for (s, atk), pts in by_line.items():
                line = s if len(attacks) == 1 else f"{s} / {atk}"
                for x, by_seed in pts.items():
                    lines[line][x] += list(by_seed.values())
        curves = []
        for line, pts in lines.items():
            c = Curve(line)
            for x in sorted(pts):
                accs = [a for a, _ in pts[x]]
                asrs = [b for _, b in pts[x] if b is not None]
                c.x.append(x)
                c.acc.append(sum(accs) / len(accs))
                c.acc_std.append(_std(accs))
                c.asr.append(sum(asrs) / len(asrs) if asrs else math.nan)
                c.asr_std.append(_std(asrs) if len(asrs) == len(accs) else math.nan)
                c.n.append(len(accs))
            curves.append(c)
        ns = sorted({n for c in curves for n in c.n})
        n_text = str(ns[0]) if len(ns) == 1 else f"{ns[0]} to {ns[-1]}"
        what = f"averaged over the attacks ({', '.join(attacks)})" if average and len(attacks) > 1 else \
            f"against {', '.join(attacks)}"
        x_label = report.get("x_label") or x_field.replace("_", " ")
        figures.append({
            "name": f"sweep-{_slug(x_field)}-{_slug(ds)}.png", "curves": curves, "x_label": x_label,
            "log_x": bool(report.get("log_x")), "title": f"{ds}: ACC and ASR against {x_label}",
            "caption": f"{ds}: ACC and ASR (percent, mean ± sample std over n = {n_text} seeds) against {x_label}, "
                       f"{what}." + (f" {dropped} seed(s) lacking an attack were left out of the averages." if dropped else ""),
        })
    return figures


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _swept_field(configs: Iterable[tuple[str, Mapping[str, Any]]]) -> str | None:
    """The numeric option that takes the most distinct values (at least 3) within one component's
    defenses, if any: across components, defaults differ (learning rates) without being swept."""
    by_name: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for name, cfg in configs:
        by_name[name].append(cfg)
    best, best_n = None, 2
    for cfgs in by_name.values():
        for k in sorted({k for cfg in cfgs for k in cfg} - NOT_SWEPT):
            values = {_number(cfg.get(k)) for cfg in cfgs} - {None}
            if len(values) > best_n:
                best, best_n = k, len(values)
    return best
