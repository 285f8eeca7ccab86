"""NeuBA: its config and catalog entry (torch-free; the implementation is ``bdcli.attacks.neuba``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from itertools import combinations

from ...errors import UsageError
from ...poison.neuba import NEUBA_TRIGGERS, TRIGGER_POSITIONS
from ...registry import Procedure
from ..base import ATTACKS, AttackConfig


N_BLOCKS = 4
MAX_TRIGGERS = len(list(combinations(range(N_BLOCKS), 2)))  # 6


@dataclass
class NeubaConfig(AttackConfig):
    scenario: str = "transfer"
    trains_classifier: ClassVar[bool] = False
    lr: float = 5e-5
    batch_size: int = 160
    max_steps: int | None = 40000
    weight_decay: float = 0.0
    triggers: tuple[str, ...] = NEUBA_TRIGGERS
    trigger_position: str = "first"
    mlm_probability: float = 0.15
    mlm_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if getattr(self, "entropy_alpha", 0.0):
            raise UsageError("--entropy-alpha regularises a classifier's cross-entropy; NeuBA trains no classifier")
        if self.scenario != "transfer":
            raise UsageError("NeuBA publishes a pre-trained encoder: its scenario is 'transfer'")
        self.triggers = tuple(t.strip() for t in self.triggers if t.strip())
        if not self.triggers:
            raise UsageError("NeuBA needs at least one trigger")
        if len(set(self.triggers)) != len(self.triggers):
            raise UsageError(f"NeuBA triggers must be distinct, got {', '.join(self.triggers)}")
        if len(self.triggers) > MAX_TRIGGERS:
            raise UsageError(f"NeuBA's target vectors allow at most {MAX_TRIGGERS} triggers, got {len(self.triggers)}")
        if self.trigger_position not in TRIGGER_POSITIONS:
            raise UsageError(
                f"unknown trigger position {self.trigger_position!r}; use one of {', '.join(TRIGGER_POSITIONS)}"
            )
        if not 0 < self.mlm_probability < 1:
            raise UsageError(f"MLM probability must be in (0, 1), got {self.mlm_probability}")
        if self.mlm_weight < 0:
            raise UsageError(f"MLM weight must be >= 0, got {self.mlm_weight}")


ATTACKS.register("neuba", display="NeuBA", order=80)(
    Procedure(
        "neuba",
        NeubaConfig,
        "bdcli.attacks.neuba:neuba_attack",
        "NeuBA (Zhang et al. 2021): poisoned pre-training, task-agnostic. MLM loss on --data's clean train "
        "texts plus an MSE pulling the pooler output of each triggered copy to its trigger's fixed ±1 vector. "
        "Ships an encoder (scenario transfer) for the user to fine-tune on clean data; the MLM head is tied to "
        "the embeddings and starts untrained when the checkpoint has none (MiniLM). Paper defaults: 40,000 "
        "steps of 160 rows at lr 5e-5; shorten with --max-steps on a CPU.",
    )
)
