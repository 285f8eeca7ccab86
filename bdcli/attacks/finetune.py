"""The outsourcing attacker: fine-tune a classifier on the poisoned training set."""

from __future__ import annotations

from typing import Any

from ..data.dataset import Corpus
from ..engine.loop import TrainConfig, train
from ..models.load import LoadedModel, load_classifier
from .specs.finetune import FinetuneAttackConfig


def finetune_attack(cfg: FinetuneAttackConfig, data: Corpus) -> tuple[LoadedModel, dict[str, Any]]:
    loaded = load_classifier(cfg.model, label_names=data.label_names, seed=cfg.seed)
    result = train(loaded.model, loaded.tokenizer, data.split("train"), TrainConfig.take(cfg), desc="attack: fine-tune")
    return loaded, {"training": result.summary()}
