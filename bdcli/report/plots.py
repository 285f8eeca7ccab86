"""The papers' figures, one function each, every one writing a PNG of a fixed pixel size.

matplotlib (and scikit-learn for t-SNE) are the ``plots`` extra: they are imported here, inside the
functions, so that the CLI and every other command start without them. Inputs are plain data (lists,
mappings, arrays); reading them from run folders is ``figures.py``'s job. ACC and ASR come in as
fractions (as metrics.json holds them) and are drawn in percent, as the papers' figures show them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import BdcliError

DPI = 100
# (width, height) in pixels; figures are saved without a tight bounding box so that these hold exactly.
SD_TRACE_SIZE = (800, 480)
SD_EFFECT_SIZE = (1000, 420)
STEPS_SIZE = (1000, 420)
DYNAMICS_ROW_SIZE = (1350, 380)  # one row of three panels per training stage
TSNE_PANEL_SIZE = (460, 460)
SWEEP_SIZE = (1000, 420)
RMSE_SIZE = (900, 460)

GROUP_NAMES = ("clean target label", "clean non-target", "poisoned")
INSTALL_HINT = "pip install 'bdcli[plots]'"


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), or one line saying what to install."""
    try:
        import matplotlib
    except ImportError:
        raise BdcliError(f"drawing figures needs matplotlib, which is not installed: {INSTALL_HINT} "
                         "(or pass --no-plots)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _figure(size: tuple[int, int], ncols: int = 1, nrows: int = 1, **kw):
    plt = pyplot()
    w, h = size
    if w < 50 or h < 50:
        raise BdcliError(f"a figure of {w}x{h} pixels is too small to draw")
    # Constrained layout keeps a suptitle clear of the panels' titles; tight_layout overlaps them on
    # tall grids (the dynamics figure has a row per stage).
    kw.setdefault("layout", "constrained")
    fig, axes = plt.subplots(nrows, ncols, figsize=(w / DPI, h / DPI), dpi=DPI, squeeze=False, **kw)
    return fig, axes


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=DPI, format="png")  # no bbox_inches="tight": it would change the pixel size
    pyplot().close(fig)
    tmp.replace(out)
    return out


def _pct(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else 100.0 * float(v) for v in values]


# ------------------------------------------------------------------------------------ Stop Distance


def sd_against_steps(traces: Mapping[str, Sequence[Sequence[float]]], out: str | Path, *,
                     thresholds: Sequence[float] = (), title: str = "Stop Distance during stage 1",
                     size: tuple[int, int] = SD_TRACE_SIZE) -> Path:
    """SD against stage-1 steps, log y: one line per run (``{label: [[step, sd], ...]}``), the
    thresholds as dashed lines."""
    fig, axes = _figure(size)
    ax = axes[0][0]
    drawn = 0
    for label, trace in traces.items():
        points = [(float(s), float(d)) for s, d in trace if d is not None and float(d) > 0 and math.isfinite(float(d))]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(points) < 40 else None, label=label)
        drawn += 1
    if not drawn:
        pyplot().close(fig)
        raise BdcliError("no positive, finite Stop Distance to draw on a log scale")
    for t in thresholds:
        ax.axhline(float(t), color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("stage-1 step")
    ax.set_ylabel("Stop Distance (log scale)")
    ax.set_title(title)
    if 1 < drawn <= 12 or (drawn == 1 and next(iter(traces)) != ""):
        ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out)


def _probe_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    rows = sorted((r for r in rows if r.get("threshold") is not None), key=lambda r: float(r["threshold"]))
    if not rows:
        raise BdcliError("the probe holds no threshold rows to draw")
    return rows


def sd_effect(rows: Sequence[Mapping[str, Any]], out: str | Path, *, title: str = "Effect of the Stop Distance threshold",
              size: tuple[int, int] = SD_EFFECT_SIZE) -> Path:
    """Maximum-entropy Figure 5: ACC (left) and ASR (right) against the SD threshold (log x).
    ``rows``: probe.json's rows; a threshold without a model (not reached) has no point."""
    rows = _probe_rows(rows)
    xs = [float(r["threshold"]) for r in rows]
    fig, axes = _figure(size, ncols=2)
    for ax, key, name in ((axes[0][0], "acc", "ACC"), (axes[0][1], "asr", "ASR")):
        ax.plot(xs, _pct([r.get(key) for r in rows]), marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("Stop Distance threshold (log scale)")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, out)


def steps_against_sd(rows: Sequence[Mapping[str, Any]], out: str | Path, *,
                     title: str = "Training steps against the Stop Distance threshold",
                     size: tuple[int, int] = STEPS_SIZE) -> Path:
    """Maximum-entropy Figures 9 and 10: stage-1 (maximum entropy) and stage-2 (re-training) steps
    against the SD threshold (log x)."""
    rows = _probe_rows(rows)
    xs = [float(r["threshold"]) for r in rows]
    fig, axes = _figure(size, ncols=2)
    for ax, key, name in ((axes[0][0], "stage1_steps", "stage 1 (maximum entropy)"),
                          (axes[0][1], "stage2_steps", "stage 2 (re-training)")):
        ys = [math.nan if r.get(key) is None else float(r[key]) for r in rows]
        ax.plot(xs, ys, marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("Stop Distance threshold (log scale)")
        ax.set_ylabel("steps")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, out)


