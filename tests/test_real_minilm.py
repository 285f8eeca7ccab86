"""The science on a real model: the packaged MiniLM fine-tuned on full SST-2 poisoned by BadNets at
rate 0.1 learns the backdoor (ASR >= 0.90) and the task (ACC >= 0.85). Minutes, not seconds."""

from __future__ import annotations

import json

import pytest

from bdcli import api
from bdcli.attacks import FinetuneAttackConfig
from bdcli.poison import BadNetsConfig

pytestmark = pytest.mark.real


def test_minilm_badnets_victim_on_full_sst2(tmp_path, data_dir, minilm_dir):
    data = tmp_path / "sst2-badnets"
    api.poison("badnets", BadNetsConfig(rate=0.1, target="1", seed=42), api.DataSpec("sst2", str(data_dir)), data)
    # lr 5e-5: the papers' 2e-5 is tuned for bert-base; the 6-layer MiniLM needs larger steps in 3 epochs.
    victim = api.attack("finetune", FinetuneAttackConfig(model="minilm", lr=5e-5, epochs=3, seed=42), api.DataSpec(str(data)), tmp_path / "victim")
    assert victim.manifest["summary"]["training"]["steps"] == 3 * 217  # ceil(6920 / 32) per epoch
    res = api.evaluate(api.EvalConfig(), str(tmp_path / "victim"), api.DataSpec(str(data)), tmp_path / "eval")
    m = json.loads((res.out / "metrics.json").read_text())
    print(f"\nMiniLM BadNets victim on SST-2: ACC {m['acc']:.4f}  ASR {m['asr']:.4f}")
    assert m["n_clean"] == 1821 and m["n_poison"] == 912
    assert m["acc"] >= 0.85
    assert m["asr"] >= 0.90
