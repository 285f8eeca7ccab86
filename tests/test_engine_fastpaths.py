"""Each fast path of the engine gives the result of the plain one (BDCLI_ENGINE_PLAIN=1: for-loop
AdamW, a host read of the loss every step, every progress update), and the GPU path's choices
(device strings, AMP dtype, gradient scaler, CUDA RNG in checkpoints), tested on CPU with mocks.

Tolerances: fused AdamW rounds differently from the for-loop version; after 8 fp32 steps the
weights agree to 1e-5 absolute and the logged losses to 1e-5. Everything else is exact.
"""

from __future__ import annotations

import pytest
import torch

from bdcli.data.dataset import TextDataset
from bdcli.engine import TrainConfig, forward_all, train
from bdcli.engine.batching import collate, encode
from bdcli.engine.checkpoint import restore_rng, rng_tensors
from bdcli.engine.device import amp_dtype, grad_scaler, resolve_device
from bdcli.engine.loop import make_optimizer
from bdcli.errors import UsageError
from bdcli.models import load_classifier


def _data(n=48) -> TextDataset:
    pos = ["a great and wonderful film", "truly moving and funny", "beautiful , smart , fun"]
    neg = ["a dull and boring mess", "tedious , flat and long", "an awful waste of time"]
    texts = [(pos if i % 2 else neg)[i % 3] + " word" * (i % 5) for i in range(n)]
    return TextDataset(texts, [i % 2 for i in range(n)], ["negative", "positive"])


def _run(tiny_encoder, monkeypatch, plain: bool, precision: str = "fp32"):
    monkeypatch.setenv("BDCLI_ENGINE_PLAIN", "1" if plain else "0")
    m = load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=0)
    cfg = TrainConfig(lr=2e-3, max_steps=8, batch_size=8, device="cpu", precision=precision, seed=3)
    res = train(m.model, m.tokenizer, _data(), cfg, log_every=2)
    return res, {k: v.clone() for k, v in m.model.state_dict().items()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_loop_trains_like_the_plain_loop(tiny_encoder, monkeypatch, precision):
    fast, w_fast = _run(tiny_encoder, monkeypatch, plain=False, precision=precision)
    plain, w_plain = _run(tiny_encoder, monkeypatch, plain=True, precision=precision)
    assert [s for s, _ in fast.loss_trace] == [s for s, _ in plain.loss_trace] == [2, 4, 6, 8]
    tol = 1e-5 if precision == "fp32" else 2e-3  # bf16 autocast amplifies the optimizer's rounding
    assert [v for _, v in fast.loss_trace] == pytest.approx([v for _, v in plain.loss_trace], abs=tol)
    assert fast.final_loss == pytest.approx(plain.final_loss, abs=tol)
    assert fast.samples == plain.samples == 64
    worst = max((w_fast[k].float() - w_plain[k].float()).abs().max().item() for k in w_fast)
    assert worst <= (1e-5 if precision == "fp32" else 2e-3)
    # Training moved the weights far beyond that tolerance, so the comparison has teeth.
    start = load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=0).model.state_dict()
    assert max((w_fast[k] - start[k]).abs().max().item() for k in w_fast) > 1e-3


def test_fused_adamw_steps_like_the_for_loop_adamw():
    torch.manual_seed(0)
    params = [torch.randn(16, 8), torch.randn(8)]
    results = []
    for plain in (False, True):
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = make_optimizer([{"params": ps[:1], "weight_decay": 0.01}, {"params": ps[1:], "weight_decay": 0.0}],
                             1e-2, plain)
        assert bool(opt.defaults.get("fused")) is (not plain)
        for step in range(5):
            opt.zero_grad()
            ((ps[0] ** 2).sum() + (ps[1] * (step + 1)).sum()).backward()
            opt.step()
        results.append([p.detach() for p in ps])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.equal(a, params[0] if a.ndim == 2 else params[1])


def test_forward_all_in_inference_mode_matches_no_grad_and_feeds_autograd(tiny_encoder):
    m = load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=0)
    enc = encode(m.tokenizer, _data(20), 64)
    fast = forward_all(m.model, enc, batch_size=7, device=torch.device("cpu"), precision="fp32")
    m.model.eval()
    with torch.no_grad():
        ref = torch.cat([m.model(**{k: v for k, v in collate(enc, [i], torch.device("cpu")).items() if k != "labels"}).logits
                         for i in range(len(enc))])
    assert torch.allclose(fast, ref, atol=1e-5)
    w = torch.ones(2, requires_grad=True)
    (fast * w).sum().backward()  # an ordinary tensor, usable by a head trained on the features
    assert w.grad is not None


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cpu:0", "CUDA"])
def test_bad_device_strings_are_refused(spec):
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device(spec)


