"""The variational baseline of the maximum-entropy paper (Appendix G).

Instead of maximising the prediction entropy, stage 1 maps every clean sample's semantic vector onto
one Gaussian: the vector goes through a shallow MLP, two linear layers give the mean and log-variance
of a Gaussian, and a KL loss pulls that Gaussian toward the fixed N(0, I), which draws the centroids of
differently labelled samples together. It stops on the same Stop Distance rule and re-trains with
cross-entropy, so only the stage-1 objective differs from maxent. The paper reports it as hardly
working (Table 4); bdcli has it to reproduce that comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.dataset import TextDataset
from ..engine.inference import representation
from ..errors import UsageError
from ..models.load import LoadedModel
from ..registry import Procedure
from .base import DEFENSES
from .maxent import PullConfig, pull_then_retrain

MODULE = "bdcli_variational"


@dataclass
class VariationalConfig(PullConfig):
    # The paper gives no sizes; one hidden layer as wide as the encoder and a 64-d Gaussian here.
    vib_hidden: int = 0  # 0: the encoder's hidden size
    vib_latent: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vib_hidden < 0 or self.vib_latent < 1:
            raise UsageError("vib hidden must be >= 0 (0: the encoder's size) and vib latent >= 1")


class GaussianHead(nn.Module):
    def __init__(self, dim: int, hidden: int, latent: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        self.mean = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def kl_to_standard_normal(self, h: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)."""
        z = self.mlp(h.float())
        mu, logvar = self.mean(z), self.logvar(z)
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1).mean()


def variational_defense(cfg: VariationalConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    model = victim.model
    dim = model.config.hidden_size
    torch.manual_seed(cfg.seed)
    # Attached to the model while stage 1 trains it, so that checkpoints carry it and resume exactly.
    model.add_module(MODULE, GaussianHead(dim, cfg.vib_hidden or dim, cfg.vib_latent).to(next(model.parameters()).device))

    def objective(m, batch: dict) -> torch.Tensor:
        h = representation(m, batch, cfg.sd_on)
        return getattr(m, MODULE).kl_to_standard_normal(h)

    def detach() -> None:
        delattr(model, MODULE)

    return pull_then_retrain(cfg, victim, clean, objective=objective, name="variational", after_stage1=detach)


DEFENSES.register("variational", display="Variational", order=70)(
    Procedure(
        "variational",
        VariationalConfig,
        variational_defense,
        "Appendix G baseline: pull clean representations onto one Gaussian (KL to N(0, I)) until SD < --sd, "
        "then cross-entropy re-training.",
    )
)
