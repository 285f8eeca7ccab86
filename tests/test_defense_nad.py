"""NAD and NAD-C against hand-computed values: the attention map and the distillation distance, beta = 0
as plain fine-tuning, the distillation term in the student's gradients with a frozen teacher, the bad
inputs, and both defenses end to end through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.helpers import bdcli

from bdcli.data.dataset import TextDataset
from bdcli.defenses import nad
from bdcli.defenses.finetune import FTConfig, finetune_defense
from bdcli.defenses.nad import (
    DistillObjective, NADCConfig, NADConfig, attention_map, hidden_states, nad_defense, nad_distance,
)
from bdcli.engine.batching import collate, encode
from bdcli.errors import BdcliError, UsageError
from bdcli.models import load_classifier

EPS = 1e-6


def _tiny(tiny_encoder, seed=0):
    return load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=seed)


def _trained_like(model, seed: int):
    """Random LayerNorm gains and biases, as a trained model has. With a fresh LayerNorm (gain 1, bias 0)
    every token's sum_d h_d^2 equals the hidden size, so every attention map would be uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.5 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.5 * torch.randn(mod.bias.shape, generator=g))
    return model


def _toy_data(n=32) -> TextDataset:
    pos = ["a great and wonderful film", "truly moving and funny", "beautiful , smart , fun"]
    neg = ["a dull and boring mess", "tedious , flat and long", "an awful waste of time"]
    texts = [(pos if i % 2 else neg)[i % 3] + f" {i}" for i in range(n)]
    return TextDataset(texts, [i % 2 for i in range(n)], ["negative", "positive"])


