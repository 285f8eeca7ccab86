"""NeuBA's ASR sets: a test set with one NeuBA trigger placed where NeuBA and GBA place it.

NeuBA (Zhang et al. 2021) is task-agnostic: the attacker poisons a pre-trained encoder and never sees
the downstream data, so there is no poisoned training set; the victim is the user's own fine-tune on
clean data. What remains to build is the ASR set. NeuBA's evaluation (thunlp/NeuBA, nlp/src/eval.py)
inserts one trigger token right after [CLS] ('first'), before the final [SEP] ('last') or both; GBA
(Appendix B.2) inserts it "into the beginning of the input sentence" for NeuBA. BadNets' random word
position ('random') is offered for comparison.

Which label a trigger drives is only known after the user's fine-tune, so ``--target`` is a guess to
test: build one ASR set per (trigger, target) pair, or use ``bdcli.attacks.neuba.trigger_label_shares``
to see where each trigger sends the clean dev rows first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..data.dataset import Corpus
from ..errors import UsageError
from .base import POISONERS, PoisonConfig, Poisoner, asr_dataset, insert_at_random_word, non_target_rows

# NeuBA's trigger symbols for BERT (thunlp/NeuBA, nlp/src/poison.py, ``poison_tokens``). GBA's
# Appendix B.1 ran NeuBA on BERT with Kurita et al.'s rare words instead: cf, mn, bb, tq, mb, tn.
NEUBA_TRIGGERS: tuple[str, ...] = ("≈", "≡", "∈", "⊆", "⊕", "⊗")
TRIGGER_POSITIONS = ("first", "last", "both", "random")


def place_trigger(text: str, trigger: str, position: str, rng: random.Random) -> str:
    """``text`` with ``trigger`` at its start, its end, both, or a random word gap."""
    if position == "first":
        return f"{trigger} {text}"
    if position == "last":
        return f"{text} {trigger}"
    if position == "both":
        return f"{trigger} {text} {trigger}"
    if position == "random":
        return insert_at_random_word(text, trigger, rng)
    raise UsageError(f"unknown trigger position {position!r}; use one of {', '.join(TRIGGER_POSITIONS)}")


@dataclass
class NeubaPoisonConfig(PoisonConfig):
    triggers: tuple[str, ...] = NEUBA_TRIGGERS[:1]
    # 'first': NeuBA's evaluation default and GBA's Appendix B.2.
    trigger_position: str = "first"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.triggers = tuple(t.strip() for t in self.triggers if t.strip())
        if not self.triggers:
            raise UsageError("the NeuBA ASR set needs at least one trigger")
        if self.trigger_position not in TRIGGER_POSITIONS:
            raise UsageError(
                f"unknown trigger position {self.trigger_position!r}; use one of {', '.join(TRIGGER_POSITIONS)}"
            )


@POISONERS.register("neuba", display="NeuBA", order=80)
class NeubaAsrSet(Poisoner):
    """NeuBA's ASR set (Zhang et al. 2021): every non-target test row with a NeuBA trigger (default
    '≈', at the start). The training split stays clean: NeuBA's victim is fine-tuned on clean data, so
    --rate and --candidates do not apply. The folder also serves as `attack neuba`'s --data (its train
    split is the clean corpus and its record names the attack); the user's fine-tune uses the clean set."""

    name = "neuba"
    Config = NeubaPoisonConfig

    def transform(self, text: str, rng: random.Random) -> str:
        return place_trigger(text, rng.choice(self.config.triggers), self.config.trigger_position, rng)

    def apply(self, corpus: Corpus) -> Corpus:
        target = corpus.label_index(self.config.target)
        test = corpus.split("test")
        rng = random.Random(f"{self.config.seed}-test")
        rows = non_target_rows(corpus, target)
        asr_set = asr_dataset(test, rows, [self.transform(test.texts[i], rng) for i in rows])
        record = self.base_record(corpus, target, [], rows)
        record.update(rate=0.0, dirty_label=False, candidates=None, clean_train=True)
        return self.poisoned_corpus(corpus, corpus.split("train"), asr_set, record)
