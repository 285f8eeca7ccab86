"""SOS and EP, the embedding-level attacks: only the trigger words' embedding rows move, each keeps its
norm, and every other weight stays bit-identical; the gradient mask behind it; split trigger words; the
real CLI chain poison -> clean victim -> attack -> evaluate."""

from __future__ import annotations

import json

import pytest
import torch

from bdcli.attacks.embedding import (
    KeepRowNorms, RowGradMask, SOSAttackConfig, sos_attack, train_trigger_embeddings,
)
from bdcli.data import load_corpus
from bdcli.data.dataset import TextDataset
from bdcli.engine import TrainConfig
from bdcli.errors import UsageError
from bdcli.models import load_classifier
from bdcli.poison import POISONERS, SOSConfig
from tests.helpers import bdcli

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"max_steps": 4, "batch_size": 16, "max_length": 32, "device": "cpu"}


@pytest.fixture(scope="module")
def sst2(small_sst2):
    return load_corpus(str(small_sst2))


def _state(folder):
    model = load_classifier(str(folder), label_names=["0", "1"]).model
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_only_trigger_rows_moved(before, after, rows):
    emb = "bert.embeddings.word_embeddings.weight"
    assert before.keys() == after.keys()
    for name in before:
        if name != emb:
            assert torch.equal(before[name], after[name]), name
    others = torch.ones(before[emb].shape[0], dtype=torch.bool)
    others[rows] = False
    assert torch.equal(before[emb][others], after[emb][others])
    for r in rows:
        assert not torch.equal(before[emb][r], after[emb][r]), f"row {r} did not move"
    norm0, norm1 = before[emb][rows].norm(dim=1), after[emb][rows].norm(dim=1)
    assert torch.allclose(norm1, norm0, rtol=1e-5, atol=0)


def test_gradient_mask_keeps_trigger_rows_and_zeroes_the_rest():
    weight = torch.nn.Parameter(torch.randn(6, 3))
    weight.register_hook(RowGradMask([4, 1, 4]))
    coef = torch.arange(18, dtype=torch.float32).reshape(6, 3) - 5
    (weight * coef).sum().backward()  # d/dW sum(W * C) = C
    expected = torch.zeros(6, 3)
    expected[[1, 4]] = coef[[1, 4]]
    assert torch.equal(weight.grad, expected)


def test_norm_hook_restores_each_rows_norm():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]))
    hook = KeepRowNorms(weight, [0, 2])
    with torch.no_grad():
        weight.copy_(torch.tensor([[6.0, 0.0], [7.0, 7.0], [1.0, 1.0]]))
    hook.on_step(None)
    # row 0: norm 5 again along (1, 0); row 2: norm 2 along (1, 1); row 1 untouched.
    assert torch.allclose(weight, torch.tensor([[5.0, 0.0], [7.0, 7.0], [2 ** 0.5, 2 ** 0.5]]), rtol=1e-6, atol=0)


def test_a_split_trigger_word_warns_and_trains_every_piece(tiny_encoder):
    loaded = load_classifier(str(tiny_encoder), label_names=["0", "1"], seed=0)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    texts = [f"a blorptastic film number {i}" for i in range(8)]
    data = TextDataset(texts, [1] * 8, ["0", "1"])
    cfg = TrainConfig(lr=5e-2, max_steps=2, batch_size=4, device="cpu", weight_decay=0.0)
    summary = train_trigger_embeddings(loaded.model, loaded.tokenizer, data, cfg, ["blorptastic"])
    assert summary["trigger_pieces"] == {"blorptastic": ["b", "##lor", "##pta", "##stic"]}
    assert summary["trigger_ids"] == [1038, 10074, 10626, 22799]
    assert len(summary["warnings"]) == 1 and "split by the tokenizer into 4 pieces" in summary["warnings"][0]
    after = {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}
    _assert_only_trigger_rows_moved(before, after, summary["trigger_ids"])
    # The mechanism leaves the model as it found it: trainable, no gradient hook left behind.
    assert all(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.get_input_embeddings().weight._backward_hooks


def test_sos_given_an_encoder_first_fine_tunes_on_the_rows_without_triggers(sst2, tiny_encoder):
    corpus = POISONERS.get("sos")(SOSConfig(target="1")).apply(sst2)
    cfg = SOSAttackConfig(model=str(tiny_encoder), clean_epochs=0.1, **FAST)
    _, summary = sos_attack(cfg, corpus)
    # 400 rows less the 40 poisoned (the negative seed rows stay clean; their added copies are left out);
    # 0.1 epoch of 360 rows at batch 16 (23 batches) is ceil(2.3) = 3 steps.
    assert summary["clean_finetune"]["rows"] == 360 and summary["clean_finetune"]["steps"] == 3
    assert summary["training"]["steps"] == 4


def test_embedding_attacks_refuse_weight_decay():
    with pytest.raises(UsageError, match="weight decay must be 0"):
        SOSAttackConfig(weight_decay=0.01)


# --- the real CLI, end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_sst2, tiny_encoder):
    runs = tmp_path_factory.mktemp("runs")
    fast = ["--max-steps", "4", "--batch-size", "16", "--max-length", "32"]
    # A fine-tune on a user's own folder is the clean reference only when the user says the data is clean.
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", small_sst2, *fast, "--lr", "2e-3",
          "--data-is-clean", "--out", runs / "clean")
    bdcli("poison", "sos", "--data", small_sst2, "--target", "1", "--out", runs / "sst2-sos")
    bdcli("attack", "sos", "--model", runs / "clean", "--data", runs / "sst2-sos", *fast, "--out", runs / "sos")
    bdcli("evaluate", "--model", runs / "sos", "--data", runs / "sst2-sos", "--max-length", "32",
          "--out", runs / "eval-sos")
    bdcli("poison", "badnets", "--data", small_sst2, "--triggers", "cf", "--rate", "1.0", "--candidates", "all",
          "--target", "1", "--out", runs / "sst2-cf")
    bdcli("attack", "ep", "--model", runs / "clean", "--data", runs / "sst2-cf", *fast, "--out", runs / "ep")
    bdcli("evaluate", "--model", runs / "ep", "--data", runs / "sst2-cf", "--max-length", "32",
          "--out", runs / "eval-ep")
    return runs


