"""The maximum-entropy defense: the configs it shares with the variational baseline and its catalog
entry (torch-free; the implementation is ``bdcli.defenses.maxent``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError
from ...registry import Procedure
from ..base import DEFENSES, DefenseConfig


# The representations the engine reads (``bdcli.engine.inference.REPRESENTATIONS``) and the label-pair
# rules of the Stop Distance (``bdcli.metrics.geometry.SD_PAIRS``), spelled here because those modules
# import torch; tests/test_startup.py checks that the spellings agree.
REPRESENTATIONS = ("cls", "pooler")
SD_PAIRS = ("random", "mean")

# Appendix D.1: Ours-lite stops at SD 0.02 (0.03 for SST-2 outsourcing), Ours at 0.01.
PRESETS = {"lite": 0.02, "full": 0.01}


@dataclass
class PullConfig(DefenseConfig):
    """Stage-1 settings shared by the defenses that pull label centroids together before re-training."""

    # The defaults below come from the knob study in docs/maxent.md (bench/maxent-knobs.sh reruns it).
    # Stage 2 re-trains "to converge" (section 4.3): after stage 1 the model predicts uniformly, and a
    # short re-training leaves it broken with the trigger intact; 10 epochs re-converge.
    epochs: float = 10.0
    sd: float = 0.01  # Stop Distance threshold: stage 1 stops once SD < sd
    preset: str | None = None  # "lite" (SD 0.02) or "full" (SD 0.01) of Appendix D.1; overrides sd
    sd_relative: bool = False  # read sd as a share of the SD measured before stage 1
    # Stage 1's learning rate, which the paper leaves open: at the fine-tuning rate SD creeps and the
    # backdoor survives; docs/maxent.md has the study.
    maxent_lr: float = 1e-4
    maxent_max_steps: int = 5000  # stage 1's budget when SD never falls below the threshold
    # Stage 1 stops only once SD < sd AND at least this many steps ran (maxent: 50, below).
    maxent_min_steps: int = 0
    sd_every: int = 10  # measure SD every this many steps
    sd_samples: int = 512  # clean rows (label-stratified) SD is measured on
    sd_on: str = "cls"  # the last layer's [CLS] state (the paper's h) or the pooler output
    sd_pair: str = "random"  # multi-class: one random label pair (the paper) or the mean over all pairs
    train_head: bool = True  # whether stage 1 also updates the classification head
    head_lr: float = 1e-3  # transfer scenario: the simulated head's learning rate
    head_epochs: int = 5  # transfer scenario: epochs of the simulated head over cached features

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise UsageError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
            self.sd = PRESETS[self.preset]
        if self.sd <= 0 or (self.sd_relative and self.sd >= 1):
            raise UsageError(f"the Stop Distance threshold must be positive (below 1 when relative), got {self.sd}")
        if self.maxent_lr <= 0 or self.head_lr <= 0:
            raise UsageError("learning rates must be positive")
        if self.maxent_max_steps < 1 or self.sd_every < 1 or self.sd_samples < 2 or self.head_epochs < 1:
            raise UsageError("maxent max steps, SD interval and head epochs must be >= 1, SD samples >= 2")
        if self.maxent_min_steps < 0:
            raise UsageError(f"maxent min steps must be >= 0, got {self.maxent_min_steps}")
        # The step budget wins over the floor: a short budget (a smoke test, a quick probe) stays short.
        self.maxent_min_steps = min(self.maxent_min_steps, self.maxent_max_steps)
        if self.sd_on not in REPRESENTATIONS:
            raise UsageError(f"unknown representation {self.sd_on!r}; use one of {', '.join(REPRESENTATIONS)}")
        if self.sd_pair not in SD_PAIRS:
            raise UsageError(f"unknown SD pair rule {self.sd_pair!r}; use one of {', '.join(SD_PAIRS)}")


@dataclass
class MaxEntConfig(PullConfig):
    # Stopping at the first measurement below the threshold collapses too shallowly for stage 2 to lose
    # the trigger; a floor of steps past it does (docs/maxent.md).
    maxent_min_steps: int = 50


DEFENSES.register("maxent", display="MaxEnt", order=60)(
    Procedure(
        "maxent",
        MaxEntConfig,
        "bdcli.defenses.maxent:maxent_defense",
        "Maximum-entropy fine-tuning on clean data until the Stop Distance < --sd, then cross-entropy re-training "
        "(transfer scenario: a head is first trained on the frozen encoder to simulate the attacker's). "
        "--maxent-lr sets stage 1, --lr and --epochs stage 2; the defaults (1e-4 for at least 50 steps; 2e-5 for 10 epochs) come from "
        "the knob study in docs/maxent.md: stage 2 must re-train to convergence, 3 epochs of 10% of SST-2 do not.",
    )
)
