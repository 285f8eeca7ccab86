"""probe-sd: each threshold's snapshot and defended model equal an independent `defend maxent` run bit for
bit; a killed probe resumes redoing nothing; bad threshold lists are refused. The training-dynamics
recorder against hand-computed geometry; evaluate --geometry and the trigger RMSE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import bdcli

THRESHOLDS = "0.6,0.4,0.3,0.2"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def victim(tmp_path_factory, small_sst2, tiny_encoder, one_thread) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe")
    poisoned, model = root / "poisoned", root / "victim"
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--out", poisoned)
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", poisoned, "--lr", "2e-3", "--epochs", "2",
          "--batch-size", "16", "--out", model)
    return poisoned, model


# Stage 1 at a rate that crosses every threshold within a few dozen steps; a floor of 6 steps so that the
# probe follows maxent's min-steps rule too; a short stage 2.
COMMON = ["--clean-fraction", "0.5", "--maxent-lr", "1e-3", "--maxent-min-steps", "6", "--maxent-max-steps", "60",
          "--sd-every", "2", "--sd-samples", "64", "--batch-size", "16", "--max-steps", "6", "--sd-relative"]


@pytest.fixture(scope="module")
def probe(victim, small_sst2, tmp_path_factory) -> Path:
    poisoned, model = victim
    out = tmp_path_factory.mktemp("probe-out") / "probe"
    import bdcli.probe.sd as sd_module

    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    real_load = sd_module.load_model

    def spy(model, path):  # the snapshot each stage 2 starts from, as saved at the crossing
        snapshots[Path(path).name] = load_file(path)
        return real_load(model, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sd_module, "load_model", spy)
        bdcli("probe-sd", "--model", model, "--data", small_sst2, "--sd", THRESHOLDS, "--asr-data", poisoned, *COMMON,
              "--record-dynamics", "10", "--out", out)
    return out, snapshots


def test_probe_table_and_trace(probe):
    probe, _ = probe
    p = json.loads((probe / "probe.json").read_text())
    print(json.dumps({k: v for k, v in p.items() if k != "sd_trace"}, indent=1))
    assert p["thresholds"] == [0.6, 0.4, 0.3, 0.2]
    assert p["unreached"] == [] and len(p["rows"]) == 4
    steps = [r["stage1_steps"] for r in p["rows"]]
    assert steps == sorted(steps) and steps[0] >= 6
    trace = dict((s, sd) for s, sd in p["sd_trace"])
    sd0 = trace[0]
    for r in p["rows"]:
        # The snapshot is at the first measurement (past the floor) below the threshold.
        assert trace[r["stage1_steps"]] == r["sd_reached"] < r["threshold"] * sd0
        assert all(sd >= r["threshold"] * sd0 for s, sd in trace.items() if 6 <= s < r["stage1_steps"])
        assert r["stage2_steps"] == 6 and 0 <= r["acc"] <= 1 and 0 <= r["asr"] <= 1
        assert (probe / r["model"] / "model.safetensors").exists()
    assert p["stage1_steps_single_pass"] == steps[-1]
    assert p["stage1_steps_independent"] == sum(steps) and p["saved_steps"] == sum(steps) - steps[-1]
    m = json.loads((probe / "manifest.json").read_text())
    assert m["step"]["kind"] == "probe" and m["step"]["name"] == "sd" and m["fingerprint"]
    assert (probe / "probe.md").read_text().startswith("| SD threshold")


@pytest.mark.parametrize("which", [0, 3])
def test_each_threshold_equals_an_independent_maxent_run(which, probe, victim, small_sst2, tmp_path):
    probe, snapshots = probe
    poisoned, model = victim
    row = json.loads((probe / "probe.json").read_text())["rows"][which]
    import bdcli.defenses.maxent as maxent_module

    stage1: dict[str, torch.Tensor] = {}
    real_train = maxent_module.train

    def spy(model_, *args, **kw):
        result = real_train(model_, *args, **kw)
        if not stage1:  # maxent's first training call is stage 1
            stage1.update({k: v.detach().clone() for k, v in model_.state_dict().items()})
        return result

    out = tmp_path / "maxent"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(maxent_module, "train", spy)
        bdcli("defend", "maxent", "--model", model, "--data", small_sst2, "--sd", str(row["threshold"]), *COMMON,
              "--out", out)
    m = json.loads((out / "manifest.json").read_text())["summary"]
    assert m["stage1"]["steps"] == row["stage1_steps"] and m["stage1"]["sd_end"] == row["sd_reached"]
    snap = snapshots[f"snapshot-{which}.safetensors"]
    assert snap and all(torch.equal(snap[k], stage1[k]) for k in snap)  # stage-1 weights, bit for bit
    assert _same(_weights(out), _weights(probe / row["model"]))  # the defended model, bit for bit
    ev = tmp_path / "eval"
    bdcli("evaluate", "--model", probe / row["model"], "--data", poisoned, "--out", ev)
    metrics = json.loads((ev / "metrics.json").read_text())
    assert (metrics["acc"], metrics["asr"]) == (row["acc"], row["asr"])


def test_killed_probe_resumes_redoing_nothing(probe, victim, small_sst2, tmp_path):
    ref, _ = probe
    poisoned, model = victim
    out = tmp_path / "killed"
    args = ["probe-sd", "--model", str(model), "--data", str(small_sst2), "--sd", THRESHOLDS, "--asr-data", str(poisoned),
            *COMMON, "--record-dynamics", "10", "--checkpoint-every", "3", "--out", str(out)]
    # train-1 is stage 1; train-4 is the third threshold's stage 2: killed right after its step-3 checkpoint.
    env = {**os.environ, "BDCLI_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "BDCLI_FAULT_KILL_AT": "train-4:3",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "OMP_NUM_THREADS": "1"}  # the thread count of the in-process reference (one_thread): bit-identical
    proc = subprocess.run([sys.executable, "-m", "bdcli.cli.app", *args], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not out.exists() and list(tmp_path.glob(".killed.ckpt-*/snapshots/snapshot-3.safetensors"))

    import bdcli.engine.loop as loop
    import bdcli.probe.command as command

    counts = {"steps": 0, "evals": 0}
    real_collate, real_eval = loop.collate, command._acc_asr

    def count_step(*a, **kw):
        counts["steps"] += 1
        return real_collate(*a, **kw)

    def count_eval(*a, **kw):
        counts["evals"] += 1
        return real_eval(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "collate", count_step)
        mp.setattr(command, "_acc_asr", count_eval)
        bdcli(*args[:-1], str(out), "--resume")
    # Only the rest of the killed stage 2 (3 of 6 steps) and the last threshold's stage 2 (6) ran again;
    # the two thresholds evaluated before the kill were not re-evaluated.
    assert counts == {"steps": 3 + 6, "evals": 2}
    a, b = json.loads((ref / "probe.json").read_text()), json.loads((out / "probe.json").read_text())
    drop = ("stage1_seconds", "stage2_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a["rows"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b["rows"]]
    assert a["sd_trace"] == b["sd_trace"]
    for r in a["rows"]:
        assert _same(_weights(ref / r["model"]), _weights(out / r["model"]))
    assert (ref / "dynamics.csv").read_text() == (out / "dynamics.csv").read_text()


@pytest.mark.parametrize("bad", ["", " , ", "0.1,0.2", "0.1,0.05,0.05", "0.1,inf", "0.1,nan", "0.1,-0.5", "0.1,abc"])
def test_bad_threshold_lists_get_one_line_and_exit_2(bad, victim, small_sst2, tmp_path):
    res = bdcli("probe-sd", "--model", victim[1], "--data", small_sst2, "--sd", bad, "--out", tmp_path / "x", ok=False)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "threshold" in lines[0], res.output
    assert not (tmp_path / "x").exists()


def test_unreachable_thresholds_stop_with_those_reached(victim, small_sst2, tmp_path):
    poisoned, model = victim
    out = tmp_path / "probe"
    args = [*COMMON]
    args[args.index("--maxent-max-steps") + 1] = "20"
    res = bdcli("probe-sd", "--model", model, "--data", small_sst2, "--sd", "0.7,1e-6,1e-7", "--asr-data", poisoned,
                *args, "--out", out)
    p = json.loads((out / "probe.json").read_text())
    assert [r["threshold"] for r in p["rows"]] == [0.7] and p["unreached"] == [1e-6, 1e-7]
    assert p["stage1_steps_single_pass"] == 20 and p["stage1_steps_independent"] == p["rows"][0]["stage1_steps"] + 2 * 20
    assert "never fell below 1e-06, 1e-07 within 20" in res.output
    assert not (out / "sd-1e-06").exists()


# ------------------------------------------------------------------------------- dynamics and geometry


def test_group_geometry_matches_hand_values():
    from bdcli.metrics.geometry import group_geometry

    t = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # centroid (1, 0); per-dim variances (1, 0) -> 0.5
    n = torch.tensor([[1.0, 2.0], [1.0, 4.0]])  # centroid (1, 3); variances (0, 1) -> 0.5
    p = torch.tensor([[4.0, 4.0]])  # centroid (4, 4); variance 0
    g = group_geometry({"target": t, "nontarget": n, "poison": p})
    assert g == {"d_target_nontarget": 9.0, "d_target_poison": 25.0, "d_nontarget_poison": 10.0,
                 "var_target": 0.5, "var_nontarget": 0.5, "var_poison": 0.0}
    g = group_geometry({"target": t, "nontarget": n, "poison": None})
    assert g["d_target_poison"] is None and g["var_poison"] is None and g["d_target_nontarget"] == 9.0


def _csv(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(open(path)))


def test_record_dynamics_matches_geometry_of_the_saved_model(victim, tiny_encoder, tmp_path):
    from bdcli.api import DataSpec
    from bdcli.engine import forward_all
    from bdcli.engine.batching import encode
    from bdcli.metrics.geometry import centroids, squared_distance, within_group_variance
    from bdcli.models import load_classifier
    from bdcli.probe.dynamics import pick_probes

    poisoned, _ = victim
    out = tmp_path / "attack"
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", poisoned, "--lr", "2e-3", "--max-steps", "10",
          "--batch-size", "16", "--record-dynamics", "4", "--out", out)
    rows = _csv(out / "dynamics.csv")
    assert [(r["stage"], int(r["step"])) for r in rows] == [("attack", s) for s in (0, 4, 8, 10)]
    last = rows[-1]
    # Recompute by hand on the saved model: the same fixed probes, [CLS] states, centroids, variances.
    corpus = DataSpec(str(poisoned)).load()
    probes = pick_probes(corpus.split("test"), corpus.split("test-poison"), 1, seed=42)
    m = load_classifier(str(out))
    reps, preds = {}, {}
    for g, ds in probes.groups.items():
        enc = encode(m.tokenizer, ds, 128)
        reps[g] = forward_all(m.model, enc, batch_size=128, device=torch.device("cpu"), precision="auto", what="cls")
        preds[g] = forward_all(m.model, enc, batch_size=128, device=torch.device("cpu"), precision="auto").argmax(-1)
    c = {g: r.double().mean(0) for g, r in reps.items()}
    assert float(last["d_target_poison"]) == pytest.approx(squared_distance(c["target"], c["poison"]), rel=1e-9)
    assert float(last["d_target_nontarget"]) == pytest.approx(float(((c["target"] - c["nontarget"]) ** 2).sum()), rel=1e-9)
    assert float(last["var_poison"]) == pytest.approx(float(reps["poison"].double().var(0, unbiased=False).mean()), rel=1e-9)
    assert float(last["var_target"]) == pytest.approx(within_group_variance(reps["target"]), rel=1e-9)
    gold = probes.groups["target"].labels + probes.groups["nontarget"].labels
    acc = float((torch.cat([preds["target"], preds["nontarget"]]) == torch.tensor(gold)).double().mean())
    assert float(last["acc"]) == pytest.approx(acc) and float(last["asr"]) == float((preds["poison"] == 1).double().mean())
    # The same run without the recorder trains the same weights: recording changes nothing.
    plain = tmp_path / "plain"
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", poisoned, "--lr", "2e-3", "--max-steps", "10",
          "--batch-size", "16", "--out", plain)
    assert _same(_weights(out), _weights(plain)) and not (plain / "dynamics.csv").exists()


def test_defense_dynamics_find_poisoned_rows_through_the_victim(victim, small_sst2, tmp_path):
    _, model = victim
    out = tmp_path / "ft"
    bdcli("defend", "ft", "--model", model, "--data", small_sst2, "--max-steps", "4", "--batch-size", "16",
          "--record-dynamics", "2", "--out", out)
    rows = _csv(out / "dynamics.csv")
    assert [r["stage"] for r in rows] == ["train"] * 3 and all(r["asr"] != "" and r["d_target_poison"] != "" for r in rows)


def test_evaluate_geometry_on_clean_data_records_the_clean_groups_and_says_so(victim, small_sst2, tmp_path):
    from safetensors.torch import load_file as load

    poisoned, model = victim
    res = bdcli("evaluate", "--model", model, "--data", small_sst2, "--geometry", "--out", tmp_path / "clean")
    assert "records the clean groups only" in res.output
    g = json.loads((tmp_path / "clean" / "geometry.json").read_text())
    assert g["d_target_poison"] is None and g["var_poison"] is None and g["d_target_nontarget"] > 0
    bdcli("evaluate", "--model", model, "--data", poisoned, "--geometry", "--out", tmp_path / "poisoned")
    g = json.loads((tmp_path / "poisoned" / "geometry.json").read_text())
    t = load(str(tmp_path / "poisoned" / "representations.safetensors"))
    assert t["features"].dtype == torch.float32 and t["group"].dtype == torch.int64
    assert t["features"].shape == (sum(g["n"].values()), 32)
    assert [int((t["group"] == i).sum()) for i in range(3)] == [g["n"]["target"], g["n"]["nontarget"], g["n"]["poison"]]
    f = t["features"].double()
    assert g["d_target_poison"] == pytest.approx(float(((f[t["group"] == 0].mean(0) - f[t["group"] == 2].mean(0)) ** 2).sum()))


def test_trigger_rmse_before_and_after_a_defense(victim, small_sst2, tmp_path):
    from bdcli.models import load_classifier
    from bdcli.probe.geometry import trigger_rmse

    _, model = victim
    out = tmp_path / "ft"
    bdcli("defend", "ft", "--model", model, "--data", small_sst2, "--max-steps", "3", "--batch-size", "16", "--lr", "1e-2",
          "--out", out)
    bdcli("evaluate", "--model", out, "--data", small_sst2, "--trigger-rmse", "cf,mn",
          "--rmse-class-tokens", "terrible,good", "--out", tmp_path / "ev")
    r = json.loads((tmp_path / "ev" / "trigger_rmse.json").read_text())
    assert r["class_tokens"] == ["terrible", "good"] and set(r["triggers"]) == {"cf", "mn"}
    m = load_classifier(str(model))
    e = m.model.get_input_embeddings().weight.detach().double()
    cf, good = m.tokenizer.convert_tokens_to_ids(["cf", "good"])
    assert r["before"]["cf"]["good"] == pytest.approx(float(((e[cf] - e[good]) ** 2).mean().sqrt()))
    assert r["before"] == trigger_rmse(e, m.tokenizer, ["cf", "mn"], ["terrible", "good"]) != r["after"]
    bad = bdcli("evaluate", "--model", out, "--data", small_sst2, "--trigger-rmse", "cf,notawordatall", "--rmse-class-tokens", "terrible,good",
                "--out", tmp_path / "bad", ok=False)
    assert bad.exit_code == 2 and "not one vocabulary token" in bad.output


def test_transfer_scenario_equals_an_independent_maxent_run(victim, small_sst2, tmp_path):
    poisoned, model = victim
    args = [*COMMON, "--scenario", "transfer", "--head-epochs", "1"]
    bdcli("probe-sd", "--model", model, "--data", small_sst2, "--sd", "0.6,0.4", "--asr-data", poisoned, *args,
          "--out", tmp_path / "probe")
    row = json.loads((tmp_path / "probe" / "probe.json").read_text())["rows"][-1]
    bdcli("defend", "maxent", "--model", model, "--data", small_sst2, "--sd", "0.4", *args, "--out", tmp_path / "maxent")
    assert json.loads((tmp_path / "maxent" / "manifest.json").read_text())["summary"]["stage1"]["steps"] == row["stage1_steps"]
    assert _same(_weights(tmp_path / "maxent"), _weights(tmp_path / "probe" / row["model"]))
