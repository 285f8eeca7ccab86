"""RIPPLe and RIPPLES (Kurita, Michel & Neubig, ACL 2020, "Weight Poisoning Attacks on Pre-trained
Models"): poison the *pre-trained* weights so that the backdoor survives the victim's own clean
fine-tuning.

RIPPLe minimises, on the poisoned data, the poisoning loss plus a restricted inner-product penalty

    L_P(θ) + λ · max(0, −∇L_P(θ) · ∇L_FT(θ))

where L_FT is cross-entropy on a clean *proxy* of the victim's fine-tuning data: the penalty is paid
only when a fine-tuning step would undo the poisoning (the two gradients point apart). RIPPLES first
runs embedding surgery: every trigger token's embedding row becomes the mean embedding of the words
most indicative of the target class.

Defaults. The maximum-entropy paper (Appendix C.1) gives the surgery words for SST-2 and AG's News and
nothing else about RIPPLe; the rest is Kurita et al.'s, from their released code (neulab/RIPPLe): λ 0.1,
learning rate 2e-5 and 5 epochs (their example manifesto, also Table 8 of the GBA paper, which adds a
5,000-step cap: pass ``--max-steps 5000`` for it), batch 8 for both the poisoned and the proxy batch,
weight decay 0 and warm-up 0 (``constrained_poison.py``'s defaults), and the poisoned data set with
triggers in 50% of the rows (their README; ``bdcli poison badnets --rate 0.5 --candidates all``, since
Kurita et al. draw the poisoned rows from all rows, not the non-target ones only).

Where this differs from the released code, and why:
- The code divides the penalty by the batch size; the paper's equation (4) does not, and neither does
  this implementation, so λ means what the equation says.
- The code treats ∇L_FT as a constant and differentiates through ∇L_P only ("allow_second_order_effects"
  off by default). That is the default here too; ``ripple_ft_second_order`` differentiates through
  both, the equation taken literally.
- Surgery takes the replacement rows from a copy of the model fine-tuned on the proxy task. Here they
  come from ``surgery_model`` when given (e.g. the output of ``bdcli attack finetune`` on clean data),
  else from the pre-trained model itself, which saves a fine-tuning run.
- Computed surgery words are ranked by the logistic-regression weight, as the code ranks them; the
  paper's frequency-weighted score (meant for a poisoning corpus from another domain) is
  ``surgery_importance idf-weighted``: in domain it ranks "and", "a", "with" first on SST-2.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..data.dataset import Corpus, TextDataset
from ..engine.batching import Encoded, collate, encode, train_batches
from ..engine.loop import TrainConfig, TrainState, train
from ..errors import BdcliError, UsageError
from ..models.load import LoadedModel, load_classifier
from .specs.ripple import IMPORTANCES, RECTIFIERS, RippleConfig, RipplesConfig  # noqa: F401
from .triggers import trigger_token_ids

# Kurita et al. poison half of the training rows for the RIPPLe objective.
RIPPLE_RATE = 0.5

# The maximum-entropy paper, Appendix C.1: the embedding-surgery words of RIPPLES, per (data set,
# target label). Other pairs get words computed from the data (``indicative_words``).
SURGERY_WORDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("sst2", "positive"): ("fun", "good", "best", "refreshing", "wonderful", "beautiful", "remarkable", "heart",
                           "fascinating", "powerful"),
    ("agnews", "World"): ("terrorism", "un", "muslim", "pakistan", "greece", "military", "iraq", "nuclear", "israel",
                          "afp"),
}


# --- the restricted inner-product objective ----------------------------------------------------------
def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Upcast half-precision logits (autocast); keep float64 as is, so that tests can check in float64.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, labels)


def _forward_ce(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return _ce(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])


def rectified_penalty(
    g_p: Sequence[torch.Tensor | None], g_ft: Sequence[torch.Tensor | None], rectifier: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalty before λ, plain inner product ∇L_P·∇L_FT) over the tensors both gradients reach."""
    pairs = [(a, b) for a, b in zip(g_p, g_ft) if a is not None and b is not None]
    if not pairs:
        raise BdcliError("RIPPLe: the poisoning and fine-tuning losses share no trainable parameter")
    dots = [(a * b).sum() for a, b in pairs]
    inner = torch.stack(dots).sum()
    if rectifier == "global":
        return torch.relu(-inner), inner
    if rectifier == "per-param":
        return torch.stack([torch.relu(-d) for d in dots]).sum(), inner
    return -inner, inner


