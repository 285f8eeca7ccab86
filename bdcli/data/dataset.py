"""The one in-memory form of a labelled text data set that every layer shares."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BdcliError, UsageError


@dataclass
class TextDataset:
    """One split: parallel lists of texts and integer labels.

    ``poisoned`` marks rows a poisoner changed (all False for clean data); ``text_b`` is the optional
    second segment of sentence-pair tasks.
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    poisoned: list[bool] = field(default_factory=list)
    text_b: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.poisoned:
            self.poisoned = [False] * len(self.texts)
        if not (len(self.texts) == len(self.labels) == len(self.poisoned)):
            raise ValueError("texts, labels and poisoned must have the same length")
        if self.text_b is not None and len(self.text_b) != len(self.texts):
            raise ValueError("text_b must have one entry per text")
        n = len(self.label_names)
        for y in self.labels:
            if not 0 <= y < n:
                raise BdcliError(f"label {y} is outside the label set {self.label_names}")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, indices: list[int]) -> "TextDataset":
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            poisoned=[self.poisoned[i] for i in indices],
            text_b=None if self.text_b is None else [self.text_b[i] for i in indices],
        )

    def fraction(self, share: float, seed: int) -> "TextDataset":
        """A seeded, label-stratified share of the rows (the defender's clean share, say).

        Stratified so that a 1% share of a balanced set still holds every label.
        """
        if not 0 < share <= 1:
            raise BdcliError(f"a fraction must be in (0, 1], got {share}")
        if share == 1:
            return self
        rng = random.Random(seed)
        picked: list[int] = []
        for y in range(self.num_labels):
            rows = [i for i, lab in enumerate(self.labels) if lab == y]
            rng.shuffle(rows)
            picked.extend(rows[: max(1, round(share * len(rows)))] if rows else [])
        return self.subset(sorted(picked))

    # --- JSONL, the on-disk form of bdcli's own data folders -------------------------------------
    def to_jsonl(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for i in range(len(self)):
                row: dict = {"text": self.texts[i], "label": self.labels[i], "poisoned": self.poisoned[i]}
                if self.text_b is not None:
                    row["text_b"] = self.text_b[i]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    @classmethod
    def from_jsonl(cls, path: Path, label_names: list[str]) -> "TextDataset":
        texts, labels, poisoned, text_b = [], [], [], []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts.append(str(row["text"]))
                    labels.append(int(row["label"]))
                except (ValueError, KeyError, TypeError) as e:
                    raise BdcliError(f"{path}:{n}: not a bdcli data row ({e})") from None
                poisoned.append(bool(row.get("poisoned", False)))
                if "text_b" in row:
                    text_b.append(str(row["text_b"]))
        if text_b and len(text_b) != len(texts):
            raise BdcliError(f"{path}: text_b is present in some rows only")
        return cls(texts, labels, list(label_names), poisoned, text_b or None)


@dataclass
class Corpus:
    """A named data set: its splits (``train``, ``dev``, ``test``, and ``test-poison`` for poisoned
    data folders), label names, and where it came from."""

    name: str
    label_names: list[str]
    splits: dict[str, TextDataset]
    source: str = ""
    # Written by a poisoner: attack, trigger, target label, poison rate, changed rows.
    poison: dict | None = None
    # What the readers found wrong and kept or dropped (malformed or duplicate rows), for the manifest.
    warnings: list[str] = field(default_factory=list)

    def split(self, name: str) -> TextDataset:
        try:
            return self.splits[name]
        except KeyError:
            have = ", ".join(self.splits) or "none"
            raise BdcliError(f"data set {self.name!r} has no {name!r} split (it has: {have})") from None

    def label_index(self, label: str | int) -> int:
        """Resolve a target label given as an index or as a label name."""
        if isinstance(label, int) or str(label).lstrip("-").isdigit():
            y = int(label)
            if 0 <= y < len(self.label_names):
                return y
        elif label in self.label_names:
            return self.label_names.index(label)
        # The command line names the target: a usage error (exit 2), like any other impossible option.
        raise UsageError(
            f"target label {label!r} is not a label of {self.name!r} "
            f"(labels: {', '.join(f'{i}={n}' for i, n in enumerate(self.label_names))})"
        )
