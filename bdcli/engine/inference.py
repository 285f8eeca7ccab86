"""Batched forward passes with no gradient: logits for metrics, sentence representations for the
Stop Distance and other geometry."""

from __future__ import annotations

import torch

from ..errors import BdcliError
from .batching import Encoded, collate, eval_batches
from .device import autocast

REPRESENTATIONS = ("cls", "pooler")


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def representation(model, batch: dict[str, torch.Tensor], rep: str) -> torch.Tensor:
    """The sentence vector h: the last layer's [CLS] state (what the maximum-entropy paper measures),
    or the pooler output that a BERT classification head reads."""
    if rep == "cls":
        out = model.base_model(**_model_inputs(batch))
        return out.last_hidden_state[:, 0]
    if rep == "pooler":
        out = model.base_model(**_model_inputs(batch))
        if getattr(out, "pooler_output", None) is None:
            raise BdcliError("this model has no pooler; measure on --sd-on cls")
        return out.pooler_output
    raise BdcliError(f"unknown representation {rep!r}; use one of {', '.join(REPRESENTATIONS)}")


def forward_all(
    model,
    enc: Encoded,
    *,
    batch_size: int,
    device: torch.device,
    precision: str,
    what: str = "logits",
) -> torch.Tensor:
    """``what`` is ``logits`` or a representation name; rows come back in the data's order, as fp32.

    The passes run under inference_mode (no autograd bookkeeping at all, unlike no_grad); the result
    is copied into an ordinary tensor, so callers may use it in training (a head fitted on features)."""
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    try:
        for rows in eval_batches(enc, batch_size):
            with torch.inference_mode():
                batch = collate(enc, rows, device)
                with autocast(device, precision):
                    if what == "logits":
                        vals = model(**_model_inputs(batch)).logits
                    else:
                        vals = representation(model, batch, what)
                vals = vals.float().cpu()
            if out is None:
                out = torch.empty((len(enc), vals.shape[1]), dtype=torch.float32)
            out[torch.tensor(rows)] = vals
    finally:
        model.train(was_training)
    if out is None:
        raise BdcliError("nothing to run the model on: the data set is empty")
    return out
