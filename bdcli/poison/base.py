"""Poisoners: pure, seeded transforms of a clean Corpus into a poisoned one. No torch here.

Every poisoner builds both sides of the experiment: the poisoned training set (a ``rate`` share of the
rows changed and, dirty-label, relabelled to the target) and the ASR test set (every test row whose
clean label is not the target, with the trigger). It records which rows it changed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ..data.dataset import Corpus, TextDataset
from ..errors import UsageError
from ..registry import Registry

CANDIDATES = ("non-target", "all")


@dataclass
class PoisonConfig:
    target: str = "1"  # target label y_t, as an index or a label name
    rate: float = 0.1  # poison rate: share of the training rows made poisoned
    seed: int = 42
    # Which training rows may be poisoned. "non-target" makes every poisoned row a real label flip
    # (OpenBackdoor's dirty-label default); "all" draws from every row, as a literal reading of
    # "10% of the training samples" would.
    candidates: str = "non-target"

    def __post_init__(self) -> None:
        self.target = str(self.target)
        if not 0 < self.rate <= 1:
            raise UsageError(f"poison rate must be in (0, 1], got {self.rate}")
        if self.candidates not in CANDIDATES:
            raise UsageError(f"unknown candidates {self.candidates!r}; use one of {', '.join(CANDIDATES)}")


class Poisoner:
    name: ClassVar[str]
    Config: ClassVar[type[PoisonConfig]] = PoisonConfig

    def __init__(self, config: PoisonConfig):
        self.config = config

    def transform(self, text: str, rng: random.Random) -> str:
        raise NotImplementedError

    def apply(self, corpus: Corpus) -> Corpus:
        cfg = self.config
        target = corpus.label_index(cfg.target)
        train = corpus.split("train")
        pool = [i for i, y in enumerate(train.labels) if cfg.candidates == "all" or y != target]
        k = round(cfg.rate * len(train))
        if k == 0:
            raise UsageError(f"poison rate {cfg.rate} of {len(train)} training rows leaves no poisoned row")
        if k > len(pool):
            raise UsageError(
                f"poison rate {cfg.rate} asks for {k} poisoned rows but only {len(pool)} training rows are "
                f"not of the target label; lower --rate or use --candidates all"
            )
        # Separate named streams, so that changing the test set never shifts which train rows are hit.
        train_rng = random.Random(f"{cfg.seed}-train")
        chosen = sorted(train_rng.sample(pool, k))
        texts, labels, poisoned = list(train.texts), list(train.labels), list(train.poisoned)
        for i in chosen:
            texts[i] = self.transform(texts[i], train_rng)
            labels[i] = target
            poisoned[i] = True
        new_train = TextDataset(texts, labels, list(corpus.label_names), poisoned, train.text_b)

        test = corpus.split("test")
        test_rng = random.Random(f"{cfg.seed}-test")
        rows = [i for i, y in enumerate(test.labels) if y != target]
        if not rows:
            raise UsageError(f"the test set has no row outside the target label {corpus.label_names[target]!r}")
        asr_set = TextDataset(
            [self.transform(test.texts[i], test_rng) for i in rows],
            [test.labels[i] for i in rows],  # the clean label, so per-class ASR can be computed
            list(corpus.label_names),
            [True] * len(rows),
            None if test.text_b is None else [test.text_b[i] for i in rows],
        )
        splits = dict(corpus.splits)
        splits["train"] = new_train
        splits["test-poison"] = asr_set
        record: dict[str, Any] = {
            "attack": self.name,
            "target": target,
            "target_name": corpus.label_names[target],
            "rate": cfg.rate,
            "dirty_label": True,
            **{k: v for k, v in asdict(cfg).items() if k not in ("target", "rate")},
            "n_train": len(train),
            "n_poisoned": k,
            "poisoned_rows": chosen,
            "test_poison_source_rows": rows,
        }
        return Corpus(corpus.name, list(corpus.label_names), splits, corpus.source, record)


POISONERS: Registry[type[Poisoner]] = Registry("poisoner")


def insert_at_random_word(text: str, insertion: str, rng: random.Random) -> str:
    """Insert ``insertion`` between two words (or at either end), position uniform over the gaps."""
    words = text.split()
    pos = rng.randint(0, len(words))
    return " ".join(words[:pos] + [insertion] + words[pos:])
