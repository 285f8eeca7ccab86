"""Shared options a procedure cannot honour. Every attack and defense takes the shared training options
(``TrainConfig``, ``AttackConfig``, ``DefenseConfig``); where one has no effect on a procedure, setting
it is refused rather than accepted and ignored. tests/test_hostile.py walks the catalog against this."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import UsageError

# (kind, name) -> {field: why the procedure cannot honour it}
NOT_HONOURED: dict[tuple[str, str], dict[str, str]] = {
    ("defense", "gba"): {
        "entropy_alpha": "GBA trains its own prompt objective (eq. 3), which has no entropy term",
    },
}
# Options ignored only under another option's value: (kind, name) -> (switch field, value, ignored fields)
_TRAINING = ("lr", "epochs", "max_steps", "warmup_ratio", "schedule", "weight_decay", "grad_clip", "entropy_alpha")
CONDITIONAL: dict[tuple[str, str], tuple[str, Any, tuple[str, ...]]] = {
    ("defense", "fine-pruning"): ("retrain", False, _TRAINING),
}


def check_honoured(kind: str, name: str, cfg: Any) -> None:
    """Refuse ``cfg`` when it sets, away from its default, an option the procedure would ignore."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    ignored = dict(NOT_HONOURED.get((kind, name), {}))
    switch = CONDITIONAL.get((kind, name))
    if switch is not None and getattr(cfg, switch[0]) == switch[1]:
        flag = "--no-" + switch[0].replace("_", "-") if switch[1] is False else f"--{switch[0]} {switch[1]}"
        ignored.update({f: f"with {flag} nothing is trained" for f in switch[2]})
    for field, why in ignored.items():
        if field in defaults and getattr(cfg, field) != defaults[field]:
            verb = "defend" if kind == "defense" else kind
            raise UsageError(f"{verb} {name} cannot honour --{field.replace('_', '-')}: {why}; leave it unset")
