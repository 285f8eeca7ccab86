"""GBA (Gradient Broadcast Adaptation) against hand-computed values: eq. 1's scoring over the whole
vocabulary, the eq. 3-4 broadcast on every vocabulary row, the soft template, the error contract, and
`bdcli defend gba` -> `bdcli evaluate` end to end."""

from __future__ import annotations

import copy
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from bdcli.data.dataset import TextDataset
from bdcli.defenses.gba import GBAConfig, GradientBroadcast, broadcast_pull, default_class_tokens, gba_objective
from bdcli.engine import TrainConfig, train
from bdcli.errors import BdcliError, UsageError
from bdcli.models import load_classifier
from bdcli.models.mlm_head import MlmHead
from bdcli.models.prompt import PromptClassifier, build_prompt_classifier
from tests.helpers import bdcli

TERRIBLE, GOOD, CF = 6659, 2204, 12935  # uncased BERT ids of the class tokens and the trigger "cf"
TEXTS = ["a gorgeous , witty film", "dull", "the plot is thin but the acting holds it together"]


def prompt_model(tiny_encoder, *, width=2, temperature=1.0, tokens=("terrible", "good")) -> PromptClassifier:
    loaded = load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=0)
    pm = build_prompt_classifier(loaded.model.base_model, loaded.tokenizer, tokens, width=width, temperature=temperature, seed=0)
    pm.tokenizer = loaded.tokenizer
    return pm.eval()  # no dropout: hand and model passes must see the same network


