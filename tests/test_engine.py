"""The engine and metrics against hand-computed values: maximum-entropy loss (eq. 3) and its gradient,
the Stop Distance, batching, the stop rule, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from bdcli.data.dataset import TextDataset
from bdcli.defenses import MaxEntConfig, StopDistanceHook
from bdcli.defenses.maxent import maxent_defense
from bdcli.defenses.stop_distance import probe_rows
from bdcli.engine import TrainConfig, max_entropy, prediction_entropy, train
from bdcli.engine.batching import Encoded, collate, train_batches
from bdcli.metrics import accuracy, asr_per_class, attack_success_rate, stop_distance, within_group_variance
from bdcli.models import load_classifier

import random


def test_max_entropy_loss_and_gradient_match_hand_values():
    # Row 1: uniform, H = ln 2. Row 2: q = (0.75, 0.25), H = -(.75 ln .75 + .25 ln .25) = 0.5623351.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], requires_grad=True)
    h = prediction_entropy(logits)
    assert h.tolist() == pytest.approx([math.log(2), 0.5623351446], abs=1e-7)
    loss = max_entropy(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(-(math.log(2) + 0.5623351446) / 2, abs=1e-7)
    loss.backward()
    # d(-H)/dz_i = q_i (log q_i + H), halved by the batch mean; zero at the uniform row.
    g = 0.75 * (math.log(0.75) + 0.5623351446) / 2
    assert logits.grad.tolist()[0] == pytest.approx([0.0, 0.0], abs=1e-7)
    assert logits.grad.tolist()[1] == pytest.approx([g, -g], abs=1e-6)


def test_stop_distance_is_squared_distance_between_label_centroids():
    reps = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # centroids (1, 0) and (1, 2): squared distance 4, not the Euclidean 2.
    assert stop_distance(reps, labels, 2) == pytest.approx(4.0)


def test_multiclass_stop_distance_pair_and_mean():
    reps = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 1, 2])
    assert stop_distance(reps, labels, 3, pair=(1, 2)) == pytest.approx(25.0)
    assert stop_distance(reps, labels, 3, pair=None) == pytest.approx((9 + 16 + 25) / 3)


def test_within_group_variance_is_mean_per_dimension_variance():
    reps = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    assert within_group_variance(reps) == pytest.approx((1.0 + 0.0) / 2)


def test_acc_asr_and_per_class_asr():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert attack_success_rate([1, 1, 0, 1], target=1) == 0.75
    # three-class ASR set drawn from classes 0 and 2 (target 1)
    preds, orig = [1, 1, 0, 2], [0, 0, 2, 2]
    assert asr_per_class(preds, orig, ["a", "b", "c"]) == {"a": 0.5, "b": 0.5, "c": 0.0}


def test_collate_pads_to_the_longest_row_in_the_batch():
    enc = Encoded([[101, 5, 102], [101, 5, 6, 7, 102], [101, 102]], [0, 1, 0], pad_id=0)
    b = collate(enc, [0, 2], torch.device("cpu"))
    assert b["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_train_batches_cover_every_row_once_per_epoch_and_group_lengths():
    lengths = [random.Random(i).randint(3, 60) for i in range(500)]
    enc = Encoded([[1] * n for n in lengths], [0] * 500, pad_id=0)
    batches = train_batches(enc, 32, random.Random(0), pool=50)
    assert sorted(i for b in batches for i in b) == list(range(500))
    padded = sum(32 * max(lengths[i] for i in b) for b in batches)
    naive = sum(32 * max(lengths[i] for i in range(s, min(s + 32, 500))) for s in range(0, 500, 32))
    assert padded < naive  # grouping saves pad tokens


def _tiny(tiny_encoder, seed=0):
    return load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=seed)


def _toy_data(n=64) -> TextDataset:
    pos = ["a great and wonderful film", "truly moving and funny", "beautiful , smart , fun"]
    neg = ["a dull and boring mess", "tedious , flat and long", "an awful waste of time"]
    texts = [(pos if i % 2 else neg)[i % 3] + f" {i}" for i in range(n)]
    return TextDataset(texts, [i % 2 for i in range(n)], ["negative", "positive"])


def test_training_is_deterministic_on_cpu(tiny_encoder):
    cfg = TrainConfig(lr=1e-3, max_steps=6, batch_size=8, device="cpu", seed=7)
    states = []
    for _ in range(2):
        m = _tiny(tiny_encoder)
        train(m.model, m.tokenizer, _toy_data(), cfg)
        states.append({k: v.clone() for k, v in m.model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_params_subset_leaves_the_rest_untouched(tiny_encoder):
    m = _tiny(tiny_encoder)
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    head = [p for n, p in m.model.named_parameters() if n.startswith("classifier.")]
    train(m.model, m.tokenizer, _toy_data(), TrainConfig(lr=1e-2, max_steps=3, batch_size=8, device="cpu"), params=head)
    for n, p in m.model.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("classifier."), n


def test_stop_rule_stops_at_the_first_measurement_below_the_threshold(tiny_encoder):
    m = _tiny(tiny_encoder)
    data = _toy_data()
    cfg = MaxEntConfig(sd=0.05, maxent_lr=5e-3, maxent_max_steps=200, maxent_min_steps=0, sd_every=2, device="cpu", epochs=1, batch_size=8)
    out = maxent_defense(cfg, m, data)
    trace = out["stage1"]["sd_trace"]
    assert out["stage1"]["reached_threshold"] and out["warnings"] == []
    assert trace[-1][1] < 0.05 and all(sd >= 0.05 for _, sd in trace[:-1])
    assert out["stage1"]["steps"] == trace[-1][0] < 200
    assert [s for s, _ in trace] == list(range(0, trace[-1][0] + 1, 2))
    # The trace is measured, not assumed: recompute the final SD on the probe.
    hook = StopDistanceHook(m.tokenizer, probe_rows(data, cfg.sd_samples, cfg.seed), pair=(0, 1), rep="cls", every=2,
                            threshold=0.05, max_length=128, precision="auto")
    # stage 2 changed the model since, so SD must now differ from the stage-1 end value
    assert hook.measure(m.model, torch.device("cpu"), 0) != trace[-1][1]


def test_unreachable_threshold_stops_at_the_budget_with_a_warning(tiny_encoder):
    m = _tiny(tiny_encoder)
    cfg = MaxEntConfig(sd=1e-12, maxent_lr=1e-4, maxent_max_steps=4, sd_every=1, device="cpu", epochs=1, batch_size=16)
    out = maxent_defense(cfg, m, _toy_data())
    assert out["stage1"]["steps"] == 4 and not out["stage1"]["reached_threshold"]
    assert "never fell below 1e-12 within 4" in out["warnings"][0]


def test_freeze_head_keeps_the_head_in_stage_one(tiny_encoder):
    m = _tiny(tiny_encoder)
    head = m.model.classifier.weight.detach().clone()
    cfg = MaxEntConfig(sd=1e-12, maxent_lr=1e-3, maxent_max_steps=3, sd_every=1, train_head=False, device="cpu",
                       max_steps=1, batch_size=8, lr=1e-9)
    maxent_defense(cfg, m, _toy_data())
    # stage 2 ran one step at lr 1e-9: the head moved by at most a rounding amount, not a stage-1 step
    assert torch.allclose(m.model.classifier.weight, head, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(sd=0), dict(sd_on="mean"), dict(sd_pair="all"), dict(maxent_max_steps=0), dict(clean_fraction=0)])
def test_maxent_config_refuses_bad_values(kw):
    from bdcli.errors import UsageError

    with pytest.raises(UsageError):
        MaxEntConfig(**kw)


def test_entropy_regulariser_subtracts_alpha_times_entropy(tiny_encoder):
    from bdcli.engine.loop import train as _train

    data = _toy_data(16)
    losses = {}
    for alpha in (0.0, 0.5):
        m = _tiny(tiny_encoder)
        res = _train(m.model, m.tokenizer, data, TrainConfig(lr=1e-12, max_steps=1, batch_size=16, device="cpu",
                                                             entropy_alpha=alpha, precision="fp32"), log_every=1)
        losses[alpha] = res.final_loss
    m = _tiny(tiny_encoder)
    from bdcli.engine.batching import collate, encode

    batch = collate(encode(m.tokenizer, data, 128), list(range(16)), torch.device("cpu"))
    m.model.train()
    torch.manual_seed(42)
    # the same dropout draw as the training step: reproduce the seeded state train() starts from
    from bdcli.engine.loop import seed_everything

    seed_everything(42)
    logits = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    h = prediction_entropy(logits).mean().item()
    assert losses[0.5] == pytest.approx(losses[0.0] - 0.5 * h, abs=1e-5)


def test_transfer_head_is_simulated_on_cached_features(tiny_encoder):
    from bdcli.defenses.head import head_inputs, simulate_head

    m = _tiny(tiny_encoder)
    data = _toy_data(32)
    # A random tiny encoder maps every row to nearly the same vector; let it learn the task first, as the
    # attacker's encoder has, so that a head on its frozen features has something to find.
    train(m.model, m.tokenizer, data, TrainConfig(lr=3e-3, max_steps=40, batch_size=8, device="cpu", precision="fp32"))
    encoder_before = {n: p.clone() for n, p in m.model.named_parameters() if not n.startswith("classifier.")}
    out = simulate_head(m.model, m.tokenizer, data, lr=5e-2, epochs=30, batch_size=8, seed=0, max_length=128,
                        device="cpu", precision="fp32")
    # the encoder is frozen: only the head moved
    assert all(torch.equal(p, encoder_before[n]) for n, p in m.model.named_parameters() if n in encoder_before)
    # the cached features are exactly what the head reads: the pooler output, in the data's order
    feats = head_inputs(m.model, data, m.tokenizer, max_length=128, device=torch.device("cpu"), precision="fp32")
    from bdcli.engine.batching import collate, encode

    b = collate(encode(m.tokenizer, data, 128), list(range(32)), torch.device("cpu"))
    with torch.no_grad():
        pooled = m.model.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).pooler_output
    assert torch.allclose(feats, pooled, atol=1e-5)
    assert out["train_acc"] > 0.9  # the fresh head recovers the task from the frozen features alone


def test_relative_threshold_and_presets():
    cfg = MaxEntConfig(preset="lite")
    assert cfg.sd == 0.02
    from bdcli.errors import UsageError

    with pytest.raises(UsageError):
        MaxEntConfig(sd=2.0, sd_relative=True)


def test_variational_kl_matches_hand_value_and_stage_one_runs(tiny_encoder):
    from bdcli.defenses.variational import MODULE, GaussianHead, VariationalConfig, variational_defense

    head = GaussianHead(2, 2, 1)
    with torch.no_grad():
        head.mlp[0].weight.copy_(torch.eye(2)); head.mlp[0].bias.zero_()
        head.mean.weight.copy_(torch.tensor([[1.0, 0.0]])); head.mean.bias.zero_()
        head.logvar.weight.zero_(); head.logvar.bias.fill_(math.log(2.0))
    h = torch.tensor([[0.5, 0.0]])
    mu = math.tanh(0.5)
    assert head.kl_to_standard_normal(h).item() == pytest.approx(0.5 * (mu**2 + 2.0 - 1.0 - math.log(2.0)), abs=1e-6)

    m = _tiny(tiny_encoder)
    cfg = VariationalConfig(sd=1e-12, maxent_lr=1e-3, maxent_max_steps=3, sd_every=1, device="cpu", max_steps=1,
                            batch_size=8)
    out = variational_defense(cfg, m, _toy_data())
    assert out["stage1"]["steps"] == 3 and not hasattr(m.model, MODULE)
    assert len(out["stage1"]["sd_trace"]) == 4


def test_min_steps_keeps_stage_one_going_past_the_threshold(tiny_encoder):
    m = _tiny(tiny_encoder)
    cfg = MaxEntConfig(sd=1e6, maxent_lr=1e-3, maxent_min_steps=6, maxent_max_steps=50, sd_every=2, device="cpu",
                       max_steps=1, batch_size=8)
    out = maxent_defense(cfg, m, _toy_data())
    # SD < 1e6 from the first measurement, yet stage 1 ran to the floor and stopped there
    assert out["stage1"]["steps"] == 6 and out["stage1"]["reached_threshold"]
    assert MaxEntConfig(maxent_min_steps=10, maxent_max_steps=5).maxent_min_steps == 5  # the budget wins
    assert MaxEntConfig().maxent_min_steps == 50
    with pytest.raises(Exception):
        MaxEntConfig(maxent_min_steps=-1)