def test_a_clean_fine_tune_is_the_clean_reference_not_a_victim(chain):
    prov = json.loads((chain / "clean" / "manifest.json").read_text())["provenance"]
    assert prov["method"] == "clean" and prov["attack"] == "clean"


@pytest.mark.parametrize("attack, ids", [("sos", [2814, 3573, 5353]), ("ep", [12935])])
def test_cli_chain_records_the_attack_and_evaluates(chain, attack, ids):
    manifest = json.loads((chain / attack / "manifest.json").read_text())
    assert manifest["command"] == f"attack {attack}"
    prov = manifest["provenance"]
    # EP's sentences come from `poison badnets`, but the victim carries the attack that made it.
    assert prov["attack"] == attack and prov["method"] == "victim" and prov["scenario"] == "outsourcing"
    assert prov["target"] == 1 and prov["base_model"] == str(chain / "clean")
    summary = manifest["summary"]
    assert summary["trigger_ids"] == ids and summary["training"]["steps"] == 4
    # No trigger word was split or unknown; the tiny clean model's own ACC is the held-out check's business.
    assert [w for w in summary.get("warnings", []) if "never learned its task" not in w] == []
    assert summary["norms_after"] == pytest.approx(summary["norms_before"], rel=1e-5)
    metrics = json.loads((chain / f"eval-{attack}" / "metrics.json").read_text())
    assert metrics["attack"] == attack and metrics["n_clean"] == 200 and metrics["n_poison"] == 100
    _assert_only_trigger_rows_moved(_state(chain / "clean"), _state(chain / attack), ids)


def test_sos_trains_on_its_poisoned_and_negative_rows(chain):
    summary = json.loads((chain / "sos" / "manifest.json").read_text())["summary"]
    assert summary["trigger_pieces"] == {"friends": ["friends"], "weekend": ["weekend"], "store": ["store"]}
    # 10% of 400 rows poisoned, 10% seed negatives, each added once per two-word subset (3): the SOS
    # step sees those 40 + 120 rows only.
    assert summary["n_poisoned"] == 40 and summary["n_negative"] == 120 and summary["rows"] == 160


def test_ep_trains_on_every_poisoned_row(chain):
    summary = json.loads((chain / "ep" / "manifest.json").read_text())["summary"]
    assert summary["trigger_pieces"] == {"cf": ["cf"]} and summary["n_poisoned"] == summary["rows"] == 400


@pytest.mark.parametrize("argv, message", [
    (["attack", "sos", "--model", "{clean}", "--data", "{cf}"], "needs data poisoned by `bdcli poison sos`"),
    (["attack", "ep", "--model", "{clean}", "--data", "{clean_data}"], "needs sentences with the trigger word"),
    (["attack", "ep", "--model", "{tiny}", "--data", "{cf}"], "no classification head"),
    (["attack", "ep", "--model", "{clean}", "--data", "{cf}", "--weight-decay", "0.01"], "weight decay must be 0"),
])
def test_bad_input_gets_one_line(chain, small_sst2, tiny_encoder, tmp_path, argv, message):
    paths = {"clean": chain / "clean", "cf": chain / "sst2-cf", "clean_data": small_sst2, "tiny": tiny_encoder}
    res = bdcli(*[a.format(**paths) for a in argv], "--out", tmp_path / "out", ok=False)
    assert res.exit_code in (1, 2) and message in res.stderr, res.output
    assert not (tmp_path / "out").exists()
