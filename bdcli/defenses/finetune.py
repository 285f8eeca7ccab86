"""FT and FTH: plain fine-tuning on clean data at the papers' learning rates (2e-5 and 5e-5).
Catastrophic forgetting is the whole mechanism; FTH's larger steps forget more."""

from __future__ import annotations

from typing import Any

from ..data.dataset import TextDataset
from ..engine.loop import TrainConfig, train
from ..models.load import LoadedModel
from .base import DefenseConfig
from .specs.finetune import FTConfig, FTHConfig  # noqa: F401  (re-exported)


def finetune_defense(cfg: DefenseConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    result = train(victim.model, victim.tokenizer, clean, TrainConfig.take(cfg), desc="defend: fine-tune")
    return {"training": result.summary()}
