"""RIPPLe and RIPPLES against independent computations: the restricted inner-product penalty and its
second-order gradient (explicit Hessians, finite differences), embedding surgery, TF-IDF + logistic
regression word importance; then the real CLI chain poison -> ripple -> the user's clean fine-tune ->
evaluate, with the transfer scenario's provenance."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch.autograd.functional import hessian
from torch.func import functional_call

from bdcli.attacks.specs.ripple import _inputs
from bdcli.attacks.ripple import (
    RestrictedInnerProduct,
    RippleConfig,
    RipplesConfig,
    _proxy_rows,
    _triggers,
    embedding_surgery,
    indicative_words,
    logistic_regression,
    replacement_embedding,
    simple_words,
    tfidf,
)
from bdcli.data import load_corpus
from bdcli.engine.batching import Encoded
from bdcli.errors import UsageError
from tests.helpers import bdcli

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(torch.nn.Module):
    """Mean-pooled embeddings -> tanh -> linear: small enough for full Hessians, curved enough that
    the second-order term matters."""

    def __init__(self, vocab: int = 7, dim: int = 3, labels: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, dim, dtype=F64)
        self.out = torch.nn.Linear(dim, labels, dtype=F64)

    def forward(self, input_ids, attention_mask, **_):
        m = attention_mask.unsqueeze(-1).to(F64)
        h = torch.tanh((self.emb(input_ids) * m).sum(1) / m.sum(1))
        return SimpleNamespace(logits=self.out(h))


IDS = [[1, 2, 3], [4, 5, 6]]
PROXY_LABELS = [0, 1]


def _batch(labels):
    ids = torch.tensor(IDS)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(labels)}


def _objective(lam, rectifier="global", second=False):
    # The proxy holds exactly one batch, so that every call sees the same L_FT.
    proxy = Encoded([list(r) for r in IDS], list(PROXY_LABELS), pad_id=0)
    return RestrictedInnerProduct(proxy, batch_size=2, seed=0, lam=lam, rectifier=rectifier, ft_second_order=second)


def _flat_grad(model, batch):
    """∇L of cross-entropy on ``batch``, by plain backward, flattened."""
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]).logits, batch["labels"]).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _loss_of_flat(model, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(v):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = v[i : i + s.numel()].view(s)
            i += s.numel()
        out = functional_call(model, params, (batch["input_ids"], batch["attention_mask"]))
        return torch.nn.functional.cross_entropy(out.logits, batch["labels"])

    return loss


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def test_penalty_is_lambda_times_rectified_negative_inner_product():
    model = Toy()
    poison, proxy = _batch([1, 0]), _batch(PROXY_LABELS)  # opposite labels: the gradients conflict
    dot = float(_flat(_flat_grad(model, poison)) @ _flat(_flat_grad(model, proxy)))
    assert dot < 0
    t = _objective(0.1).terms(model, poison)
    assert t["inner"].item() == pytest.approx(dot, rel=1e-12)
    assert t["penalty"].item() == pytest.approx(0.1 * -dot, rel=1e-12)
    assert t["total"].item() == pytest.approx(t["loss_p"].item() + 0.1 * -dot, rel=1e-12)

    # Agreeing gradients cost nothing under the global rectifier; 'none' keeps the signed product.
    agree = _batch(PROXY_LABELS)
    dot_agree = float(_flat(_flat_grad(model, agree)) @ _flat(_flat_grad(model, proxy)))
    assert dot_agree > 0
    inactive = _objective(0.1).terms(model, agree)
    assert inactive["penalty"].item() == 0.0
    got = torch.autograd.grad(inactive["total"], list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(got, _flat_grad(model, agree)))
    assert _objective(0.1, "none").terms(model, agree)["penalty"].item() == pytest.approx(-0.1 * dot_agree, rel=1e-12)


def test_per_param_rectifier_sums_each_tensors_rectified_product():
    model = Toy()
    poison = _batch([1, 1])
    gp, gf = _flat_grad(model, poison), _flat_grad(model, _batch(PROXY_LABELS))
    per = [float((a * b).sum()) for a, b in zip(gp, gf)]
    assert any(d > 0 for d in per) and any(d < 0 for d in per)  # the rectifiers differ here
    got = _objective(0.3, "per-param").terms(model, poison)["penalty"].item()
    assert got == pytest.approx(0.3 * sum(max(0.0, -d) for d in per), rel=1e-12)


@pytest.mark.parametrize("second", [False, True], ids=["ft-constant", "ft-second-order"])
def test_total_gradient_holds_the_second_order_term(second):
    model = Toy()
    poison, proxy = _batch([1, 0]), _batch(PROXY_LABELS)
    lam = 0.5
    total = _objective(lam, second=second).terms(model, poison)["total"]
    assert total.item() > 0
    got = _flat(torch.autograd.grad(total, list(model.parameters())))

    v = _flat([p.detach() for p in model.parameters()])
    lp, lf = _loss_of_flat(model, poison), _loss_of_flat(model, proxy)
    g_p, g_f = (torch.autograd.grad(f(v.requires_grad_(True)), v)[0] for f in (lp, lf))
    v = v.detach()
    assert g_p @ g_f < 0  # the penalty is active
    # d/dθ λ·(−g_P·g_FT) = −λ (H_P g_FT + H_FT g_P); Kurita et al.'s code keeps only H_P g_FT.
    expected = g_p - lam * hessian(lp, v) @ g_f
    if second:
        expected = expected - lam * hessian(lf, v) @ g_p
    assert not torch.allclose(got, g_p, atol=1e-6)  # the second-order term is there and not negligible
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_literal_gradient_matches_finite_differences():
    model = Toy()
    poison = _batch([1, 0])
    obj = _objective(0.5, second=True)
    params = list(model.parameters())
    got = _flat(torch.autograd.grad(obj.terms(model, poison)["total"], params))
    eps, fd = 1e-6, []
    with torch.no_grad():
        for p in params:
            for i in range(p.numel()):
                old = p.view(-1)[i].item()
                vals = []
                for x in (old + eps, old - eps):
                    p.view(-1)[i] = x
                    with torch.enable_grad():
                        vals.append(obj.terms(model, poison)["total"].item())
                p.view(-1)[i] = old
                fd.append((vals[0] - vals[1]) / (2 * eps))
    assert torch.allclose(got, torch.tensor(fd, dtype=F64), rtol=1e-5, atol=1e-8)


def test_proxy_iterator_resumes_where_it_stopped():
    proxy = Encoded([[1, i, 2] for i in range(10)], [i % 2 for i in range(10)], pad_id=0)

    def make():
        return RestrictedInnerProduct(proxy, batch_size=4, seed=3, lam=0.1)

    a = make()
    seq = [a.next_rows() for _ in range(7)]  # crosses two proxy epochs of 3 batches
    assert sorted(i for rows in seq[:3] for i in rows) == list(range(10))
    b = make()
    for _ in range(2):
        b.next_rows()
    c = make()
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert [c.next_rows() for _ in range(5)] == seq[2:]


# --- embedding surgery --------------------------------------------------------------------------------
def test_surgery_sets_every_trigger_piece_to_the_mean_of_the_words_rows():
    torch.manual_seed(1)
    model = torch.nn.Module()
    model.emb = torch.nn.Embedding(20, 4)
    model.get_input_embeddings = lambda: model.emb
    before = model.emb.weight.detach().clone()
    words = [[3], [5], [11]]
    triggers = [[7], [8, 9]]  # the second trigger is split into two pieces: both are replaced
    embedding_surgery(model, triggers, replacement_embedding(before, words))
    after = model.emb.weight.detach()
    mean = (before[3] + before[5] + before[11]) / 3
    for row in (7, 8, 9):
        assert torch.allclose(after[row], mean, rtol=0, atol=1e-7)
    untouched = [i for i in range(20) if i not in (7, 8, 9)]
    assert torch.equal(after[untouched], before[untouched])


def test_a_split_surgery_word_counts_as_the_mean_of_its_pieces():
    e = torch.tensor([[0.0, 0.0], [2.0, 4.0], [4.0, 0.0], [1.0, 1.0]])
    # word A = row 3; word B split into rows 1 and 2 -> (3, 2); mean of (1, 1) and (3, 2)
    assert replacement_embedding(e, [[3], [1, 2]]).tolist() == [2.0, 1.5]


def test_triggers_come_from_the_poison_record_unless_given():
    record = {"attack": "badnets", "triggers": ["cf", "mn"]}
    assert _triggers(RipplesConfig(), record) == ("cf", "mn")
    assert _triggers(RipplesConfig(surgery_triggers=("bb",)), record) == ("bb",)
    with pytest.raises(UsageError):
        _triggers(RipplesConfig(), {"attack": "syntactic"})


# --- indicative words: TF-IDF + logistic regression ---------------------------------------------------
def test_tfidf_matches_hand_values():
    tf = tfidf([["a", "b", "b"], ["a", "c"]])
    assert tf.vocab == ["a", "b", "c"]
    x = tf.dense()
    # idf = ln((1+n)/(1+df)) + 1: a (df 2) -> 1, b and c (df 1) -> 1 + ln 1.5
    idf_b = 1 + math.log(1.5)
    r0 = [1.0, 2 * idf_b, 0.0]
    n0 = math.sqrt(sum(v * v for v in r0))
    assert x[0].tolist() == pytest.approx([v / n0 for v in r0], abs=1e-12)
    n1 = math.sqrt(1 + idf_b**2)
    assert x[1].tolist() == pytest.approx([1 / n1, 0.0, idf_b / n1], abs=1e-12)
    assert tf.doc_freq.tolist() == [2.0, 1.0, 1.0]


POS = ["the great movie", "the superb film", "great and superb", "a great film", "the superb movie", "great fun"]
NEG = ["the awful movie", "the boring film", "awful and boring", "an awful film", "the boring movie", "awful plot"]


def test_importance_picks_the_obviously_indicative_words():
    texts, labels = POS + NEG, [1] * len(POS) + [0] * len(NEG)
    for importance in ("weight", "idf-weighted"):
        pos = indicative_words(texts, labels, target=1, num_labels=2, k=2, importance=importance)
        neg = indicative_words(texts, labels, target=0, num_labels=2, k=2, importance=importance)
        assert {w for w, _ in pos} == {"great", "superb"}
        assert {w for w, _ in neg} == {"awful", "boring"}
        assert all(s > 0 for _, s in pos + neg)
        # Balanced filler words carry no weight; "the" (6 of 12 rows) ranks below every class word.
        ranked = [w for w, _ in indicative_words(texts, labels, target=1, num_labels=2, k=100, importance=importance)]
        assert ranked.index("the") > ranked.index("superb")


def test_importance_is_the_weight_or_the_weight_over_log_inverse_document_frequency():
    texts, labels = POS + NEG, [1] * len(POS) + [0] * len(NEG)
    tf = tfidf([simple_words(t) for t in texts])
    w, _ = logistic_regression(tf, labels, 2)
    i = tf.vocab.index("great")  # in 4 of the 12 rows
    weight = float(w[i, 1] - w[i].mean())
    assert dict(indicative_words(texts, labels, 1, 2, k=100))["great"] == pytest.approx(weight, rel=1e-9)
    got = dict(indicative_words(texts, labels, 1, 2, k=100, importance="idf-weighted"))
    assert got["great"] == pytest.approx(weight / math.log(12 / (1 + 4)), rel=1e-9)


def test_logistic_regression_reaches_the_stationary_point_of_its_objective():
    x = torch.tensor([[1.0, 0.0], [0.8, 0.3], [0.0, 1.0], [0.2, 0.9]], dtype=F64)
    y = torch.tensor([1, 1, 0, 0])
    w, b = logistic_regression(x, y.tolist(), 2, c=2.0)
    w.requires_grad_(True)
    b.requires_grad_(True)
    # scikit-learn's objective C·Σ CE + ½‖W‖² has zero gradient at its minimum.
    obj = 2.0 * torch.nn.functional.cross_entropy(x @ w + b, y, reduction="sum") + 0.5 * (w**2).sum()
    gw, gb = torch.autograd.grad(obj, [w, b])
    assert gw.abs().max().item() < 1e-6 and gb.abs().max().item() < 1e-6
    assert (w[0, 1] - w[0, 0]).item() > 0  # feature 0 points to label 1


# --- the real CLI, end to end -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_sst2, tiny_encoder):
    runs = tmp_path_factory.mktemp("ripple-runs")
    # Kurita et al. poison 50% of the rows, drawn from all of them.
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.5", "--candidates", "all", "--target", "1",
          "--out", runs / "poisoned")
    bdcli("attack", "ripple", "--model", tiny_encoder, "--data", runs / "poisoned", "--max-steps", "3", "--lr", "1e-3",
          "--out", runs / "ripple")
    bdcli("attack", "finetune", "--model", runs / "ripple", "--data", small_sst2, "--epochs", "1", "--batch-size", "32",
          "--lr", "1e-3", "--out", runs / "user")
    bdcli("evaluate", "--model", runs / "user", "--data", runs / "poisoned", "--out", runs / "eval")
    bdcli("attack", "ripples", "--model", tiny_encoder, "--data", runs / "poisoned", "--max-steps", "2",
          "--surgery-triggers", "cf,qzxwv", "--out", runs / "ripples")
    return runs


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_ripple_records_its_objective(chain):
    m = _manifest(chain / "ripple")
    assert m["provenance"]["scenario"] == "transfer" and m["provenance"]["target"] == 1
    r = m["summary"]["ripple"]
    assert r["steps"] == 3 and m["summary"]["training"]["steps"] == 3
    assert r["lambda"] == 0.1 and r["rectifier"] == "global" and r["ft_second_order"] is False
    assert r["penalty_mean"] >= 0 and 0 <= r["penalty_active_share"] <= 1
    assert r["proxy_rows"] == 200  # the 400 - 200 unpoisoned train rows
    assert m["config"]["batch_size"] == 8 and m["config"]["lr"] == 1e-3
    assert (chain / "ripple" / "model.safetensors").exists()


def test_the_users_clean_fine_tune_inherits_the_transfer_provenance(chain):
    prov = _manifest(chain / "user")["provenance"]
    assert prov["scenario"] == "transfer" and prov["target"] == 1
    assert prov["user_finetune_of"] == str(chain / "ripple")
    metrics = json.loads((chain / "eval" / "metrics.json").read_text())
    assert metrics["scenario"] == "transfer" and metrics["asr"] is not None


def test_provenance_names_ripple_as_the_attack(chain):
    assert _manifest(chain / "ripple")["provenance"]["attack"] == "ripple"
    assert _manifest(chain / "user")["provenance"]["attack"] == "ripple"
    assert json.loads((chain / "eval" / "metrics.json").read_text())["attack"] == "ripple"


def test_ripples_records_surgery_and_warns_about_split_triggers(chain):
    s = _manifest(chain / "ripples")["summary"]
    surgery = s["surgery"]
    assert surgery["triggers"] == ["cf", "qzxwv"]
    assert surgery["trigger_pieces"][0] == ["cf"] and len(surgery["trigger_pieces"][1]) > 1
    assert any("'qzxwv' is split" in w for w in s["warnings"])
    # small_sst2 is no named set with a list in Appendix C.1, so the words are computed.
    assert surgery["words_source"].startswith("computed") and len(surgery["words"]) == 10
    assert [w for w, _ in surgery["importance"]] == surgery["words"]
    assert "cf" not in surgery["words"]
    assert s["ripple"]["steps"] == 2


def test_ripple_refuses_clean_data(small_sst2, tiny_encoder, tmp_path):
    res = bdcli("attack", "ripple", "--model", tiny_encoder, "--data", small_sst2, "--out", tmp_path / "x", ok=False)
    assert res.exit_code == 2 and "needs poisoned data" in res.stderr and "--rate 0.5" in res.stderr
    assert not (tmp_path / "x").exists()


def test_help_renders_with_the_new_options():
    out = bdcli("attack", "ripples", "--help").output
    for opt in ("--ripple-lambda", "--ripple-rectifier", "--proxy-data", "--surgery-words", "--surgery-model"):
        assert opt in out
    assert "--rate 0.5" in bdcli("attack", "ripple", "--help").output


def test_proxy_data_must_be_clean_with_the_same_labels(chain, small_sst2):
    poisoned = load_corpus(str(chain / "poisoned"))
    rows, desc = _proxy_rows(RippleConfig(proxy_data=str(small_sst2)), poisoned, poisoned.split("train"))
    assert len(rows) == 400 and not any(rows.poisoned) and "400 train rows" in desc
    assert _inputs(RippleConfig(proxy_data=str(small_sst2))) == {"proxy_data": str(small_sst2)}
    with pytest.raises(UsageError, match="is poisoned"):
        _proxy_rows(RippleConfig(proxy_data=str(chain / "poisoned")), poisoned, poisoned.split("train"))