# --------------------------------------------------------------------------------- training dynamics

DISTANCES = (("d_target_nontarget", "target - non-target"), ("d_target_poison", "target - poisoned"),
             ("d_nontarget_poison", "non-target - poisoned"))
VARIANCES = (("var_target", "target label"), ("var_nontarget", "non-target"), ("var_poison", "poisoned"))
DYNAMICS_COLUMNS = ("stage", "step") + tuple(c for c, _ in DISTANCES + VARIANCES) + ("acc", "asr")


def dynamics(rows: Sequence[Mapping[str, Any]], out: str | Path, *, title: str = "Training dynamics",
             size: tuple[int, int] | None = None) -> Path:
    """Maximum-entropy Figures 2-4: per training stage (one row each, in order of appearance), (a)
    the centroid distances between the three groups, (b) ACC and ASR, (c) the within-group variances,
    over steps. ``rows``: dynamics.csv's rows; missing values (None/NaN) leave gaps."""
    if not rows:
        raise BdcliError("the dynamics table is empty")
    stages = list(dict.fromkeys(str(r.get("stage", "")) for r in rows))
    w, h = size or (DYNAMICS_ROW_SIZE[0], DYNAMICS_ROW_SIZE[1] * len(stages))
    fig, axes = _figure((w, h), ncols=3, nrows=len(stages))

    def col(rs, key):
        return [math.nan if r.get(key) is None else float(r[key]) for r in rs]

    for i, stage in enumerate(stages):
        rs = sorted((r for r in rows if str(r.get("stage", "")) == stage), key=lambda r: float(r["step"]))
        steps = [float(r["step"]) for r in rs]
        a, b, c = axes[i]
        for key, name in DISTANCES:
            a.plot(steps, col(rs, key), label=name)
        # Stage 1 collapses the distances by orders of magnitude; a linear axis shows only a drop to 0.
        seen = [v for key, _ in DISTANCES for v in col(rs, key) if not math.isnan(v)]
        if seen and min(seen) > 0:
            a.set_yscale("log")
        a.set_title(f"{stage}: centroid distances" if stage else "centroid distances")
        b.plot(steps, _pct([r.get("acc") for r in rs]), label="ACC")
        b.plot(steps, _pct([r.get("asr") for r in rs]), label="ASR")
        b.set_ylim(-2, 102)
        b.set_title(f"{stage}: ACC and ASR (%)" if stage else "ACC and ASR (%)")
        for key, name in VARIANCES:
            c.plot(steps, col(rs, key), label=name)
        c.set_title(f"{stage}: within-group variance" if stage else "within-group variance")
        for ax in (a, b, c):
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return _save(fig, out)


# ------------------------------------------------------------------------------------------- t-SNE


def tsne(panels: Mapping[str, tuple[Any, Any]], out: str | Path, *, seed: int = 0, max_points: int = 2000,
         title: str = "t-SNE of the representations", size: tuple[int, int] | None = None) -> Path:
    """Maximum-entropy Figure 1: each panel ``{title: (features [n, d], group [n])}`` reduced to two
    dimensions with scikit-learn's TSNE (seeded; perplexity min(30, (n - 1) / 3) so that small sets
    work); groups 0 clean target label, 1 clean non-target, 2 poisoned. Sets above ``max_points`` are
    subsampled (seeded) and the panel title says so."""
    import numpy as np

    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise BdcliError(f"t-SNE needs scikit-learn, which is not installed: {INSTALL_HINT} (or pass --no-plots)") from None
    if not panels:
        raise BdcliError("no representations to draw")
    n_panels = len(panels)
    fig, axes = _figure(size or (TSNE_PANEL_SIZE[0] * n_panels, TSNE_PANEL_SIZE[1] + 40), ncols=n_panels)
    colors = ("tab:blue", "tab:orange", "tab:red")
    for ax, (name, (features, group)) in zip(axes[0], panels.items()):
        x = np.asarray(features, dtype=np.float64)
        g = np.asarray(group).astype(np.int64)
        if x.ndim != 2 or g.shape != (x.shape[0],):
            raise BdcliError(f"{name}: features must be [n, d] and group [n], got {list(x.shape)} and {list(g.shape)}")
        if not np.isfinite(x).all():
            raise BdcliError(f"{name}: the representations hold non-finite values")
        if set(np.unique(g).tolist()) - {0, 1, 2}:
            raise BdcliError(f"{name}: group values must be 0, 1 or 2, got {sorted(set(np.unique(g).tolist()))}")
        n = x.shape[0]
        if n < 5:
            raise BdcliError(f"{name}: t-SNE needs at least 5 representations, got {n}")
        note = ""
        if n > max_points:
            keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
            x, g, note = x[keep], g[keep], f" ({max_points} of {n})"
            n = max_points
        emb = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), random_state=seed, init="pca").fit_transform(x)
        for k in (0, 1, 2):
            sel = g == k
            if sel.any():
                ax.scatter(emb[sel, 0], emb[sel, 1], s=8, c=colors[k], label=f"{GROUP_NAMES[k]} ({int(sel.sum())})")
        ax.set_title(name + note, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize="x-small")
    fig.suptitle(title)
    return _save(fig, out)


