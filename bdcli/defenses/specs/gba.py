"""GBA: its config and catalog entry (torch-free; the implementation is ``bdcli.defenses.gba``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import UsageError
from ...registry import Procedure
from ..base import DEFENSES, DefenseConfig


@dataclass
class GBAConfig(DefenseConfig):
    """Defaults: lambda 0.5, 3 epochs (section 5.4, the width study's fixed setting); width 2 (section
    3.3, "a 2-token-wide soft template as the default"); max length 64 (Table 1; HS uses 32). The paper
    gives no learning rate, batch size or temperature for GBA: lr 2e-5 and batch 32 are its appendix C
    optimiser settings for the defenses it compares with, T = 1 is eq. 1's plain softmax. The clean share
    is the scenario's (as for every bdcli defense); the paper's GBA holds 5% (section 5.4, appendix C):
    pass --clean-fraction 0.05, or 0.01-0.2 for its figure 2 study."""

    lr: float = 2e-5
    epochs: float = 3.0
    max_length: int = 64
    broadcast_lambda: float = 0.5  # lambda of eq. 3; 0 = prompt tuning with the soft template only (Table 12's PT+soft)
    prompt_temperature: float = 1.0  # T of eq. 1
    prompt_width: int = 2  # soft template tokens around [MASK]; 0 = no template (Table 12's PT)
    gba_optimizer: str = "adamw"  # "sgd": eq. 2's plain SGD step (no momentum)
    class_tokens: tuple[str, ...] | None = None  # one per label, in label order; None: Table 1's
    # > 0: score [MASK] through a masked-LM head trained this many steps first (encoder frozen); 0: eq. 1
    mlm_head_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.broadcast_lambda) and self.broadcast_lambda >= 0):
            raise UsageError(f"broadcast lambda must be a finite number >= 0 (0 turns the broadcast off), got {self.broadcast_lambda}")
        if not (math.isfinite(self.prompt_temperature) and self.prompt_temperature > 0):
            raise UsageError(f"prompt temperature T must be a positive finite number, got {self.prompt_temperature}")
        if not 0 <= self.prompt_width <= self.max_length // 2:
            raise UsageError(
                f"prompt width must be in [0, {self.max_length // 2}] (at most half the max length, the paper's "
                f"range), got {self.prompt_width}"
            )
        if self.gba_optimizer not in ("adamw", "sgd"):
            raise UsageError(f"unknown GBA optimizer {self.gba_optimizer!r}; use adamw or sgd")
        if self.class_tokens is not None:
            toks = tuple(t.strip() for t in self.class_tokens if t.strip())
            if len(toks) < 2 or len(set(toks)) != len(toks):
                raise UsageError(f"class tokens must be two or more distinct words, one per label; got {list(self.class_tokens)}")
            self.class_tokens = toks


DEFENSES.register("gba", display="GBA", order=90, version=2)(
    Procedure(
        "gba",
        GBAConfig,
        "bdcli.defenses.gba:gba_defense",
        "GBA: prompt-tune on clean data (soft template; the [MASK] state scored against the tied word embeddings "
        "over the whole vocabulary, or through a masked-LM head trained first with --mlm-head-steps) while the gradient broadcast pulls every word embedding toward "
        "the class tokens (eq. 3-4). Saves a prompt model that bdcli evaluate reads; paper setting: --clean-fraction 0.05.",
    )
)
