"""Training objectives: (logits, labels) -> scalar loss to minimise."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import Registry

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OBJECTIVES: Registry[Objective] = Registry("objective")


@OBJECTIVES.register("ce")
def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy -sum_c q_c log q_c of the softmax prediction (eq. 3 of the maximum-entropy paper)."""
    logq = F.log_softmax(logits.float(), dim=-1)
    return -(logq.exp() * logq).sum(dim=-1)


@OBJECTIVES.register("maxent")
def max_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Maximum-entropy loss: minimising the negative mean entropy maximises L_max of eq. 3.

    The labels are unused on purpose: the objective pushes every prediction toward uniform.
    (The paper sums over the set; the mean differs only by the constant N, which the learning rate absorbs.)
    """
    return -prediction_entropy(logits).mean()
