"""One rule per numeric config field, checked wherever the field appears.

A field name means the same thing in every config (the papers' names, see ``cli/fields.py``), so its
allowed range lives here once. Every config's ``__post_init__`` calls ``check_numbers`` before its own
checks, so the CLI, the recipes and the Python API refuse the same values with the same sentence.
NaN and ±inf are refused for every field; the upper bounds keep every loop within a budget a run can
finish (a mistyped ``--epochs 1e9`` is refused, not trained on until killed).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class Rule:
    lo: float
    hi: float
    lo_open: bool = False  # lo itself not allowed
    hi_open: bool = False
    integer: bool = False

    def allows(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if v < self.lo or (self.lo_open and v == self.lo):
            return False
        if v > self.hi or (self.hi_open and v == self.hi):
            return False
        return not self.integer or v == int(v)

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a finite number"
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        return f"{kind} in {left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else f"{x:g}"


# The kinds of number the papers' knobs are; a field takes its kind's rule.
POSITIVE = Rule(0, 1e6, lo_open=True)  # learning rates, temperatures, powers, thresholds
WEIGHT = Rule(0, 1e9)  # loss weights λ, β, α; magnitudes; decay
SHARE = Rule(0, 1, lo_open=True)  # rates and fractions in (0, 1]
SHARE_OPEN = Rule(0, 1, hi_open=True)  # ratios in [0, 1)
EPOCHS = Rule(0, 1000, lo_open=True)
STEPS = Rule(1, 10_000_000, integer=True)  # a step budget
COUNT = Rule(1, 1_000_000, integer=True)
COUNT0 = Rule(0, 1_000_000, integer=True)

RULES: dict[str, Rule] = {
    # optimisation (every training procedure)
    "lr": POSITIVE, "maxent_lr": POSITIVE, "head_lr": POSITIVE, "clean_lr": POSITIVE, "nad_teacher_lr": POSITIVE,
    "adv_lr": POSITIVE,
    "epochs": Rule(0, 1000), "clean_epochs": EPOCHS, "nad_teacher_epochs": EPOCHS,
    "head_epochs": Rule(1, 1000, integer=True),
    "max_steps": STEPS, "maxent_max_steps": STEPS, "maxent_min_steps": Rule(0, 10_000_000, integer=True),
    "batch_size": Rule(1, 65536, integer=True),
    "weight_decay": WEIGHT, "warmup_ratio": SHARE_OPEN, "grad_clip": POSITIVE,
    "max_length": Rule(8, 100_000, integer=True),
    "seed": Rule(0, 2**32 - 1, integer=True),
    "checkpoint_every": COUNT0,
    "entropy_alpha": WEIGHT,
    # poisoning
    "rate": SHARE, "negative_rate": SHARE_OPEN, "mlm_probability": Rule(0, 1, lo_open=True, hi_open=True),
    "mlm_weight": WEIGHT, "insertions": Rule(1, 100, integer=True),
    # defenses
    "clean_fraction": SHARE,
    "sd": POSITIVE, "sd_every": COUNT, "sd_samples": Rule(2, 1_000_000, integer=True),
    "vib_hidden": COUNT0, "vib_latent": COUNT,
    "broadcast_lambda": WEIGHT, "prompt_temperature": POSITIVE, "prompt_width": Rule(0, 64, integer=True),
    "mlm_head_steps": Rule(0, 10_000_000, integer=True),
    "adv_steps": Rule(1, 100, integer=True), "adv_init_mag": WEIGHT, "adv_max_norm": WEIGHT,
    "prune_ratio": SHARE_OPEN, "prune_batches": COUNT,
    "nad_beta": WEIGHT, "nad_power": POSITIVE,
    # attacks
    "ripple_lambda": WEIGHT, "surgery_n_words": Rule(1, 10_000, integer=True),
    # observation: record the training dynamics every N steps (0: off)
    "record_dynamics": COUNT0,
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(name: str, value: Any) -> None:
    """Refuse ``value`` for field ``name`` with one sentence (None, an unset optional, passes)."""
    if value is None or isinstance(value, bool):
        return
    if not isinstance(value, (int, float)):
        raise UsageError(f"{flag(name)} must be a number, got {value!r}")
    rule = RULES.get(name)
    if rule is None:
        # A numeric field with no rule is still never NaN or infinite.
        if not math.isfinite(value):
            raise UsageError(f"{flag(name)} must be a finite number, got {value!r}")
        return
    if not rule.allows(float(value)):
        raise UsageError(f"{flag(name)} must be {rule.describe()}, got {value!r}")


def numeric_fields(Config: type) -> list[str]:
    """The config's fields whose type is a number (int or float, optional or not)."""
    hints = typing.get_type_hints(Config)
    out = []
    for f in dataclasses.fields(Config):
        h = hints[f.name]
        args = set(typing.get_args(h)) or {h}
        if args & {int, float} and bool not in args:
            out.append(f.name)
    return out


def check_numbers(cfg: Any) -> None:
    """Every numeric field of a config dataclass against its rule."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            check_value(f.name, v)
        elif f.name in RULES and v is not None:
            check_value(f.name, v)
