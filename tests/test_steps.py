"""The step shape: fingerprints change with what changes a result (a config field, an input, a component
version) and with nothing else (where a folder lives); the manifest and metrics carry the step."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from bdcli.api import DataSpec
from bdcli.attacks import ATTACKS, FinetuneAttackConfig
from bdcli.defenses import FTConfig
from bdcli.poison import BadNetsConfig
from bdcli.steps import Ref, Step, fingerprint
from tests.helpers import bdcli


def _poison(data) -> Step:
    return Step("poison", "badnets", BadNetsConfig(rate=0.2), {"data": DataSpec(str(data))})


def test_fingerprint_follows_config_inputs_and_version_not_folders(tmp_path, small_sst2, monkeypatch):
    base = fingerprint(_poison(small_sst2))
    assert fingerprint(_poison(small_sst2)) == base
    # A config field changes it.
    assert fingerprint(Step("poison", "badnets", BadNetsConfig(rate=0.3), {"data": DataSpec(str(small_sst2))})) != base
    # The same files elsewhere do not.
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(small_sst2, moved)
    assert fingerprint(_poison(moved)) == base
    # Different content does.
    rows = (moved / "train.jsonl").read_text().splitlines()
    (moved / "train.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    assert fingerprint(_poison(moved)) != base
    # So does the component's version: results made by older code are never reused.
    from bdcli.poison import POISONERS

    entry = POISONERS.get("badnets")
    monkeypatch.setattr(entry, "version", entry.version + 1)
    assert fingerprint(_poison(small_sst2)) != base


def test_settings_that_change_no_number_stay_out(small_sst2, tiny_encoder):
    def step(**kw) -> Step:
        return Step("attack", "finetune", FinetuneAttackConfig(model=str(tiny_encoder), **kw),
                    {"data": DataSpec(str(small_sst2)), "model": str(tiny_encoder)})

    assert fingerprint(step(device="cpu", checkpoint_every=5)) == fingerprint(step())
    assert fingerprint(step(lr=1e-4)) != fingerprint(step())


def test_an_upstream_step_is_known_by_its_fingerprint(tmp_path, small_sst2, tiny_encoder):
    # A planned step names its upstream by Ref; once run, by the folder. Both give one fingerprint.
    poisoned = tmp_path / "moved-around" / "poisoned"
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.2", "--out", poisoned)
    upstream = json.loads((poisoned / "manifest.json").read_text())["fingerprint"]
    assert upstream == fingerprint(_poison(small_sst2))
    cfg = FinetuneAttackConfig(model=str(tiny_encoder), max_steps=2)
    planned = Step("attack", "finetune", cfg, {"data": Ref("p"), "model": str(tiny_encoder)})
    concrete = Step("attack", "finetune", cfg, {"data": DataSpec(str(poisoned)), "model": str(tiny_encoder)})
    before = fingerprint(concrete)
    assert fingerprint(planned, {"p": upstream}) == before
    shutil.move(poisoned, tmp_path / "poisoned-here")
    assert fingerprint(Step("attack", "finetune", cfg, {"data": DataSpec(str(tmp_path / "poisoned-here")),
                                                        "model": str(tiny_encoder)})) == before


def test_manifest_records_the_step_and_metrics_the_seed_and_lineage(tmp_path, small_sst2, tiny_encoder):
    poisoned, victim, ev = tmp_path / "p", tmp_path / "v", tmp_path / "e"
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.2", "--seed", "3", "--out", poisoned)
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", poisoned, "--max-steps", "2", "--seed", "3",
          "--out", victim)
    bdcli("evaluate", "--model", victim, "--data", poisoned, "--out", ev)
    m = json.loads((victim / "manifest.json").read_text())
    assert m["step"]["kind"] == "attack" and m["step"]["name"] == "finetune" and m["step"]["version"] == ATTACKS.get("finetune").version
    assert m["upstream"]["data"] == "step:" + json.loads((poisoned / "manifest.json").read_text())["fingerprint"]
    # The step in the manifest is enough to reproduce the output: it round-trips to the same fingerprint.
    assert fingerprint(Step.from_json(m["step"])) == m["fingerprint"]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["seed"] == 3
    assert metrics["upstream"]["model"] == "step:" + m["fingerprint"]
    assert metrics["cost"]["steps"] == 2


def test_defense_fingerprint_is_of_the_config_as_given(small_sst2, tiny_encoder):
    # What a defense resolves from its victim (scenario, clean share) is a function of the inputs,
    # so the step as given is what is hashed.
    s1 = Step("defend", "ft", FTConfig(), {"model": str(tiny_encoder), "data": DataSpec(str(small_sst2))})
    s2 = Step("defend", "ft", dataclasses.replace(FTConfig(), clean_fraction=0.1),
              {"model": str(tiny_encoder), "data": DataSpec(str(small_sst2))})
    assert fingerprint(s1) != fingerprint(s2)


def test_unknown_step_kinds_and_components_are_usage_errors():
    from bdcli.errors import UsageError

    with pytest.raises(UsageError, match="unknown step kind"):
        Step("train", "x", None)
    with pytest.raises(UsageError, match="unknown defense 'maxentt'.*'maxent'"):
        Step("defend", "maxentt", None).entry
