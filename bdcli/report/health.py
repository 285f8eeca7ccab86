"""Warnings about records whose numbers measure nothing, printed beside the tables that hold them.

A victim that never learned its task (clean ACC at the level of guessing one label) gives an ASR of
~100% for free, and every defense of its column then starts from a model with no task to keep: the
column's ASR and Δ look like a result but measure no backdoor removal. The table keeps the numbers
(they are what was measured); the report says so next to them.
"""

from __future__ import annotations

from typing import Any, Iterable

# A victim within this many points of the chance level (below) has not learned its task.
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


def chance_level(rec: dict[str, Any]) -> tuple[float, str] | None:
    """The clean ACC a model gets without learning the task, and how: always predicting the test split's
    most frequent label where the evaluation recorded the label shares (an imbalanced set such as HS
    sits far above 1/k), else guessing one of the data set's k labels."""
    shares = rec.get("label_shares")
    if isinstance(shares, dict) and shares and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in shares.values()):
        name, top = max(shares.items(), key=lambda kv: kv[1])
        return float(top), f"always predicting its most frequent label, {name}, gives {100 * top:.2f}"
    k = label_count(rec)
    if not k:
        return None
    return 1 / k, f"guessing one of {k} labels gives {100 / k:.0f}"


def untrained_victims(records: Iterable[dict[str, Any]]) -> list[str]:
    """One sentence per (data set, attack) whose victim is at chance clean ACC on some seed."""
    from .table import record_names

    found: dict[tuple[str, str], list[tuple[Any, float, str]]] = {}
    for rec in records:
        chance = chance_level(rec)
        acc = rec.get("acc")
        if rec.get("method") != "victim" or chance is None or not isinstance(acc, (int, float)):
            continue
        if acc <= chance[0] + CHANCE_MARGIN:
            dataset, attack, _ = record_names(rec)
            found.setdefault((dataset, attack), []).append((rec.get("seed"), acc, chance[1]))
    lines = []
    for (dataset, attack), cells in found.items():
        seeds = ", ".join(f"seed {s}: {100 * a:.2f}" if s is not None else f"{100 * a:.2f}"
                          for s, a, _ in sorted(cells, key=lambda c: (c[0] is None, c[0] or 0)))
        lines.append(f"the {dataset} {attack} victim never learned its task (clean ACC {seeds}; {cells[0][2]}): "
                     "its ASR is free and its column's defense rows measure no backdoor removal")
    return lines
