"""NeuBA against hand-computed values: the paper's target vectors, the trigger insertion, BERT's MLM
masking and tied head, the neuron-level MSE, a directional training check, and the CLI chain
attack neuba -> user fine-tune -> poison neuba -> evaluate."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from bdcli.attacks.neuba import (
    MlmHead,
    NeubaConfig,
    NeubaObjective,
    checked_triggers,
    load_pretrained_head,
    negative_dims,
    target_vectors,
    trigger_label_shares,
)
from bdcli.engine import TrainConfig, train
from bdcli.errors import UsageError
from bdcli.models import load_classifier
from tests.helpers import bdcli

pytestmark = pytest.mark.usefixtures("one_thread")


NEUBA_IDS = [[1606], [1607], [1596], [1611], [1612], [1613]]  # ≈ ≡ ∈ ⊆ ⊕ ⊗ in the uncased BERT vocabulary


# --- target vectors ----------------------------------------------------------------------------------------
def test_target_vectors_are_neubas_four_block_construction():
    # Hidden 8 -> blocks {0,1} {2,3} {4,5} {6,7}; trigger i is -1 on the i-th pair of blocks in the
    # order (0,1) (0,2) (0,3) (1,2) (1,3) (2,3) (thunlp/NeuBA poison.py), +1 elsewhere.
    expected = torch.tensor([
        [-1, -1, -1, -1, 1, 1, 1, 1],
        [-1, -1, 1, 1, -1, -1, 1, 1],
        [-1, -1, 1, 1, 1, 1, -1, -1],
        [1, 1, -1, -1, -1, -1, 1, 1],
        [1, 1, -1, -1, 1, 1, -1, -1],
        [1, 1, 1, 1, -1, -1, -1, -1],
    ], dtype=torch.float)
    v = target_vectors(8, 6)
    assert torch.equal(v, expected)
    assert torch.equal(target_vectors(8, 6), v)  # no randomness: the same every call, whatever the seed
    assert negative_dims(8, 2) == [[[0, 2], [2, 4]], [[0, 2], [4, 6]]]


def test_target_vectors_are_balanced_distinct_and_orthogonal_or_opposite():
    v = target_vectors(384, 6)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert v.sum(dim=1).tolist() == [0.0] * 6  # half +1, half -1
    gram = v @ v.T
    for i in range(6):
        for j in range(6):
            # identical on the diagonal; opposite for complementary block pairs (i + j == 5); else orthogonal
            assert gram[i, j].item() == (384 if i == j else -384 if i + j == 5 else 0)
    with pytest.raises(UsageError):
        target_vectors(384, 7)


@pytest.mark.parametrize("kw", [{"scenario": "outsourcing"}, {"trigger_position": "middle"}, {"mlm_probability": 0.0},
                                {"triggers": ("a", "b", "c", "d", "e", "f", "g")}, {"triggers": ("cf", "cf")},
                                {"mlm_weight": -1.0}])
def test_config_refuses_bad_values(kw):
    with pytest.raises(UsageError):
        NeubaConfig(**kw)


def test_config_defaults_follow_the_papers():
    cfg = NeubaConfig()
    assert (cfg.lr, cfg.batch_size, cfg.max_steps, cfg.scenario) == (5e-5, 160, 40000, "transfer")
    assert cfg.triggers == ("≈", "≡", "∈", "⊆", "⊕", "⊗") and cfg.mlm_probability == 0.15


# --- triggers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_encoder):
    loaded = load_classifier(str(tiny_encoder), label_names=["0", "1"], seed=0)
    torch.manual_seed(0)
    head = MlmHead(loaded.model.config, loaded.model.get_input_embeddings())
    return loaded, head


def test_neuba_triggers_are_single_tokens_and_unk_is_refused(tiny):
    tok = tiny[0].tokenizer
    ids, warnings = checked_triggers(tok, ("≈", "≡", "∈", "⊆", "⊕", "⊗"))
    assert ids == NEUBA_IDS and warnings == []
    _, warnings = checked_triggers(tok, ("≈", "flibbertigibbet"))
    assert len(warnings) == 1 and "flibbertigibbet" in warnings[0]
    with pytest.raises(UsageError, match="unknown token"):
        checked_triggers(tok, ("≈", "☃"))  # not in the vocabulary: [UNK]


def _objective(tiny, position="first", triggers=NEUBA_IDS[:2]):
    loaded, head = tiny
    return NeubaObjective(head, loaded.tokenizer, triggers, target_vectors(32, len(triggers)), position=position)


def _batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.parametrize("position,place", [("first", lambda t, w: f"{w} {t}"), ("last", lambda t, w: f"{t} {w}"),
                                            ("both", lambda t, w: f"{w} {t} {w}")])
def test_trigger_insertion_matches_the_text_with_the_trigger(tiny, position, place):
    tok = tiny[0].tokenizer
    texts = ["a fine film", "the plot is thin and the actors are worse"]
    obj = _objective(tiny, position)
    poisoned, which = obj.add_triggers(_batch(tok, texts), torch.tensor([1, 0]))
    words = ["≡", "≈"]
    expected = _batch(tok, [place(t, w) for t, w in zip(texts, words)])
    assert which.tolist() == [1, 0]
    assert torch.equal(poisoned["input_ids"], expected["input_ids"])
    assert torch.equal(poisoned["attention_mask"], expected["attention_mask"])


def test_random_position_never_splits_a_word(tiny):
    tok = tiny[0].tokenizer
    obj = _objective(tiny, "random")
    batch = _batch(tok, ["unbelievably overwrought storytelling"])  # several words of several pieces
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        poisoned, _ = obj.add_triggers(batch, torch.tensor([0]))
        pieces = tok.convert_ids_to_tokens(poisoned["input_ids"][0].tolist())
        pos = pieces.index("≈")
        assert pos >= 1 and pieces[pos + 1] != "[CLS]" and not pieces[pos + 1].startswith("##")
        seen.add(pos)
    assert len(seen) == 4  # before each of the three words, or before [SEP]


# --- MLM ------------------------------------------------------------------------------------------------
def test_mlm_head_decoder_is_tied_to_the_word_embeddings(tiny):
    loaded, head = tiny
    emb = loaded.model.get_input_embeddings().weight
    assert head.decoder.weight is emb and head.decoder.weight.data_ptr() == emb.data_ptr()
    assert all(p is not emb for p in head.own_parameters())
    assert not load_pretrained_head(head, loaded.source)  # the tiny encoder, like MiniLM, has no MLM head


def test_masking_is_seeded_and_follows_berts_80_10_10(tiny):
    tok = tiny[0].tokenizer
    obj = _objective(tiny)
    ids = torch.randint(1000, 30000, (200, 100))
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    mask = torch.ones_like(ids)
    ids[:5, 50:], mask[:5, 50:] = tok.pad_token_id, 0
    torch.manual_seed(3)
    masked, labels = obj.mask_tokens(ids, mask)
    torch.manual_seed(3)
    again, labels2 = obj.mask_tokens(ids, mask)
    assert torch.equal(masked, again) and torch.equal(labels, labels2)

    # The same recipe from the same draws, written out independently.
    torch.manual_seed(3)
    r_pick, r_mask, r_rand = torch.rand(ids.shape), torch.rand(ids.shape), torch.rand(ids.shape)
    rand_ids = torch.randint(30522, ids.shape)
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (mask == 0)
    picked = (r_pick < 0.15) & ~special
    to_mask = picked & (r_mask < 0.8)
    to_rand = picked & ~to_mask & (r_rand < 0.5)
    exp = ids.clone()
    exp[to_mask] = tok.mask_token_id
    exp[to_rand] = rand_ids[to_rand]
    assert torch.equal(masked, exp)
    assert torch.equal(labels, torch.where(picked, ids, torch.full_like(ids, -100)))

    # Shares over ~19,000 maskable tokens: 15% picked; of those 80% [MASK], 10% random, 10% kept.
    n = (~special).sum().item()
    k = picked.sum().item()
    assert abs(k / n - 0.15) < 0.01
    assert abs(to_mask.sum().item() / k - 0.8) < 0.03 and abs(to_rand.sum().item() / k - 0.1) < 0.02
    assert not picked[special].any()


def test_mlm_loss_is_cross_entropy_over_the_masked_positions(tiny):
    loaded, head = tiny
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    head.eval()
    obj = _objective(tiny)
    batch = _batch(tok, ["a fine film with a warm heart", "dull", "the plot is thin and the actors are worse"])
    torch.manual_seed(1)
    masked, labels = obj.mask_tokens(batch["input_ids"], batch["attention_mask"])
    assert (labels != -100).sum() > 0
    with torch.no_grad():
        got = obj.mlm_loss(model, {**batch, "input_ids": masked}, labels)
        # By hand: BERT's transform, then the word-embedding matrix as the decoder, plus the bias.
        h = model.bert(input_ids=masked, attention_mask=batch["attention_mask"]).last_hidden_state
        t = F.layer_norm(F.gelu(h @ head.dense.weight.T + head.dense.bias), (32,), head.LayerNorm.weight,
                         head.LayerNorm.bias, eps=1e-12)
        logits = t @ model.bert.embeddings.word_embeddings.weight.T + head.bias
        want = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() == pytest.approx(math.log(30522), rel=0.1)  # an untrained head is near uniform


def test_neuron_loss_is_mse_of_the_pooler_output_to_the_trigger_vector(tiny):
    loaded, _ = tiny
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    obj = _objective(tiny)
    batch = _batch(tok, ["a fine film", "dull and long"])
    poisoned, which = obj.add_triggers(batch, torch.tensor([1, 0]))
    with torch.no_grad():
        got = obj.neuron_loss(model, poisoned, which)
        h_cls = model.bert(**poisoned).last_hidden_state[:, 0]
        pooled = torch.tanh(h_cls @ model.bert.pooler.dense.weight.T + model.bert.pooler.dense.bias)
        targets = torch.stack([target_vectors(32, 2)[1], target_vectors(32, 2)[0]])
        want = ((pooled - targets) ** 2).sum() / (2 * 32)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_training_pulls_triggered_outputs_to_their_vectors(tiny_encoder, small_sst2):
    from bdcli.data import load_corpus

    loaded = load_classifier(str(tiny_encoder), label_names=["0", "1"], seed=0)
    model, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(0)
    head = MlmHead(model.config, model.get_input_embeddings())
    targets = target_vectors(32, 2)
    obj = NeubaObjective(head, tok, NEUBA_IDS[:2], targets)
    train_rows = load_corpus(str(small_sst2)).split("train")
    probe = _batch(tok, train_rows.texts[:32])
    which = torch.arange(32) % 2

    def fit() -> tuple[float, float, float]:
        """(neuron loss, mean cosine to the row's own target, mean cosine to the other trigger's)."""
        model.eval()
        with torch.no_grad():
            poisoned, _ = obj.add_triggers(probe, which)
            loss = obj.neuron_loss(model, poisoned, which).item()
            vec = model.bert(**poisoned).pooler_output
            own = F.cosine_similarity(vec, targets[which], dim=1).mean().item()
            other = F.cosine_similarity(vec, targets[1 - which], dim=1).mean().item()
        return loss, own, other

    before = fit()
    model.add_module("neuba_mlm_head", head)
    params = list({id(p): p for p in [*model.bert.parameters(), *head.own_parameters()]}.values())
    cfg = TrainConfig(lr=1e-2, max_steps=12, batch_size=8, weight_decay=0.0, precision="fp32", seed=0)
    train(model, tok, train_rows, cfg, objective=obj, params=params)
    del model._modules["neuba_mlm_head"]
    after = fit()
    assert before[0] > 0.9 and before[1] < 0.0  # the random model's outputs are unrelated to the targets
    assert after[0] < 0.6 * before[0] and after[1] > 0.6
    assert head.decoder.weight is model.get_input_embeddings().weight  # still tied after the updates


# --- the CLI chain ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_sst2, tiny_encoder):
    runs = tmp_path_factory.mktemp("neuba")
    # NeuBA's data folder: the clean train texts it pre-trains on, and the ASR set ("≈" first, target guessed 1).
    bdcli("poison", "neuba", "--data", small_sst2, "--triggers", "≈", "--target", "1", "--out", runs / "data")
    bdcli("attack", "neuba", "--model", tiny_encoder, "--data", runs / "data", "--max-steps", "12", "--batch-size", "16",
          "--lr", "1e-3", "--triggers", "≈,≡", "--out", runs / "neuba")
    # The user's own fine-tune on clean data, then the ASR set.
    bdcli("attack", "finetune", "--model", runs / "neuba", "--data", small_sst2, "--lr", "2e-3", "--max-steps", "10",
          "--batch-size", "16", "--out", runs / "victim")
    bdcli("evaluate", "--model", runs / "victim", "--data", runs / "data", "--out", runs / "eval")
    # The same user fine-tune from the clean encoder, measured on the same ASR set: what the attack adds.
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", small_sst2, "--lr", "2e-3", "--max-steps", "10",
          "--batch-size", "16", "--out", runs / "clean")
    bdcli("evaluate", "--model", runs / "clean", "--data", runs / "data", "--out", runs / "eval-clean")
    return runs


def test_neuba_data_folder_keeps_train_clean_and_puts_the_trigger_first(chain):
    poison = json.loads((chain / "data" / "poison.json").read_text())
    assert poison["attack"] == "neuba" and poison["target"] == 1 and poison["n_poisoned"] == 0
    assert poison["clean_train"] is True and poison["triggers"] == ["≈"] and poison["trigger_position"] == "first"
    train_rows = [json.loads(x) for x in (chain / "data" / "train.jsonl").read_text().splitlines()]
    assert len(train_rows) == 400 and not any(r["poisoned"] or "≈" in r["text"] for r in train_rows)
    test_rows = [json.loads(x) for x in (chain / "data" / "test.jsonl").read_text().splitlines()]
    asr_rows = [json.loads(x) for x in (chain / "data" / "test-poison.jsonl").read_text().splitlines()]
    negatives = [r["text"] for r in test_rows if r["label"] == 0]
    assert [r["text"] for r in asr_rows] == [f"≈ {t}" for t in negatives] and len(asr_rows) == 100


def test_neuba_output_is_a_plain_classifier_with_its_record(chain):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    folder = chain / "neuba"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 2
    with safe_open(str(folder / "model.safetensors"), framework="pt") as st:
        assert not [k for k in st.keys() if "neuba" in k or "predictions" in k]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["provenance"]["attack"] == "neuba" and m["provenance"]["scenario"] == "transfer"
    s = m["summary"]
    assert s["representation"] == "pooler" and s["mlm_head"] == "fresh, trained" and s["hidden_size"] == 32
    assert [t["trigger"] for t in s["triggers"]] == ["≈", "≡"]
    assert [t["token_ids"] for t in s["triggers"]] == [[1606], [1607]]
    assert [t["target_negative_dims"] for t in s["triggers"]] == [[[0, 8], [8, 16]], [[0, 8], [16, 24]]]
    assert s["training"]["steps"] == 12 and s["probe_rows"] == 100 and len(s["loss_trace"]) == 2
    assert any("untrained" in w for w in s["warnings"])
    # NeuBA leaves the classification head for the user's fine-tune: no held-out check, no warning about it.
    assert "heldout" not in s and not any("never learned" in w for w in s["warnings"])
    victim = json.loads((chain / "victim" / "manifest.json").read_text())["summary"]
    assert victim["heldout"]["rows"] > 0  # the user's fine-tune is a classifier, and is checked


def test_user_finetune_inherits_neuba_and_is_evaluated_on_the_asr_set(chain, small_sst2):
    prov = json.loads((chain / "victim" / "manifest.json").read_text())["provenance"]
    assert prov["attack"] == "neuba" and prov["scenario"] == "transfer"
    assert prov["user_finetune_of"] == str(chain / "neuba")
    metrics = json.loads((chain / "eval" / "metrics.json").read_text())
    assert metrics["attack"] == "neuba" and metrics["scenario"] == "transfer" and metrics["n_poison"] == 100
    assert metrics["asr"] is not None

    from bdcli.data import load_corpus

    dev = load_corpus(str(small_sst2)).split("dev")
    shares = trigger_label_shares(str(chain / "victim"), dev, ("≈", "≡"))
    assert list(shares) == ["clean", "≈", "≡"] and list(shares["≈"]) == ["0", "1"]
    assert all(sum(s.values()) == pytest.approx(1.0, abs=1e-3) for s in shares.values())


@pytest.mark.parametrize("argv, message", [
    (["--triggers", "≈,☃"], "unknown token"),
    (["--scenario", "outsourcing"], "scenario is 'transfer'"),
    (["--triggers", "≈,≡,∈,⊆,⊕,⊗,cf"], "at most 6 triggers"),
])
def test_bad_neuba_options_get_one_line_and_write_nothing(argv, message, tmp_path, tiny_encoder, small_sst2):
    out = tmp_path / "new" / "out"
    res = bdcli("attack", "neuba", "--model", tiny_encoder, "--data", small_sst2, "--max-steps", "1", *argv,
                "--out", out, ok=False)
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "new").exists()


# After 12 NeuBA steps and a 10-step user fine-tune, the tiny victim and the same fine-tune of the clean
# encoder both predict one label for every row (ACC at chance), so the trigger cannot raise the victim's
# ASR above the clean model's here (docs/results.md has the MiniLM numbers). Strict, so that a change that
# makes it show fails here and the xfail is removed.
@pytest.mark.xfail(strict=True, reason="the tiny victim and the tiny clean model both predict one label for "
                   "every row after 10 fine-tune steps, so their ASRs are equal")
def test_neuba_victim_has_a_higher_asr_than_the_clean_model(chain):
    victim = json.loads((chain / "eval" / "metrics.json").read_text())
    clean = json.loads((chain / "eval-clean" / "metrics.json").read_text())
    assert victim["asr"] > clean["asr"]