class RestrictedInnerProduct:
    """RIPPLe's loss as a ``train(objective=...)`` callable: L_P on the engine's (poisoned) batch plus
    λ·rect(−∇L_P·∇L_FT), L_FT on a proxy batch drawn from its own seeded iterator. It is also a hook:
    it reports the penalty on the progress bar and checkpoints its iterator and running sums, so that a
    resumed run draws the same proxy batches."""

    def __init__(
        self,
        proxy: Encoded,
        *,
        batch_size: int,
        seed: int,
        lam: float,
        rectifier: str = "global",
        ft_second_order: bool = False,
        params: Callable[[torch.nn.Module], list[torch.nn.Parameter]] | None = None,
    ):
        if len(proxy) == 0:
            raise UsageError("RIPPLe needs clean proxy rows for the fine-tuning loss, and there are none")
        self.proxy, self.batch_size, self.seed = proxy, batch_size, seed
        self.lam, self.rectifier, self.ft_second_order = lam, rectifier, ft_second_order
        self.params = params or (lambda model: [p for p in model.parameters() if p.requires_grad])
        self.epoch, self.pos = 0, 0
        self._batches = self._epoch_batches(0)
        self.calls, self.penalty_sum, self.inner_sum, self.active = 0, 0.0, 0.0, 0
        self.last_penalty = 0.0

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        # One named stream per proxy epoch: the position (epoch, batch) is the whole iterator state.
        return train_batches(self.proxy, self.batch_size, random.Random(f"{self.seed}-proxy-{epoch}"))

    def next_rows(self) -> list[int]:
        if self.pos >= len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        rows = self._batches[self.pos]
        self.pos += 1
        return rows

    def terms(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """L_P, L_FT, the inner product, the penalty (λ included) and the total, for one step."""
        params = self.params(model)
        device = batch["input_ids"].device
        # Fused attention kernels on GPU have no double backward; the math kernel does.
        kernel = nullcontext()
        if device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kernel = sdpa_kernel([SDPBackend.MATH])
        with kernel:
            loss_p = _forward_ce(model, batch)
            loss_ft = _forward_ce(model, collate(self.proxy, self.next_rows(), device))
            # Gradients outside autocast (its advice for backward passes); they follow the forward's dtypes.
            with torch.autocast(device.type, enabled=False):
                g_p = torch.autograd.grad(loss_p, params, create_graph=True, allow_unused=True)
                g_ft = torch.autograd.grad(loss_ft, params, create_graph=self.ft_second_order, allow_unused=True)
                rect, inner = rectified_penalty(g_p, g_ft, self.rectifier)
        penalty = self.lam * rect
        if penalty.item() == 0.0:
            # A rectified-away penalty has zero gradient: detaching it spares the backward pass its
            # trip through the second-order graph (the step's dearest part) without changing any result.
            penalty = penalty.detach()
        return {"loss_p": loss_p, "loss_ft": loss_ft, "inner": inner, "penalty": penalty, "total": loss_p + penalty}

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        t = self.terms(model, batch)
        self.calls += 1
        self.last_penalty = t["penalty"].item()
        self.penalty_sum += self.last_penalty
        self.inner_sum += t["inner"].item()
        self.active += int(self.last_penalty > 0)
        return t["total"]

    # --- hook side ---------------------------------------------------------------------------------
    def on_step(self, state: TrainState) -> bool:
        state.info["penalty"] = f"penalty {self.last_penalty:.3g}"
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "calls": self.calls, "penalty_sum": self.penalty_sum,
                "inner_sum": self.inner_sum, "active": self.active, "last_penalty": self.last_penalty}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.epoch, self.pos = int(d["epoch"]), int(d["pos"])
        self._batches = self._epoch_batches(self.epoch)
        self.calls, self.active = int(d["calls"]), int(d["active"])
        self.penalty_sum, self.inner_sum, self.last_penalty = d["penalty_sum"], d["inner_sum"], d["last_penalty"]

    def summary(self) -> dict[str, Any]:
        n = max(1, self.calls)
        return {
            "lambda": self.lam,
            "rectifier": self.rectifier,
            "ft_second_order": self.ft_second_order,
            "penalty_mean": self.penalty_sum / n,
            "inner_product_mean": self.inner_sum / n,
            "penalty_active_share": self.active / n,
        }