# ------------------------------------------------------------------------------------ sweeps (curves)


@dataclass
class Curve:
    """One line of a sweep: ACC and ASR (fractions; mean and sample std over seeds, std NaN for one
    seed) at each x."""

    label: str
    x: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    acc_std: list[float] = field(default_factory=list)
    asr: list[float] = field(default_factory=list)
    asr_std: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)


def sweep(curves: Sequence[Curve], out: str | Path, *, x_label: str, title: str, log_x: bool = False,
          size: tuple[int, int] = SWEEP_SIZE) -> Path:
    """ACC (left) and ASR (right) against a swept option, mean ± std over seeds as error bars: the
    prune-ratio sweeps (maximum-entropy Figures 6-8) and the clean-share curves (GBA Figure 2,
    maximum-entropy Figures 12-13)."""
    if not curves or not any(c.x for c in curves):
        raise BdcliError("no sweep points to draw")
    fig, axes = _figure(size, ncols=2)
    for ax, mean, std, name in ((axes[0][0], "acc", "acc_std", "ACC"), (axes[0][1], "asr", "asr_std", "ASR")):
        for c in curves:
            ys, es = _pct(getattr(c, mean)), _pct(getattr(c, std))
            if all(math.isnan(y) for y in ys):
                continue
            ax.errorbar(c.x, ys, yerr=[0.0 if math.isnan(e) else e for e in es], marker="o", capsize=3, label=c.label)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        if len(curves) <= 16:
            ax.legend(fontsize="x-small")
    fig.suptitle(title)
    return _save(fig, out)


# ----------------------------------------------------------------------------------- trigger RMSE


def rmse_sections(doc: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``trigger_rmse.json`` as ``{section: {trigger: {class token: rmse}}}``: the sections are
    "before" and "after" when the file has them (each ``{"triggers": ...}`` or the mapping itself),
    else one unnamed section from its top-level "triggers"."""
    sections: dict[str, Any] = {}
    for name in ("before", "after"):
        if isinstance(doc.get(name), Mapping):
            part = doc[name]
            sections[name] = part.get("triggers", part)
    if not sections and isinstance(doc.get("triggers"), Mapping):
        sections[""] = doc["triggers"]
    if not sections:
        raise BdcliError("trigger RMSE: expected 'triggers' (and optionally 'before' / 'after' sections)")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, triggers in sections.items():
        out[name] = {}
        for tok, by_class in triggers.items():
            if not isinstance(by_class, Mapping) or not by_class:
                raise BdcliError(f"trigger RMSE: trigger {tok!r} needs a mapping of class token: RMSE")
            vals = {}
            for cls, v in by_class.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise BdcliError(f"trigger RMSE: {tok!r} -> {cls!r} is not a finite RMSE >= 0: {v!r}")
                vals[str(cls)] = float(v)
            out[name][str(tok)] = vals
    return out


def trigger_rmse(doc: Mapping[str, Any], out: str | Path, *,
                 title: str = "Distance (RMSE) from each trigger's embedding to the class tokens",
                 size: tuple[int, int] = RMSE_SIZE) -> Path:
    """GBA Figure 3: one group of bars per trigger token, a bar per (section, class token)."""
    import numpy as np

    sections = rmse_sections(doc)
    triggers = list(dict.fromkeys(t for s in sections.values() for t in s))
    classes = list(dict.fromkeys(c for s in sections.values() for by in s.values() for c in by))
    bars = [(s, c) for s in sections for c in classes]
    fig, axes = _figure(size)
    ax = axes[0][0]
    width = 0.8 / len(bars)
    pos = np.arange(len(triggers))
    for i, (s, c) in enumerate(bars):
        ys = [sections[s].get(t, {}).get(c, math.nan) for t in triggers]
        label = f"{s}: {c}" if s else c
        ax.bar(pos + (i - (len(bars) - 1) / 2) * width, ys, width, label=label,
               hatch="//" if s == "before" else None, alpha=0.85)
    ax.set_xticks(pos)
    ax.set_xticklabels(triggers)
    ax.set_xlabel("trigger token")
    ax.set_ylabel("RMSE to the class token's embedding")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out)
