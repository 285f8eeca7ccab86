"""The table as data: a long form (one line per data set, method, attack and metric with mean, std and
n over seeds), the paper's numbers beside ours, JSON for machines, and a drift check for CI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..errors import BdcliError, UsageError
from .table import ACC, ASR, COST_SECONDS, COST_STEPS, DELTA


def long_form(table: pd.DataFrame) -> list[dict[str, Any]]:
    stds, ns = table.attrs.get("std"), table.attrs.get("n")
    several = isinstance(table.index, pd.MultiIndex)
    only = (table.attrs.get("datasets") or [None])[0]
    out = []
    for i, key in enumerate(table.index):
        dataset, method = (key[0], key[1]) if several else (only, key)
        for j, (attack, metric) in enumerate(table.columns):
            value = table.iat[i, j]
            if pd.isna(value):
                continue
            col = (attack, metric)
            metric_name = "Δ" if col == DELTA else metric if attack != "Cost" else f"cost_{metric}"
            out.append({
                "dataset": dataset, "method": method, "attack": None if col == DELTA or attack == "Cost" else attack,
                "metric": metric_name, "mean": float(value),
                "std": None if stds is None or pd.isna(stds.iat[i, j]) else float(stds.iat[i, j]),
                "n": None if ns is None or col in (DELTA, COST_STEPS, COST_SECONDS) else int(ns.iat[i, j]),
            })
    return out


def paper_comparison(table: pd.DataFrame, paper: dict[str, Any]) -> pd.DataFrame:
    """Ours, the paper's, and the difference, for every cell the paper reports.

    ``paper``: ``{dataset: {method: {attack: [ACC, ASR]}}}`` in the tables' spelling (SST-2, Victim,
    BadNets), percent, as recipes hold it."""
    ours = {(r["dataset"], r["method"], r["attack"], r["metric"]): r for r in long_form(table)}
    rows = []
    for dataset, methods in (paper or {}).items():
        for method, attacks in (methods or {}).items():
            for attack, values in (attacks or {}).items():
                if not isinstance(values, (list, tuple)) or len(values) != 2:
                    raise UsageError(f"paper numbers for {dataset} / {method} / {attack} must be [ACC, ASR]")
                for metric, theirs in zip((ACC, ASR), values):
                    if theirs is None:
                        continue
                    r = ours.get((dataset, method, attack, metric))
                    mean = r["mean"] if r else math.nan
                    rows.append({"Dataset": dataset, "Method": method, "Attack": attack, "Metric": metric,
                                 "Ours": mean, "±": r["std"] if r and r["std"] is not None else math.nan,
                                 "n": r["n"] if r else 0, "Paper": float(theirs),
                                 "Diff": round(mean - float(theirs), 2) if r else math.nan})
    return pd.DataFrame(rows, columns=["Dataset", "Method", "Attack", "Metric", "Ours", "±", "n", "Paper", "Diff"])


def render_comparison(frame: pd.DataFrame, fmt: str) -> str:
    """The cells both sides report; a paper cell not measured here (a partial run of a large table) is
    left out of the text, and kept in the JSON form with n 0."""
    if not frame.empty:
        frame = frame[frame["n"] > 0]
    return render_flat(frame, fmt, dict.fromkeys(("Ours", "±", "Paper", "Diff"), 2))


def render_flat(frame: pd.DataFrame, fmt: str, numbers: Mapping[str, int]) -> str:
    """A plain frame (no marks, one header row) in ``fmt``; ``numbers`` maps each numeric column to its
    decimals (NaN printed empty)."""
    if frame.empty:
        return ""
    text = frame.copy()
    for col, places in numbers.items():
        if col in text:
            text[col] = text[col].map(lambda v, p=places: "" if pd.isna(v) else f"{v:.{p}f}")
    if fmt == "csv":
        return text.to_csv(index=False, lineterminator="\n")
    if fmt == "latex":
        return text.to_latex(index=False)
    if fmt == "html":
        return text.to_html(index=False, border=0)
    header = "| " + " | ".join(text.columns) + " |"
    rule = "|" + "|".join("---" for _ in text.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in text.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_json(table: pd.DataFrame, paper: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> str:
    doc: dict[str, Any] = {"bdcli_report": 1, **(meta or {}), "cells": long_form(table)}
    if paper:
        doc["paper"] = json.loads(paper_comparison(table, paper).to_json(orient="records"))
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def drift(table: pd.DataFrame, expected: str | Path, tolerance: float) -> list[str]:
    """Cells of ``expected`` (a ``--format json`` report) whose mean moved by more than ``tolerance``
    points, or that are missing now; empty when everything holds."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise UsageError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    try:
        doc = json.loads(Path(expected).read_text())
        cells = doc["cells"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{expected} is not a bdcli JSON report ({e.__class__.__name__}: {e})") from None
    ours = {(r["dataset"], r["method"], r["attack"], r["metric"]): r["mean"] for r in long_form(table)}
    problems = []
    for cell in cells:
        if str(cell.get("metric", "")).startswith("cost_"):
            continue  # time is never a pass/fail criterion
        key = (cell["dataset"], cell["method"], cell["attack"], cell["metric"])
        name = " / ".join(str(k) for k in key if k is not None)
        if key not in ours:
            problems.append(f"{name}: expected {cell['mean']:.2f}, missing")
        elif abs(ours[key] - cell["mean"]) > tolerance:
            problems.append(f"{name}: expected {cell['mean']:.2f}, got {ours[key]:.2f} "
                            f"(off by {abs(ours[key] - cell['mean']):.2f} > {tolerance})")
    if not cells:
        raise BdcliError(f"{expected} holds no cells to compare")
    return problems


def _seeds_line(table: pd.DataFrame) -> str:
    ns = table.attrs.get("n")
    values = sorted({int(v) for v in ns.to_numpy().ravel() if v and v == v}) if ns is not None else []
    if not values:
        return "ACC and ASR in percent."
    n = str(values[0]) if len(values) == 1 else f"{values[0]} to {values[-1]}"
    return (f"ACC and ASR in percent, mean ± sample standard deviation over n = {n} seeds per cell (n of each "
            "cell in report.csv and report.json); Δ is the mean ASR drop against the victim; cost is the mean "
            "training steps and seconds of the step that made each model.")


def write_report(table: pd.DataFrame | None, out: Path, *, title: str, paper: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None, notes: list[str] = (), figures: list = ()) -> str:
    """``report.md`` / ``.csv`` / ``.tex`` / ``.html`` / ``.json`` in ``out``; returns the Markdown.

    ``figures`` (``figures.Figure`` items, their PNG files under ``out/figures``) are linked from the
    Markdown and embedded in ``report.html``, which then holds everything in one file. Without a
    table (figure inputs only), only ``report.md`` and ``report.html`` are written."""
    from .page import html_page
    from .table import render

    out.mkdir(parents=True, exist_ok=True)
    comparison = paper_comparison(table, paper) if paper and table is not None else pd.DataFrame()
    md = [f"# {title}", ""]
    if table is not None:
        md += [_seeds_line(table), "", render(table, "markdown")]
    if not comparison.empty:
        md += ["## Beside the paper (percent; Diff = ours - paper)", "", render_comparison(comparison, "markdown")]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if figures:
        md += ["## Figures", "", *[f"![{f.caption}](figures/{f.name})\n\n{f.caption}\n" for f in figures]]
    blocks = []
    if table is not None:
        blocks += [f"<p>{_seeds_line(table)}</p>", render(table, "html")]
    if not comparison.empty:
        blocks += ["<h2>Beside the paper (percent; Diff = ours - paper)</h2>", render_comparison(comparison, "html")]
    files = {"report.md": "\n".join(md), "report.html": html_page(title, blocks, figures, notes)}
    if table is not None:
        files.update({"report.csv": render(table, "csv"), "report.tex": render(table, "latex"),
                      "report.json": to_json(table, paper, meta)})
    if not comparison.empty:
        files["paper-comparison.csv"] = render_comparison(comparison, "csv")
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return files["report.md"]