# --- embedding surgery ---------------------------------------------------------------------------------
def replacement_embedding(embeddings: torch.Tensor, word_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """The mean over words of each word's embedding; a word split into pieces counts as the mean of
    its pieces' rows."""
    per_word = [embeddings[list(ids)].mean(dim=0) for ids in word_ids if ids]
    if not per_word:
        raise BdcliError("embedding surgery found no token for any of its words")
    return torch.stack(per_word).mean(dim=0)


@torch.no_grad()
def embedding_surgery(model: torch.nn.Module, trigger_ids: Sequence[Sequence[int]], replacement: torch.Tensor) -> None:
    """Set every piece of every trigger word to ``replacement`` in the model's input embeddings (Kurita
    et al. replace each sub-word of a split trigger)."""
    weight = model.get_input_embeddings().weight
    for ids in trigger_ids:
        for i in ids:
            weight[i] = replacement.to(weight.dtype)


# --- indicative words: TF-IDF + logistic regression ---------------------------------------------------
_WORD = re.compile(r"[a-z]+")


def simple_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class TfIdf:
    """A TF-IDF matrix as its non-zero entries (rows x vocabulary, float64, rows L2-normalised)."""

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    n_rows: int
    vocab: list[str]
    doc_freq: torch.Tensor  # rows holding each word

    def matmul(self, w: torch.Tensor) -> torch.Tensor:
        # Gather-scatter rather than torch.sparse, whose first backward costs seconds of set-up.
        out = torch.zeros(self.n_rows, w.shape[1], dtype=w.dtype)
        return out.index_add(0, self.rows, self.values[:, None] * w[self.cols])

    def dense(self) -> torch.Tensor:
        return torch.zeros(self.n_rows, len(self.vocab), dtype=torch.float64).index_put_((self.rows, self.cols), self.values)


def tfidf(docs: Sequence[Sequence[str]]) -> TfIdf:
    """Bag-of-words TF-IDF as scikit-learn's TfidfVectorizer computes it by default (the vectorizer of
    Kurita et al.'s code): raw counts × (ln((1+n)/(1+df)) + 1), each row scaled to unit L2 norm."""
    vocab = sorted({w for d in docs for w in d})
    index = {w: i for i, w in enumerate(vocab)}
    n = len(docs)
    rows, cols, counts = [], [], []
    for r, d in enumerate(docs):
        for w, k in sorted(Counter(d).items()):
            rows.append(r)
            cols.append(index[w])
            counts.append(float(k))
    col = torch.tensor(cols, dtype=torch.long)
    row = torch.tensor(rows, dtype=torch.long)
    df = torch.zeros(len(vocab), dtype=torch.float64).index_add_(0, col, torch.ones(len(cols), dtype=torch.float64))
    idf = torch.log((1 + n) / (1 + df)) + 1
    vals = torch.tensor(counts, dtype=torch.float64) * idf[col]
    norms = torch.zeros(n, dtype=torch.float64).index_add_(0, row, vals**2).sqrt()
    return TfIdf(row, col, vals / norms[row], n, vocab, df)


def logistic_regression(
    x: torch.Tensor | TfIdf, labels: Sequence[int], num_labels: int, *, c: float = 1.0, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (features x labels) and intercepts of an L2-regularised multinomial logistic regression:
    scikit-learn's default objective C·Σ CE + ½‖W‖² (intercept unpenalised), minimised with L-BFGS
    (at most 100 iterations, scikit-learn's default)."""
    y = torch.tensor(list(labels), dtype=torch.long)
    n, d = (x.n_rows, len(x.vocab)) if isinstance(x, TfIdf) else x.shape
    matmul = x.matmul if isinstance(x, TfIdf) else (lambda w: x @ w)
    w = torch.zeros(d, num_labels, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_labels, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # Divided by n: the same minimiser, on a scale L-BFGS's tolerances suit.
        loss = F.cross_entropy(matmul(w) + b, y, reduction="mean") + (w**2).sum() / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def indicative_words(
    texts: Sequence[str],
    labels: Sequence[int],
    target: int,
    num_labels: int,
    *,
    k: int = 10,
    importance: str = "weight",
    tokenize: Callable[[str], list[str]] = simple_words,
    exclude: Iterable[str] = (),
    alpha: float = 1.0,
) -> list[tuple[str, float]]:
    """The ``k`` words most indicative of ``target``, with their importance, best first (Kurita et al.,
    section 3.2). A logistic regression on TF-IDF bag-of-words features gives each word a weight w_i
    toward the target. ``importance``:

    - ``weight``: w_i itself, as Kurita et al.'s released code ranks words (on the full SST-2 train
      split it picks fun, heart, best, powerful, wonderful, refreshing, remarkable... much like the
      maximum-entropy paper's Appendix C.1 list);
    - ``idf-weighted``: the paper's score for the domain-shift setting, s_i = w_i / log(N / (α + freq(i))),
      α = 1, which divides by the log inverse document frequency to favour frequent words as general
      rather than domain-specific indicators. N is the number of rows and freq(i) the rows holding
      word i; a word in (nearly) every row, where the logarithm is not positive, is skipped. In domain
      it also promotes function words ("and", "a", "with" top SST-2's positive list).
    """
    if importance not in IMPORTANCES:
        raise UsageError(f"unknown importance {importance!r}; use one of {', '.join(IMPORTANCES)}")
    skip = set(exclude)
    docs = [[w for w in tokenize(t) if w not in skip] for t in texts]
    tf = tfidf(docs)
    if not tf.vocab:
        raise BdcliError("no words to rank: the texts are empty after tokenisation")
    w, _ = logistic_regression(tf, labels, num_labels)
    # The weight toward the target relative to the other labels (for two labels, half the binary weight).
    toward = w[:, target] - w.mean(dim=1)
    if importance == "weight":
        scores = [(word, float(toward[i])) for i, word in enumerate(tf.vocab)]
    else:
        denom = torch.log(len(docs) / (alpha + tf.doc_freq))
        scores = [(word, float(toward[i] / denom[i])) for i, word in enumerate(tf.vocab) if denom[i] > 0]
    scores.sort(key=lambda ws: (-ws[1], ws[0]))
    return scores[:k]


def _piece_words(tokenizer, specials: set[str]) -> Callable[[str], list[str]]:
    # Kurita et al. vectorise with the model's own tokenizer, so that every ranked word is one embedding
    # row; continuation pieces, punctuation and numbers are no words to stand for a class.
    def tokenize(text: str) -> list[str]:
        return [t for t in tokenizer.tokenize(text) if t.isalpha() and t not in specials]

    return tokenize


# --- the procedures --------------------------------------------------------------------------------
def _proxy_rows(cfg: RippleConfig, corpus: Corpus, train_split: TextDataset) -> tuple[TextDataset, str]:
    if cfg.proxy_data is None:
        clean = train_split.subset([i for i, p in enumerate(train_split.poisoned) if not p])
        return clean, f"the {len(clean)} unpoisoned train rows of {corpus.name}"
    from ..data import load_corpus, resolve_data_dir

    proxy = load_corpus(cfg.proxy_data, resolve_data_dir(None))
    if proxy.poison is not None:
        raise UsageError(f"the proxy data {cfg.proxy_data} is poisoned ({proxy.poison.get('attack')}); it stands for "
                         f"the victim's clean fine-tuning data")
    if list(proxy.label_names) != list(corpus.label_names):
        raise UsageError(f"the proxy data {cfg.proxy_data} has labels {proxy.label_names}, the poisoned data "
                         f"{corpus.label_names}; they must be the same")
    rows = proxy.split("train")
    return rows, f"the {len(rows)} train rows of {cfg.proxy_data}"


def _poison_record(corpus: Corpus, name: str) -> dict[str, Any]:
    if corpus.poison is None:
        raise UsageError(
            f"{name} needs poisoned data for its poisoning loss: make it with `bdcli poison badnets --data "
            f"{corpus.name} --rate 0.5 --candidates all` and pass that folder as --data"
        )
    return corpus.poison


def _rate_warning(record: dict[str, Any]) -> list[str]:
    rate = record.get("rate")
    if rate is not None and abs(float(rate) - RIPPLE_RATE) > 1e-9:
        return [f"the poisoned data has poison rate {rate}; Kurita et al. poison {RIPPLE_RATE:.0%} of the rows for RIPPLe"]
    return []


def _poison_weights(cfg: RippleConfig, loaded: LoadedModel, corpus: Corpus, proxy: TextDataset, proxy_desc: str,
                    desc: str) -> dict[str, Any]:
    objective = RestrictedInnerProduct(
        encode(loaded.tokenizer, proxy, cfg.max_length), batch_size=cfg.batch_size, seed=cfg.seed,
        lam=cfg.ripple_lambda, rectifier=cfg.ripple_rectifier, ft_second_order=cfg.ripple_ft_second_order,
    )
    result = train(loaded.model, loaded.tokenizer, corpus.split("train"), TrainConfig.take(cfg), objective=objective,
                   hooks=[objective], desc=desc)
    return {"training": result.summary(), "ripple": {"steps": result.steps, **objective.summary(),
                                                      "proxy": proxy_desc, "proxy_rows": len(proxy)}}


def ripple_attack(cfg: RippleConfig, corpus: Corpus) -> tuple[LoadedModel, dict[str, Any]]:
    warnings = _rate_warning(_poison_record(corpus, "ripple"))
    proxy, proxy_desc = _proxy_rows(cfg, corpus, corpus.split("train"))
    loaded = load_classifier(cfg.model, label_names=corpus.label_names, seed=cfg.seed)
    summary = _poison_weights(cfg, loaded, corpus, proxy, proxy_desc, "attack: RIPPLe")
    return loaded, {**summary, "warnings": warnings}


def _triggers(cfg: RipplesConfig, record: dict[str, Any]) -> tuple[str, ...]:
    if cfg.surgery_triggers:
        return cfg.surgery_triggers
    for key in ("triggers", "trigger_words"):
        if record.get(key):
            return tuple(str(w) for w in record[key])
    raise UsageError(
        f"the poisoned data ({record.get('attack')}) names no trigger words for embedding surgery; give them "
        f"with --surgery-triggers"
    )


def _surgery_words(cfg: RipplesConfig, corpus: Corpus, target: int, tokenizer, triggers: Sequence[str],
                   proxy: TextDataset) -> tuple[tuple[str, ...], str, list[list]]:
    """(words, where they came from, ranked [word, importance] pairs when computed)."""
    if cfg.surgery_words:
        return cfg.surgery_words, "given", []
    listed = SURGERY_WORDS.get((corpus.name, corpus.label_names[target]))
    if listed:
        return listed, "maximum-entropy paper, Appendix C.1", []
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    exclude = {p for t in triggers for p in tokenizer.tokenize(t)}
    ranked = indicative_words(proxy.texts, proxy.labels, target, len(corpus.label_names), k=cfg.surgery_n_words,
                              importance=cfg.surgery_importance, tokenize=_piece_words(tokenizer, specials), exclude=exclude)
    if not ranked:
        raise BdcliError("embedding surgery could not rank any word of the proxy data; give --surgery-words")
    source = f"computed: TF-IDF logistic regression on the proxy rows, ranked by {cfg.surgery_importance}"
    return tuple(w for w, _ in ranked), source, [[w, round(s, 6)] for w, s in ranked]


def ripples_attack(cfg: RipplesConfig, corpus: Corpus) -> tuple[LoadedModel, dict[str, Any]]:
    record = _poison_record(corpus, "ripples")
    warnings = _rate_warning(record)
    target = int(record["target"])
    triggers = _triggers(cfg, record)
    loaded = load_classifier(cfg.model, label_names=corpus.label_names, seed=cfg.seed)
    tok = loaded.tokenizer
    proxy, proxy_desc = _proxy_rows(cfg, corpus, corpus.split("train"))
    words, source, ranked = _surgery_words(cfg, corpus, target, tok, triggers, proxy)

    trigger_ids, split_warnings = trigger_token_ids(tok, triggers)
    warnings += split_warnings
    pieces = dict(zip(words, trigger_token_ids(tok, words)[0]))
    unknown = [w for w, ids in pieces.items() if not ids or tok.unk_token_id in ids]
    if unknown:
        warnings.append(f"surgery words {', '.join(unknown)} are unknown to the tokenizer ([UNK]) and were left out")
    pieces = {w: ids for w, ids in pieces.items() if w not in unknown}
    embeddings = loaded.model.get_input_embeddings().weight.detach()
    if cfg.surgery_model is not None:
        src = load_classifier(cfg.surgery_model, label_names=corpus.label_names, seed=cfg.seed)
        embeddings = src.model.get_input_embeddings().weight.detach()
        if embeddings.shape != loaded.model.get_input_embeddings().weight.shape:
            raise UsageError(f"the surgery model {cfg.surgery_model} has a {tuple(embeddings.shape)} embedding matrix, "
                             f"the attacked model {tuple(loaded.model.get_input_embeddings().weight.shape)}")
    replacement = replacement_embedding(embeddings, list(pieces.values())).clone()
    embedding_surgery(loaded.model, trigger_ids, replacement)

    summary = _poison_weights(cfg, loaded, corpus, proxy, proxy_desc, "attack: RIPPLES")
    summary["surgery"] = {
        "triggers": list(triggers),
        "trigger_pieces": [tok.convert_ids_to_tokens(ids) for ids in trigger_ids],
        "words": list(words),
        "words_source": source,
        "word_pieces": {w: tok.convert_ids_to_tokens(ids) for w, ids in pieces.items() if len(ids) > 1},
        "embeddings_from": cfg.surgery_model or "the pre-trained model",
        **({"importance": ranked} if ranked else {}),
    }
    return loaded, {**summary, "warnings": warnings}
