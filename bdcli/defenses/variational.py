"""The variational baseline of the maximum-entropy paper (Appendix G).

Instead of maximising the prediction entropy, stage 1 maps every clean sample's semantic vector onto
one Gaussian: the vector goes through a shallow MLP, two linear layers give the mean and log-variance
of a Gaussian, and a KL loss pulls that Gaussian toward the fixed N(0, I), which draws the centroids of
differently labelled samples together. It stops on the same Stop Distance rule and re-trains with
cross-entropy, so only the stage-1 objective differs from maxent. The paper reports it as hardly
working (Table 4); bdcli has it to reproduce that comparison.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.dataset import TextDataset
from ..engine.inference import representation
from ..models.load import LoadedModel
from .specs.variational import VariationalConfig
from .maxent import pull_then_retrain

MODULE = "bdcli_variational"


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
