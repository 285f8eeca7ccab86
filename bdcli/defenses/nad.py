"""NAD and NAD-C: Neural Attention Distillation (Li et al., ICLR 2021) as the GBA paper adapts it to
transformers (Gradient Broadcast Adaptation, Appendix C).

Stage 1 fine-tunes a copy of the backdoored model on clean data with cross-entropy: the teacher.
Stage 2 trains the student with cross-entropy plus beta times the attention-distillation loss between
its attention maps and the frozen teacher's, summed over the chosen layers. NAD's student is the
backdoored model itself; NAD-C's is a clean pre-trained checkpoint given a fresh head (the GBA paper's
"upper bound of NAD"), which learns the task from the backdoored teacher.

The attention map. NAD's operator for a CNN activation a of C channels is A = sum_c |a_c|^p, a spatial
map that is L2-normalised before two maps are compared. GBA distils "the hidden states of the teacher
model" layer by layer and says no more, so here the activation of layer l is its output hidden state
h in [batch, tokens, dim] (``hidden_states[l]`` of a Hugging Face model: 0 is the embedding output,
l = 1..L the outputs of the L transformer layers), the hidden dimension plays the channels, and the map
is per token: A_t = sum_d |h_{t,d}|^p, with padding tokens set to 0, then divided by its L2 norm over
the tokens (+1e-6, as NAD's code). Self-attention probabilities are not used.

A property of this map worth knowing: a post-LN layer (BERT's) ends in LayerNorm, so with p = 2 a token's
sum_d h_d^2 = sum_d (g_d z_d + b_d)^2 with z standardised over d. The map differs between tokens only
through the learned gain g and bias b; with g = 1, b = 0 (a fresh LayerNorm) it is exactly uniform and
the distillation term has no gradient. Pre-trained checkpoints have non-trivial g and b, so the term is
live there, but it carries less per-token signal than NAD's CNN maps do.

The distance. NAD's paper writes the L2 norm of the difference of the normalised maps; NAD's released
code (at.py) takes their mean squared difference, and it is on that scale that its beta = 5000 and
GBA's beta grid {1000, 2000, 5000} were set. ``nad_distance`` picks "mse" (default: mean over the real
tokens of the batch) or "l2" (mean over rows of the per-row L2 norm).

Over layers (``nad_layer_reduce``): NAD's code distils three CNN groups, each with its own beta; GBA
distils every transformer layer. Summing L layers multiplies beta by L (6 for MiniLM, 12 for bert-base),
so the default is their MEAN: beta then weighs one layer's distance whatever the depth. ``sum`` is the
literal reading. The summary records, for the first batch, the gradient norms of the CE term and of the
beta-weighted distillation term over the student's weights, so a drowned CE gradient shows.

Data (GBA appendix C): "we let NAD access the whole clean training dataset", so NAD and NAD-C default to
``--clean-fraction 1.0`` in every scenario (a fresh NAD-C student must learn the task from it).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ..data.dataset import TextDataset
from ..engine.batching import collate, encode
from ..engine.device import resolve_device
from ..engine.loop import TrainConfig, train
from ..engine.objectives import cross_entropy, prediction_entropy
from ..errors import BdcliError, UsageError
from ..models.load import LoadedModel, load_classifier
from .specs.nad import DISTANCES, NADCConfig, NADConfig

EPS = 1e-6  # NAD's at.py: the map is divided by (norm + 1e-6)


def attention_map(hidden: torch.Tensor, mask: torch.Tensor | None, p: float) -> torch.Tensor:
    """NAD's attention map of a [batch, tokens, dim] hidden state: [batch, tokens], each row
    sum_d |h_{t,d}|^p over the hidden dimension, padding zeroed, L2-normalised over the tokens."""
    a = hidden.float().abs().pow(p).sum(dim=-1)
    if mask is not None:
        a = a * mask.to(a.dtype)
    return a / (a.norm(dim=-1, keepdim=True) + EPS)


def nad_distance(a_student: torch.Tensor, a_teacher: torch.Tensor, mask: torch.Tensor | None, kind: str) -> torch.Tensor:
    """Distance of two batches of normalised maps: "mse", the mean squared difference over the real
    tokens (NAD's code), or "l2", the mean over rows of the L2 norm of the difference (NAD's paper)."""
    diff = a_student - a_teacher
    if kind == "l2":
        return diff.norm(dim=-1).mean()
    if kind == "mse":
        sq = diff.pow(2)
        if mask is None:
            return sq.mean()
        m = mask.to(sq.dtype)
        return (sq * m).sum() / m.sum()
    raise UsageError(f"unknown NAD distance {kind!r}; use one of {', '.join(DISTANCES)}")


def hidden_states(model: torch.nn.Module, inputs: dict[str, torch.Tensor], what: str):
    """The model's output with per-layer hidden states, or a clear error for an architecture that
    does not return them as one [batch, tokens, dim] tensor per layer."""
    out = model(**inputs, output_hidden_states=True)
    hs = getattr(out, "hidden_states", None)
    if not hs or not all(isinstance(h, torch.Tensor) and h.dim() == 3 for h in hs):
        raise BdcliError(
            f"{what} ({type(model).__name__}) does not return per-layer hidden states; NAD distils them, "
            "so it needs an encoder or decoder classifier that supports output_hidden_states"
        )
    return out


class DistillObjective:
    """Stage 2's loss, a train() objective: CE(student) + beta * sum over layers of the distance of the
    student's attention maps to the frozen teacher's on the same batch."""

    def __init__(self, teacher: torch.nn.Module, layers: list[int], beta: float, p: float, distance: str,
                 entropy_alpha: float = 0.0, reduce: str = "mean"):
        self.teacher, self.layers, self.beta, self.p, self.distance = teacher, layers, beta, p, distance
        self.entropy_alpha, self.reduce = entropy_alpha, reduce
        self.last_ce = float("nan")
        self.last_distill = float("nan")
        # Gradient norms of CE and of beta * distillation on the first batch (None until measured).
        self.first_grads: dict[str, float] | None = None

    def distill(self, student_hs, teacher_hs, mask: torch.Tensor) -> torch.Tensor:
        terms = torch.stack([
            nad_distance(attention_map(student_hs[i], mask, self.p), attention_map(teacher_hs[i], mask, self.p), mask, self.distance)
            for i in self.layers
        ])
        return terms.mean() if self.reduce == "mean" else terms.sum()

    def _measure(self, model: torch.nn.Module, ce: torch.Tensor, at: torch.Tensor) -> None:
        params = [p for p in model.parameters() if p.requires_grad]

        def norm(t: torch.Tensor) -> float:
            gs = torch.autograd.grad(t, params, retain_graph=True, allow_unused=True)
            return float(torch.sqrt(sum((g.float() ** 2).sum() for g in gs if g is not None)))

        g_ce, g_at = norm(ce), norm(self.beta * at) if self.beta else 0.0
        self.first_grads = {"ce_grad_norm": g_ce, "distill_grad_norm": g_at,
                            "ratio": g_at / g_ce if g_ce > 0 else float("inf")}

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = hidden_states(model, inputs, "the student")
        with torch.no_grad():
            t_out = hidden_states(self.teacher, inputs, "the teacher")
        ce = cross_entropy(out.logits, batch["labels"])
        if self.entropy_alpha:
            ce = ce - self.entropy_alpha * prediction_entropy(out.logits).mean()
        at = self.distill(out.hidden_states, t_out.hidden_states, batch["attention_mask"])
        if self.first_grads is None:
            self._measure(model, ce, at)
        self.last_ce, self.last_distill = ce.item(), at.item()
        return ce + self.beta * at


def _probe_depth(model: torch.nn.Module, tokenizer, clean: TextDataset, cfg: NADConfig, what: str) -> int:
    """Transformer layers L of ``model``, from one forward on two clean rows (before any training, so an
    unsupported architecture fails at once)."""
    device = resolve_device(cfg.device)
    model.to(device)
    enc = encode(tokenizer, clean.subset(list(range(min(2, len(clean))))), cfg.max_length)
    batch = collate(enc, list(range(len(enc))), device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = hidden_states(model, {k: v for k, v in batch.items() if k != "labels"}, what)
    finally:
        model.train(was_training)
    return len(out.hidden_states) - 1


def _chosen_layers(cfg: NADConfig, depths: dict[str, int]) -> list[int]:
    layers = cfg.layer_indices()
    if layers is None:
        if len(set(depths.values())) > 1:
            told = ", ".join(f"{k} {v}" for k, v in depths.items())
            raise UsageError(
                f"the student and teacher differ in depth ({told} layers), so layer l of one is not layer l of "
                "the other; give --nad-layers that exist in both"
            )
        return list(range(1, next(iter(depths.values())) + 1))
    depth = min(depths.values())
    bad = [i for i in layers if i > depth]
    if bad:
        raise UsageError(f"NAD layer {bad[0]} does not exist: the model has {depth} layers (choose 0..{depth}; 0 = embeddings)")
    return layers


def _same_tokens(a, b, clean: TextDataset, max_length: int) -> bool:
    probe = clean.subset(list(range(min(64, len(clean)))))
    return len(a) == len(b) and encode(a, probe, max_length).input_ids == encode(b, probe, max_length).input_ids


def _freeze(model: torch.nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None  # the teacher stage's last gradients: dead weight from here on


def nad_defense(cfg: NADConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    return _distil(cfg, victim, clean, student=None)


def nadc_defense(cfg: NADCConfig, victim: LoadedModel, clean: TextDataset) -> dict[str, Any]:
    student = load_classifier(cfg.clean_model, label_names=victim.label_names, seed=cfg.seed)  # type: ignore[arg-type]
    if not _same_tokens(student.tokenizer, victim.tokenizer, clean, cfg.max_length):
        raise BdcliError(
            f"the clean model {cfg.clean_model} tokenises differently from the victim; NAD-C compares their "
            "attention maps token by token, so both need the same tokenizer"
        )
    return _distil(cfg, victim, clean, student=student)


def _distil(cfg: NADConfig, victim: LoadedModel, clean: TextDataset, student: LoadedModel | None) -> dict[str, Any]:
    depths = {"teacher": _probe_depth(victim.model, victim.tokenizer, clean, cfg, "the victim")}
    if student is not None:
        depths["student"] = _probe_depth(student.model, victim.tokenizer, clean, cfg, f"the clean model {cfg.clean_model}")
    layers = _chosen_layers(cfg, depths)

    # NAD: the teacher is a fine-tuned copy and the backdoored model stays the student. NAD-C: the victim
    # itself becomes the teacher and the clean checkpoint the student.
    teacher = victim.model if student is not None else copy.deepcopy(victim.model)
    t_cfg = TrainConfig.take(cfg, lr=cfg.nad_teacher_lr, epochs=cfg.nad_teacher_epochs)
    t_result = train(teacher, victim.tokenizer, clean, t_cfg, desc="defend: NAD teacher (fine-tune)")
    _freeze(teacher)

    s_model = student.model if student is not None else victim.model
    objective = DistillObjective(teacher, layers, cfg.nad_beta, cfg.nad_power, cfg.nad_distance,
                                 getattr(cfg, "entropy_alpha", 0.0), cfg.nad_layer_reduce)
    s_result = train(s_model, victim.tokenizer, clean, TrainConfig.take(cfg), objective=objective,
                     desc="defend: NAD student (CE + beta * attention distillation)")
    if student is not None:
        victim.model, victim.tokenizer = student.model, student.tokenizer

    warnings = []
    if cfg.nad_beta == 0:
        warnings.append("beta = 0: no attention distillation, so the student was plainly fine-tuned on the clean data")
    return {
        "beta": cfg.nad_beta,
        "layers": layers,
        "power": cfg.nad_power,
        "distance": cfg.nad_distance,
        "layer_reduce": cfg.nad_layer_reduce,
        "student_start": cfg.clean_model if student is not None else "the backdoored model",
        "teacher": {"steps": t_result.steps, "training": t_result.summary()},
        "student": {
            "steps": s_result.steps,
            "training": s_result.summary(),
            # The last step's terms (None when the stage was restored from a finished checkpoint).
            "final_ce": None if math.isnan(objective.last_ce) else objective.last_ce,
            "final_distill": None if math.isnan(objective.last_distill) else objective.last_distill,
            "first_batch_grads": objective.first_grads,
        },
        "warnings": warnings,
    }
