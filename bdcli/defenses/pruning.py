"""Fine-Pruning (Liu et al., RAID 2018) as the maximum-entropy paper adapts it to pre-trained language
models (Appendix B.2, B.3): unstructured pruning of each encoder layer's weight matrices by first-order
Taylor importance (Molchanov et al.), then re-training on clean data with the pruned weights held at zero.

    S_W = E_x | ∂L(x)/∂W ⊙ W |        (eq. 13, L = cross-entropy on the clean data)

The expectation (``--prune-importance``): ``sample`` (the default) is eq. 13 as written, the mean over
clean rows of each row's own |∂L(x)/∂W ⊙ W|, one backward pass per row; ``batch`` takes
|∂L_b/∂W ⊙ W| of each mini-batch's mean loss and averages over batches, which is cheaper but lets the
rows' gradients cancel inside a batch before the absolute value is taken (the two agree at batch size 1).
Importance is measured in fp32 with dropout off, so the ranking is deterministic.

What is pruned: the weight matrix of every ``nn.Linear`` inside the encoder (``model.base_model.encoder``),
i.e. per transformer layer the attention query/key/value/output projections and the two feed-forward
matrices, each at ``prune_ratio`` of its own entries ("proportionally per layer"; the paper: 50% on SST-2,
60% on AG's News). ``--prune-embeddings`` reads Appendix B.2's "the weights of each layer" as including
the embedding layer too: the word, position and token-type embedding matrices are pruned at the same
ratio by the same importance. A word never seen in the clean data gets zero gradient, hence zero
importance, so its whole row is among the first pruned: that is what reaches a rare-word trigger (BadNets'
lives in its embedding row). Off by default: the paper does not say, and the measured trade-off is in
docs/fidelity.md. Never pruned: LayerNorm gains and all biases (vectors, not weight matrices; zeroing a
gain deletes a feature dimension everywhere downstream), the pooler and the classifier (the task head).

The re-training budget is the shared ``--epochs`` / ``--max-steps`` (the paper re-trains like FT).
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable, Iterable

import torch

from ..data.dataset import TextDataset
from ..engine.batching import collate, encode, train_batches
from ..engine.device import resolve_device
from ..engine.loop import TrainConfig, TrainState, train
from ..engine.objectives import cross_entropy
from ..errors import BdcliError, UsageError
from ..models.load import LoadedModel
from .specs.pruning import FinePruningConfig


Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


def classifier_ce(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return cross_entropy(model(**inputs).logits, batch["labels"])


def prunable_weights(model: torch.nn.Module, embeddings: bool = False) -> dict[str, torch.nn.Parameter]:
    """The weight matrices of the encoder's Linear layers (and, with ``embeddings``, of the embedding
    layer's nn.Embedding tables), by their names in ``model``."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise BdcliError("fine-pruning needs a transformer encoder (model.base_model.encoder); this model has none")
    inside = {id(m) for m in encoder.modules() if isinstance(m, torch.nn.Linear)}
    if embeddings:
        emb = getattr(base, "embeddings", None)
        if not isinstance(emb, torch.nn.Module):
            raise BdcliError("--prune-embeddings needs an embedding layer (model.base_model.embeddings); this model has none")
        inside |= {id(m) for m in emb.modules() if isinstance(m, torch.nn.Embedding)}
    return {f"{name}.weight": mod.weight for name, mod in model.named_modules() if id(mod) in inside}


def single_rows(batch: Batch) -> Iterable[Batch]:
    """Each row of ``batch`` as a batch of one, its padding cut off."""
    for r in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][r].sum())
        yield {k: (v[r : r + 1, :n] if v.dim() == 2 else v[r : r + 1]) for k, v in batch.items()}


def taylor_importance(
    model: torch.nn.Module, batches: Iterable[Batch], weights: dict[str, torch.nn.Parameter], loss_fn: LossFn = classifier_ce
) -> dict[str, torch.Tensor]:
    """S_W = mean over batches of |∂L_b/∂W ⊙ W| (eq. 13), in fp32, dropout off; leaves no ``.grad`` behind."""
    was_training = model.training
    model.eval()
    names, params = list(weights), list(weights.values())
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in weights.items()}
    n = 0
    try:
        for batch in batches:
            grads = torch.autograd.grad(loss_fn(model, batch), params, allow_unused=True)
            for name, p, g in zip(names, params, grads):
                if g is not None:
                    scores[name] += (g.float() * p.detach().float()).abs()
            n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise UsageError("no clean batches to measure the pruning importance on")
    return {name: s / n for name, s in scores.items()}


