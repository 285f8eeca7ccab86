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
    # 100 of the 200 test rows are not of the target label: the split's label shares are recorded.
    assert m["label_shares"] == {"0": 0.5, "1": 0.5}


# --- fine-pruning: the embeddings, per-sample importance --------------------------------------------
def _toy_clean(n: int = 24) -> TextDataset:
    pos = ["a great and wonderful film", "truly moving and funny", "beautiful , smart , fun"]
    neg = ["a dull and boring mess", "tedious , flat and long", "an awful waste of time"]
    return TextDataset([(pos if i % 2 else neg)[i % 3] for i in range(n)], [i % 2 for i in range(n)], NAMES)


def _tiny_classifier(tiny_encoder):
    from bdcli.models.load import load_classifier

    return load_classifier(str(tiny_encoder), label_names=NAMES, seed=0)


def test_pruning_with_embeddings_zeroes_the_rows_of_words_the_clean_data_never_uses(tiny_encoder, one_thread):
    from bdcli.defenses.pruning import FinePruningConfig, fine_pruning_defense, prunable_weights

    m = _tiny_classifier(tiny_encoder)
    assert "bert.embeddings.word_embeddings.weight" not in prunable_weights(m.model)
    cfg = FinePruningConfig(device="cpu", batch_size=8, prune_ratio=0.5, retrain=False, prune_embeddings=True)
    out = fine_pruning_defense(cfg, m, _toy_clean())
    E = m.model.bert.embeddings.word_embeddings.weight
    cf = m.tokenizer.convert_tokens_to_ids("cf")
    great = m.tokenizer.convert_tokens_to_ids("great")
    assert bool((E[cf] == 0).all())  # the trigger word's row, never in the clean data: zero importance
    assert bool((E[great] != 0).any())  # a clean word's row keeps its important entries
    s = out["pruning"]
    assert s["embeddings_pruned"] and s["matrices"]["bert.embeddings.word_embeddings.weight"]["ratio"] == pytest.approx(0.5, abs=1e-6)
    assert "bert.embeddings.position_embeddings.weight" in s["matrices"] and not s["not_pruned"].startswith("embeddings")
    # Without the option the embedding table is left as it was.
    m2 = _tiny_classifier(tiny_encoder)
    E0 = m2.model.bert.embeddings.word_embeddings.weight.detach().clone()
    fine_pruning_defense(FinePruningConfig(device="cpu", batch_size=8, retrain=False), m2, _toy_clean())
    assert torch_equal(m2.model.bert.embeddings.word_embeddings.weight, E0)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_per_sample_importance_is_the_mean_of_each_rows_abs_taylor_term_and_differs_from_per_batch():
    import torch
    import torch.nn.functional as F

    from bdcli.defenses.pruning import single_rows, taylor_importance

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    loss = lambda m, b: F.cross_entropy(m(b["x"].float()), b["labels"])  # noqa: E731
    # single_rows cuts each row to its attention mask; a [4, 3] "x" stands in for the ids here.
    batch = {"x": x, "labels": y, "attention_mask": torch.ones(4, 3, dtype=torch.long), "input_ids": torch.zeros(4, 3, dtype=torch.long)}
    per_sample = taylor_importance(lin, single_rows(batch), {"w": lin.weight}, loss_fn=loss)["w"]
    want = sum((torch.autograd.grad(F.cross_entropy(lin(x[i : i + 1]), y[i : i + 1]), lin.weight)[0] * lin.weight).abs()
               for i in range(4)) / 4
    assert torch.allclose(per_sample, want.detach())
    per_batch = taylor_importance(lin, [batch], {"w": lin.weight}, loss_fn=loss)["w"]
    g = torch.autograd.grad(F.cross_entropy(lin(x), y), lin.weight)[0]
    assert torch.allclose(per_batch, (g * lin.weight).abs().detach())
    # |mean| <= mean |.|, strictly here: the rows' gradients cancel inside the batch.
    assert bool((per_batch <= per_sample + 1e-7).all()) and float((per_sample - per_batch).sum()) > 1e-3
    with pytest.raises(UsageError, match="unknown pruning importance 'row'"):
        from bdcli.defenses.pruning import FinePruningConfig

        FinePruningConfig(prune_importance="row")


# --- GBA's eq. 2: a plain SGD step -------------------------------------------------------------------
def test_sgd_optimizer_takes_exactly_minus_lr_times_the_gradient(tiny_encoder, one_thread):
    import torch

    from bdcli.engine.batching import collate, encode
    from bdcli.engine.loop import TrainConfig, train

    m = _tiny_classifier(tiny_encoder)
    for mod in m.model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0  # the step below and the gradient computed by hand see the same network
    data = _toy_clean(8)
    w0 = m.model.classifier.weight.detach().clone()
    batch = collate(encode(m.tokenizer, data, 32), list(range(8)), torch.device("cpu"))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss = torch.nn.functional.cross_entropy(m.model(**inputs).logits, batch["labels"])
    g = torch.autograd.grad(loss, m.model.classifier.weight)[0]
    cfg = TrainConfig(lr=0.5, max_steps=1, batch_size=8, weight_decay=0.0, grad_clip=None, schedule="constant",
                      device="cpu", precision="fp32", checkpoint_every=0)
    train(m.model, m.tokenizer, data, cfg, optimizer="sgd")
    assert torch.allclose(m.model.classifier.weight.detach(), w0 - 0.5 * g, atol=1e-6)
    with pytest.raises(UsageError, match="unknown optimizer 'lion'"):
        train(m.model, m.tokenizer, data, cfg, optimizer="lion")
    from bdcli.defenses.gba import GBAConfig

    with pytest.raises(UsageError, match="unknown GBA optimizer"):
        GBAConfig(gba_optimizer="adam")
