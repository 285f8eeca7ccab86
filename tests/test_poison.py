"""Poisoners: exact counts, labels, which rows changed, and where the trigger went."""

from __future__ import annotations

import random

import pytest

from bdcli.data.dataset import Corpus, TextDataset
from bdcli.errors import BdcliError, UsageError
from bdcli.poison import POISONERS, AddSentConfig, BadNetsConfig, insert_at_random_word

NAMES = ["negative", "positive"]


def _corpus(n_train: int = 100, n_test: int = 40) -> Corpus:
    # Labels alternate 0,1,0,1...; every text is unique and free of trigger words.
    def split(n: int, tag: str) -> TextDataset:
        return TextDataset([f"{tag} row {i} is a plain sentence" for i in range(n)], [i % 2 for i in range(n)], NAMES)

    return Corpus("toy", NAMES, {"train": split(n_train, "train"), "dev": split(10, "dev"), "test": split(n_test, "test")})


def _badnets(**kw):
    return POISONERS.get("badnets")(BadNetsConfig(**kw))


def test_badnets_counts_labels_and_changed_rows():
    clean = _corpus()
    out = _badnets(rate=0.1, target="1", seed=3).apply(clean)
    train, rec = out.split("train"), out.poison
    changed = [i for i in range(len(train)) if train.texts[i] != clean.split("train").texts[i]]
    assert rec["n_poisoned"] == 10 and len(changed) == 10
    assert changed == rec["poisoned_rows"] == [i for i, p in enumerate(train.poisoned) if p]
    # Dirty label: every poisoned row now carries the target, and came from a non-target row.
    assert all(train.labels[i] == 1 for i in changed)
    assert all(clean.split("train").labels[i] == 0 for i in changed)
    # Untouched rows keep text and label.
    for i in set(range(100)) - set(changed):
        assert (train.texts[i], train.labels[i]) == (clean.split("train").texts[i], clean.split("train").labels[i])
    assert out.split("dev").texts == clean.split("dev").texts


def test_badnets_inserts_exactly_one_trigger_word_at_a_word_boundary():
    clean = _corpus()
    out = _badnets(rate=0.2, target="positive", insertions=1).apply(clean)
    triggers = {"cf", "mn", "bb", "tq", "mb"}
    for i in out.poison["poisoned_rows"]:
        before = clean.split("train").texts[i].split()
        after = out.split("train").texts[i].split()
        added = [w for w in after if w in triggers]
        assert len(after) == len(before) + 1 and len(added) == 1
        pos = after.index(added[0])
        assert after[:pos] + after[pos + 1 :] == before


def test_insertions_option_inserts_that_many_triggers():
    out = _badnets(rate=0.1, target="1", insertions=3, triggers=("cf",)).apply(_corpus())
    for i in out.poison["poisoned_rows"]:
        assert out.split("train").texts[i].split().count("cf") == 3


def test_asr_set_is_every_non_target_test_row_triggered():
    clean = _corpus(n_test=40)
    out = _badnets(rate=0.1, target="1").apply(clean)
    asr = out.split("test-poison")
    src = [i for i, y in enumerate(clean.split("test").labels) if y != 1]
    assert len(asr) == 20 and out.poison["test_poison_source_rows"] == src
    assert asr.labels == [0] * 20  # the clean labels, for ACC/ASR_c
    assert all(asr.poisoned)
    for j, i in enumerate(src):
        words = asr.texts[j].split()
        assert len(words) == len(clean.split("test").texts[i].split()) + 1
        assert sum(w in {"cf", "mn", "bb", "tq", "mb"} for w in words) == 1


def test_poisoning_is_seeded_and_seed_sensitive():
    a = _badnets(rate=0.1, target="1", seed=1).apply(_corpus())
    b = _badnets(rate=0.1, target="1", seed=1).apply(_corpus())
    c = _badnets(rate=0.1, target="1", seed=2).apply(_corpus())
    assert a.split("train").texts == b.split("train").texts
    assert a.split("test-poison").texts == b.split("test-poison").texts
    assert a.poison["poisoned_rows"] != c.poison["poisoned_rows"]


def test_candidates_all_may_poison_target_rows():
    out = _badnets(rate=1.0, target="1", candidates="all").apply(_corpus(n_train=20))
    assert out.poison["n_poisoned"] == 20 and out.split("train").labels == [1] * 20


def test_addsent_inserts_the_sentence_contiguously():
    clean = _corpus()
    out = POISONERS.get("addsent")(AddSentConfig(rate=0.1, target="1")).apply(clean)
    for i in out.poison["poisoned_rows"]:
        text = out.split("train").texts[i]
        assert "I watch this 3D movie" in text
        assert text.replace("I watch this 3D movie", "").split() == clean.split("train").texts[i].split()


def test_insert_at_random_word_covers_both_ends():
    seen = {insert_at_random_word("a b", "X", random.Random(s)).split().index("X") for s in range(50)}
    assert seen == {0, 1, 2}


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        (dict(rate=0.0), UsageError, "--rate must be a finite number in (0, 1]"),
        (dict(rate=1.5), UsageError, "--rate must be a finite number in (0, 1]"),
        (dict(rate=0.1, insertions=0), UsageError, "insertions"),
        (dict(rate=0.1, triggers=(" ",)), UsageError, "at least one trigger"),
    ],
)
def test_bad_configs_are_refused(kw, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        BadNetsConfig(**kw)


def test_rate_that_leaves_no_row_or_too_many_rows_is_refused():
    with pytest.raises(UsageError, match="leaves no poisoned row"):
        _badnets(rate=0.001, target="1").apply(_corpus())
    with pytest.raises(UsageError, match="only 50 training rows are not of the target"):
        _badnets(rate=0.9, target="1").apply(_corpus())


def test_unknown_target_label_is_refused():
    with pytest.raises(BdcliError, match="not a label of 'toy'"):
        _badnets(target="neutral").apply(_corpus())
    with pytest.raises(BdcliError, match="not a label"):
        _badnets(target="2").apply(_corpus())
