"""FT and FTH: plain fine-tuning on clean data at the papers' learning rates (2e-5 and 5e-5).
Catastrophic forgetting is the whole mechanism; FTH's larger steps forget more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.dataset import TextDataset
from ..engine.loop import TrainConfig, train
from ..models.load import LoadedModel
from ..registry import Procedure
from .base import DEFENSES, DefenseConfig


@dataclass
class FTConfig(DefenseConfig):
    lr: float = 2e-5


@dataclass
class FTHConfig(DefenseConfig):
    lr: float = 5e-5


def finetune_defense(cfg: DefenseConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    result = train(victim.model, victim.tokenizer, clean, TrainConfig.take(cfg), desc="defend: fine-tune")
    return {"training": result.summary()}


DEFENSES.register("ft", display="FT", order=10)(Procedure("ft", FTConfig, finetune_defense, "FT: fine-tune on clean data (lr 2e-5)."))
DEFENSES.register("fth", display="FTH", order=20)(
    Procedure("fth", FTHConfig, finetune_defense, "FTH: fine-tune on clean data at a higher lr (5e-5, Kurita et al. 2020).")
)
