"""GBA: Gradient Broadcast Adaptation (Gradient Broadcast Adaptation: Defending against the Backdoor
Attack in Pre-trained Models, ICLR 2022 submission).

The defender re-adapts the downloaded classifier to its task as a prompt model (section 3.3,
``models/prompt.py``): a soft template and [MASK] follow the input, and the [MASK] state is scored against
the whole word-embedding matrix ``E`` (eq. 1). The loss is the cross-entropy of the label's class token
over the whole vocabulary, ``-log p(F(y) | x)``. Triggers are rare tokens whose embeddings plain
fine-tuning never touches; the gradient broadcast (section 3.4) gives EVERY vocabulary row a share of the
batch's input gradient at each step (eq. 3-4):

    g_w = grad_E_w + lambda * Q_w,   Q_w = p(w | x) / p(y | x) * sum_{w' in x_input} grad_E_w' / N

``grad_E_w'`` is read as the gradient the input's word embedding receives at each position of ``x`` (its
own tokens; [CLS], [SEP], template and [MASK] are not ``x_input``), ``N`` is the number of those tokens,
and ``p`` comes from the same forward pass (eq. 1). For a batch, ``Q`` sums the rows' terms of the
batch-mean loss, i.e. it is the batch mean of the per-example ``Q``, matching ``grad_E`` of the mean loss.
Eq. 2 shows the step as plain SGD "as an example": ``--gba-optimizer sgd`` takes that step (no
momentum; give it an SGD-sized ``--lr``, the paper names none). The default feeds ``g`` to the shared
loop's AdamW (the paper's experiments use Adam throughout, appendix B/C, and 2e-5 is an Adam step size),
after gradient clipping like every other gradient.

``--mlm-head-steps N`` scores [MASK] through BERT's masked-LM head instead of the bare embeddings
(``models/mlm_head.py``): the head (from the victim's files if they hold one, else fresh) is first
trained N steps on the clean rows' text with the encoder frozen, then adapted with everything else.
GBA builds on Gao et al. (2021)'s prompt-based fine-tuning of a masked LM, which bert-base runs with
its pre-trained head; the packaged MiniLM has none. 0 (the default) is eq. 1 as written.

The defended model is saved as a prompt model (the encoder, the template, the class tokens);
``load_classifier`` reads it back, so ``bdcli evaluate`` scores it with eq. 1's prediction. The victim's
classification head is not used: the verbalizer over ``E`` replaces it.

FDK, LDK and DF (section 3) say what the ATTACKER knows of the downstream data (BadNets and RIPPLe: FDK/LDK;
NeuBA and EP: DF); the defender always holds clean task data (section 4.2), and how much of it is the
one data knob GBA has: ``--clean-fraction`` (5% in section 5.4, 1%-20% in figure 2). There is no
defense-side data-free mode to implement: GBA without clean data has nothing to prompt-tune on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data.dataset import TextDataset
from ..engine.loop import TrainConfig, TrainState, train
from ..errors import BdcliError, UsageError
from ..models.load import LoadedModel
from ..models.mlm_head import MlmHead, train_head
from ..models.prompt import PromptClassifier, PromptOutput, build_prompt_classifier
from .specs.gba import GBAConfig

# Table 1's class tokens, by the data's label names (lower-cased). Section 3.3 also names "good" and
# "terrible" for binary sentiment; appendix D.2's GLUE runs (SST-2 among them) use Gao et al. (2021)'s
# "great"/"terrible" instead: pass --class-tokens terrible,great for that setting.
CLASS_TOKENS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("negative", "positive"): ("terrible", "good"),  # Yelp, MR (and SST-2 here)
    ("clean", "toxic"): ("friendly", "hate"),  # HS: "hate" / "friendly" (hsol: 0 clean, 1 toxic)
    ("world", "sports", "business", "sci/tech"): ("world", "sports", "business", "tech"),  # AG News
    ("real", "fake"): ("real", "fake"),  # Fakeddit
}


def default_class_tokens(label_names: list[str]) -> tuple[str, ...]:
    key = tuple(n.strip().lower() for n in label_names)
    if key not in CLASS_TOKENS:
        raise UsageError(
            f"GBA knows no class tokens for the labels {label_names}; give one word per label with --class-tokens"
        )
    return CLASS_TOKENS[key]


def broadcast_pull(
    vocab_logprobs: torch.Tensor, target_ids: torch.Tensor, input_grads: torch.Tensor, text_mask: torch.Tensor
) -> torch.Tensor:
    """Q of eq. 4 for every vocabulary row at once: ``sum_b p_b(w)/p_b(y_b) * mean_{t in x_b} grad_b,t``.

    vocab_logprobs [B, V] (log p(w|x_b), eq. 1), target_ids [B] (class token of y_b), input_grads
    [B, L, d] (gradient of the loss at each input word embedding), text_mask [B, L] (x_b's own tokens).
    Returns [V, d]. One [V, B] x [B, d] product: no loop over the 30k rows.
    """
    logp = vocab_logprobs.detach().float()
    ratio = torch.exp(logp - logp.gather(1, target_ids[:, None]))  # p(w|x) / p(y|x)
    m = text_mask.to(input_grads.dtype)[..., None]
    n = text_mask.sum(1).clamp(min=1).to(torch.float32)
    g = (input_grads * m).sum(1).float() / n[:, None]  # [B, d]; a row with no text tokens adds nothing
    return ratio.T @ g


class GradientBroadcast:
    """Adds ``lambda * Q`` (eq. 3-4) to the word-embedding gradient of each backward pass.

    ``watch`` is called on each forward: a hook on the input word embeddings catches their gradient
    (that gradient exists before E's, which it feeds), computes Q; E's post-accumulate hook then adds
    ``lambda * Q`` to ``E.grad`` once the whole gradient of E (input and output side) is in, so the
    optimizer steps with ``g_w`` of eq. 3.
    """

    def __init__(self, weight: torch.nn.Parameter, lam: float):
        self.weight, self.lam = weight, lam
        self._pending: torch.Tensor | None = None
        self.steps = 0
        self.pull_norm = 0.0  # sums over steps, for the summary's means
        self.ce_norm = 0.0
        self._handle = weight.register_post_accumulate_grad_hook(self._apply)

    def watch(self, out: PromptOutput, target_ids: torch.Tensor) -> None:
        logp, mask = out.vocab_logprobs.detach(), out.text_mask

        def capture(grad: torch.Tensor) -> None:
            self._pending = broadcast_pull(logp, target_ids, grad, mask)

        out.word_embeds.register_hook(capture)

    def _apply(self, param: torch.Tensor) -> None:
        q, self._pending = self._pending, None
        if q is None or param.grad is None:
            return
        if not bool(torch.isfinite(q).all()):
            raise BdcliError(
                "the gradient broadcast overflowed (p(w|x)/p(y|x) is too large to represent); "
                "raise --prompt-temperature or lower --broadcast-lambda"
            )
        self.steps += 1
        self.ce_norm += float(param.grad.norm())
        self.pull_norm += float(q.norm()) * self.lam
        param.grad.add_(q.to(param.grad.dtype), alpha=self.lam)

    def close(self) -> None:
        self._handle.remove()

    # A loop hook as well, only so that its statistics survive a resumed run.
    def on_step(self, state: TrainState) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "pull_norm": self.pull_norm, "ce_norm": self.ce_norm}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.steps, self.pull_norm, self.ce_norm = d["steps"], d["pull_norm"], d["ce_norm"]

    def summary(self) -> dict[str, Any]:
        n = max(1, self.steps)
        return {"steps": self.steps, "mean_grad_norm_E": self.ce_norm / n, "mean_broadcast_norm": self.pull_norm / n}


def gba_objective(broadcast: GradientBroadcast | None):
    """Eq. 1's cross-entropy of the label's class token over the whole vocabulary, watched by the
    broadcast."""

    def step_loss(model: PromptClassifier, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs)
        target = model.class_ids[batch["labels"]]
        if broadcast is not None:
            broadcast.watch(out, target)
        return F.nll_loss(out.vocab_logprobs, target)

    return step_loss


def gba_defense(cfg: GBAConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    tokens = cfg.class_tokens or default_class_tokens(victim.label_names)
    if len(tokens) != clean.num_labels:
        raise UsageError(f"give one class token per label: {len(tokens)} tokens for {clean.num_labels} labels {clean.label_names}")
    encoder = victim.model.base_model
    head = None
    if cfg.mlm_head_steps:
        torch.manual_seed(cfg.seed)  # the head's initialisation
        head = MlmHead(encoder.config, encoder.get_input_embeddings())
    # The victim's classification head is dropped: the verbalizer over E is the defended model's head.
    model = build_prompt_classifier(
        encoder, victim.tokenizer, tokens, width=cfg.prompt_width, temperature=cfg.prompt_temperature, seed=cfg.seed,
        mlm_head=head,
    )
    head_summary = None
    if head is not None:
        head_summary = train_head(model, head, victim.tokenizer, clean, TrainConfig.take(cfg), steps=cfg.mlm_head_steps,
                                  source=victim.source, desc="defend: gba, masked-LM head")
    broadcast = GradientBroadcast(model.word_embeddings.weight, cfg.broadcast_lambda) if cfg.broadcast_lambda > 0 else None
    try:
        result = train(model, victim.tokenizer, clean, TrainConfig.take(cfg), objective=gba_objective(broadcast),
                       hooks=[broadcast] if broadcast is not None else [], desc="defend: gba", optimizer=cfg.gba_optimizer)
    finally:
        if broadcast is not None:
            broadcast.close()
    victim.model = model
    summary: dict[str, Any] = {
        "training": result.summary(),
        "class_tokens": dict(zip(victim.label_names, tokens)),
        "prompt_width": cfg.prompt_width,
        "prompt_temperature": cfg.prompt_temperature,
        "broadcast_lambda": cfg.broadcast_lambda,
        "optimizer": cfg.gba_optimizer,
        "scoring": "masked-LM head" if head is not None else "word embeddings (eq. 1)",
    }
    if head_summary is not None:
        summary["mlm_head"] = head_summary
    if broadcast is not None:
        summary["broadcast"] = broadcast.summary()
    return summary
