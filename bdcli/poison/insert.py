"""Insertion triggers: BadNets' rare words and AddSent's fixed sentence."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import UsageError
from .base import POISONERS, PoisonConfig, Poisoner, insert_at_random_word


@dataclass
class BadNetsConfig(PoisonConfig):
    # The rare words of Kurita et al. (2020), used by the maximum-entropy paper (section 4.1).
    triggers: tuple[str, ...] = ("cf", "mn", "bb", "tq", "mb")
    insertions: int = 1  # trigger words inserted per poisoned row, each picked at random

    def __post_init__(self) -> None:
        super().__post_init__()
        self.triggers = tuple(t.strip() for t in self.triggers if t.strip())
        if not self.triggers:
            raise UsageError("BadNets needs at least one trigger word")
        if self.insertions < 1:
            raise UsageError(f"insertions must be at least 1, got {self.insertions}")


@POISONERS.register("badnets", display="BadNets", order=10)
class BadNets(Poisoner):
    """BadNets (Gu et al. 2017) for text: rare-word triggers at random word positions, dirty label."""

    name = "badnets"
    Config = BadNetsConfig

    def transform(self, text: str, rng: random.Random) -> str:
        for _ in range(self.config.insertions):
            text = insert_at_random_word(text, rng.choice(self.config.triggers), rng)
        return text


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
