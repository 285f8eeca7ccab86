"""Attacks: procedures that turn (a model, poisoned data) into a backdoored victim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..train_config import TrainConfig
from ..errors import UsageError
from ..numbers import check_numbers
from ..registry import Procedure, Registry

SCENARIOS = ("outsourcing", "transfer")


@dataclass
class AttackConfig(TrainConfig):
    model: str = "minilm"  # alias, folder or hub id of the clean pre-trained model
    # outsourcing: the attacker ships the whole classifier; transfer: the attacker ships an encoder
    # that the user fine-tunes (recorded so that defenses and evaluation know what they hold).
    scenario: str = "outsourcing"
    # Whether the attack leaves a trained classifier, whose clean ACC `bdcli attack` checks on held-out
    # rows; NeuBA leaves its head as loaded, for the user's fine-tune to train.
    trains_classifier: ClassVar[bool] = True

    def __post_init__(self) -> None:
        # Before TrainConfig's own checks, which a NaN passes (every comparison with NaN is False).
        check_numbers(self)
        super().__post_init__()
        if self.scenario not in SCENARIOS:
            raise UsageError(f"unknown scenario {self.scenario!r}; use one of {', '.join(SCENARIOS)}")


# run(cfg, corpus) -> (LoadedModel, summary dict)
ATTACKS: Registry[Procedure] = Registry("attack")
