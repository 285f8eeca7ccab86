"""FreeLB (Zhu et al., ICLR 2020), the adversarial-training baseline of the maximum-entropy paper
(Appendix B.1, eq. 12): fine-tune on clean data while an L2-bounded perturbation δ of the word
embeddings is ascended K times per batch; the parameter gradients of the K perturbed passes are
averaged ("free" training) and one optimizer step is taken.

    min_θ E_(X,y) [ 1/K Σ_{t=0}^{K-1} max_{δ_t ∈ I_t} L(f_θ(X + δ_t), y) ]

It follows FreeLB's reference code (zhuchen03/FreeLB, huggingface-transformers/examples/run_glue_freelb.py,
norm type "l2"): δ starts uniform in [-1, 1] on the real tokens, scaled by adv_init_mag / sqrt(length * hidden);
each ascent step adds adv_lr * g / ||g|| (per example, g = ∂L/∂δ); δ is then projected back onto the ball
||δ|| <= adv_max_norm (0: unbounded); the same dropout masks serve all K passes of a batch (the paper's
section 3.3); the word embeddings are looked up again for every pass, so their weights learn from all K.
δ enters through ``inputs_embeds``, so position and token-type embeddings are never perturbed.

One deviation, for a guarantee: the reference projects only after an ascent step; here the random start is
projected too, so δ lies in the ball at every forward pass. With the defaults (init 1, bound 0.6) the start's
norm is about 1/sqrt(3) = 0.577, so the projection almost never changes it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.dataset import TextDataset
from ..engine.loop import TrainConfig, train
from ..engine.objectives import cross_entropy, prediction_entropy
from ..models.load import LoadedModel
from .specs.freelb import FreeLBConfig


# --- the perturbation: pure functions of tensors, shapes (batch, tokens, hidden) ---------------------


def init_delta(embeds: torch.Tensor, attention_mask: torch.Tensor, mag: float) -> torch.Tensor:
    """FreeLB's L2 random start: U(-1, 1) on real tokens, zero on padding, times mag / sqrt(length * hidden),
    so that ||δ_i|| <= mag whatever the sequence's length. mag 0 starts at zero (and draws no random numbers)."""
    if mag <= 0:
        return torch.zeros_like(embeds)
    mask = attention_mask.to(embeds)
    dims = mask.sum(1) * embeds.size(-1)
    delta = torch.zeros_like(embeds).uniform_(-1, 1) * mask.unsqueeze(2)
    return delta * (mag / torch.sqrt(dims)).view(-1, 1, 1)


def ascend(delta: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
    """One ascent step along the per-example L2-normalised gradient (denominator clamped at 1e-8)."""
    norm = grad.flatten(1).norm(dim=1).clamp(min=1e-8).view(-1, 1, 1)
    return delta + step_size * grad / norm


def project(delta: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rescale each example whose ||δ_i||_2 exceeds max_norm onto the sphere of that radius; 0: no bound."""
    if max_norm <= 0:
        return delta
    norm = delta.flatten(1).float().norm(dim=1)
    scale = torch.where(norm > max_norm, max_norm / norm.clamp(min=1e-12), torch.ones_like(norm))
    return delta * scale.to(delta.dtype).view(-1, 1, 1)


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, max_norm: float) -> torch.Tensor:
    return project(ascend(delta, grad, step_size), max_norm)


# --- the objective ----------------------------------------------------------------------------------


class _PrecomputedGrads(torch.autograd.Function):
    """A scalar whose backward hands each parameter a gradient computed beforehand.

    The engine calls ``objective(model, batch)``, clears the gradients, then backpropagates what it
    returned once. FreeLB needs K backward passes per optimizer step, so the objective runs them itself
    with ``torch.autograd.grad`` and returns this node: the engine's one ``backward()`` then deposits the
    averaged gradients as if they were its own, and clipping, the optimizer and checkpoints stay the engine's.
    A parameter that got no gradient keeps ``.grad`` None, as under plain fine-tuning.
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: list, *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, out_grad: torch.Tensor):
        return (None, None, *[None if g is None else g * out_grad for g in ctx.grads])


class _RngReplay:
    """Rewinds the random generators dropout draws from, so that every pass of a batch gets the same masks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def rewind(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class FreeLBObjective:
    """A callable objective for ``engine.train``: K perturbed passes, returns the mean loss whose backward
    yields the mean of the K parameter gradients."""

    def __init__(self, adv_steps: int, adv_init_mag: float, adv_lr: float, adv_max_norm: float, entropy_alpha: float = 0.0):
        self.k, self.init_mag, self.step_size, self.max_norm = adv_steps, adv_init_mag, adv_lr, adv_max_norm
        # The engine's optional maximum-entropy regulariser of CE, honoured per pass as under "ce".
        self.alpha = entropy_alpha

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        embed = model.get_input_embeddings()
        ids, labels = batch["input_ids"], batch["labels"]
        rest = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
        with torch.no_grad():
            delta = project(init_delta(embed(ids), batch["attention_mask"], self.init_mag), self.max_norm)
        replay = _RngReplay(ids.device)
        total: list[torch.Tensor | None] = [None] * len(params)
        loss_sum = torch.zeros((), device=ids.device)
        for t in range(self.k):
            replay.rewind()
            delta.requires_grad_(True)
            logits = model(inputs_embeds=embed(ids) + delta, **rest).logits
            loss = cross_entropy(logits, labels)
            if self.alpha:
                loss = loss - self.alpha * prediction_entropy(logits).mean()
            grads = torch.autograd.grad(loss / self.k if self.k > 1 else loss, [delta, *params], allow_unused=True)
            for i, g in enumerate(grads[1:]):
                if g is not None:
                    total[i] = g if total[i] is None else total[i] + g
            loss_sum = loss_sum + loss.detach()
            if t < self.k - 1:
                delta = ascent_step(delta.detach(), grads[0], self.step_size, self.max_norm)
        return _PrecomputedGrads.apply(loss_sum / self.k, total, *params)


def freelb_defense(cfg: FreeLBConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    objective = FreeLBObjective(cfg.adv_steps, cfg.adv_init_mag, cfg.adv_lr, cfg.adv_max_norm, getattr(cfg, "entropy_alpha", 0.0))
    result = train(victim.model, victim.tokenizer, clean, TrainConfig.take(cfg), objective=objective, desc="defend: FreeLB")
    return {
        "training": result.summary(),
        "adversary": {"adv_steps": cfg.adv_steps, "adv_init_mag": cfg.adv_init_mag, "adv_lr": cfg.adv_lr,
                      "adv_max_norm": cfg.adv_max_norm},
    }
