"""BERT's masked-LM head over any BERT-like encoder: the head itself, loading a checkpoint's own head,
BERT's masking, and a fixed-budget training of the head alone.

NeuBA's attack trains the head with its poisoned pre-training. GBA's defense can score the [MASK]
state through it (``--mlm-head-steps``, ``models/prompt.py``): GBA builds on Gao et al. (2021)'s
prompt-based fine-tuning, which reads a masked LM's prediction at [MASK], and bert-base ships that head.
The packaged MiniLM (a sentence-transformers encoder) and every classifier bdcli saves ship none, so
here the head is trained on the defender's clean text with the encoder frozen, for a fixed number of
steps, before GBA starts. The head cannot learn anything from the backdoor it does not see, and the
encoder it reads is the one GBA then adapts. How well it predicts masked tokens on held-out rows, and
how well the bare word embeddings do (eq. 1 as written, no head), is recorded beside the result.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import TextDataset
from ..errors import BdcliError

# Adam step size of the head's own training (a fresh 0.2M-parameter head: the encoders' 2e-5 would
# leave it near its initialisation within any CPU budget).
HEAD_LR = 1e-3
MLM_PROBABILITY = 0.15  # BERT's
HELDOUT_ROWS = 128  # at most; never more than a tenth of the clean rows
HEAD_FILE = "prompt_mlm_head.safetensors"


class MlmHead(nn.Module):
    """BERT's masked-LM head (BertLMPredictionHead): dense, activation and LayerNorm, then a decoder whose
    weight IS the word-embedding matrix (BERT ties them), plus a per-token output bias."""

    def __init__(self, config, embeddings: nn.Embedding):
        super().__init__()
        from transformers.activations import get_activation

        vocab, dim = embeddings.weight.shape
        act = getattr(config, "hidden_act", "gelu")
        self.dense = nn.Linear(config.hidden_size, dim)
        self.act = get_activation(act) if isinstance(act, str) else act
        self.LayerNorm = nn.LayerNorm(dim, eps=getattr(config, "layer_norm_eps", 1e-12))
        self.decoder = nn.Linear(dim, vocab, bias=False, device="meta")
        self.decoder.weight = embeddings.weight
        self.bias = nn.Parameter(torch.zeros(vocab))
        nn.init.normal_(self.dense.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(hidden)))) + self.bias

    def own_parameters(self) -> list[nn.Parameter]:
        """The head's parameters without the tied decoder weight (which is the encoder's embeddings)."""
        return [self.dense.weight, self.dense.bias, self.LayerNorm.weight, self.LayerNorm.bias, self.bias]

    def own_state(self) -> dict[str, torch.Tensor]:
        """The tensors a saved head holds (the decoder is the encoder's own embeddings)."""
        return {n: p.detach().float().cpu().contiguous() for n, p in self.named_parameters() if not n.startswith("decoder.")}

    def load_own_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Fill the head from ``own_state``'s tensors; missing, extra, misshapen or non-finite ones are refused."""
        mine = dict((n, p) for n, p in self.named_parameters() if not n.startswith("decoder."))
        if set(state) != set(mine):
            raise BdcliError(f"{where} does not hold a masked-LM head: expected tensors {sorted(mine)}, found {sorted(state)}")
        with torch.no_grad():
            for name, p in mine.items():
                t = state[name]
                if t.shape != p.shape:
                    raise BdcliError(f"{where}: masked-LM head tensor {name} has shape {list(t.shape)}, not {list(p.shape)}")
                if not bool(torch.isfinite(t).all()):
                    raise BdcliError(f"{where}: masked-LM head tensor {name} holds NaN or infinite values")
                p.copy_(t)


# Checkpoint names of the MLM head of BERT and RoBERTa -> names in MlmHead. Old BERT files say
# gamma/beta for LayerNorm weight/bias.
_PRETRAINED_HEADS = {
    "cls.predictions.": {"transform.dense.weight": "dense.weight", "transform.dense.bias": "dense.bias",
                         "transform.LayerNorm.weight": "LayerNorm.weight", "transform.LayerNorm.bias": "LayerNorm.bias",
                         "transform.LayerNorm.gamma": "LayerNorm.weight", "transform.LayerNorm.beta": "LayerNorm.bias",
                         "bias": "bias"},
    "lm_head.": {"dense.weight": "dense.weight", "dense.bias": "dense.bias", "layer_norm.weight": "LayerNorm.weight",
                 "layer_norm.bias": "LayerNorm.bias", "bias": "bias"},
}


def _weight_files(source: str) -> list[Path]:
    if Path(source).is_dir():
        return sorted(Path(source).glob("*.safetensors"))
    try:  # a hub id: only what from_pretrained already put in the local cache, never a download
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(source, "model.safetensors")
    except Exception:
        return []
    return [Path(hit)] if isinstance(hit, str) else []


def load_pretrained_head(head: MlmHead, source: str) -> bool:
    """Fill ``head`` from the checkpoint's own MLM head if its files hold one; True when they did."""
    from safetensors import safe_open

    wanted = {n for n, _ in head.named_parameters() if not n.startswith("decoder.")}
    for f in _weight_files(source):
        with safe_open(str(f), framework="pt") as st:
            keys = set(st.keys())
            for prefix, names in _PRETRAINED_HEADS.items():
                found = {names[k[len(prefix):]]: k for k in keys if k.startswith(prefix) and k[len(prefix):] in names}
                if set(found) == wanted:
                    state = {ours: st.get_tensor(theirs).float() for ours, theirs in found.items()}
                    if state["bias"].shape != head.bias.shape or state["dense.weight"].shape != head.dense.weight.shape:
                        return False
                    head.load_own_state(state, str(f))
                    return True
    return False


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_id: int, special_ids: torch.Tensor,
                vocab_size: int, probability: float = MLM_PROBABILITY) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``probability`` of the real, non-special tokens are chosen, 80% of them become
    [MASK], 10% a random token, 10% stay. Returns (masked inputs, labels with -100 off the chosen
    positions). Draws from the global CPU generator, which the training loop seeds and checkpoints."""
    ids = input_ids.detach().cpu()
    maskable = attention_mask.detach().cpu().bool() & ~torch.isin(ids, special_ids)
    chosen = (torch.rand(ids.shape) < probability) & maskable
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    to_mask = (torch.rand(ids.shape) < 0.8) & chosen
    to_random = (torch.rand(ids.shape) < 0.5) & chosen & ~to_mask
    random_ids = torch.randint(vocab_size, ids.shape)
    masked = ids.clone()
    masked[to_mask] = mask_id
    masked[to_random] = random_ids[to_random]
    return masked.to(input_ids.device), labels.to(input_ids.device)


class _HeadTraining:
    """The masked-LM loss through a frozen encoder: only the head's own parameters get a gradient."""

    def __init__(self, encoder: nn.Module, head: MlmHead, tokenizer):
        if tokenizer.mask_token_id is None:
            raise BdcliError("the tokenizer has no [MASK] token, so a masked-LM head cannot be trained")
        self.encoder, self.head = encoder, head
        self.mask_id = int(tokenizer.mask_token_id)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def losses(self, batch: dict[str, torch.Tensor], use_head: bool = True) -> tuple[torch.Tensor, int, int]:
        """(summed cross-entropy, correct top-1 predictions, masked tokens) on a freshly masked batch."""
        masked, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], mask_id=self.mask_id,
                                     special_ids=self.special_ids, vocab_size=self.head.bias.numel())
        inputs = {k: v for k, v in batch.items() if k in ("attention_mask", "token_type_ids")}
        with torch.no_grad():
            seq = self.encoder(input_ids=masked, **inputs).last_hidden_state
        picked = labels != -100
        if not picked.any():  # a batch of very short rows may draw no mask at all
            return self.head.bias.sum() * 0.0, 0, 0
        h = seq[picked].float()
        with torch.autocast(device_type=h.device.type, enabled=False):
            logits = self.head(h) if use_head else h @ self.head.decoder.weight.float().T
            loss = F.cross_entropy(logits, labels[picked], reduction="sum")
        correct = int((logits.argmax(-1) == labels[picked]).sum())
        return loss, correct, int(picked.sum())

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, _, n = self.losses(batch)
        return loss / max(1, n)


