"""The outsourcing attacker: fine-tune a classifier on the poisoned training set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.dataset import Corpus
from ..engine.loop import TrainConfig, train
from ..models.load import LoadedModel, load_classifier
from ..registry import Procedure
from .base import ATTACKS, AttackConfig


@dataclass
class FinetuneAttackConfig(AttackConfig):
    """Papers' defaults: AdamW, lr 2e-5, batch 32, 3 epochs. Small models such as MiniLM learn the
    task better at 5e-5 (docs/results.md)."""


def finetune_attack(cfg: FinetuneAttackConfig, data: Corpus) -> tuple[LoadedModel, dict[str, Any]]:
    loaded = load_classifier(cfg.model, label_names=data.label_names, seed=cfg.seed)
    result = train(loaded.model, loaded.tokenizer, data.split("train"), TrainConfig.take(cfg), desc="attack: fine-tune")
    return loaded, {"training": result.summary()}


ATTACKS.register("finetune", display="Fine-tune", order=5)(
    Procedure("finetune", FinetuneAttackConfig, finetune_attack, "Fine-tune a classifier on (poisoned) training data.")
)
