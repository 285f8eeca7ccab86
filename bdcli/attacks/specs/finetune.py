"""Fine-tune: its config and catalog entry (torch-free; the implementation is ``bdcli.attacks.finetune``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import Procedure
from ..base import ATTACKS, AttackConfig


@dataclass
class FinetuneAttackConfig(AttackConfig):
    """Papers' defaults: AdamW, lr 2e-5, batch 32, 3 epochs. Small models such as MiniLM learn the
    task better at 5e-5 (docs/results.md)."""

    # Your own data may be poisoned for all bdcli knows; with this set the model is the clean reference.
    data_is_clean: bool = False


ATTACKS.register("finetune", display="Fine-tune", order=5)(
    Procedure("finetune", FinetuneAttackConfig, "bdcli.attacks.finetune:finetune_attack", "Fine-tune a classifier on (poisoned) training data.",
              version=2)
)
