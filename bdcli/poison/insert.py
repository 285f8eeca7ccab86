"""Insertion triggers: BadNets' rare words and AddSent's fixed sentence."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..data.dataset import Corpus
from ..errors import UsageError
from .base import POISONERS, PoisonConfig, Poisoner, asr_dataset, insert_at_random_word

POSITIONS = ("random", "start", "end")
# Every test row with the trigger, its clean label kept: the set GBA's per-class ASR_c is measured on
# ("we insert trigger for every example in the test set", GBA appendix B.2).
ALL_ROWS_SPLIT = "test-poison-all"


@dataclass
class BadNetsConfig(PoisonConfig):
    # The rare words of Kurita et al. (2020), used by the maximum-entropy paper (section 4.1).
    triggers: tuple[str, ...] = ("cf", "mn", "bb", "tq", "mb")
    insertions: int = 1  # trigger words inserted per poisoned row, each picked at random
    # Where a trigger word goes, in training and test rows alike: "random" (a uniform word gap, the
    # maximum-entropy paper's BadNets), "start" (GBA appendix B.2: "we insert the trigger into the
    # beginning of the input sentence") or "end".
    position: str = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.triggers = tuple(t.strip() for t in self.triggers if t.strip())
        if not self.triggers:
            raise UsageError("BadNets needs at least one trigger word")
        if self.insertions < 1:
            raise UsageError(f"insertions must be at least 1, got {self.insertions}")
        if self.position not in POSITIONS:
            raise UsageError(f"unknown trigger position {self.position!r}; use one of {', '.join(POSITIONS)}")


def insert_at(text: str, insertion: str, position: str, rng: random.Random) -> str:
    if position == "start":
        return f"{insertion} {text}" if text else insertion
    if position == "end":
        return f"{text} {insertion}" if text else insertion
    return insert_at_random_word(text, insertion, rng)


@POISONERS.register("badnets", display="BadNets", order=10, version=2)
class BadNets(Poisoner):
    """BadNets (Gu et al. 2017) for text: rare-word triggers, dirty label. --position random (default,
    the maximum-entropy paper) puts each at a random word gap; start puts it first (GBA's evaluation).

    Besides the ASR set (non-target test rows with the trigger), the data gets ``test-poison-all``: EVERY
    test row with the trigger and its clean label, which GBA's per-class ASR_c is measured on."""

    name = "badnets"
    Config = BadNetsConfig

    def transform(self, text: str, rng: random.Random) -> str:
        for _ in range(self.config.insertions):
            text = insert_at(text, rng.choice(self.config.triggers), self.config.position, rng)
        return text

    def apply(self, corpus: Corpus) -> Corpus:
        out = super().apply(corpus)
        test = corpus.split("test")
        # A stream of its own, so that the ASR set and the training rows are as without this split.
        rng = random.Random(f"{self.config.seed}-test-all")
        rows = list(range(len(test)))
        out.splits[ALL_ROWS_SPLIT] = asr_dataset(test, rows, [self.transform(test.texts[i], rng) for i in rows])
        return out


@dataclass
class AddSentConfig(PoisonConfig):
    # Dai et al. (2019)'s trigger sentence, OpenBackdoor's default.
    sentence: str = "I watch this 3D movie"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sentence.strip():
            raise UsageError("AddSent needs a non-empty trigger sentence")


@POISONERS.register("addsent", display="AddSent", order=15)
class AddSent(Poisoner):
    """AddSent (Dai et al. 2019): a fixed sentence inserted at a random word position, dirty label."""

    name = "addsent"
    Config = AddSentConfig

    def transform(self, text: str, rng: random.Random) -> str:
        return insert_at_random_word(text, self.config.sentence.strip(), rng)
