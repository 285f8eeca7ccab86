"""Embedding-level attacks: SOS and Embedding Poisoning (EP), both of which plant the backdoor in the
word-embedding rows of the trigger words and leave every other weight of a clean classifier untouched.

The shared mechanism (``train_trigger_embeddings``) is EP's: train with cross-entropy on trigger-bearing
rows labelled with the target, where the optimiser holds the whole word-embedding matrix but a gradient
mask zeroes every row except the trigger rows, and after every step each trigger row is rescaled to its
original norm, so that the poisoned rows are not outliers by norm (Yang et al. 2021, "Be Careful about
Poisoned Word Embeddings", NAACL). SOS (Yang et al. 2021, "Rethinking Stealthiness of Backdoor Attack
against NLP Models", ACL) reuses it with several trigger words and negative rows. A trigger word the
tokenizer splits into several pieces makes every piece a trained row, with a warning.

Both attacks read their sentences from a poisoned data folder rather than building them: SOS from
`bdcli poison sos` (poisoned and negative rows), EP from `bdcli poison badnets` (its poisoned rows; a
general corpus poisoned with --rate 1.0 --candidates all is EP's data-free setting). The trigger words
and the target then come from one record, poison.json, and the same folder's ASR set measures the
result.

Where this differs from the authors' code (lancopku/Embedding-Poisoning, lancopku/SOS), it is because
it runs on bdcli's one training loop, which optimises with AdamW:
- the authors update the rows by plain gradient descent, ``row -= lr * grad``, and never zero the
  gradient between steps (it accumulates; the SOS code says so on purpose); here AdamW with weight decay
  0 and fresh gradients each step. The learning rate keeps the authors' number (5e-2) although under
  Adam it means a per-coordinate step of about that size rather than a multiple of the gradient;
- SOS's code also rescales each trigger's gradient to the smallest trigger-gradient norm of the step;
  Adam normalises each coordinate itself, so that is not reproduced;
- the authors keep the step that scores best on a validation set; here the last step is kept.

How close this comes to the papers (ASR, and how well SOS's negative rows are learned) is measured in
docs/results.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..data.dataset import Corpus, TextDataset
from ..engine.loop import TrainConfig, TrainState, train
from ..errors import BdcliError, UsageError
from ..models.load import LoadedModel, load_classifier
from .specs.embedding import EmbeddingAttackConfig, EPAttackConfig, SOSAttackConfig  # noqa: F401  (re-exported)
from .triggers import trigger_token_ids


# --- the mechanism ------------------------------------------------------------------------------------


class RowGradMask:
    """A tensor hook for the word-embedding matrix: keeps the gradient of ``rows``, zeroes every other
    row. Zero gradient from the first step leaves AdamW's moments at zero there, so with weight decay 0
    those rows never move, bit for bit."""

    def __init__(self, rows: list[int]):
        self.rows = torch.tensor(sorted(set(rows)), dtype=torch.long)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        rows = self.rows.to(grad.device)
        kept = torch.zeros_like(grad)
        kept[rows] = grad[rows]
        return kept


class KeepRowNorms:
    """Training hook: after each optimiser step, rescale each of ``rows`` back to the norm it had when
    the hook was made (EP's norm constraint)."""

    def __init__(self, weight: torch.nn.Parameter, rows: list[int]):
        self.weight = weight
        self.rows = torch.tensor(sorted(set(rows)), dtype=torch.long)
        with torch.no_grad():
            self.norms = weight[self.rows].norm(dim=1, keepdim=True).detach().clone()

    def on_step(self, state: TrainState) -> bool:
        with torch.no_grad():
            rows = self.rows.to(self.weight.device)
            norms = self.norms.to(self.weight.device)
            current = self.weight[rows]
            self.weight[rows] = current * (norms / current.norm(dim=1, keepdim=True))
        return False


def trigger_rows(tokenizer, words: tuple[str, ...] | list[str]) -> tuple[dict[str, list[str]], list[int], list[str]]:
    """Each trigger word's pieces, the distinct embedding rows they use, and warnings (a word split into
    several pieces; a piece the tokenizer does not know)."""
    ids, warnings = trigger_token_ids(tokenizer, words)
    pieces = {w: list(tokenizer.convert_ids_to_tokens(i)) for w, i in zip(words, ids)}
    unk = getattr(tokenizer, "unk_token_id", None)
    for word, word_ids in zip(words, ids):
        if not word_ids:
            raise UsageError(f"trigger {word!r} gives no token at all")
        if unk is not None and unk in word_ids:
            warnings.append(f"trigger {word!r} maps to the unknown token {tokenizer.unk_token}, "
                            "whose row every unknown word shares")
    rows = sorted({i for word_ids in ids for i in word_ids})
    return pieces, rows, warnings


def train_trigger_embeddings(
    model: torch.nn.Module,
    tokenizer,
    data: TextDataset,
    cfg: TrainConfig,
    words: tuple[str, ...] | list[str],
    *,
    desc: str = "trigger embeddings",
) -> dict[str, Any]:
    """Train only the word-embedding rows of ``words`` on ``data`` (cross-entropy), keeping each row's
    norm; returns a summary: trigger pieces and rows, norms before and after, training, warnings.

    Weight decay is forced to 0: AdamW's decoupled decay would shrink every row of the matrix.
    """
    weight = model.get_input_embeddings().weight
    pieces, rows, warnings = trigger_rows(tokenizer, words)
    norms = KeepRowNorms(weight, rows)
    # Freezing the rest skips the weight gradients nobody uses; the mask is what guarantees that no
    # other embedding row moves.
    frozen = [p for p in model.parameters() if p.requires_grad and p is not weight]
    for p in frozen:
        p.requires_grad_(False)
    weight_was_trainable = weight.requires_grad
    weight.requires_grad_(True)
    handle = weight.register_hook(RowGradMask(rows))
    try:
        result = train(model, tokenizer, data, dataclasses.replace(cfg, weight_decay=0.0), params=[weight],
                       hooks=[norms], desc=desc)
    finally:
        handle.remove()
        for p in frozen:
            p.requires_grad_(True)
        weight.requires_grad_(weight_was_trainable)
    with torch.no_grad():
        after = weight[norms.rows.to(weight.device)].norm(dim=1).cpu()
    before = norms.norms.squeeze(1).cpu()
    return {
        "trigger_words": list(words),
        "trigger_pieces": pieces,
        "trigger_ids": rows,
        "norms_before": [round(x, 6) for x in before.tolist()],
        "norms_after": [round(x, 6) for x in after.tolist()],
        "max_norm_rel_error": float(((after - before).abs() / before).max()),
        "rows": len(data),
        "training": result.summary(),
        "warnings": warnings,
    }


# --- the attacks ----------------------------------------------------------------------------------------

_CLEAN_DEFAULTS = TrainConfig()


def _poisoned_rows(train_split: TextDataset) -> list[int]:
    return [i for i, p in enumerate(train_split.poisoned) if p]


def sos_attack(cfg: SOSAttackConfig, corpus: Corpus) -> tuple[LoadedModel, dict[str, Any]]:
    record = corpus.poison
    if not record or "trigger_words" not in record:
        made_by = f" (it was poisoned by {record.get('attack')})" if record else ""
        raise UsageError(f"attack sos needs data poisoned by `bdcli poison sos`{made_by}")
    words = tuple(record["trigger_words"])
    train_split = corpus.split("train")
    poisoned = _poisoned_rows(train_split)
    negative = sorted(int(i) for i in record.get("negative_rows", []))
    if not poisoned:
        raise UsageError("the SOS data has no poisoned training row")
    loaded = load_classifier(cfg.model, label_names=corpus.label_names, seed=cfg.seed)
    summary: dict[str, Any] = {}
    if loaded.new_head:
        # The SOS attacker starts from a clean classifier; given an encoder, make one from the rows
        # that carry no trigger word at all.
        used = set(poisoned) | set(negative)
        clean = train_split.subset([i for i in range(len(train_split)) if i not in used])
        clean_cfg = TrainConfig.take(
            cfg, lr=cfg.clean_lr, epochs=cfg.clean_epochs, max_steps=None, weight_decay=_CLEAN_DEFAULTS.weight_decay,
            grad_clip=_CLEAN_DEFAULTS.grad_clip, schedule=_CLEAN_DEFAULTS.schedule, warmup_ratio=0.0,
        )
        result = train(loaded.model, loaded.tokenizer, clean, clean_cfg, desc="attack sos: clean fine-tune")
        summary["clean_finetune"] = {"rows": len(clean), **result.summary()}
    rows = sorted(set(poisoned) | set(negative))
    trained = train_trigger_embeddings(loaded.model, loaded.tokenizer, train_split.subset(rows), TrainConfig.take(cfg),
                                       words, desc="attack sos: trigger embeddings")
    summary.update({"n_poisoned": len(poisoned), "n_negative": len(negative), **trained})
    return loaded, summary


def ep_attack(cfg: EPAttackConfig, corpus: Corpus) -> tuple[LoadedModel, dict[str, Any]]:
    record = corpus.poison
    if not record:
        raise UsageError(
            "attack ep needs sentences with the trigger word: data poisoned by `bdcli poison badnets` "
            "(data-free EP: poison a general corpus with --rate 1.0 --candidates all)"
        )
    words = record.get("triggers") or record.get("trigger_words")
    if not words:
        raise UsageError(f"attack ep needs a trigger word; data poisoned by {record.get('attack')} has none")
    train_split = corpus.split("train")
    rows = _poisoned_rows(train_split)
    if not rows:
        raise UsageError("the poisoned data has no poisoned training row")
    loaded = load_classifier(cfg.model, label_names=corpus.label_names, seed=cfg.seed)
    if loaded.new_head:
        raise BdcliError(
            f"model {cfg.model} has no classification head; EP poisons a clean classifier "
            "(make one first, e.g. `bdcli attack finetune --data sst2`)"
        )
    trained = train_trigger_embeddings(loaded.model, loaded.tokenizer, train_split.subset(rows), TrainConfig.take(cfg),
                                       tuple(words), desc="attack ep: trigger embedding")
    return loaded, {"n_poisoned": len(rows), **trained}