def prune_masks(importance: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Keep-masks (True = kept): in each matrix the round(ratio * numel) least important entries go.
    Ties are broken by flat index (a stable sort, the lower index is pruned first), so the mask is deterministic."""
    masks = {}
    for name, score in importance.items():
        # A weight that is already exactly zero (a pruned row, or the zero padding row of an embedding
        # table) scores 0 and is pruned first, which is right: removing it changes nothing.
        k = int(round(ratio * score.numel()))
        order = torch.sort(score.flatten(), stable=True).indices
        keep = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        keep[order[:k]] = False
        masks[name] = keep.view_as(score)
    return masks


@torch.no_grad()
def apply_masks(weights: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    for name, p in weights.items():
        p.masked_fill_(~masks[name].to(p.device), 0.0)


class PruneMaskHook:
    """Holds the pruned weights at exactly zero during re-training.

    While installed, each pruned weight's gradient is masked too, so the pruned entries neither count in the
    gradient-norm clip nor build Adam moments; ``on_step`` re-applies the mask after every optimizer step,
    which makes the zeros exact whatever the optimizer does. The masks are recomputed, not saved: the
    importance pass is deterministic, so a resumed run rebuilds the same ones."""

    def __init__(self, weights: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]):
        self.weights, self.masks = weights, masks
        self._handles: list = []

    def __enter__(self) -> "PruneMaskHook":
        for name, p in self.weights.items():
            keep = self.masks[name].to(p.device)
            self._handles.append(p.register_hook(lambda g, keep=keep: g.masked_fill(~keep, 0.0)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def on_step(self, state: TrainState) -> bool:
        apply_masks(self.weights, self.masks)
        return False


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: its name up to the first numeric index ("bert.encoder.layer.3")."""
    m = re.match(r"^(.*?\.\d+)\.", name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def pruning_summary(masks: dict[str, torch.Tensor], ratio: float, embeddings: bool = False) -> dict[str, Any]:
    matrices: dict[str, dict[str, Any]] = {}
    layers: dict[str, dict[str, int]] = {}
    for name, keep in masks.items():
        numel, pruned = keep.numel(), int((~keep).sum())
        matrices[name] = {"numel": numel, "pruned": pruned, "ratio": pruned / numel}
        layer = layers.setdefault(layer_of(name), {"numel": 0, "pruned": 0})
        layer["numel"] += numel
        layer["pruned"] += pruned
    total = sum(m["numel"] for m in matrices.values())
    total_pruned = sum(m["pruned"] for m in matrices.values())
    return {
        "ratio": ratio,
        "matrices": matrices,
        "per_layer": {k: {**v, "ratio": v["pruned"] / v["numel"]} for k, v in layers.items()},
        "total": {"numel": total, "pruned": total_pruned, "ratio": total_pruned / total if total else 0.0},
        "not_pruned": ("" if embeddings else "embeddings, ") + "LayerNorm, biases, pooler, classifier",
    }


def fine_pruning_defense(cfg: FinePruningConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    model = victim.model
    if len(clean) == 0:
        raise UsageError("no training rows: the data (or the chosen fraction of it) is empty")
    device = resolve_device(cfg.device)
    model.to(device)
    weights = prunable_weights(model, cfg.prune_embeddings)
    if not weights:
        raise BdcliError("fine-pruning found no Linear weight matrices in the model's encoder")
    enc = encode(victim.tokenizer, clean, cfg.max_length)
    rows = train_batches(enc, cfg.batch_size, random.Random(f"{cfg.seed}-prune"))
    warnings = []
    if cfg.prune_batches is not None:
        if cfg.prune_batches > len(rows):
            warnings.append(f"only {len(rows)} clean batches exist; the importance used all of them, not {cfg.prune_batches}")
        rows = rows[: cfg.prune_batches]
    batches = (collate(enc, r, device) for r in rows)
    if cfg.prune_importance == "sample":
        batches = (one for b in batches for one in single_rows(b))
    importance = taylor_importance(model, batches, weights)
    masks = prune_masks(importance, cfg.prune_ratio)
    del importance
    apply_masks(weights, masks)
    summary: dict[str, Any] = {
        "pruning": {**pruning_summary(masks, cfg.prune_ratio, cfg.prune_embeddings), "importance_batches": len(rows),
                    "importance_rows": sum(len(r) for r in rows), "importance": cfg.prune_importance,
                    "embeddings_pruned": cfg.prune_embeddings},
    }
    if cfg.retrain:
        hook = PruneMaskHook(weights, masks)
        with hook:
            result = train(model, victim.tokenizer, clean, TrainConfig.take(cfg), hooks=[hook], desc="defend: fine-pruning re-train")
        apply_masks(weights, masks)  # cheap, and exact zeros whatever path train() took (a resumed, finished stage)
        summary["retrain"] = {"steps": result.steps, "training": result.summary()}
    else:
        model.eval()
        summary["retrain"] = None
    summary["warnings"] = warnings
    return summary
