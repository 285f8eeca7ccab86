"""ACC, ASR and per-class ASR, as the papers define them."""

from __future__ import annotations

from typing import Sequence


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    if not preds:
        raise ValueError("accuracy of an empty set")
    return sum(int(p == y) for p, y in zip(preds, labels)) / len(preds)


def attack_success_rate(preds: Sequence[int], target: int) -> float:
    """Share of poisoned inputs predicted as the target label. The ASR set holds only rows whose clean
    label is not the target (maximum-entropy paper, section 3), so every hit is a real flip."""
    if not preds:
        raise ValueError("ASR of an empty set")
    return sum(int(p == target) for p in preds) / len(preds)


def asr_per_class(preds: Sequence[int], orig_labels: Sequence[int], label_names: Sequence[str]) -> dict[str, float]:
    """GBA's ASR_c = #(triggered rows predicted c) / #(triggered rows not of class c), for every c.

    Computed over the rows of the ASR set not of class c. That set holds only non-target rows, so for
    c = target this is exactly the ASR; for other classes it is measured on the non-target rows alone.
    A class with no such row is left out.
    """
    out: dict[str, float] = {}
    for c, name in enumerate(label_names):
        rows = [p for p, y in zip(preds, orig_labels) if y != c]
        if rows:
            out[name] = sum(int(p == c) for p in rows) / len(rows)
    return out
