"""One line per evaluated model: the numbers behind each mean ± std, seed by seed.

A mean over seeds hides what a reader of a backdoor table most needs to see: one seed whose low ASR comes
with a collapse to the other label. Beside ACC and ASR this view gives GBA's per-class ASR_c (a share of
triggered rows predicted as each class; ``ASR_c rows`` says over which rows the evaluation took it:
``every`` test row triggered, GBA appendix B.2, or the ``non-target`` ones), the training steps, and,
where the evaluation wrote ``trigger_rmse.json`` (GBA Figure 3), the RMSE from the triggers' embeddings
to the class tokens', averaged over both, before the defense (the victim's) and after it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .table import TableOrder, attack_order, dataset_order, method_rank, record_names, wanted_rank

NUMBERS = ("ACC", "ASR")
RMSE_BEFORE, RMSE_AFTER = "RMSE before", "RMSE after"


def seed_table(records: Iterable[dict[str, Any]], order: TableOrder = TableOrder()) -> pd.DataFrame:
    """One row per model, in ``order`` as ``build_table``'s rows, then by seed."""
    records = list(records)
    classes = list(dict.fromkeys(c for r in records for c in (r.get("asr_c") or {})))
    attacks, methods = attack_order(order.attacks), list(order.methods)
    rows, keys = [], []
    for r in records:
        dataset, attack, label = record_names(r)
        row = {
            "Dataset": dataset, "Attack": attack, "Method": label or "",
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
        row.update(_rmse(Path(r.get("path", "")).parent / "trigger_rmse.json"))
        rows.append(row)
        keys.append((wanted_rank(attack, attacks), method_rank(r.get("method")), wanted_rank(label, methods)))
    datasets = dataset_order([r["Dataset"] for r in rows], order.datasets)
    labels = list(dict.fromkeys(r["Method"] for r in rows))
    # Data set, attack and method in the papers' order (first seen after the known ones), then the seed.
    positions = sorted(range(len(rows)), key=lambda i: (datasets.index(rows[i]["Dataset"]), *keys[i],
                                                        labels.index(rows[i]["Method"]), _seed_key(rows[i]["Seed"])))
    return pd.DataFrame([rows[i] for i in positions])


def seed_numbers(frame: pd.DataFrame) -> dict[str, int]:
    """Each numeric column and its decimals: percentages to 2, RMSEs to 5 (GBA's Figure 3 moves are small)."""
    cols = {c: 2 for c in frame.columns if c in NUMBERS or (c.startswith("ASR_c ") and c != "ASR_c rows")}
    return {**cols, RMSE_BEFORE: 5, RMSE_AFTER: 5}


def _rmse(path: Path) -> dict[str, float]:
    """Mean trigger-to-class-token RMSE of each section of ``trigger_rmse.json`` (none if absent)."""
    if not path.is_file():
        return {}
    from ..errors import BdcliError
    from .plots import rmse_sections

    try:
        sections = rmse_sections(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BdcliError(f"{path} is not a readable JSON file: {e}") from None

    def mean(section: dict[str, dict[str, float]] | None) -> float:
        values = [v for by_class in (section or {}).values() for v in by_class.values()]
        return sum(values) / len(values) if values else math.nan

    # Both columns, in this order, for every row with a file: the victim's own file has no "before".
    return {RMSE_BEFORE: mean(sections.get("before")), RMSE_AFTER: mean(sections.get("after") or sections.get(""))}


def _seed_key(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)
