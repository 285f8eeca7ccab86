"""The variational baseline: its config and catalog entry (torch-free; the implementation is
``bdcli.defenses.variational``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UsageError
from ...registry import Procedure
from ..base import DEFENSES
from .maxent import PullConfig


@dataclass
class VariationalConfig(PullConfig):
    # The paper gives no sizes; one hidden layer as wide as the encoder and a 64-d Gaussian here.
    vib_hidden: int = 0  # 0: the encoder's hidden size
    vib_latent: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vib_hidden < 0 or self.vib_latent < 1:
            raise UsageError("vib hidden must be >= 0 (0: the encoder's size) and vib latent >= 1")


DEFENSES.register("variational", display="Variational", order=70)(
    Procedure(
        "variational",
        VariationalConfig,
        "bdcli.defenses.variational:variational_defense",
        "Appendix G baseline: pull clean representations onto one Gaussian (KL to N(0, I)) until SD < --sd, "
        "then cross-entropy re-training.",
    )
)
