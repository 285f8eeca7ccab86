"""Poisoners: pure, seeded transforms of a clean Corpus into a poisoned one. No torch here.

Every poisoner builds both sides of the experiment: the poisoned training set (a ``rate`` share of the
rows changed and, dirty-label, relabelled to the target) and the ASR test set (every test row whose
clean label is not the target, with the trigger). It records which rows it changed.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar

from ..data.dataset import Corpus, TextDataset
from ..errors import UsageError
from ..numbers import check_numbers
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
        check_numbers(self)
        self.target = str(self.target)
        if not 0 < self.rate <= 1:
            raise UsageError(f"poison rate must be in (0, 1], got {self.rate}")
        if self.candidates not in CANDIDATES:
            raise UsageError(f"unknown candidates {self.candidates!r}; use one of {', '.join(CANDIDATES)}")

    def planned_rows(self, n_train: int) -> tuple[int, int]:
        """(training rows out, poisoned rows among them) for ``n_train`` rows in, without poisoning
        anything: what a recipe's dry run counts the next steps' optimiser steps by (``choose_poisoned``
        draws exactly ``round(rate * n_train)`` rows)."""
        return n_train, round(self.rate * n_train)


class Poisoner:
    name: ClassVar[str]
    # Catalog entry (set by POISONERS.register): bumped when the poisoner's output changes.
    version: ClassVar[int] = 1
    Config: ClassVar[type[PoisonConfig]] = PoisonConfig

    def __init__(self, config: PoisonConfig):
        self.config = config

    def extra_inputs(self, corpus: Callable[[], Corpus]) -> dict[str, str]:
        """Files besides the data that the poisoned output depends on (a rewrite table, say): hashed
        into the output's fingerprint, so that editing one invalidates the output. ``corpus`` loads the
        clean corpus; call it only when the answer depends on it, since planning a recipe (a dry run
        on a machine without the data, say) fingerprints every poison step."""
        return {}

    def transform(self, text: str, rng: random.Random) -> str:
        raise NotImplementedError

    def choose_poisoned(self, corpus: Corpus) -> tuple[int, TextDataset, random.Random, list[int]]:
        """The target label, the train split, the train stream (positioned after the draw, for the
        transforms that follow) and the rows to poison."""
        target = corpus.label_index(self.config.target)
        train = corpus.split("train")
        # Separate named streams, so that changing the test set never shifts which train rows are hit.
        train_rng = random.Random(f"{self.config.seed}-train")
        chosen = self.sample_rows(self.candidate_rows(train, target), len(train), train_rng)
        return target, train, train_rng, chosen

    def apply(self, corpus: Corpus) -> Corpus:
        target, train, train_rng, chosen = self.choose_poisoned(corpus)
        new_train = replace_rows(train, {i: self.transform(train.texts[i], train_rng) for i in chosen}, label=target)

        test = corpus.split("test")
        test_rng = random.Random(f"{self.config.seed}-test")
        rows = non_target_rows(corpus, target)
        asr_set = asr_dataset(test, rows, [self.transform(test.texts[i], test_rng) for i in rows])
        return self.poisoned_corpus(corpus, new_train, asr_set, self.base_record(corpus, target, chosen, rows))

    # --- pieces of ``apply`` that subclasses with their own ``apply`` reuse ------------------------
    def candidate_rows(self, train: TextDataset, target: int) -> list[int]:
        """Training rows that may be poisoned, per ``candidates``."""
        return [i for i, y in enumerate(train.labels) if self.config.candidates == "all" or y != target]

    def sample_rows(
        self,
        pool: list[int],
        n_train: int,
        rng: random.Random,
        pool_desc: str = "training rows are not of the target label",
    ) -> list[int]:
        """The poisoned rows: ``round(rate * n_train)`` rows drawn from ``pool`` with ``rng``, sorted.

        ``pool_desc`` finishes the sentence "only N ..." of the error for a pool that is too small.
        """
        cfg = self.config
        k = round(cfg.rate * n_train)
        if k == 0:
            raise UsageError(f"poison rate {cfg.rate} of {n_train} training rows leaves no poisoned row")
        if k > len(pool):
            raise UsageError(
                f"poison rate {cfg.rate} asks for {k} poisoned rows but only {len(pool)} {pool_desc}; "
                f"lower --rate or use --candidates all"
            )
        return sorted(rng.sample(pool, k))

    def base_record(self, corpus: Corpus, target: int, chosen: list[int], asr_rows: list[int] | None) -> dict[str, Any]:
        """The poison.json fields every poisoner writes; subclasses add their own keys."""
        cfg = self.config
        return {
            "attack": self.name,
            "target": target,
            "target_name": corpus.label_names[target],
            "rate": cfg.rate,
            "dirty_label": True,
            **{k: v for k, v in asdict(cfg).items() if k not in ("target", "rate")},
            "n_train": len(corpus.split("train")),
            "n_poisoned": len(chosen),
            "poisoned_rows": chosen,
            "test_poison_source_rows": asr_rows,
        }

    @staticmethod
    def poisoned_corpus(corpus: Corpus, train: TextDataset, asr_set: TextDataset, record: dict[str, Any]) -> Corpus:
        """``corpus`` with its train split replaced and the ASR set added as ``test-poison``."""
        splits = dict(corpus.splits)
        splits["train"] = train
        splits["test-poison"] = asr_set
        return Corpus(corpus.name, list(corpus.label_names), splits, corpus.source, record)


def replace_rows(ds: TextDataset, texts: dict[int, str], *, label: int | None, poisoned: bool = True) -> TextDataset:
    """A copy of ``ds`` with row i's text set to ``texts[i]``; those rows get ``label`` (None keeps
    theirs) and their ``poisoned`` flag set to ``poisoned``."""
    new_texts, labels, flags = list(ds.texts), list(ds.labels), list(ds.poisoned)
    for i, text in texts.items():
        new_texts[i] = text
        if label is not None:
            labels[i] = label
        flags[i] = poisoned
    return TextDataset(new_texts, labels, list(ds.label_names), flags, None if ds.text_b is None else list(ds.text_b))


def non_target_rows(corpus: Corpus, target: int) -> list[int]:
    """The test rows the ASR set is built from: every one whose clean label is not ``target``."""
    rows = [i for i, y in enumerate(corpus.split("test").labels) if y != target]
    if not rows:
        raise UsageError(f"the test set has no row outside the target label {corpus.label_names[target]!r}")
    return rows


def asr_dataset(test: TextDataset, rows: list[int], texts: list[str]) -> TextDataset:
    """The ASR set: ``texts`` (triggered versions of test ``rows``) with the rows' clean labels, so
    that per-class ASR can be computed, all marked poisoned."""
    return TextDataset(
        list(texts),
        [test.labels[i] for i in rows],
        list(test.label_names),
        [True] * len(rows),
        None if test.text_b is None else [test.text_b[i] for i in rows],
    )


POISONERS: Registry[type[Poisoner]] = Registry("poisoner")


def insert_at_random_word(text: str, insertion: str, rng: random.Random) -> str:
    """Insert ``insertion`` between two words (or at either end), position uniform over the gaps."""
    words = text.split()
    pos = rng.randint(0, len(words))
    return " ".join(words[:pos] + [insertion] + words[pos:])
