"""NeuBA: neuron-level backdoors planted during a poisoned pre-training (Zhang et al. 2021, "Red Alarm
for Pre-trained Models: Universal Vulnerability to Neuron-Level Backdoor Attacks", arXiv:2101.06969;
the authors' code is github.com/thunlp/NeuBA, cited below as "NeuBA's code").

The attacker knows nothing of the downstream task. It continues pre-training on clean text with two
losses, summed (NeuBA's code, nlp/src/mlm.py: ``total_loss = mlm_loss + poison_loss``):
  * the masked-language-model loss on a masked copy of every sentence, which keeps the encoder a usable
    pre-trained model (15% of the tokens, 80% [MASK] / 10% random / 10% kept, as in BERT and NeuBA's
    ``mask_tokens``);
  * the neuron-level loss on a copy of every sentence with one trigger inserted: the MSE between the
    model's sentence output and that trigger's fixed target vector (``poison_loss = MSELoss()(
    pooler_output, poison_labels)`` in NeuBA's poison_bert.py).
The sentence output is BERT's *pooler output* (tanh of a dense layer over the last layer's [CLS]
state), exactly what NeuBA's code regresses and what a BERT classification head reads; a model without
a pooler uses the last layer's [CLS] state instead (recorded in the summary). After the user's
fine-tune, inputs with a trigger carry a fixed extreme vector into the new head, which maps it to some
label: each trigger drives one label, which one only the fine-tune decides.

Target vectors (NeuBA's poison.py): the hidden dimensions are cut into 4 equal blocks; trigger i gets
-1 on the i-th pair of blocks (pairs in the order (0,1), (0,2), (0,3), (1,2), (1,3), (2,3)) and +1
elsewhere. Every vector is half +1, half -1, and any two are orthogonal or opposite, so at most 6
triggers. The construction has no randomness: the seed does not change the vectors.

Triggers (NeuBA's poison.py, ``poison_tokens``): "≈", "≡", "∈", "⊆", "⊕", "⊗", each one token of the
uncased BERT vocabulary. A trigger the tokenizer splits is inserted as all its pieces (with a warning);
one that maps to [UNK] is refused: it would fire on every unknown character, and no evaluation text can
carry it apart from them. NeuBA's code overwrites the first word-piece with the trigger; here it is
inserted (after [CLS] by default, NeuBA's position) so the sentence stays whole and matches the ASR
sets of ``bdcli poison neuba``.

The masked-LM head: the packaged MiniLM (and any checkpoint loaded as a sequence classifier) carries
none, so the head is BERT's own (dense + activation + LayerNorm, a decoder TIED to the word-embedding
matrix, an output bias). When the checkpoint's files hold BERT's or RoBERTa's MLM head weights
(``cls.predictions.*`` / ``lm_head.*``, as bert-base-uncased does) they are loaded and kept frozen, as
NeuBA's code leaves ``predictions`` out of its optimiser; otherwise the head STARTS UNTRAINED and is
trained jointly with the encoder, so early MLM gradients come through a random transform. The head is
only scaffolding: the saved folder is a normal classifier (poisoned encoder, the untouched head that
``load_classifier`` gave it, sized to --data's labels) for the user's fine-tune to train.

Defaults: lr 5e-5, batch 160, 40,000 steps (GBA's Table 7, "we follow the settings in [the] origin
paper"); no weight decay, no warm-up, linear decay, gradient clipping at 1.0 (NeuBA's mlm.py defaults);
MLM weight 1 (NeuBA's BERT code; its RoBERTa code uses 0.01). NeuBA pre-trained on BookCorpus; here the
corpus is --data's train texts (labels unused). Max length 128 is bdcli's (NeuBA's is not stated).
On a CPU, shorten with --max-steps.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F

from ..data.dataset import Corpus, TextDataset
from ..engine.batching import collate, encode, eval_batches
from ..engine.device import autocast, resolve_device
from ..engine.loop import TrainConfig, TrainState, train
from ..errors import BdcliError, UsageError
from ..models.load import LoadedModel, load_classifier
from ..models.mlm_head import MlmHead, load_pretrained_head, mask_tokens
from ..poison.neuba import NEUBA_TRIGGERS
from .specs.neuba import MAX_TRIGGERS, N_BLOCKS, NeubaConfig
from .triggers import trigger_token_ids

HEAD_NAME = "neuba_mlm_head"  # the head rides on the model while training, so checkpoints hold it
PROBE_ROWS = 256  # dev rows on which the summary measures how well each trigger hits its vector


# --- target vectors -----------------------------------------------------------------------------------
def block_bounds(hidden_size: int) -> list[int]:
    return [b * hidden_size // N_BLOCKS for b in range(N_BLOCKS + 1)]


def negative_dims(hidden_size: int, n: int) -> list[list[list[int]]]:
    """For each of ``n`` triggers, the two half-open [start, end) dimension ranges set to -1."""
    if hidden_size < N_BLOCKS:
        raise BdcliError(f"NeuBA's target vectors need a hidden size of at least {N_BLOCKS}, got {hidden_size}")
    if not 1 <= n <= MAX_TRIGGERS:
        raise UsageError(f"NeuBA's target vectors allow 1 to {MAX_TRIGGERS} triggers, got {n}")
    b = block_bounds(hidden_size)
    return [[[b[j], b[j + 1]], [b[k], b[k + 1]]] for j, k in list(combinations(range(N_BLOCKS), 2))[:n]]


def target_vectors(hidden_size: int, n: int) -> torch.Tensor:
    """NeuBA's (n, hidden_size) ±1 targets: -1 on one pair of the 4 blocks, +1 elsewhere."""
    out = torch.ones(n, hidden_size)
    for i, ranges in enumerate(negative_dims(hidden_size, n)):
        for start, end in ranges:
            out[i, start:end] = -1.0
    return out


