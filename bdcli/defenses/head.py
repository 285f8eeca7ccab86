"""The transfer scenario's simulated output layer (maximum-entropy paper, section 4.3).

The defender downloaded an encoder, not the attacker's head, yet the maximum-entropy loss needs an
output layer. So the encoder is frozen and a head is trained on clean data to simulate the attacker's.
With the encoder frozen the head's inputs never change, so they are computed once and the head trains
on the cached features: seconds instead of a full fine-tune.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..data.dataset import TextDataset
from ..engine.batching import encode, eval_batches
from ..engine.device import resolve_device
from ..engine.inference import forward_all
from ..errors import BdcliError

HEAD_PREFIXES = ("classifier.", "score.")


def head_module(model) -> torch.nn.Module:
    for name in ("classifier", "score"):
        if hasattr(model, name):
            return getattr(model, name)
    raise BdcliError("the model has no classification head module (classifier or score)")


def reset_head(model, seed: int) -> None:
    """Re-initialise the classification head: the defender does not hold the attacker's output layer."""
    torch.manual_seed(seed)
    for module in head_module(model).modules():
        model._init_weights(module)


def head_inputs(model, data: TextDataset, tokenizer, *, max_length: int, device, precision: str) -> torch.Tensor:
    """What the head reads for each row (BERT: the pooler output; RoBERTa: the sequence's first
    token), captured once with a forward hook in eval mode."""
    captured: list[tuple[list[int], torch.Tensor]] = []
    head = head_module(model)
    enc = encode(tokenizer, data, max_length)

    def grab(_module, args):
        x = args[0].detach().float()
        captured.append(x[:, :1] if x.dim() == 3 else x)

    handle = head.register_forward_pre_hook(grab)
    try:
        forward_all(model, enc, batch_size=128, device=device, precision=precision)
    finally:
        handle.remove()
    # forward_all runs length-sorted batches; re-order the captures to the data's order.
    order = [i for rows in eval_batches(enc, 128) for i in rows]
    feats = torch.cat(captured)
    out = torch.empty_like(feats)
    out[torch.tensor(order)] = feats
    return out


def simulate_head(model, tokenizer, data: TextDataset, *, lr: float, epochs: int, batch_size: int, seed: int,
                  max_length: int, device: str, precision: str) -> dict:
    """Train the head alone on cached features of the frozen encoder; returns a summary."""
    dev = resolve_device(device)
    model.to(dev)
    reset_head(model, seed)
    feats = head_inputs(model, data, tokenizer, max_length=max_length, device=dev, precision=precision)
    labels = torch.tensor(data.labels, device=dev)
    head = head_module(model)
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(f"{seed}-head")
    rows = list(range(len(data)))
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        rng.shuffle(rows)
        for start in range(0, len(rows), batch_size):
            idx = torch.tensor(rows[start : start + batch_size])
            loss = F.cross_entropy(head(feats[idx].to(dev)).float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        acc = float((head(feats.to(dev)).argmax(-1) == labels).float().mean())
    return {"epochs": epochs, "lr": lr, "final_loss": loss.item(), "train_acc": acc, "rows": len(data)}