def hand_prompt(pm: PromptClassifier, ids: list[int], text_embeds: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[CLS] x [SEP] [a]^ceil(w/2) [MASK] [a]^floor(w/2), built by hand; returns the embeddings and the
    [MASK] position."""
    E = pm.word_embeddings.weight
    k = (pm.width + 1) // 2
    seq = torch.cat([text_embeds, pm.template[:k], E[pm.tokenizer.mask_token_id][None], pm.template[k:]])
    return seq, len(ids) + k


def hand_vocab_logprobs(pm: PromptClassifier, text: str) -> torch.Tensor:
    ids = pm.tokenizer(text)["input_ids"]
    seq, pos = hand_prompt(pm, ids, pm.word_embeddings.weight[ids])
    h = pm.encoder(inputs_embeds=seq[None]).last_hidden_state[0, pos]
    return torch.log_softmax(h @ pm.word_embeddings.weight.T / pm.temperature, dim=-1)


@pytest.mark.parametrize("width", [2, 3])
def test_eq1_scores_the_mask_state_against_the_whole_vocabulary(tiny_encoder, width):
    pm = prompt_model(tiny_encoder, width=width, temperature=0.7)
    assert pm.template.shape == (width, 32)
    batch = pm.tokenizer(TEXTS, padding=True, return_tensors="pt")  # right-padded, three lengths
    with torch.no_grad():
        out = pm(**batch)
        for b, text in enumerate(TEXTS):
            logp = hand_vocab_logprobs(pm, text)  # log softmax(h . E / T) over all 30,522 rows
            assert torch.allclose(out.vocab_logprobs[b], logp, atol=2e-5)
            p = logp.exp()
            # logits = log p(F(c)|x) over V; their softmax is p restricted to the class tokens, renormalised.
            assert torch.allclose(out.logits[b], logp[[TERRIBLE, GOOD]], atol=2e-5)
            renorm = p[[TERRIBLE, GOOD]] / p[[TERRIBLE, GOOD]].sum()
            assert torch.allclose(out.logits[b].softmax(-1), renorm, atol=1e-5)


def test_broadcast_pull_is_eq4_row_by_row():
    torch.manual_seed(1)
    B, L, V, d = 2, 4, 7, 3
    logp = torch.log_softmax(torch.randn(B, V), dim=-1)
    y = torch.tensor([5, 2])
    grads = torch.randn(B, L, d)
    mask = torch.tensor([[False, True, True, False], [False, True, False, False]])  # x_b's own tokens
    q = broadcast_pull(logp, y, grads, mask)
    for w in range(V):
        want = torch.zeros(d)
        for b in range(B):
            n = int(mask[b].sum())
            mean_grad = sum(grads[b, t] for t in range(L) if mask[b, t]) / n
            want += (logp[b, w].exp() / logp[b, y[b]].exp()) * mean_grad
        assert torch.allclose(q[w], want, atol=1e-6)


def test_one_step_gives_every_vocabulary_row_the_eq4_update(tiny_encoder):
    lam, lr = 0.5, 1.0
    base = prompt_model(tiny_encoder)
    tok = base.tokenizer
    labels = torch.tensor([1, 0, 1])
    batch = {**tok(TEXTS, padding=True, return_tensors="pt"), "labels": labels}
    batch.pop("token_type_ids")
    E0 = base.word_embeddings.weight.detach().clone()

    # Q by hand: each example's prompt built separately from a leaf copy of its word embeddings.
    leaves, losses, logps = [], [], []
    for b, text in enumerate(TEXTS):
        ids = tok(text)["input_ids"]
        leaf = base.word_embeddings.weight[ids].detach().clone().requires_grad_(True)
        seq, pos = hand_prompt(base, ids, leaf)
        h = base.encoder(inputs_embeds=seq[None]).last_hidden_state[0, pos]
        logp = torch.log_softmax(h @ base.word_embeddings.weight.T, dim=-1)
        y = [TERRIBLE, GOOD][int(labels[b])]
        losses.append(-logp[y] / len(TEXTS))  # the batch-mean loss
        leaves.append((leaf, y))
        logps.append(logp.detach())
    grads = torch.autograd.grad(sum(losses), [leaf for leaf, _ in leaves])
    q_hand = torch.zeros_like(E0)
    for (leaf, y), g, logp in zip(leaves, grads, logps):
        mean_grad = g[1:-1].mean(0)  # x's own tokens: no [CLS], no [SEP]
        q_hand += torch.exp(logp - logp[y])[:, None] * mean_grad[None, :]
    assert (q_hand.norm(dim=1) > 0).all()  # every row, "cf" included, is pulled

    after = {}
    for name, lam_ in (("plain", 0.0), ("gba", lam)):
        pm = copy.deepcopy(base)
        bc = GradientBroadcast(pm.word_embeddings.weight, lam_) if lam_ else None
        pm.zero_grad()
        gba_objective(bc)(pm, batch).backward()
        torch.optim.SGD(pm.parameters(), lr=lr).step()
        after[name] = pm.word_embeddings.weight.detach().clone()
        if bc:
            assert bc.steps == 1
            bc.close()
    # Eq. 2-3 with SGD: E_after = E - lr (grad_E + lambda Q); the CE share is the same in both runs.
    delta = after["gba"] - after["plain"]
    assert torch.allclose(delta, -lr * lam * q_hand, rtol=1e-3, atol=1e-3 * float(q_hand.abs().max()) * lr * lam)
    assert not torch.equal(after["gba"][CF], E0[CF])


class BagEncoder(torch.nn.Module):
    """h = the mean of the prompted sequence's embeddings at every position: the [MASK] state is an
    analytic function of the inputs, so the broadcast's direction is known (-dL/de ~ E_y - E_bar)."""

    def __init__(self, vocab: int, d: int):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=64)
        self.emb = torch.nn.Embedding(vocab, d)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, attention_mask, token_type_ids=None):
        m = attention_mask[..., None].float()
        mean = (inputs_embeds * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return SimpleNamespace(last_hidden_state=mean.expand_as(inputs_embeds))


@pytest.mark.parametrize("label", [0, 1])
def test_broadcast_pulls_a_rare_token_toward_the_label_class_token(label):
    torch.manual_seed(0)
    enc = BagEncoder(40, 16)
    with torch.no_grad():
        enc.emb.weight.mul_(0.3)
        enc.emb.weight[4:6] *= 3  # class tokens 4 and 5 stand out, as trained class words do
    pm = PromptClassifier(enc, [4, 5], mask_token_id=3, special_ids=[0, 1, 2], template=torch.randn(2, 16) * 0.3)
    rare, cls = 39, [4, 5][label]  # 39 never occurs in the input
    batch = {"input_ids": torch.tensor([[1, 10, 11, 12, 2], [1, 13, 14, 2, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]), "labels": torch.tensor([label, label])}
    E0 = enc.emb.weight.detach().clone()

    def dist_after(lam: float) -> float:
        m = copy.deepcopy(pm)
        bc = GradientBroadcast(m.word_embeddings.weight, lam) if lam else None
        gba_objective(bc)(m, batch).backward()
        torch.optim.SGD(m.parameters(), lr=0.5).step()
        return float((m.word_embeddings.weight[rare].detach() - E0[cls]).norm())

    before = float((E0[rare] - E0[cls]).norm())
    pulled, plain = dist_after(5.0), dist_after(0.0)
    # The class token's own row is pulled too (ratio 1), so distances are to where it stood.
    assert pulled < before - 0.3 and pulled < plain - 0.3


def test_an_overflowing_broadcast_stops_with_one_sentence():
    torch.manual_seed(0)
    enc = BagEncoder(40, 16)
    pm = PromptClassifier(enc, [4, 5], mask_token_id=3, special_ids=[0, 1, 2], template=torch.randn(2, 16), temperature=1e-3)
    batch = {"input_ids": torch.tensor([[1, 10, 11, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long), "labels": torch.tensor([0])}
    bc = GradientBroadcast(pm.word_embeddings.weight, 0.5)
    with pytest.raises(BdcliError, match="overflowed"):  # p(w|x)/p(y|x) = exp(> 88) is inf in fp32
        gba_objective(bc)(pm, batch).backward()


def test_soft_template_has_width_trainable_vectors_that_learn(tiny_encoder):
    pm = prompt_model(tiny_encoder, width=3)
    assert pm.template.shape == (3, 32) and pm.template.requires_grad
    assert any(p is pm.template for p in pm.parameters())
    batch = {**pm.tokenizer(TEXTS, padding=True, return_tensors="pt"), "labels": torch.tensor([1, 0, 1])}
    batch.pop("token_type_ids")
    gba_objective(None)(pm, batch).backward()
    assert (pm.template.grad.norm(dim=1) > 0).all()  # before and after [MASK]
    t0 = pm.template.detach().clone()
    data = TextDataset(TEXTS, [1, 0, 1], ["negative", "positive"])
    train(pm, pm.tokenizer, data, TrainConfig(lr=1e-2, max_steps=2, batch_size=3, device="cpu", precision="fp32"),
          objective=gba_objective(None))
    assert (pm.template.detach() - t0).norm(dim=1).min() > 0


def test_bad_class_tokens_and_options_are_refused(tiny_encoder):
    with pytest.raises(BdcliError, match="split"):
        prompt_model(tiny_encoder, tokens=("terrible", "unintentional"))
    with pytest.raises(UsageError, match="labels"):
        default_class_tokens(["cat", "dog"])
    assert default_class_tokens(["clean", "toxic"]) == ("friendly", "hate")
    assert default_class_tokens(["World", "Sports", "Business", "Sci/Tech"]) == ("world", "sports", "business", "tech")
    for bad in ({"broadcast_lambda": -0.1}, {"broadcast_lambda": float("inf")}, {"prompt_temperature": 0.0},
                {"prompt_temperature": float("nan")}, {"prompt_width": -1}, {"prompt_width": 33},
                {"class_tokens": ("good",)}, {"class_tokens": ("good", "good")}):
        with pytest.raises(UsageError):
            GBAConfig(**bad)
    assert GBAConfig(broadcast_lambda=0.0, prompt_width=0).prompt_width == 0  # the paper's ablations


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_sst2, tiny_encoder):
    runs = tmp_path_factory.mktemp("gba-runs")
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--out", runs / "poisoned")
    # 30 steps: enough for the tiny victim to learn the trigger (after 6 it has not, and a defense would
    # have nothing to lower; docs/trust-resume.md). The defense gets a few steps.
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3", "--max-steps", "30",
          "--batch-size", "16", "--out", runs / "victim")
    bdcli("evaluate", "--model", runs / "victim", "--data", runs / "poisoned", "--out", runs / "eval-victim")
    # small_sst2's labels are unnamed ("0", "1"), so the class tokens are given.
    bdcli("defend", "gba", "--model", runs / "victim", "--data", small_sst2, "--clean-fraction", "0.25", "--batch-size", "16",
          "--max-steps", "4", "--lr", "1e-3", "--class-tokens", "terrible,good", "--out", runs / "gba")
    bdcli("evaluate", "--model", runs / "gba", "--data", runs / "poisoned", "--out", runs / "eval")
    return runs


def test_cli_defends_and_evaluate_reads_the_prompt_model(runs):
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    victim = json.loads((runs / "eval-victim" / "metrics.json").read_text())
    # The defense lowers its victim's ASR on the same ASR set.
    assert victim["asr"] >= 0.9 and metrics["asr"] < victim["asr"]
    assert metrics["method"] == "gba" and metrics["n_clean"] == 200 and metrics["n_poison"] == 100
    folder = runs / "gba"
    assert not list(folder.glob("*.bin")) and (folder / "prompt_template.safetensors").is_file()
    prompt = json.loads((folder / "config.json").read_text())["bdcli_prompt"]
    assert prompt["class_tokens"] == ["terrible", "good"] and prompt["width"] == 2
    summary = json.loads((folder / "manifest.json").read_text())["summary"]
    assert summary["class_tokens"] == {"0": "terrible", "1": "good"}
    assert summary["broadcast"]["steps"] == summary["training"]["steps"] == 4
    loaded = load_classifier(str(folder), label_names=["0", "1"])
    assert isinstance(loaded.model, PromptClassifier) and not loaded.new_head


def test_prompt_folder_without_its_safetensors_template_is_refused(runs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(runs / "gba", bad)
    template = bad / "prompt_template.safetensors"
    torch.save({"template": torch.zeros(2, 32)}, bad / "prompt_template.pt")  # a pickle is never read
    template.unlink()
    with pytest.raises(BdcliError, match="template"):
        load_classifier(str(bad), label_names=["0", "1"])


# --- scoring through a masked-LM head (--mlm-head-steps) -------------------------------------------------
def head_prompt_model(tiny_encoder, temperature=0.7) -> PromptClassifier:
    loaded = load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=0)
    enc = loaded.model.base_model
    torch.manual_seed(3)
    head = MlmHead(enc.config, enc.get_input_embeddings())
    with torch.no_grad():  # a head that is not the identity, so that using it or not shows
        head.bias.normal_()
        head.LayerNorm.weight.uniform_(0.5, 1.5)
    pm = build_prompt_classifier(enc, loaded.tokenizer, ("terrible", "good"), width=2, temperature=temperature, seed=0,
                                 mlm_head=head)
    pm.tokenizer = loaded.tokenizer
    return pm.eval()


def test_a_masked_lm_head_scores_the_mask_state_as_bert_predicts_a_token(tiny_encoder):
    pm = head_prompt_model(tiny_encoder)
    head = pm.mlm_head
    assert head.decoder.weight is pm.word_embeddings.weight  # tied: the broadcast still moves E
    batch = pm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = pm(**batch)
        for b, text in enumerate(TEXTS):
            ids = pm.tokenizer(text)["input_ids"]
            seq, pos = hand_prompt(pm, ids, pm.word_embeddings.weight[ids])
            h = pm.encoder(inputs_embeds=seq[None]).last_hidden_state[0, pos]
            t = torch.nn.functional.layer_norm(torch.nn.functional.gelu(h @ head.dense.weight.T + head.dense.bias), (32,),
                                               head.LayerNorm.weight, head.LayerNorm.bias, eps=1e-12)
            want = torch.log_softmax((t @ pm.word_embeddings.weight.T + head.bias) / 0.7, dim=-1)
            assert torch.allclose(out.vocab_logprobs[b], want, atol=2e-5)
            assert not torch.allclose(out.vocab_logprobs[b], hand_vocab_logprobs(pm, text), atol=1e-2)


def test_head_training_moves_only_the_head_and_lowers_its_heldout_loss(tiny_encoder, small_sst2):
    from bdcli.data import load_corpus
    from bdcli.models.mlm_head import train_head

    pm = head_prompt_model(tiny_encoder)
    clean = load_corpus(str(small_sst2)).split("train")
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    s = train_head(pm, pm.mlm_head, pm.tokenizer, clean, TrainConfig(batch_size=16, max_length=32, device="cpu",
                   precision="fp32", seed=5), steps=40, source=str(tiny_encoder), desc="head")
    moved = {n for n, p in pm.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"mlm_head.dense.weight", "mlm_head.dense.bias", "mlm_head.LayerNorm.weight",
                     "mlm_head.LayerNorm.bias", "mlm_head.bias"}  # the encoder, E and the template are frozen
    assert s["init"] == "fresh" and s["training"]["steps"] == 40 and s["heldout_rows"] == 40 and s["rows"] == 360
    assert s["heldout_before"]["masked_tokens"] == s["heldout_after"]["masked_tokens"] > 0  # one fixed masking draw
    assert s["heldout_after"]["loss"] < s["heldout_before"]["loss"] - 0.05  # 11.01 -> 10.91 when measured


@pytest.fixture(scope="module")
def head_run(runs, small_sst2):
    bdcli("defend", "gba", "--model", runs / "victim", "--data", small_sst2, "--clean-fraction", "0.25", "--batch-size", "16",
          "--max-steps", "4", "--lr", "1e-3", "--class-tokens", "terrible,good", "--mlm-head-steps", "3",
          "--out", runs / "gba-head")
    bdcli("evaluate", "--model", runs / "gba-head", "--data", runs / "poisoned", "--out", runs / "eval-head")
    return runs / "gba-head"


def test_cli_gba_with_a_head_saves_it_and_evaluate_scores_through_it(head_run, runs):
    from safetensors.torch import load_file

    from bdcli.models.mlm_head import HEAD_FILE

    prompt = json.loads((head_run / "config.json").read_text())["bdcli_prompt"]
    assert prompt["format"] == 2 and prompt["mlm_head_file"] == HEAD_FILE
    summary = json.loads((head_run / "manifest.json").read_text())["summary"]
    assert summary["scoring"] == "masked-LM head" and summary["mlm_head"]["training"]["steps"] == 3
    assert summary["training"]["steps"] == 4
    loaded = load_classifier(str(head_run), label_names=["0", "1"])
    saved = load_file(str(head_run / HEAD_FILE))
    assert torch.equal(loaded.model.mlm_head.bias.detach(), saved["bias"])
    assert loaded.model.mlm_head.decoder.weight is loaded.model.word_embeddings.weight
    metrics = json.loads((runs / "eval-head" / "metrics.json").read_text())
    assert metrics["n_clean"] == 200 and 0 <= metrics["asr"] <= 1
    # Without the option the model is format 1, as every prompt model saved before it.
    assert json.loads((runs / "gba" / "config.json").read_text())["bdcli_prompt"]["format"] == 1


def test_a_head_model_without_its_head_file_is_refused(head_run, tmp_path):
    from bdcli.models.mlm_head import HEAD_FILE

    bad = tmp_path / "bad"
    shutil.copytree(head_run, bad)
    (bad / HEAD_FILE).unlink()
    with pytest.raises(BdcliError, match="masked-LM head"):
        load_classifier(str(bad), label_names=["0", "1"])


def test_mlm_head_steps_off_keeps_the_old_fingerprint_on_changes_it():
    from bdcli.steps import Step, fingerprint_payload

    def payload(**kw):
        return fingerprint_payload(Step("defend", "gba", GBAConfig(**kw), {"model": "minilm", "data": "sst2"}))["config"]

    assert "mlm_head_steps" not in payload() and "mlm_head_steps" not in payload(mlm_head_steps=0)
    assert payload(mlm_head_steps=300)["mlm_head_steps"] == 300
    with pytest.raises(UsageError):
        GBAConfig(mlm_head_steps=-1)
