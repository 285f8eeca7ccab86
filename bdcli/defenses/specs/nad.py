"""NAD and NAD-C: their configs and catalog entries (torch-free; the implementation is ``bdcli.defenses.nad``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import UsageError
from ...models.aliases import resolve_model
from ...registry import Procedure
from ..base import DEFENSES, DefenseConfig


DISTANCES = ("mse", "l2")
LAYER_REDUCE = ("mean", "sum")


@dataclass
class NADConfig(DefenseConfig):
    # The student stage uses the inherited lr / epochs. GBA Appendix C: Adam, lr 2e-5, no weight decay,
    # batch 32; GBA gives no epoch count for NAD, so both stages take its fine-tuning tables' 3 epochs
    # (NAD's CNN code trains the teacher 10 and the student 20 epochs).
    lr: float = 2e-5
    weight_decay: float = 0.0
    clean_fraction: float | None = 1.0  # GBA appendix C: NAD holds the whole clean training set
    nad_beta: float = 5000.0  # NAD's code default (beta3); GBA searched {1000, 2000, 5000}
    nad_layer_reduce: str = "mean"  # how the distilled layers' distances combine: mean (beta per layer) or sum
    # Layers to distil (hidden_states indices; empty: every transformer layer 1..L, GBA's "layer-wise").
    nad_layers: tuple[str, ...] = ()
    nad_power: float = 2.0  # p of the attention operator; NAD's default
    nad_distance: str = "mse"
    nad_teacher_lr: float = 2e-5
    nad_teacher_epochs: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.nad_beta) and self.nad_beta >= 0):
            raise UsageError(f"the NAD weight beta must be a finite number >= 0, got {self.nad_beta}")
        if not (math.isfinite(self.nad_power) and self.nad_power > 0):
            raise UsageError(f"the NAD attention power p must be positive, got {self.nad_power}")
        if self.nad_layer_reduce not in LAYER_REDUCE:
            raise UsageError(f"unknown NAD layer reduction {self.nad_layer_reduce!r}; use one of {', '.join(LAYER_REDUCE)}")
        if self.nad_distance not in DISTANCES:
            raise UsageError(f"unknown NAD distance {self.nad_distance!r}; use one of {', '.join(DISTANCES)}")
        if self.nad_teacher_lr <= 0:
            raise UsageError(f"the NAD teacher's learning rate must be positive, got {self.nad_teacher_lr}")
        if self.nad_teacher_epochs <= 0:
            raise UsageError(f"the NAD teacher's epochs must be positive, got {self.nad_teacher_epochs}")
        self.layer_indices()

    def layer_indices(self) -> list[int] | None:
        """The chosen layers as sorted unique ints; None for every transformer layer."""
        out = set()
        for x in self.nad_layers:
            try:
                i = int(str(x).strip())
            except ValueError:
                raise UsageError(f"NAD layers must be whole numbers (0 = embeddings, 1..L = layers), got {x!r}") from None
            if i < 0:
                raise UsageError(f"NAD layer indices count from 0 (the embedding output), got {i}")
            out.add(i)
        return sorted(out) if out else None


@dataclass
class NADCConfig(NADConfig):
    # The clean pre-trained checkpoint the student starts from. Required: which checkpoint is "reliable
    # and clean" is the defender's prior (GBA used bert-base-uncased from the hub).
    clean_model: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.clean_model:
            raise UsageError(
                "nad-c needs --clean-model: the clean pre-trained checkpoint the student starts from "
                "(an alias such as minilm, a folder or a hub id, with the victim's tokenizer)"
            )


DEFENSES.register("nad", display="NAD", order=80, version=2)(
    Procedure(
        "nad",
        NADConfig,
        "bdcli.defenses.nad:nad_defense",
        "NAD (Li et al. 2021, as adapted in the GBA paper): fine-tune a copy of the backdoored model on clean "
        "data as a teacher, then train the backdoored model with CE + beta * attention distillation to it.",
    )
)
DEFENSES.register("nad-c", display="NAD-C", order=85, version=2)(
    Procedure(
        "nad-c",
        NADCConfig,
        "bdcli.defenses.nad:nadc_defense",
        "NAD-C (GBA paper's upper bound of NAD): the backdoored model fine-tuned on clean data teaches a clean "
        "pre-trained checkpoint (--clean-model) with CE + beta * attention distillation.",
        inputs=lambda cfg: {"clean_model": resolve_model(cfg.clean_model)},
    )
)
