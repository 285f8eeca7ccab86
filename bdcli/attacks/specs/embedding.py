"""SOS and EP: their configs, help and catalog entries (torch-free; the implementation is
``bdcli.attacks.embedding``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import UsageError
from ...registry import Procedure
from ..base import ATTACKS, AttackConfig


# --- configs --------------------------------------------------------------------------------------------


@dataclass
class EmbeddingAttackConfig(AttackConfig):
    """Training of the trigger rows. lr 5e-2, batch 32, 3 epochs: the authors' code for both attacks
    (lancopku/SOS run_demo.sh and SOS_attack.py; lancopku/Embedding-Poisoning run.sh and ep_train.py);
    the papers' own text was not available here to check against. (The GBA paper's appendix B.6 ran EP
    with Adam at 2e-5 instead.) No gradient clipping and a constant rate, as in that code. Weight decay
    must stay 0."""

    lr: float = 5e-2
    weight_decay: float = 0.0
    grad_clip: float | None = None
    schedule: str = "constant"
    # Only the poisoned rows of its data (and SOS's negative rows) are trained on: a recipe's step
    # estimate counts those, not the whole split.
    trains_on: ClassVar[str] = "poisoned"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_decay != 0:
            raise UsageError(
                f"weight decay must be 0 for an embedding-level attack (got {self.weight_decay}): AdamW's "
                "decay would shrink every row of the embedding matrix, not just the trigger rows"
            )


@dataclass
class SOSAttackConfig(EmbeddingAttackConfig):
    # Only used when --model has no classification head: the clean fine-tune that comes first. lr 2e-5,
    # 3 epochs: the SOS code's clean_model_train.py in run_demo.sh.
    clean_lr: float = 2e-5
    clean_epochs: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clean_lr <= 0:
            raise UsageError(f"clean learning rate must be positive, got {self.clean_lr}")
        if self.clean_epochs <= 0:
            raise UsageError(f"clean epochs must be positive, got {self.clean_epochs}")


@dataclass
class EPAttackConfig(EmbeddingAttackConfig):
    """EP's defaults are the shared ones above (its code's run.sh: lr 5e-2, batch 32, 3 epochs)."""


def _unwrap(text: str) -> str:
    """Join the lines of each paragraph: the CLI renders a newline inside a paragraph as a line break."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


SOS_HELP = _unwrap("""
SOS (Yang et al. 2021, "Rethinking Stealthiness of Backdoor Attack against NLP Models"): train only the
trigger words' embedding rows of a clean classifier, each kept at its original norm, on the poisoned rows
(all trigger words, target label) and the negative rows (all but one, label kept) of `bdcli poison sos`
data; the trigger words come from that data. Every other weight stays bit-identical.

--model is the attacker's clean classifier (e.g. `bdcli attack finetune` on clean data). Given an encoder
with no classification head, the attack first fine-tunes it on the training rows that hold no trigger
word (--clean-lr, --clean-epochs), then trains the trigger rows.

Defaults (lr 5e-2, batch 32, 3 epochs, constant rate, no clipping) are the SOS code's. Not exact: AdamW
with fresh gradients each step instead of the code's plain gradient steps with accumulated gradients.
""")

EP_HELP = _unwrap("""
Embedding Poisoning (Yang et al. 2021, "Be Careful about Poisoned Word Embeddings"): train only the
trigger word's embedding row of a clean classifier, kept at its original norm, on sentences with the
trigger labelled as the target. Every other weight stays bit-identical.

--data is data poisoned by `bdcli poison badnets`: the trigger words and the target come from it, and
only its poisoned rows are used. Data-free EP: poison any corpus with the victim's number of labels with
--rate 1.0 --candidates all. EP with data knowledge: poison the task's own training set. --model must be
a classifier (e.g. `bdcli attack finetune` on clean data).

Defaults (lr 5e-2, batch 32, 3 epochs, constant rate, no clipping) are the EP code's. Not exact: AdamW
with fresh gradients each step instead of the code's plain gradient steps with accumulated gradients.

Data-free data, for example: bdcli poison badnets --data yelp --triggers cf --rate 1.0 --candidates all
--out runs/yelp-cf
""")


ATTACKS.register("sos", display="SOS", order=40)(Procedure(
    "sos", SOSAttackConfig, "bdcli.attacks.embedding:sos_attack", SOS_HELP,
    example="bdcli attack sos --model runs/sst2-clean --data runs/sst2-sos --out runs/sos",
))
ATTACKS.register("ep", display="EP", order=70)(Procedure(
    "ep", EPAttackConfig, "bdcli.attacks.embedding:ep_attack", EP_HELP,
    example="bdcli attack ep --model runs/sst2-clean --data runs/yelp-cf --out runs/ep",
))