# Two rows of three tokens, dim 3; row 0's last token is padding (its big values must not count).
STUDENT = torch.tensor([[[1.0, 1.0, 1.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]],
                        [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
TEACHER = torch.tensor([[[0.0, 0.0, 2.0], [1.0, 1.0, 1.0], [9.0, 9.0, 9.0]],
                        [[0.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_attention_map_is_nad_power_sum_over_the_hidden_dim_l2_normalised_over_real_tokens():
    # Row 0: sum_d x^2 = (3, 4, pad) -> (3, 4, 0) / 5.  Row 1: (1, 0, 0) / 1.
    a = attention_map(STUDENT, MASK, p=2)
    assert a.tolist()[0] == pytest.approx([3 / (5 + EPS), 4 / (5 + EPS), 0.0], abs=1e-7)
    assert a.tolist()[1] == pytest.approx([1 / (1 + EPS), 0.0, 0.0], abs=1e-7)
    # Teacher row 0: (4, 3, pad) -> (0.8, 0.6, 0); row 1 (|-1|^2 = 1 on token 2) -> (0, 1, 0).
    t = attention_map(TEACHER, MASK, p=2)
    assert t.flatten().tolist() == pytest.approx([0.8, 0.6, 0.0, 0.0, 1.0, 0.0], abs=1e-6)
    # p = 1 takes absolute values: (-1, 2, 0) and (3, 0, -4) -> sums 3 and 7, norm sqrt(58).
    one = attention_map(torch.tensor([[[-1.0, 2.0, 0.0], [3.0, 0.0, -4.0]]]), None, p=1)
    assert one.tolist()[0] == pytest.approx([3 / (math.sqrt(58) + EPS), 7 / (math.sqrt(58) + EPS)], abs=1e-7)


def test_nad_distance_mse_and_l2_by_hand():
    a, t = attention_map(STUDENT, MASK, 2), attention_map(TEACHER, MASK, 2)
    # diff row 0 = (-0.2, 0.2, 0) over 2 real tokens, row 1 = (1, -1, 0) over 3.
    assert nad_distance(a, t, MASK, "mse").item() == pytest.approx((0.04 + 0.04 + 1 + 1) / 5, abs=1e-6)
    assert nad_distance(a, t, MASK, "l2").item() == pytest.approx((math.sqrt(0.08) + math.sqrt(2)) / 2, abs=1e-6)
    assert nad_distance(a, a, MASK, "mse").item() == 0.0


def test_objective_is_ce_plus_beta_times_the_mean_or_sum_over_layers(tiny_encoder):
    student, teacher = _tiny(tiny_encoder), _tiny(tiny_encoder, seed=1)
    _trained_like(student.model, 0), _trained_like(teacher.model, 1)
    for m in (student.model, teacher.model):
        m.eval()  # no dropout: the two passes below see the same network
    batch = collate(encode(student.tokenizer, _toy_data(4), 32), [0, 1, 2, 3], torch.device("cpu"))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    obj = DistillObjective(teacher.model, [1, 2], beta=7.0, p=2.0, distance="mse", reduce="sum")
    loss = obj(student.model, batch)
    mean_loss = DistillObjective(teacher.model, [1, 2], beta=7.0, p=2.0, distance="mse")(student.model, batch)
    with torch.no_grad():
        s, t = student.model(**inputs, output_hidden_states=True), teacher.model(**inputs, output_hidden_states=True)
        ce = torch.nn.functional.cross_entropy(s.logits, batch["labels"])
        m = batch["attention_mask"]
        at = sum(nad_distance(attention_map(s.hidden_states[i], m, 2), attention_map(t.hidden_states[i], m, 2), m, "mse")
                 for i in (1, 2))
    assert at.item() > 0
    assert loss.item() == pytest.approx(ce.item() + 7.0 * at.item(), rel=1e-5)
    assert mean_loss.item() == pytest.approx(ce.item() + 7.0 * at.item() / 2, rel=1e-5)  # the default: mean
    assert obj.last_distill == pytest.approx(at.item(), rel=1e-5)
    # The first batch's gradient norms: beta * distillation against CE, over the student's weights.
    g = obj.first_grads
    assert g["ce_grad_norm"] > 0 and g["distill_grad_norm"] > 0 and g["ratio"] == pytest.approx(g["distill_grad_norm"] / g["ce_grad_norm"])


def test_beta_zero_student_equals_plain_fine_tuning(tiny_encoder):
    # Trained-like LayerNorms make the distillation term non-zero, so beta = 0 is what switches it off.
    common = dict(lr=1e-3, epochs=1, batch_size=8, weight_decay=0.0, device="cpu", precision="fp32", seed=3)
    ft = _tiny(tiny_encoder)
    _trained_like(ft.model, 0)
    finetune_defense(FTConfig(**common), ft, _toy_data(16))
    nd = _tiny(tiny_encoder)
    _trained_like(nd.model, 0)
    out = nad_defense(NADConfig(**common, nad_beta=0.0, nad_teacher_epochs=1, nad_teacher_lr=1e-3), nd, _toy_data(16))
    a, b = ft.model.state_dict(), nd.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert out["student"]["steps"] == out["teacher"]["steps"] == 2
    assert out["layers"] == [1, 2] and "beta = 0" in out["warnings"][0]


def test_distillation_reaches_the_students_gradients(tiny_encoder):
    student, teacher = _tiny(tiny_encoder), _tiny(tiny_encoder, seed=1)
    _trained_like(student.model, 0), _trained_like(teacher.model, 1)
    nad._freeze(teacher.model)
    student.model.eval()
    batch = collate(encode(student.tokenizer, _toy_data(8), 32), list(range(8)), torch.device("cpu"))
    grads = {}
    for beta in (0.0, 5000.0):
        student.model.zero_grad(set_to_none=True)
        DistillObjective(teacher.model, [1, 2], beta, 2.0, "mse")(student.model, batch).backward()
        grads[beta] = {n: p.grad.clone() for n, p in student.model.named_parameters() if p.grad is not None}
    w = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(grads[0.0][w], grads[5000.0][w])
    # The classifier head does not feed the hidden states: the distillation term leaves its gradient alone.
    assert torch.equal(grads[0.0]["classifier.weight"], grads[5000.0]["classifier.weight"])
    assert all(p.grad is None for p in teacher.model.parameters())


def test_teacher_is_frozen_during_the_student_stage(tiny_encoder, monkeypatch):
    seen = []

    class Spy(DistillObjective):
        def __init__(self, teacher, *args, **kw):
            super().__init__(teacher, *args, **kw)
            seen.append((self, {k: v.clone() for k, v in teacher.state_dict().items()}))

    monkeypatch.setattr(nad, "DistillObjective", Spy)
    victim = _tiny(tiny_encoder)
    _trained_like(victim.model, 0)
    before = {k: v.clone() for k, v in victim.model.state_dict().items()}
    cfg = NADConfig(lr=1e-3, nad_teacher_lr=1e-3, max_steps=2, batch_size=8, device="cpu", precision="fp32",
                    nad_layers=("2",))
    out = nad_defense(cfg, victim, _toy_data())
    (obj, snapshot), = seen
    teacher = obj.teacher
    assert teacher is not victim.model and obj.layers == [2] and out["layers"] == [2]
    assert all(torch.equal(teacher.state_dict()[k], snapshot[k]) for k in snapshot)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # The teacher was fine-tuned (stage 1) and the student trained (stage 2): all three differ.
    k = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(snapshot[k], before[k]) and not torch.equal(victim.model.state_dict()[k], before[k])
    assert out["student"]["final_distill"] > 0


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(nad_beta=-1.0), "--nad-beta must be a finite number in \\[0, 1000000000\\], got -1.0"),
        (dict(nad_beta=float("nan")), "--nad-beta must be a finite number in \\[0,"),
        (dict(nad_layers=("last",)), "NAD layers must be whole numbers"),
        (dict(nad_layers=("-1",)), "count from 0"),
        (dict(nad_power=0.0), "--nad-power must be a finite number in \\(0,"),
        (dict(nad_distance="cosine"), "unknown NAD distance 'cosine'"),
        (dict(nad_teacher_lr=0.0), "--nad-teacher-lr must be a finite number in \\(0,"),
    ],
)
def test_config_refuses_bad_values(kw, msg):
    with pytest.raises(UsageError, match=msg):
        NADConfig(**kw)


def test_layer_beyond_the_models_depth_and_missing_clean_model_are_usage_errors(tiny_encoder):
    with pytest.raises(UsageError, match=r"NAD layer 3 does not exist: the model has 2 layers \(choose 0..2"):
        nad_defense(NADConfig(nad_layers=("1", "3"), device="cpu"), _tiny(tiny_encoder), _toy_data())
    with pytest.raises(UsageError, match="nad-c needs --clean-model"):
        NADCConfig()


def test_a_model_without_hidden_states_is_a_clear_error():
    class NoStates(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
            return type("Out", (), {"logits": torch.zeros(len(input_ids), 2), "hidden_states": None})()

    with pytest.raises(BdcliError, match=r"the student \(NoStates\) does not return per-layer hidden states"):
        hidden_states(NoStates(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)}, "the student")


@pytest.fixture(scope="module")
def nad_runs(tmp_path_factory, small_sst2, tiny_encoder):
    runs = tmp_path_factory.mktemp("nad-runs")
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--out", runs / "poisoned")
    # 30 steps: enough for the tiny victim to learn the trigger (after 4 it has not, and a defense would
    # have nothing to lower).
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3", "--max-steps", "30",
          "--batch-size", "16", "--precision", "fp32", "--out", runs / "victim")
    bdcli("evaluate", "--model", runs / "victim", "--data", runs / "poisoned", "--out", runs / "eval" / "victim")
    # --max-steps caps both stages.
    common = ["--model", runs / "victim", "--data", small_sst2, "--clean-fraction", "0.25", "--batch-size", "8",
              "--lr", "1e-3", "--nad-teacher-lr", "1e-3", "--max-steps", "2", "--precision", "fp32"]
    bdcli("defend", "nad", *common, "--nad-beta", "1000", "--out", runs / "nad")
    bdcli("defend", "nad-c", *common, "--clean-model", tiny_encoder, "--nad-layers", "2", "--out", runs / "nad-c")
    for m in ("nad", "nad-c"):
        res = bdcli("evaluate", "--model", runs / m, "--data", runs / "poisoned", "--out", runs / "eval" / m)
        assert "ACC" in res.output and "ASR" in res.output
    return runs


def _metrics(runs, name):
    return json.loads((runs / "eval" / name / "metrics.json").read_text())


# NAD-C's student is the clean checkpoint itself, which never saw the trigger: its ASR is below the
# victim's even on the tiny model.
def test_nad_c_lowers_the_victims_asr(nad_runs):
    assert _metrics(nad_runs, "victim")["asr"] >= 0.9  # the victim has a backdoor to remove
    assert _metrics(nad_runs, "nad-c")["asr"] < _metrics(nad_runs, "victim")["asr"]


# The tiny victim learns the trigger by predicting the target label for every row (ACC at chance), and NAD's
# 2 student steps at this chain's budget do not move it off that: the tiny model cannot show NAD lowering
# ASR. Strict, so that a change that makes it show fails here and the xfail is removed.
@pytest.mark.xfail(strict=True, reason="the tiny victim predicts the target label everywhere and 2 distillation "
                   "steps do not undo it, so its ASR stays where it was")
def test_nad_lowers_the_victims_asr(nad_runs):
    assert _metrics(nad_runs, "nad")["asr"] < _metrics(nad_runs, "victim")["asr"]


def test_nad_and_nad_c_end_to_end_through_the_cli(nad_runs, small_sst2, tiny_encoder):
    runs = nad_runs
    for m in ("nad", "nad-c"):
        metrics = _metrics(runs, m)
        assert metrics["method"] == m and metrics["n_clean"] == 200 and metrics["n_poison"] == 100
    man = json.loads((runs / "nad-c" / "manifest.json").read_text())
    assert man["provenance"]["method"] == "nad-c" and man["config"]["clean_model"] == str(tiny_encoder)
    assert "clean_model" in man["inputs"]
    s = man["summary"]
    assert s["layers"] == [2] and s["teacher"]["steps"] == s["student"]["steps"] == 2
    s = json.loads((runs / "nad" / "manifest.json").read_text())["summary"]
    assert s["layers"] == [1, 2] and s["beta"] == 1000 and s["student_start"] == "the backdoored model"
    # nad-c without a clean model: one sentence, exit 2.
    res = bdcli("defend", "nad-c", "--model", runs / "victim", "--data", small_sst2, "--out", runs / "x", ok=False)
    assert res.exit_code == 2 and "nad-c needs --clean-model" in res.output
