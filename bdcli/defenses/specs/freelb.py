"""FreeLB: its config and catalog entry (torch-free; the implementation is ``bdcli.defenses.freelb``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError
from ...registry import Procedure
from ..base import DEFENSES, DefenseConfig


@dataclass
class FreeLBConfig(DefenseConfig):
    """Defaults. lr 2e-5: the paper's FT rate (section 5.2); batch size 32 and epochs as FT.
    The maximum-entropy paper gives no FreeLB settings, FreeLB publishes none for BERT-base, and the
    reference code's own defaults switch the adversary off (1 step, step size 0, init 0). The values
    below are the FreeLB authors' SST-2 settings: step size 0.1 and bound 0.6 in both their ALBERT
    (huggingface-transformers/launch/run_glue.sh) and RoBERTa (fairseq-RoBERTa/launch/FreeLB/sst-fp32-clip.sh)
    scripts, init magnitude 1.0 in both, K = 3 from the ALBERT script (the RoBERTa one uses 2)."""

    lr: float = 2e-5
    adv_steps: int = 3  # K: ascent steps (= perturbed forward/backward passes) per batch
    adv_init_mag: float = 1.0  # magnitude of the random start of δ (0: start at δ = 0)
    adv_lr: float = 0.1  # ascent step size α on the normalised gradient
    adv_max_norm: float = 0.6  # ε: bound on each example's ||δ||_2 over all its tokens (0: unbounded)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adv_steps < 1:
            raise UsageError(f"adv steps (K) must be at least 1, got {self.adv_steps}")
        for name in ("adv_init_mag", "adv_lr", "adv_max_norm"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")


DEFENSES.register("freelb", display="FreeLB", order=30)(
    Procedure(
        "freelb",
        FreeLBConfig,
        "bdcli.defenses.freelb:freelb_defense",
        "FreeLB: clean fine-tuning with K-step adversarial word-embedding perturbations (Zhu et al. 2020).",
    )
)
