"""FT and FTH: their configs and catalog entries (torch-free; the implementation is ``bdcli.defenses.finetune``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import Procedure
from ..base import DEFENSES, DefenseConfig


@dataclass
class FTConfig(DefenseConfig):
    lr: float = 2e-5


@dataclass
class FTHConfig(DefenseConfig):
    lr: float = 5e-5


DEFENSES.register("ft", display="FT", order=10)(Procedure("ft", FTConfig, "bdcli.defenses.finetune:finetune_defense", "FT: fine-tune on clean data (lr 2e-5)."))
DEFENSES.register("fth", display="FTH", order=20)(
    Procedure("fth", FTHConfig, "bdcli.defenses.finetune:finetune_defense", "FTH: fine-tune on clean data at a higher lr (5e-5, Kurita et al. 2020).")
)