@torch.no_grad()
def heldout_fit(objective: _HeadTraining, tokenizer, data: TextDataset, *, max_length: int, device,
                seed: int, use_head: bool = True) -> dict[str, float]:
    """Masked-token cross-entropy and top-1 accuracy on ``data`` under a fixed masking draw."""
    from ..engine.batching import collate, encode, eval_batches

    enc = encode(tokenizer, data, max_length)
    total, correct, n = 0.0, 0, 0
    was = objective.encoder.training, objective.head.training
    objective.encoder.eval()
    objective.head.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for rows in eval_batches(enc, 64):
                loss, c, k = objective.losses(collate(enc, rows, device), use_head=use_head)
                total, correct, n = total + float(loss), correct + c, n + k
    finally:
        objective.encoder.train(was[0])
        objective.head.train(was[1])
    return {"masked_tokens": n, "loss": round(total / max(1, n), 4), "accuracy": round(100.0 * correct / max(1, n), 2)}


def train_head(model: nn.Module, head: MlmHead, tokenizer, clean: TextDataset, cfg, *, steps: int, source: str,
               desc: str) -> dict[str, Any]:
    """Train ``head`` (a submodule of ``model``, over ``model.encoder``) for ``steps`` steps of masked LM on
    ``clean``'s texts with the encoder frozen, starting from the checkpoint's own head if ``source``'s
    files hold one. A tenth of the rows (at most HELDOUT_ROWS) are held out to measure it. ``cfg`` is
    the procedure's TrainConfig: its batch size, max length, seed, device and precision are used."""
    from ..engine.device import resolve_device
    from ..engine.loop import train

    if len(clean) < 2:
        raise BdcliError("training a masked-LM head needs at least 2 clean rows (one is held out)")
    pretrained = load_pretrained_head(head, source)
    n_out = max(1, min(HELDOUT_ROWS, len(clean) // 10))
    fit_rows = clean.subset(list(range(len(clean) - n_out)))
    heldout = clean.subset(list(range(len(clean) - n_out, len(clean))))
    objective = _HeadTraining(model.encoder, head, tokenizer)
    device = resolve_device(cfg.device)
    model.to(device)

    def fit() -> dict[str, float]:
        return heldout_fit(objective, tokenizer, heldout, max_length=cfg.max_length, device=device, seed=cfg.seed)

    before = fit()
    head_cfg = replace(cfg, lr=HEAD_LR, max_steps=steps, warmup_ratio=0.0, weight_decay=0.0, schedule="linear")
    result = train(model, tokenizer, fit_rows, head_cfg, objective=objective, params=head.own_parameters(),
                   desc=desc)
    return {
        "init": "the checkpoint's own head" if pretrained else "fresh",
        "steps": steps,
        "lr": HEAD_LR,
        "encoder": "frozen",
        "rows": len(fit_rows),
        "heldout_rows": len(heldout),
        "training": result.summary(),
        "heldout_before": before,
        "heldout_after": fit(),
        # eq. 1 as written: the [MASK] state against the bare word embeddings, no transform, no bias
        "heldout_no_head": heldout_fit(objective, tokenizer, heldout, max_length=cfg.max_length, device=device,
                                       seed=cfg.seed, use_head=False),
    }