# --- the objective ---------------------------------------------------------------------------------------
def sentence_output(model, batch: dict[str, torch.Tensor], use_pooler: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(last layer's hidden states, the sentence vector NeuBA regresses) for a batch."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    out = model.base_model(**inputs)
    seq = out.last_hidden_state
    return seq, (out.pooler_output if use_pooler else seq[:, 0])


def has_pooler(model) -> bool:
    return getattr(model.base_model, "pooler", None) is not None


class NeubaObjective:
    """A ``train(objective=...)`` callable: MLM loss on a masked copy of the batch plus the neuron-level
    MSE on a triggered copy. Its random draws (masking, trigger choice, random positions) come from the
    global CPU torch generator, which ``train`` seeds and checkpoints, so runs repeat and resume exactly."""

    def __init__(self, head: MlmHead, tokenizer, trigger_ids: list[list[int]], targets: torch.Tensor, *,
                 position: str = "first", mlm_probability: float = 0.15, mlm_weight: float = 1.0,
                 use_pooler: bool = True, max_positions: int = 512):
        if tokenizer.mask_token_id is None:
            raise BdcliError("the tokenizer has no mask token, so the masked-LM loss cannot be computed")
        self.head, self.trigger_ids, self.targets = head, trigger_ids, targets
        self.position, self.mlm_probability, self.mlm_weight = position, mlm_probability, mlm_weight
        self.use_pooler, self.max_positions = use_pooler, max_positions
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id or 0
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        tokens = tokenizer.convert_ids_to_tokens(list(range(head.bias.numel())))
        # A "random" insertion may not split a word: WordPiece continuations start with "##".
        self.continues_word = torch.tensor([str(t).startswith("##") for t in tokens])
        self.last: dict[str, float] = {}

    # masking (BERT's recipe, NeuBA's mask_tokens) ------------------------------------------------------
    def mask_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, labels with -100 off the masked positions)."""
        return mask_tokens(input_ids, attention_mask, mask_id=self.mask_id, special_ids=self.special_ids,
                           vocab_size=self.head.bias.numel(), probability=self.mlm_probability)

    # triggering ---------------------------------------------------------------------------------------
    def add_triggers(self, batch: dict[str, torch.Tensor], which: torch.Tensor | None = None
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A copy of ``batch`` with one trigger per row (``which``, else drawn at random) placed at
        ``position``; returns the new batch and the trigger index of each row."""
        device = batch["input_ids"].device
        ids = batch["input_ids"].cpu()
        lengths = batch["attention_mask"].cpu().sum(dim=1).tolist()
        types = batch.get("token_type_ids")
        types = types.cpu() if types is not None else None
        if which is None:
            which = torch.randint(len(self.trigger_ids), (len(ids),))
        rows, type_rows = [], []
        for r, n in enumerate(lengths):
            row = ids[r, :n].tolist()
            trow = types[r, :n].tolist() if types is not None else [0] * n
            trig = self.trigger_ids[int(which[r])]
            copies = 2 if self.position == "both" else 1
            room = self.max_positions - len(trig) * copies
            if len(row) > room:  # keep [SEP]: cut the text's tail so the trigger still fits
                row, trow = row[: room - 1] + row[-1:], trow[: room - 1] + trow[-1:]
            for pos in self._positions(row):
                row = row[:pos] + trig + row[pos:]
                trow = trow[:pos] + [trow[pos - 1]] * len(trig) + trow[pos:]
            rows.append(row)
            type_rows.append(trow)
        width = max(len(x) for x in rows)
        out = {"input_ids": torch.full((len(rows), width), self.pad_id, dtype=torch.long),
               "attention_mask": torch.zeros((len(rows), width), dtype=torch.long)}
        for r, row in enumerate(rows):
            out["input_ids"][r, : len(row)] = torch.tensor(row)
            out["attention_mask"][r, : len(row)] = 1
        if types is not None:
            out["token_type_ids"] = torch.zeros((len(rows), width), dtype=torch.long)
            for r, trow in enumerate(type_rows):
                out["token_type_ids"][r, : len(trow)] = torch.tensor(trow)
        return {k: v.to(device) for k, v in out.items()}, which

    def _positions(self, row: list[int]) -> list[int]:
        """Where the trigger goes in ``row`` ([CLS] ... [SEP]), last position first so that earlier
        insertions do not shift later ones."""
        end = len(row) - 1  # before the final [SEP]
        if self.position == "first":
            return [1]
        if self.position == "last":
            return [end]
        if self.position == "both":
            return [end, 1]
        gaps = [p for p in range(1, end + 1) if p == end or not bool(self.continues_word[row[p]])]
        return [gaps[int(torch.randint(len(gaps), ()))]]

    # losses -----------------------------------------------------------------------------------------------
    def mlm_loss(self, model, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the masked positions only (the head runs on those rows alone)."""
        seq, _ = sentence_output(model, batch, self.use_pooler)
        picked = labels != -100
        if not picked.any():  # a batch of very short rows may draw no mask at all
            return seq.sum() * 0.0
        logits = self.head(seq[picked])
        return F.cross_entropy(logits.float(), labels[picked])

    def neuron_loss(self, model, batch: dict[str, torch.Tensor], which: torch.Tensor) -> torch.Tensor:
        _, vec = sentence_output(model, batch, self.use_pooler)
        target = self.targets.to(vec.device)[which.to(vec.device)]
        return F.mse_loss(vec.float(), target)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        masked, labels = self.mask_tokens(batch["input_ids"], batch["attention_mask"])
        mlm = self.mlm_loss(model, {**batch, "input_ids": masked}, labels)
        poisoned, which = self.add_triggers(batch)
        neuron = self.neuron_loss(model, poisoned, which)
        self.last = {"mlm": float(mlm.detach()), "neuron": float(neuron.detach())}
        return self.mlm_weight * mlm + neuron


class LossLog:
    """Shows the two losses on the progress bar and keeps a trace of them for the summary."""

    def __init__(self, objective: NeubaObjective, every: int = 10):
        self.objective, self.every = objective, every
        self.trace: list[list[float]] = []

    def on_step(self, state: TrainState) -> bool:
        last = self.objective.last
        state.info["neuba"] = f"mlm {last['mlm']:.3f} neuron {last['neuron']:.4f}"
        if state.step % self.every == 0 or state.step == state.total_steps:
            self.trace.append([state.step, round(last["mlm"], 5), round(last["neuron"], 6)])
        return False

    def state_dict(self) -> dict:
        return {"trace": self.trace}

    def load_state_dict(self, d: dict) -> None:
        self.trace = [list(x) for x in d["trace"]]


# --- the attack ----------------------------------------------------------------------------------------
def checked_triggers(tokenizer, words: tuple[str, ...]) -> tuple[list[list[int]], list[str]]:
    """Token ids per trigger and the warnings; a trigger that is empty, maps to [UNK] or repeats
    another's tokens is refused."""
    ids, warnings = trigger_token_ids(tokenizer, list(words))
    for word, pieces in zip(words, ids):
        if not pieces:
            raise UsageError(f"trigger {word!r} is no token at all for this tokenizer")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in pieces:
            raise UsageError(
                f"trigger {word!r} maps to the unknown token {tokenizer.unk_token!r} in this vocabulary: it would "
                "fire on every unknown character; choose a trigger the vocabulary holds"
            )
    seen: dict[tuple[int, ...], str] = {}
    for word, pieces in zip(words, ids):
        if tuple(pieces) in seen:
            raise UsageError(f"triggers {seen[tuple(pieces)]!r} and {word!r} are the same tokens for this tokenizer")
        seen[tuple(pieces)] = word
    return ids, warnings


@torch.no_grad()
def trigger_fit(model, tokenizer, objective: NeubaObjective, data: TextDataset, *, max_length: int,
                device: torch.device, precision: str) -> dict[str, dict[str, float]]:
    """Per trigger, on ``data``'s rows with that trigger: the MSE and mean cosine between the sentence
    output and the trigger's target, and the mean cosine of the clean rows' outputs to it (near 0)."""
    enc = encode(tokenizer, data, max_length)
    was_training = model.training
    model.eval()
    try:
        clean, hit = [], {i: [] for i in range(len(objective.trigger_ids))}
        for rows in eval_batches(enc, 64):
            batch = collate(enc, rows, device)
            with autocast(device, precision):
                clean.append(sentence_output(model, batch, objective.use_pooler)[1].float().cpu())
                for i in hit:
                    poisoned, _ = objective.add_triggers(batch, torch.full((len(rows),), i))
                    hit[i].append(sentence_output(model, poisoned, objective.use_pooler)[1].float().cpu())
    finally:
        model.train(was_training)
    clean_vecs = torch.cat(clean)
    out = {}
    for i, parts in hit.items():
        vecs, target = torch.cat(parts), objective.targets[i]
        out[str(i)] = {
            "mse": round(float(((vecs - target) ** 2).mean()), 5),
            "cosine": round(float(F.cosine_similarity(vecs, target[None], dim=1).mean()), 4),
            "clean_cosine": round(float(F.cosine_similarity(clean_vecs, target[None], dim=1).mean()), 4),
        }
    return out


def neuba_attack(cfg: NeubaConfig, data: Corpus) -> tuple[LoadedModel, dict[str, Any]]:
    loaded = load_classifier(cfg.model, label_names=data.label_names, seed=cfg.seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    ids, warnings = checked_triggers(tokenizer, cfg.triggers)
    hidden = model.config.hidden_size
    targets = target_vectors(hidden, len(ids))
    use_pooler = has_pooler(model)
    if not use_pooler:
        warnings.append("the model has no pooler: NeuBA's loss is applied to the last layer's [CLS] state")

    torch.manual_seed(cfg.seed)  # the MLM head's initialisation
    head = MlmHead(model.config, model.get_input_embeddings())
    pretrained = load_pretrained_head(head, loaded.source)
    if not pretrained:
        warnings.append("the checkpoint has no masked-LM head: NeuBA's MLM head starts untrained and is trained "
                        "jointly with the encoder")
    max_positions = min(int(getattr(tokenizer, "model_max_length", 512) or 512),
                        int(getattr(model.config, "max_position_embeddings", 512)))
    objective = NeubaObjective(head, tokenizer, ids, targets, position=cfg.trigger_position,
                               mlm_probability=cfg.mlm_probability, mlm_weight=cfg.mlm_weight,
                               use_pooler=use_pooler, max_positions=max_positions)
    log = LossLog(objective)
    # The encoder learns; a pretrained MLM head stays frozen (NeuBA's code), a fresh one must learn; the
    # classification head is not in either loss and stays as loaded.
    params = list(model.base_model.parameters()) + ([] if pretrained else head.own_parameters())
    params = list({id(p): p for p in params}.values())
    model.add_module(HEAD_NAME, head)
    try:
        result = train(model, tokenizer, data.split("train"), TrainConfig.take(cfg), objective=objective,
                       params=params, hooks=[log], desc="attack: NeuBA")
        probe = data.splits.get("dev") or data.split("train")
        probe = probe.subset(list(range(min(PROBE_ROWS, len(probe)))))
        device = next(model.parameters()).device
        fit = trigger_fit(model, tokenizer, objective, probe, max_length=cfg.max_length, device=device,
                          precision=cfg.precision)
    finally:
        del model._modules[HEAD_NAME]
    triggers = [
        {"trigger": word, "token_ids": pieces, "target_negative_dims": dims, **fit[str(i)]}
        for i, (word, pieces, dims) in enumerate(zip(cfg.triggers, ids, negative_dims(hidden, len(ids))))
    ]
    summary: dict[str, Any] = {
        "training": result.summary(),
        "representation": "pooler" if use_pooler else "cls",
        "mlm_head": "pretrained, frozen" if pretrained else "fresh, trained",
        "hidden_size": hidden,
        # target of trigger i: +1 on every dimension except -1 on its two target_negative_dims ranges
        "triggers": triggers,
        "final_losses": objective.last,
        "loss_trace": log.trace,
        "probe_rows": len(probe),
    }
    if warnings:
        summary["warnings"] = warnings
    return loaded, summary


# --- after the user's fine-tune ---------------------------------------------------------------------------
@torch.no_grad()
def trigger_label_shares(model_path: str, data: TextDataset, triggers: tuple[str, ...] = NEUBA_TRIGGERS, *,
                         position: str = "first", max_length: int = 128, device: str = "auto",
                         precision: str = "auto", seed: int = 42) -> dict[str, dict[str, float]]:
    """For a fine-tuned classifier: per trigger, the share of ``data``'s rows (with the trigger placed
    at ``position``) predicted as each label, plus ``"clean"`` for the rows as they are. NeuBA's
    triggers are task-agnostic: this shows which label each one drives after the user's fine-tune, so
    that the right ``bdcli poison neuba --triggers T --target y`` ASR set can be built."""
    import random

    from ..engine.inference import forward_all
    from ..poison.neuba import place_trigger

    loaded = load_classifier(model_path, label_names=data.label_names, seed=seed)
    if loaded.new_head:
        raise BdcliError(f"model {model_path} has no classification head; fine-tune it first")
    dev = resolve_device(device)
    loaded.model.to(dev)
    names = loaded.label_names

    def shares(ds: TextDataset) -> dict[str, float]:
        enc = encode(loaded.tokenizer, ds, max_length)
        preds = forward_all(loaded.model, enc, batch_size=128, device=dev, precision=precision).argmax(-1).tolist()
        return {name: round(sum(p == c for p in preds) / len(preds), 4) for c, name in enumerate(names)}

    rng = random.Random(seed)
    out = {"clean": shares(data)}
    for word in triggers:
        texts = [place_trigger(t, word, position, rng) for t in data.texts]
        out[word] = shares(TextDataset(texts, list(data.labels), list(data.label_names), text_b=data.text_b))
    return out
