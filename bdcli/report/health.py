"""Warnings about records whose numbers measure nothing, printed beside the tables that hold them.

A victim that never learned its task (clean ACC at the level of guessing one label) gives an ASR of
~100% for free, and every defense of its column then starts from a model with no task to keep: the
column's ASR and Δ look like a result but measure no backdoor removal. The table keeps the numbers
(they are what was measured); the report says so next to them.
"""

from __future__ import annotations

from typing import Any, Iterable

# A victim within this many points of 1/k clean ACC is no better than guessing on a balanced set.
CHANCE_MARGIN = 0.05


def label_count(rec: dict[str, Any]) -> int | None:
    """The number of labels of a record's data set: the catalog's, else the classes ASR_c was split by."""
    from ..data.named import DATASETS

    name = rec.get("dataset")
    if name in DATASETS:
        return len(DATASETS.get(name).label_names)
    per_class = rec.get("asr_c")
    if isinstance(per_class, dict) and rec.get("asr_c_rows") == "every" and len(per_class) >= 2:
        return len(per_class)
    return None


def untrained_victims(records: Iterable[dict[str, Any]]) -> list[str]:
    """One sentence per (data set, attack) whose victim is at chance clean ACC on some seed."""
    from .table import record_names

    found: dict[tuple[str, str], list[tuple[Any, float, int]]] = {}
    for rec in records:
        k = label_count(rec)
        acc = rec.get("acc")
        if rec.get("method") != "victim" or not k or not isinstance(acc, (int, float)):
            continue
        if acc <= 1 / k + CHANCE_MARGIN:
            dataset, attack, _ = record_names(rec)
            found.setdefault((dataset, attack), []).append((rec.get("seed"), acc, k))
    lines = []
    for (dataset, attack), cells in found.items():
        k = cells[0][2]
        seeds = ", ".join(f"seed {s}: {100 * a:.2f}" if s is not None else f"{100 * a:.2f}"
                          for s, a, _ in sorted(cells, key=lambda c: (c[0] is None, c[0] or 0)))
        lines.append(f"the {dataset} {attack} victim never learned its task (clean ACC {seeds}; guessing one of "
                     f"{k} labels gives {100 / k:.0f}): its ASR is free and its column's defense rows measure "
                     "no backdoor removal")
    return lines
