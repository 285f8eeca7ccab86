"""``bdcli evaluate --geometry`` (the maximum-entropy paper's Figure 1 and Figures 2-4 at one point) and
``bdcli evaluate --trigger-rmse`` (GBA's Figure 3)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from ..errors import BdcliError, UsageError
from ..metrics.geometry import GEOMETRY_GROUPS
from .dynamics import measure, pick_probes

GEOMETRY_ROWS = 500  # rows per group: enough for a t-SNE, quick on CPU


def write_geometry(loaded, test, poison, target: int | None, cfg: Any, folder: Path) -> list[str]:
    """geometry.json (centroid distances, within-group variances, ACC, ASR on the probes) and
    representations.safetensors (``features`` [n, d] float32, ``group`` [n] int64: 0 clean target,
    1 clean non-target, 2 poisoned) in ``folder``; returns notes for the summary."""
    probes = pick_probes(test, poison, target, n=GEOMETRY_ROWS, seed=cfg.seed, what="--geometry")
    m = measure(loaded.model, loaded.tokenizer, probes, rep="cls", max_length=cfg.max_length,
                precision=cfg.precision, batch_size=cfg.batch_size)
    reps = m.pop("_reps")
    record = {"representation": "cls", "target": probes.target,
              "n": {g: (len(reps[g]) if reps[g] is not None else 0) for g in GEOMETRY_GROUPS},
              **m, "notes": probes.notes}
    (folder / "geometry.json").write_text(json.dumps(record, indent=2) + "\n")
    feats = [reps[g] for g in GEOMETRY_GROUPS if reps[g] is not None]
    groups = [torch.full((len(reps[g]),), i, dtype=torch.int64) for i, g in enumerate(GEOMETRY_GROUPS)
              if reps[g] is not None]
    save_file({"features": torch.cat(feats).float().contiguous(), "group": torch.cat(groups)},
              str(folder / "representations.safetensors"))
    return probes.notes


def embedding_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared difference between two embedding vectors."""
    return math.sqrt(float(((a.double() - b.double()) ** 2).mean()))


def token_id(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise UsageError(f"{word!r} is not one vocabulary token of this model's tokenizer "
                         f"(it splits into {len(ids)}); give single-token words")
    return int(ids[0])


def trigger_rmse(embeddings: torch.Tensor, tokenizer, triggers: Sequence[str], class_tokens: Sequence[str]) -> dict:
    """{trigger: {class token: RMSE between their word embeddings}} (GBA Figure 3)."""
    cls_ids = {c: token_id(tokenizer, c) for c in class_tokens}
    return {t: {c: embedding_rmse(embeddings[token_id(tokenizer, t)], embeddings[i]) for c, i in cls_ids.items()}
            for t in triggers}


def class_tokens_of(model, label_names: list[str]) -> list[str]:
    """A prompt model's own class tokens (GBA's verbalizer), else GBA's Table 1 words for the labels."""
    if getattr(model, "class_tokens", None):
        return list(model.class_tokens)
    from ..defenses.gba import default_class_tokens

    return list(default_class_tokens(label_names))


def write_trigger_rmse(loaded, triggers: Sequence[str], provenance: dict[str, Any], folder: Path, seed: int,
                       class_tokens: Sequence[str] | None = None) -> list[str]:
    """trigger_rmse.json: the evaluated model's RMSEs (``triggers`` and ``after``) and, when its
    provenance names the victim a defense started from and that folder is on disk, the victim's
    (``before``)."""
    from ..models import load_classifier

    tokens = list(class_tokens) if class_tokens else class_tokens_of(loaded.model, loaded.label_names)
    if len(tokens) != len(loaded.label_names):
        raise UsageError(f"give one class token per label: {len(tokens)} for the labels {loaded.label_names}")
    after = trigger_rmse(loaded.model.get_input_embeddings().weight.detach(), loaded.tokenizer, triggers, tokens)
    record: dict[str, Any] = {"class_tokens": tokens, "triggers": after, "after": after, "before": None,
                              "victim": provenance.get("victim")}
    notes = []
    victim = provenance.get("victim")
    if victim and Path(victim).is_dir():
        v = load_classifier(victim, label_names=loaded.label_names, seed=seed)
        record["before"] = trigger_rmse(v.model.get_input_embeddings().weight.detach(), v.tokenizer, triggers, tokens)
    else:
        notes.append("--trigger-rmse: the model's provenance names no victim on disk, so there is no 'before'")
    if any(not math.isfinite(x) for d in after.values() for x in d.values()):
        raise BdcliError("a trigger RMSE is not a finite number: the model's embeddings are broken")
    (folder / "trigger_rmse.json").write_text(json.dumps(record, indent=2) + "\n")
    return notes
