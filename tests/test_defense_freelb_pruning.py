"""FreeLB and Fine-Pruning (the maximum-entropy paper's baselines, Appendix B) against hand-computed values:
the perturbation's start, ascent and projection; FreeLB's averaged K-pass gradient; Taylor importance,
exact per-matrix pruning counts and held zeros; and both defenses through the real CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from bdcli.data.dataset import TextDataset
from bdcli.defenses.freelb import FreeLBConfig, FreeLBObjective, ascend, ascent_step, init_delta, project
from bdcli.defenses.pruning import (
    FinePruningConfig, apply_masks, fine_pruning_defense, layer_of, prune_masks, prunable_weights, taylor_importance,
)
from bdcli.engine import TrainConfig, train
from bdcli.engine.batching import collate, encode
from bdcli.errors import UsageError
from bdcli.models import load_classifier
from tests.helpers import bdcli

# --- FreeLB: the perturbation ---------------------------------------------------------------------------


def test_project_rescales_only_examples_outside_the_ball():
    delta = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[0.3, 0.0], [0.0, 0.4]]])  # norms 5 and 0.5
    out = project(delta, 1.0)
    torch.testing.assert_close(out[0], torch.tensor([[0.6, 0.0], [0.0, 0.8]]), rtol=0, atol=1e-7)
    assert torch.equal(out[1], delta[1])  # inside the ball: untouched
    assert out.flatten(1).norm(dim=1).tolist() == pytest.approx([1.0, 0.5], abs=1e-6)
    assert project(delta, 0.0) is delta  # 0: unbounded, as FreeLB


def test_ascend_steps_along_the_per_example_normalised_gradient():
    delta = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    grad = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]]])  # second example: zero gradient, clamped 1e-8 denominator
    out = ascend(delta, grad, 0.5)
    torch.testing.assert_close(out, torch.tensor([[[1.3, 0.4]], [[0.0, 2.0]]]), rtol=0, atol=1e-7)


def test_ascent_step_never_leaves_the_norm_ball():
    torch.manual_seed(0)
    delta = torch.zeros(4, 7, 5)
    for _ in range(20):
        delta = ascent_step(delta, torch.randn(4, 7, 5) * 100, step_size=0.3, max_norm=0.6)
        assert (delta.flatten(1).norm(dim=1) <= 0.6 * (1 + 1e-6)).all()
    # after 20 steps of size 0.3 each example has hit the bound
    assert delta.flatten(1).norm(dim=1).tolist() == pytest.approx([0.6] * 4, rel=1e-5)


def test_init_delta_is_uniform_scaled_by_length_and_zero_on_padding():
    embeds = torch.zeros(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.manual_seed(3)
    u = torch.zeros(2, 3, 2).uniform_(-1, 1)
    torch.manual_seed(3)
    d = init_delta(embeds, mask, mag=1.0)
    # scale mag / sqrt(length * hidden): 1/sqrt(4) for row 0, 1/sqrt(2) for row 1
    assert torch.allclose(d[0, :2], u[0, :2] / 2) and torch.allclose(d[1, :1], u[1, :1] / math.sqrt(2))
    assert d[0, 2].tolist() == [0.0, 0.0] and d[1, 1:].abs().sum() == 0
    assert (d.flatten(1).norm(dim=1) <= 1.0).all()  # |u| <= 1 everywhere, so ||δ|| <= mag
    state = torch.get_rng_state()
    assert torch.equal(init_delta(embeds, mask, mag=0.0), embeds)
    assert torch.equal(torch.get_rng_state(), state)  # mag 0 draws nothing: K=1, mag 0 is plain FT


# --- FreeLB: the objective ------------------------------------------------------------------------------


def _tiny(tiny_encoder, seed=0):
    return load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=seed)


def _toy_data(n=48) -> TextDataset:
    pos = ["a great and wonderful film", "truly moving and funny", "beautiful , smart , fun"]
    neg = ["a dull and boring mess", "tedious , flat and long", "an awful waste of time"]
    texts = [(pos if i % 2 else neg)[i % 3] + f" {i}" * (i % 4) for i in range(n)]
    return TextDataset(texts, [i % 2 for i in range(n)], ["negative", "positive"])


def _batch(m, n=6):
    enc = encode(m.tokenizer, _toy_data(n), 32)
    return collate(enc, list(range(n)), torch.device("cpu"))


def test_freelb_with_one_step_and_no_start_is_plain_fine_tuning(tiny_encoder):
    cfg = TrainConfig(lr=1e-3, max_steps=2, batch_size=8, device="cpu", precision="fp32", seed=5)
    states = []
    for objective in ("ce", FreeLBObjective(adv_steps=1, adv_init_mag=0.0, adv_lr=0.1, adv_max_norm=0.6)):
        m = _tiny(tiny_encoder)
        train(m.model, m.tokenizer, _toy_data(), cfg, objective=objective)
        states.append({n: p.detach().clone() for n, p in m.model.named_parameters()})
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_freelb_gradient_is_the_mean_of_the_k_perturbed_gradients(tiny_encoder):
    m = _tiny(tiny_encoder)
    model = m.model.eval()  # dropout off: the manual loop below need not replay masks
    batch = _batch(m)
    params = [p for p in model.parameters() if p.requires_grad]
    k, mag, alpha, eps = 3, 0.5, 0.2, 0.3

    torch.manual_seed(11)
    model.zero_grad(set_to_none=True)
    loss = FreeLBObjective(k, mag, alpha, eps)(model, batch)
    loss.backward()
    got = [p.grad.clone() for p in params]

    # Manual FreeLB: plain backward() per pass, gradients kept apart and averaged at the end.
    torch.manual_seed(11)
    embed = model.get_input_embeddings()
    with torch.no_grad():
        delta = project(init_delta(embed(batch["input_ids"]), batch["attention_mask"], mag), eps)
    per_pass, losses = [], []
    for t in range(k):
        model.zero_grad(set_to_none=True)
        delta.requires_grad_(True)
        logits = model(inputs_embeds=embed(batch["input_ids"]) + delta, attention_mask=batch["attention_mask"]).logits
        lt = F.cross_entropy(logits.float(), batch["labels"])
        lt.backward()
        per_pass.append([p.grad.clone() for p in params])
        losses.append(lt.item())
        assert delta.flatten(1).norm(dim=1).max() <= eps * (1 + 1e-6)
        delta = ascent_step(delta.detach(), delta.grad, alpha, eps)
    assert loss.item() == pytest.approx(sum(losses) / k, rel=1e-6)
    assert len({round(x, 6) for x in losses}) == k  # the perturbation really changed each pass
    for i, g in enumerate(got):
        want = sum(pp[i] for pp in per_pass) / k
        assert torch.allclose(g, want, rtol=1e-4, atol=1e-7)


def test_freelb_passes_share_one_dropout_mask(tiny_encoder):
    # δ = 0 throughout (no start, step size 0): with the same dropout masks, K identical passes average
    # to exactly the one-pass gradient; fresh masks per pass would not.
    m = _tiny(tiny_encoder)
    model = m.model.train()
    batch = _batch(m)
    grads = []
    for k in (1, 2):
        torch.manual_seed(4)
        model.zero_grad(set_to_none=True)
        FreeLBObjective(k, 0.0, 0.0, 0.0)(model, batch).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(*grads))


def test_freelb_config_rejects_out_of_range_values():
    assert (FreeLBConfig().adv_steps, FreeLBConfig().adv_lr, FreeLBConfig().adv_max_norm, FreeLBConfig().lr) == (3, 0.1, 0.6, 2e-5)
    with pytest.raises(UsageError, match=r"--adv-steps must be a whole number in \[1, 100\]"):
        FreeLBConfig(adv_steps=0)
    with pytest.raises(UsageError, match="--adv-max-norm must be a finite number in \\[0,"):
        FreeLBConfig(adv_max_norm=-1.0)


# --- Fine-pruning ---------------------------------------------------------------------------------------


def test_taylor_importance_is_the_batch_mean_of_abs_grad_times_weight():
    lin = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[math.log(3.0), 0.0], [0.5, -0.5]]))
    # x = (1, 1): logits (ln 3, 0), q = (.75, .25), label 0: dL/dz = (-.25, .25), dL/dW = dz x^T.
    # x = (-1, -1): logits (-ln 3, 0), q = (.25, .75), label 0: dL/dz = (-.75, .75).
    batches = [{"x": torch.tensor([[1.0, 1.0]]), "labels": torch.tensor([0])},
               {"x": torch.tensor([[-1.0, -1.0]]), "labels": torch.tensor([0])}]
    s = taylor_importance(lin, batches, {"w": lin.weight}, loss_fn=lambda m, b: F.cross_entropy(m(b["x"]), b["labels"]))
    # |g*W| per batch: [[.25 ln3, 0], [.125, .125]] and [[.75 ln3, 0], [.375, .375]]; mean of the two.
    # (|mean of g*W| would give [[.25 ln3, 0], [.125, .125]]: the absolute value is taken per batch.)
    torch.testing.assert_close(s["w"], torch.tensor([[0.5 * math.log(3.0), 0.0], [0.25, 0.25]]), rtol=0, atol=1e-6)
    assert lin.weight.grad is None


def test_prune_masks_cut_round_ratio_numel_and_break_ties_by_index():
    score = {"a": torch.tensor([0.3, 0.1, 0.1, 0.2, 0.1]), "b": torch.tensor([[1.0, 2.0], [0.0, 3.0]])}
    m = prune_masks(score, 0.5)
    # a: round(2.5) = 2 (half to even); the three tied 0.1s go lowest index first
    assert m["a"].tolist() == [True, False, False, True, True]
    assert m["b"].tolist() == [[False, True], [False, True]]
    assert prune_masks(score, 0.6)["a"].tolist() == [True, False, False, True, False]  # round(3.0) = 3
    assert prune_masks(score, 0.0)["b"].all()


def test_prunable_weights_are_the_encoder_linear_matrices(tiny_encoder):
    m = _tiny(tiny_encoder)
    parts = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"]
    want = {f"bert.encoder.layer.{i}.{p}.weight" for i in (0, 1) for p in parts}
    assert set(prunable_weights(m.model)) == want
    assert layer_of("bert.encoder.layer.1.output.dense.weight") == "bert.encoder.layer.1"


def _pruned_run(tiny_encoder, **kw):
    m = _tiny(tiny_encoder)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    cfg = FinePruningConfig(device="cpu", batch_size=8, seed=1, **kw)
    out = fine_pruning_defense(cfg, m, _toy_data())
    return m, before, out


def test_retrain_false_changes_only_the_pruned_weights(tiny_encoder):
    m, before, out = _pruned_run(tiny_encoder, prune_ratio=0.6, retrain=False, prune_batches=3)
    pruned = prunable_weights(m.model)
    for name, p in m.model.named_parameters():
        assert p.grad is None, name  # the importance pass leaves no gradients behind
        if name in pruned:
            zero = p == 0
            assert int(zero.sum()) == round(0.6 * p.numel()), name  # 1024 -> 614, 2048 -> 1229
            assert torch.equal(p[~zero], before[name][~zero]), name  # kept entries untouched
        else:
            assert torch.equal(p, before[name]), name
    s = out["pruning"]
    assert out["retrain"] is None and s["importance_batches"] == 3 and s["importance_rows"] == 24
    q = s["matrices"]["bert.encoder.layer.0.attention.self.query.weight"]
    assert (q["numel"], q["pruned"]) == (1024, 614) and q["ratio"] == 614 / 1024
    assert s["per_layer"]["bert.encoder.layer.1"]["pruned"] == 4 * 614 + 2 * 1229
    assert s["total"]["pruned"] == 2 * (4 * 614 + 2 * 1229)


def test_pruned_weights_stay_exactly_zero_through_retraining(tiny_encoder):
    m, before, out = _pruned_run(tiny_encoder, prune_ratio=0.5, lr=5e-3, max_steps=3, prune_batches=2)
    pruned = prunable_weights(m.model)
    assert out["retrain"]["steps"] == 3
    for name, p in m.model.named_parameters():
        zeros = int((p == 0).sum())
        if name in pruned:
            assert zeros == round(0.5 * p.numel()), name
            assert out["pruning"]["matrices"][name]["pruned"] == zeros
            assert not torch.equal(p, before[name]), name  # the kept weights did re-train
        else:
            # embeddings, LayerNorm, biases, pooler, classifier: never forced to zero
            assert zeros <= int((before[name] == 0).sum()), name


def test_fine_pruning_config_rejects_out_of_range_values():
    with pytest.raises(UsageError, match=r"--prune-ratio must be a finite number in \[0, 1\)"):
        FinePruningConfig(prune_ratio=1.0)
    with pytest.raises(UsageError, match="--prune-batches must be a whole number"):
        FinePruningConfig(prune_batches=0)


def test_apply_masks_zeroes_exactly_the_masked_entries():
    w = torch.nn.Parameter(torch.tensor([[-1.0, 2.0], [3.0, -4.0]]))
    apply_masks({"w": w}, {"w": torch.tensor([[False, True], [True, False]])})
    assert w.tolist() == [[0.0, 2.0], [3.0, 0.0]] and not torch.signbit(w[0, 0])


# --- both through the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victim(tmp_path_factory, small_sst2, tiny_encoder):
    runs = tmp_path_factory.mktemp("runs")
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--out", runs / "poisoned")
    # 30 steps: enough for the tiny victim to learn the trigger (after 6 it has not, and a defense would
    # have nothing to lower).
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3", "--max-steps", "30",
          "--batch-size", "16", "--out", runs / "victim")
    bdcli("evaluate", "--model", runs / "victim", "--data", runs / "poisoned", "--out", runs / "eval" / "victim")
    return runs


DEFENDED = {
    "freelb": ["--adv-steps", "2", "--max-steps", "2"],
    "fine-pruning": ["--prune-ratio", "0.5", "--prune-batches", "2", "--max-steps", "2"],
}


@pytest.fixture(scope="module")
def defended(victim, small_sst2):
    for name, extra in DEFENDED.items():
        bdcli("defend", name, "--model", victim / "victim", "--data", small_sst2, "--clean-fraction", "0.2",
              "--batch-size", "16", *extra, "--out", victim / name)
        bdcli("evaluate", "--model", victim / name, "--data", victim / "poisoned", "--out", victim / "eval" / name)
    return victim


def _metrics(runs, name):
    return json.loads((runs / "eval" / name / "metrics.json").read_text())


@pytest.mark.parametrize("name", list(DEFENDED))
def test_cli_defend_then_evaluate(defended, name):
    manifest = json.loads((defended / name / "manifest.json").read_text())
    assert manifest["provenance"]["method"] == name and manifest["provenance"]["clean_rows"] == 80
    summary = manifest["summary"]
    if name == "freelb":
        assert summary["training"]["steps"] == 2 and summary["adversary"]["adv_steps"] == 2
    else:
        assert summary["retrain"]["steps"] == 2 and summary["pruning"]["importance_batches"] == 2
        assert summary["pruning"]["total"]["ratio"] == pytest.approx(0.5, abs=1e-3)
    metrics = _metrics(defended, name)
    assert metrics["n_clean"] == 200 and metrics["n_poison"] == 100
    assert metrics["method"] == name and metrics["asr"] is not None
    assert _metrics(defended, "victim")["asr"] >= 0.9  # the victim has a backdoor to remove


# The tiny victim learns the trigger by predicting the target label for every row (ACC at chance), and a
# few steps of clean re-training at this chain's budget do not move it off that: the direction cannot be
# shown on the tiny model (docs/results.md has the MiniLM numbers). Strict, so that a change that
# makes it show fails here and the xfail is removed.
@pytest.mark.xfail(strict=True, reason="the tiny victim predicts the target label everywhere and 2 clean "
                   "re-training steps do not undo it, so its ASR stays where it was")
@pytest.mark.parametrize("name", list(DEFENDED))
def test_cli_defense_lowers_the_victims_asr(defended, name):
    assert _metrics(defended, name)["asr"] < _metrics(defended, "victim")["asr"]


def test_cli_help_and_bad_ratio(victim, small_sst2):
    assert "--adv-max-norm" in bdcli("defend", "freelb", "--help").output
    assert "--no-retrain" in bdcli("defend", "fine-pruning", "--help").output
    res = bdcli("defend", "fine-pruning", "--model", victim / "victim", "--data", small_sst2, "--prune-ratio", "1.5",
                "--out", victim / "bad", ok=False)
    assert res.exit_code == 2 and "--prune-ratio must be a finite number in [0, 1)" in res.output
    assert not (victim / "bad").exists()
