"""Mechanisms that make the baselines behave as their papers describe (issue 11): BadNets' trigger
position, GBA's ASR_c over every triggered test row, fine-pruning's embeddings and importance modes,
NAD's normalised distillation, GBA's SGD and MLM head."""

from __future__ import annotations

import json

import pytest

from bdcli.data.dataset import Corpus, TextDataset
from bdcli.errors import UsageError
from bdcli.metrics import asr_per_class
from bdcli.poison import POISONERS, BadNetsConfig

from .helpers import bdcli

NAMES = ["negative", "positive"]


def _corpus(n_train: int = 60, n_test: int = 20) -> Corpus:
    def split(n: int, tag: str) -> TextDataset:
        return TextDataset([f"{tag} row {i} is a plain sentence" for i in range(n)], [i % 2 for i in range(n)], NAMES)

    return Corpus("toy", NAMES, {"train": split(n_train, "train"), "dev": split(6, "dev"), "test": split(n_test, "test")})


# --- BadNets' position, GBA's ASR_c -------------------------------------------------------------------
def test_badnets_start_position_puts_the_trigger_first_in_train_and_test_rows():
    clean = _corpus()
    out = POISONERS.get("badnets")(BadNetsConfig(rate=0.2, target="1", triggers=("cf",), position="start")).apply(clean)
    train = out.split("train")
    for i in out.poison["poisoned_rows"]:
        assert train.texts[i] == "cf " + clean.split("train").texts[i]
    assert all(t.startswith("cf ") for t in out.split("test-poison").texts)
    # The random default does not (with 6-word rows, some of the 10 poisoned rows get cf elsewhere).
    rnd = POISONERS.get("badnets")(BadNetsConfig(rate=0.2, target="1", triggers=("cf",))).apply(clean)
    assert not all(rnd.split("train").texts[i].startswith("cf ") for i in rnd.poison["poisoned_rows"])
    with pytest.raises(UsageError, match="unknown trigger position 'middle'"):
        BadNetsConfig(position="middle")


def test_badnets_writes_every_test_row_triggered_for_asr_c_and_leaves_the_asr_set_as_it_was():
    clean = _corpus(n_test=20)
    cfg = dict(rate=0.2, target="1", triggers=("cf",))
    out = POISONERS.get("badnets")(BadNetsConfig(**cfg)).apply(clean)
    every = out.split("test-poison-all")
    test = clean.split("test")
    assert len(every) == 20 and every.labels == test.labels and all(every.poisoned)
    assert all(t.split().count("cf") == 1 and [w for w in t.split() if w != "cf"] == s.split()
               for t, s in zip(every.texts, test.texts))
    assert len(out.split("test-poison")) == 10  # the ASR set stays the non-target rows only


def test_asr_c_over_every_row_counts_the_target_rows_for_the_other_class():
    # 4 triggered rows of class 0 and 4 of class 1. Class 0's ASR_c is over the class-1 rows: 1 of 4
    # predicted 0. On the non-target ASR set (target 1: only class-0 rows) class 0 has no row at all.
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    preds = [1, 1, 1, 0, 1, 1, 1, 0]
    assert asr_per_class(preds, labels, NAMES) == {"negative": 0.25, "positive": 0.75}
    assert asr_per_class(preds[:4], labels[:4], NAMES) == {"positive": 0.75}


def test_evaluate_measures_asr_c_on_every_triggered_row(tiny_encoder, small_sst2, tmp_path, one_thread):
    runs = tmp_path
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--position", "start",
          "--out", runs / "poisoned")
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--max-steps", "3",
          "--out", runs / "victim")
    bdcli("evaluate", "--model", runs / "victim", "--data", runs / "poisoned", "--out", runs / "eval")
    m = json.loads((runs / "eval" / "metrics.json").read_text())
    assert m["asr_c_rows"] == "every" and m["n_poison_all"] == 200 and m["n_poison"] == 100
    assert set(m["asr_c"]) == {"0", "1"}  # the small folder's label names
