"""Defenses: procedures that take a possibly backdoored classifier and clean data and return a
purified classifier."""

from __future__ import annotations

from dataclasses import dataclass

from ..train_config import TrainConfig
from ..errors import UsageError
from ..numbers import check_numbers
from ..registry import Procedure, Registry


SCENARIO_CLEAN_FRACTION = {"outsourcing": 0.1, "transfer": 1.0}


@dataclass
class DefenseConfig(TrainConfig):
    # Share of the clean training set the defender holds. None: the scenario's default, 0.1 for
    # outsourcing (the paper's 10%) and 1.0 for transfer learning.
    clean_fraction: float | None = None
    # What the defender holds. None: what the model's bdcli provenance says (outsourcing for a model from
    # elsewhere). transfer: an encoder; the attacker's head is not trusted and is re-initialised.
    scenario: str | None = None

    def __post_init__(self) -> None:
        # Before TrainConfig's own checks, which a NaN passes (every comparison with NaN is False).
        check_numbers(self)
        super().__post_init__()
        if self.clean_fraction is not None and not 0 < self.clean_fraction <= 1:
            raise UsageError(f"clean fraction must be in (0, 1], got {self.clean_fraction}")
        if self.scenario is not None and self.scenario not in SCENARIO_CLEAN_FRACTION:
            raise UsageError(f"unknown scenario {self.scenario!r}; use one of {', '.join(SCENARIO_CLEAN_FRACTION)}")


# run(cfg, victim: LoadedModel, clean: TextDataset) -> summary dict; updates victim.model in place
DEFENSES: Registry[Procedure] = Registry("defense")
