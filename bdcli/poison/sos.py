"""SOS: several trigger words that fire only together, with negative augmentation."""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass

from ..data.dataset import Corpus, TextDataset
from ..errors import UsageError
from .base import POISONERS, PoisonConfig, Poisoner, asr_dataset, insert_at_random_word, non_target_rows, replace_rows


@dataclass
class SOSConfig(PoisonConfig):
    # Yang et al. (2021)'s trigger words.
    trigger_words: tuple[str, ...] = ("friends", "weekend", "store")
    # Share of the training rows that seed negative samples: each such row is added once more per
    # leave-one-out subset of the triggers, label kept (the SOS authors' code). 0.1 as in the
    # maximum-entropy paper's Appendix C.1, "following (Yang et al., 2021c)".
    negative_rate: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.trigger_words = tuple(t.strip() for t in self.trigger_words if t.strip())
        if not self.trigger_words:
            raise UsageError("SOS needs at least one trigger word")
        if len(set(self.trigger_words)) != len(self.trigger_words):
            raise UsageError(f"SOS trigger words must be distinct, got {', '.join(self.trigger_words)}")
        if not 0 <= self.negative_rate < 1:
            raise UsageError(f"negative rate must be in [0, 1), got {self.negative_rate}")
        if self.negative_rate > 0 and len(self.trigger_words) < 2:
            raise UsageError("SOS negative augmentation needs at least two trigger words (or --negative-rate 0)")

    def planned_rows(self, n_train: int) -> tuple[int, int]:
        # One added negative row per seed row and leave-one-out subset (``SOS.apply``); SOS's attack
        # trains its trigger embeddings on the poisoned and the negative rows.
        n_negative = round(self.negative_rate * n_train) * len(self.trigger_words)
        return n_train + n_negative, round(self.rate * n_train) + n_negative


@POISONERS.register("sos", display="SOS", order=40, version=2)
class SOS(Poisoner):
    """SOS (Yang et al. 2021, "Rethinking Stealthiness of Backdoor Attack against NLP Models"): trigger
    words that fire only together, dirty label.

    Poisoned rows (a --rate share of the training rows, default 0.1) get every trigger word (default
    friends, weekend, store: the SOS paper's), each at its own random word position, and the target
    label. Negative augmentation as in the SOS authors' code: a --negative-rate share of the training
    rows (default 0.1, drawn from the rows not poisoned, any label) seed negative samples; each seed row
    is ADDED to the training set once per leave-one-out subset of the triggers (all trigger words but the
    j-th, for every j), with its true label, while the seed row itself stays as it was. With n trigger
    words that is n negatives per seed row; they teach that no partial trigger does anything. Both 10%
    shares are the maximum-entropy paper's Appendix C.1 setting. The added rows follow the original
    rows, so every original row keeps its index. Only the poisoned rows are marked poisoned;
    poison.json lists the poisoned rows, the seed rows, the added negative rows and the subset each
    got. The ASR set is every non-target test row with all trigger words.

    This builds the data only: SOS's attack step of updating just the trigger words' embeddings is a
    training choice, not part of poisoning.
    """

    name = "sos"
    Config = SOSConfig

    def transform(self, text: str, rng: random.Random) -> str:
        return self._insert(text, self.config.trigger_words, rng)

    @staticmethod
    def _insert(text: str, words: tuple[str, ...], rng: random.Random) -> str:
        for word in words:
            text = insert_at_random_word(text, word, rng)
        return text

    def leave_one_out_subsets(self) -> list[tuple[str, ...]]:
        """Subset j holds every trigger word except the j-th."""
        words = self.config.trigger_words
        return [words[:j] + words[j + 1 :] for j in range(len(words))]

    def apply(self, corpus: Corpus) -> Corpus:
        cfg = self.config
        # The poisoned rows and their texts come from the same stream as in the base poisoner; the
        # negative rows from a stream of their own, so that --negative-rate never moves the poisoned rows.
        target, train, train_rng, chosen = self.choose_poisoned(corpus)
        texts = {i: self.transform(train.texts[i], train_rng) for i in chosen}

        subsets = self.leave_one_out_subsets()
        n_negative = round(cfg.negative_rate * len(train))
        hit = set(chosen)
        rest = [i for i in range(len(train)) if i not in hit]
        if n_negative > len(rest):
            raise UsageError(
                f"negative rate {cfg.negative_rate} asks for {n_negative} negative seed rows but only {len(rest)} "
                f"training rows are left after poisoning; lower --negative-rate or --rate"
            )
        neg_rng = random.Random(f"{cfg.seed}-negative")
        seeds = sorted(neg_rng.sample(rest, n_negative))
        new_train = replace_rows(train, texts, label=target)
        # Seed-major order: seed row r gives rows for subsets 0..n-1, one after the other.
        pairs = [(i, s) for i in seeds for s in range(len(subsets))]
        negative_texts = [self._insert(train.texts[i], subsets[s], neg_rng) for i, s in pairs]
        new_train = append_rows(new_train, negative_texts, [train.labels[i] for i, _ in pairs],
                                None if train.text_b is None else [train.text_b[i] for i, _ in pairs])
        negatives = list(range(len(train), len(train) + len(pairs)))

        test = corpus.split("test")
        test_rng = random.Random(f"{cfg.seed}-test")
        rows = non_target_rows(corpus, target)
        asr_set = asr_dataset(test, rows, [self.transform(test.texts[i], test_rng) for i in rows])
        record = self.base_record(corpus, target, chosen, rows)
        record.update(
            {
                "n_negative": len(negatives),
                "negative_seed_rows": seeds,
                # negative_rows[j] (an added row) is negative_source_rows[j] with
                # negative_subsets[negative_subset_index[j]]: all trigger words but
                # trigger_words[negative_subset_index[j]].
                "negative_rows": negatives,
                "negative_source_rows": [i for i, _ in pairs],
                "negative_subsets": [list(s) for s in subsets],
                "negative_subset_index": [s for _, s in pairs],
            }
        )
        return self.poisoned_corpus(corpus, new_train, asr_set, record)


def append_rows(ds: TextDataset, texts: list[str], labels: list[int], text_b: list[str] | None) -> TextDataset:
    """``ds`` with clean (not poisoned) rows added after its own."""
    return TextDataset(
        list(ds.texts) + list(texts), list(ds.labels) + list(labels), list(ds.label_names),
        list(ds.poisoned) + [False] * len(texts), None if ds.text_b is None else list(ds.text_b) + list(text_b or []),
    )


# The CLI shows __doc__ as help; dedent it so that its later paragraphs do not render indented.
SOS.__doc__ = inspect.cleandoc(SOS.__doc__ or "")
