"""Fine-Pruning: its config and catalog entry (torch-free; the implementation is ``bdcli.defenses.pruning``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError
from ...registry import Procedure
from ..base import DEFENSES, DefenseConfig


@dataclass
class FinePruningConfig(DefenseConfig):
    """Defaults: prune ratio 0.5 (Appendix B.3, SST-2; use 0.6 for AG's News); re-training at FT's
    lr 2e-5 for FT's epochs (section 5.2); batch size 32 as every method in the paper."""

    lr: float = 2e-5
    prune_ratio: float = 0.5  # share of each encoder weight matrix set to zero
    prune_batches: int | None = None  # clean batches the importance is averaged over (None: the whole clean set)
    # "sample": eq. 13's per-row expectation (one backward per row); "batch": per mini-batch, cheaper.
    prune_importance: str = "sample"
    prune_embeddings: bool = False  # also prune the embedding matrices ("each layer" read to include them)
    retrain: bool = True  # re-train after pruning (False: pruning only, the paper's Figure 8)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.prune_ratio < 1:
            raise UsageError(f"prune ratio must be in [0, 1), got {self.prune_ratio}")
        if self.prune_batches is not None and self.prune_batches < 1:
            raise UsageError(f"prune batches must be at least 1, got {self.prune_batches}")
        if self.prune_importance not in IMPORTANCE:
            raise UsageError(f"unknown pruning importance {self.prune_importance!r}; use one of {', '.join(IMPORTANCE)}")


IMPORTANCE = ("sample", "batch")


DEFENSES.register("fine-pruning", display="FP", order=40, version=2)(
    Procedure(
        "fine-pruning",
        FinePruningConfig,
        "bdcli.defenses.pruning:fine_pruning_defense",
        "Fine-Pruning: zero --prune-ratio of each encoder weight matrix by Taylor importance, re-train on clean data (Liu et al. 2018).",
    )
)
