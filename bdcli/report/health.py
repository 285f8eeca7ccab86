"""Warnings about records whose numbers measure nothing, printed beside the tables that hold them.

A victim that never learned its task (clean ACC at the level of guessing one label) gives an ASR of
~100% for free, and every defense of its column then starts from a model with no task to keep: the
column's ASR and Δ look like a result but measure no backdoor removal. A defense that collapsed to one
label likewise scores an ASR of 0 (or 100) by that label alone, and would otherwise be marked best. The
table keeps the numbers (they are what was measured); the report says so next to them.
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


def at_chance(rec: dict[str, Any]) -> str | None:
    """How a model gets its clean ACC without the task (``chance_level``'s sentence) if this record's ACC
    is within ``CHANCE_MARGIN`` of it, else None."""
    chance, acc = chance_level(rec), rec.get("acc")
    if chance is None or not isinstance(acc, (int, float)) or isinstance(acc, bool):
        return None
    return chance[1] if acc <= chance[0] + CHANCE_MARGIN else None


def untrained_victims(records: Iterable[dict[str, Any]]) -> list[str]:
    """One sentence per (data set, attack) whose victim is at chance clean ACC on some seed."""
    return [f"the {dataset} {attack} victim never learned its task ({how}): its ASR is free and its column's "
            "defense rows measure no backdoor removal"
            for (dataset, attack, _), how in _at_chance(records, victims=True).items()]


def one_label_models(records: Iterable[dict[str, Any]]) -> list[str]:
    """One sentence per (data set, attack, method) whose defended model is at chance clean ACC on some
    seed: it answers one label whatever the input, so its ASR is 0 or 100 by that label alone, not by
    what became of the backdoor (``build_table`` leaves such a cell out of the best / second marks)."""
    return [f"{label} on {dataset} {attack} answers one label ({how}): its ASR says which label, not whether "
            "the backdoor is gone, and it is not ranked"
            for (dataset, attack, label), how in _at_chance(records, victims=False).items()]


def _at_chance(records: Iterable[dict[str, Any]], victims: bool) -> dict[tuple[str, str, str | None], str]:
    """(data set, attack, row label) -> "clean ACC seed 1: 49.92, seed 2: ...; <how chance is reached>"."""
    from .table import record_names

    found: dict[tuple[str, str, str | None], list[tuple[Any, float, str]]] = {}
    for rec in records:
        how = at_chance(rec)
        if how is None or (rec.get("method") == "victim") != victims:
            continue
        found.setdefault(record_names(rec), []).append((rec.get("seed"), rec["acc"], how))
    out = {}
    for key, cells in found.items():
        seeds = ", ".join(f"seed {s}: {100 * a:.2f}" if s is not None else f"{100 * a:.2f}"
                          for s, a, _ in sorted(cells, key=lambda c: (c[0] is None, c[0] or 0)))
        out[key] = f"clean ACC {seeds}; {cells[0][2]}"
    return out
