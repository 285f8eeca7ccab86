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

    GBA puts the trigger in every test row (its appendix B.2), so ``preds`` should come from the triggered
    copy of the WHOLE test set (the ``test-poison-all`` split BadNets writes); ``bdcli evaluate`` uses it
    when the data has it and records ``asr_c_rows: every``. On the ASR set alone (non-target rows only,
    ``asr_c_rows: non-target``), ASR_c of the target is the ASR and the other classes' rates miss the
    target's rows. A class with no row outside it is left out.
    """
    out: dict[str, float] = {}
    for c, name in enumerate(label_names):
        rows = [p for p, y in zip(preds, orig_labels) if y != c]
        if rows:
            out[name] = sum(int(p == c) for p in rows) / len(rows)
    return out


def label_shares(labels: Sequence[int], label_names: Sequence[str]) -> dict[str, float]:
    """Each label's share of a split: the ACC of a model that always predicts that label."""
    if not labels:
        raise ValueError("label shares of an empty set")
    return {name: sum(int(y == c) for y in labels) / len(labels) for c, name in enumerate(label_names)}