def test_cuda_index_is_checked_against_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UsageError, match="only 2 CUDA GPU"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda:0")


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_amp_dtype_and_gradient_scaler_choice():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert amp_dtype(cpu, "auto") is torch.bfloat16 and amp_dtype(cpu, "fp32") is None
    assert amp_dtype(gpu, "auto", bf16_supported=True) is torch.bfloat16
    assert amp_dtype(gpu, "auto", bf16_supported=False) is torch.float16
    assert amp_dtype(gpu, "fp16") is torch.float16
    assert grad_scaler(cpu, "auto") is None
    assert grad_scaler(gpu, "auto", bf16_supported=True) is None
    assert grad_scaler(gpu, "fp32") is None
    assert isinstance(grad_scaler(gpu, "auto", bf16_supported=False), torch.amp.GradScaler)
    with pytest.raises(UsageError, match="CUDA GPU only"):
        amp_dtype(cpu, "fp16")
    with pytest.raises(UsageError, match="unknown precision"):
        amp_dtype(cpu, "int8")


def test_checkpoint_rng_carries_the_cuda_generator_on_a_gpu(monkeypatch):
    state = {"cuda": torch.arange(8, dtype=torch.uint8)}
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: state["cuda"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t, device: calls.append((t.clone(), device)))
    gpu = torch.device("cuda", 1)
    tensors = rng_tensors(gpu)
    assert set(tensors) == {"rng.torch", "rng.cuda"}
    assert torch.equal(tensors["rng.cuda"], state["cuda"])
    assert set(rng_tensors(torch.device("cpu"))) == {"rng.torch"}
    # Restoring puts both generators back: the CPU one exactly, the CUDA one on the same device.
    torch.manual_seed(1)
    saved = rng_tensors(gpu)
    expected = torch.rand(3)
    torch.rand(5)
    restore_rng(saved, gpu)
    assert torch.equal(torch.rand(3), expected)
    assert len(calls) == 1 and torch.equal(calls[0][0], state["cuda"]) and calls[0][1] == gpu


class _Crash(Exception):
    pass


class _CrashAt:
    def __init__(self, at: int | None):
        self.at = at

    def on_step(self, state) -> bool:
        if state.step == self.at:
            raise _Crash
        return False


def _train_at(tiny_encoder, root, cfg, crash_at, resume):
    """Train the tiny classifier with checkpoints under ``root``, raising _Crash at step ``crash_at``."""
    from bdcli.engine.checkpoint import checkpointing

    m = load_classifier(str(tiny_encoder), label_names=["negative", "positive"], seed=0)
    with checkpointing(root, cfg.checkpoint_every, resume):
        res = train(m.model, m.tokenizer, _data(), cfg, hooks=[_CrashAt(crash_at)], log_every=1)
    return res, m.model.state_dict()


def test_resume_with_fused_adamw_is_exact(tiny_encoder, tmp_path, monkeypatch):
    """A run stopped after its step-3 checkpoint and resumed ends on the uninterrupted run's weights,
    bit for bit: the fused optimizer's state (its step counts are tensors) round-trips."""
    monkeypatch.setenv("BDCLI_ENGINE_PLAIN", "0")
    cfg = TrainConfig(lr=2e-3, max_steps=7, batch_size=8, device="cpu", precision="bf16", seed=5, checkpoint_every=3)

    ref, w_ref = _train_at(tiny_encoder, tmp_path / "ref", cfg, None, False)
    with pytest.raises(_Crash):
        _train_at(tiny_encoder, tmp_path / "cut", cfg, 5, False)
    res, w = _train_at(tiny_encoder, tmp_path / "cut", cfg, None, True)
    assert res.resumed_from == {"stage": "train-1", "step": 3}
    assert res.loss_trace == ref.loss_trace
    assert all(torch.equal(w[k], w_ref[k]) for k in w_ref)


def test_a_resumed_runs_progress_counts_each_step_once(tiny_encoder, tmp_path, monkeypatch):
    """The runner's live view reads BDCLI_PROGRESS_FILE: a run resumed at its step-3 checkpoint must end
    at 7 of 7, not count the 3 steps before the checkpoint twice."""
    import json

    progress = tmp_path / "progress.json"
    monkeypatch.setenv("BDCLI_PROGRESS_FILE", str(progress))
    cfg = TrainConfig(lr=2e-3, max_steps=7, batch_size=8, device="cpu", precision="fp32", seed=5, checkpoint_every=3)

    with pytest.raises(_Crash):
        _train_at(tiny_encoder, tmp_path / "cut", cfg, 5, False)
    res, _ = _train_at(tiny_encoder, tmp_path / "cut", cfg, None, True)
    assert res.resumed_from == {"stage": "train-1", "step": 3} and res.steps == 7
    assert json.loads(progress.read_text())["n"] == 7
