"""One line per evaluated model: the numbers behind each mean ± std, seed by seed.

A mean over seeds hides what a reader of a backdoor table most needs to see: one seed whose low ASR comes
with a collapse to the other label. Beside ACC and ASR this view gives GBA's per-class ASR_c (a share of
triggered rows predicted as each class; ``ASR_c rows`` says over which rows the evaluation took it:
``every`` test row triggered, GBA appendix B.2, or the ``non-target`` ones) and the training steps.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from .table import DATASET_NAMES, METHOD_ORDER, attack_display, attack_order, method_display

NUMBERS = ("ACC", "ASR")


def seed_table(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    records = list(records)
    classes = list(dict.fromkeys(c for r in records for c in (r.get("asr_c") or {})))
    attacks = attack_order()
    rows = []
    for r in records:
        method = r.get("method") or ""
        attack = attack_display(r["attack"]) if r.get("attack") else "Clean"
        row = {
            "Dataset": DATASET_NAMES.get(r.get("dataset") or "", r.get("dataset") or "?"),
            "Attack": attack,
            "Method": r.get("label") or method_display(method),
            "Seed": "" if r.get("seed") is None else str(r["seed"]),
            "ACC": 100 * r["acc"],
            "ASR": math.nan if r.get("asr") is None else 100 * r["asr"],
        }
        for c in classes:
            value = (r.get("asr_c") or {}).get(c)
            row[f"ASR_c {c}"] = math.nan if value is None else 100 * value
        if classes:
            row["ASR_c rows"] = r.get("asr_c_rows") or ""
        row["Steps"] = (r.get("cost") or {}).get("steps", "")
        rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        row["_key"] = (attacks.index(attack) if attack in attacks else len(attacks), rank)
        rows.append(row)
    datasets = list(dict.fromkeys(r["Dataset"] for r in rows))
    labels = list(dict.fromkeys(r["Method"] for r in rows))
    # Data set, attack and method in the papers' order (first seen after the known ones), then the seed.
    rows.sort(key=lambda r: (datasets.index(r["Dataset"]), r["_key"][0], r["_key"][1], labels.index(r["Method"]),
                             _seed_key(r["Seed"])))
    for r in rows:
        del r["_key"]
    return pd.DataFrame(rows)


def seed_numbers(frame: pd.DataFrame) -> tuple[str, ...]:
    return NUMBERS + tuple(c for c in frame.columns if c.startswith("ASR_c ") and c != "ASR_c rows")


def _seed_key(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)
