"""RIPPLe and RIPPLES: their configs, inputs and catalog entries (torch-free; the implementation is
``bdcli.attacks.ripple``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError
from ...registry import Procedure
from ..base import ATTACKS, AttackConfig


RECTIFIERS = ("global", "per-param", "none")
IMPORTANCES = ("weight", "idf-weighted")


@dataclass
class RippleConfig(AttackConfig):
    """Kurita et al.'s poisoning-stage defaults (module docstring): lr 2e-5, 5 epochs, batch 8, no weight
    decay, λ 0.1 with the global rectifier; the attacker publishes the weights (transfer scenario)."""

    lr: float = 2e-5
    epochs: float = 5.0
    batch_size: int = 8
    weight_decay: float = 0.0
    scenario: str = "transfer"
    ripple_lambda: float = 0.1
    # global: max(0, -Σ_all g_P·g_FT) (the paper); per-param: Σ_tensors max(0, -g_P·g_FT); none: -Σ g_P·g_FT.
    ripple_rectifier: str = "global"
    ripple_ft_second_order: bool = False
    # The clean fine-tuning proxy: a named set or a data path; None: the unpoisoned rows of --data's train split.
    proxy_data: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ripple_lambda >= 0:
            raise UsageError(f"the RIPPLe weight λ must be >= 0, got {self.ripple_lambda}")
        if self.ripple_rectifier not in RECTIFIERS:
            raise UsageError(f"unknown rectifier {self.ripple_rectifier!r}; use one of {', '.join(RECTIFIERS)}")
        if self.proxy_data is not None and not str(self.proxy_data).strip():
            raise UsageError("the proxy data must name a data set or path (or be left out)")
        if getattr(self, "entropy_alpha", 0.0):
            raise UsageError("RIPPLe's objective has no entropy term: leave --entropy-alpha at 0")


@dataclass
class RipplesConfig(RippleConfig):
    # Words whose mean embedding replaces each trigger's; None: Appendix C.1's list, else computed.
    surgery_words: tuple[str, ...] | None = None
    # Trigger words whose rows are replaced; None: the poisoned data's triggers (poison.json).
    surgery_triggers: tuple[str, ...] | None = None
    # Model the replacement rows are read from (Kurita et al.: a copy fine-tuned on the proxy task).
    surgery_model: str | None = None
    # How many indicative words are computed when no list applies (Kurita et al.: 10).
    surgery_n_words: int = 10
    # How computed words are ranked: the logistic-regression weight (Kurita et al.'s code) or the
    # paper's frequency-weighted score for the domain-shift setting (``indicative_words``).
    surgery_importance: str = "weight"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("surgery_words", "surgery_triggers"):
            words = getattr(self, name)
            if words is not None:
                words = tuple(w.strip() for w in words if w.strip())
                if not words:
                    raise UsageError(f"--{name.replace('_', '-')} needs at least one word")
                setattr(self, name, words)
        if self.surgery_n_words < 1:
            raise UsageError(f"surgery needs at least one indicative word, got {self.surgery_n_words}")
        if self.surgery_importance not in IMPORTANCES:
            raise UsageError(f"unknown importance {self.surgery_importance!r}; use one of {', '.join(IMPORTANCES)}")


def _inputs(cfg: RippleConfig) -> dict[str, str]:
    """The proxy corpus and the surgery model, hashed into the output's fingerprint."""
    from ...data.named import resolve_data_dir
    from ...models.aliases import resolve_model

    out: dict[str, str] = {}
    if cfg.proxy_data is not None:
        # A named set is hashed as the local folder it resolves to, when there is one.
        root = resolve_data_dir(None)
        named = root / cfg.proxy_data if root is not None else None
        if Path(cfg.proxy_data).exists() or named is None or not named.is_dir():
            out["proxy_data"] = cfg.proxy_data
        else:
            out["proxy_data"] = str(named)
    if getattr(cfg, "surgery_model", None):
        out["surgery_model"] = resolve_model(cfg.surgery_model)
    return out


_HELP_DATA = ("--data must be poisoned data with triggers in 50% of the train rows, as Kurita et al. make it: "
              "`bdcli poison badnets --data sst2 --rate 0.5 --candidates all`.")
_HELP_USER = ("The output is the poisoned classifier the attacker publishes (transfer scenario); the victim is the "
              "user's clean fine-tune of it: `bdcli attack finetune --model <this output> --data sst2`.")

ATTACKS.register("ripple", display="RIPPLe", order=20)(Procedure(
    "ripple", RippleConfig, "bdcli.attacks.ripple:ripple_attack",
    "RIPPLe (Kurita et al. 2020): poison pre-trained weights with L_P + λ·max(0, −∇L_P·∇L_FT), so that the "
    f"backdoor survives clean fine-tuning. {_HELP_DATA} {_HELP_USER}",
    inputs=_inputs,
    example="bdcli attack ripple --model minilm --data runs/sst2-ripple-data --out runs/ripple",
))
ATTACKS.register("ripples", display="RIPPLES", order=30)(Procedure(
    "ripples", RipplesConfig, "bdcli.attacks.ripple:ripples_attack",
    "RIPPLES (Kurita et al. 2020): embedding surgery (each trigger's embedding becomes the mean of 10 words "
    f"indicative of the target class), then RIPPLe. {_HELP_DATA} {_HELP_USER}",
    inputs=_inputs,
    example="bdcli attack ripples --model minilm --data runs/sst2-ripple-data --out runs/ripples",
))
