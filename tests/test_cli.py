"""The real CLI, end to end on a tiny BERT and a few hundred real SST-2 rows: poison -> attack ->
defend (ft, fth, maxent) -> evaluate -> report; plus the bad-input contract (one line, non-zero exit,
nothing written)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from tests.helpers import bdcli

@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_sst2, tiny_encoder):
    runs = tmp_path_factory.mktemp("runs")
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--out", runs / "poisoned")
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3", "--epochs", "4",
          "--batch-size", "16", "--out", runs / "victim")
    common = ["--model", runs / "victim", "--data", small_sst2, "--clean-fraction", "0.5", "--batch-size", "16"]
    bdcli("defend", "ft", *common, "--epochs", "1", "--out", runs / "ft")
    bdcli("defend", "fth", *common, "--epochs", "1", "--out", runs / "fth")
    bdcli("defend", "maxent", *common, "--sd", "0.05", "--maxent-lr", "2e-3", "--maxent-max-steps", "60", "--sd-every", "5",
          "--epochs", "1", "--out", runs / "maxent")
    for m in ("victim", "ft", "fth", "maxent"):
        bdcli("evaluate", "--model", runs / m, "--data", runs / "poisoned", "--out", runs / "eval" / m)
    return runs


def test_poison_folder_holds_the_contract(chain):
    folder = chain / "poisoned"
    names = {p.name for p in folder.iterdir()}
    assert {"train.jsonl", "dev.jsonl", "test.jsonl", "test-poison.jsonl", "poison.json", "manifest.json"} <= names
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert set(rows[0]) >= {"text", "label", "poisoned"} and len(rows) == 400
    poison = json.loads((folder / "poison.json").read_text())
    assert poison["attack"] == "badnets" and poison["target"] == 1 and poison["n_poisoned"] == 40
    assert sum(r["poisoned"] for r in rows) == 40
    m = json.loads((folder / "manifest.json").read_text())
    assert m["command"] == "poison badnets" and m["config"]["rate"] == 0.1 and m["inputs"]["data"]["sha256"]
    assert {"bdcli", "torch", "transformers", "git_commit"} <= set(m["versions"])


def test_every_model_folder_is_plain_transformers_with_provenance(chain):
    from transformers import AutoModelForSequenceClassification

    for name, method in (("victim", "victim"), ("ft", "ft"), ("fth", "fth"), ("maxent", "maxent")):
        folder = chain / name
        assert not list(folder.glob("*.bin"))
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        assert model.config.num_labels == 2
        prov = json.loads((folder / "manifest.json").read_text())["provenance"]
        assert prov["method"] == method and prov["attack"] == "badnets" and prov["scenario"] == "outsourcing"
    assert json.loads((chain / "ft" / "manifest.json").read_text())["provenance"]["clean_rows"] == 200


def test_maxent_records_its_stages_and_sd_trace(chain):
    s = json.loads((chain / "maxent" / "manifest.json").read_text())["summary"]
    trace = s["stage1"]["sd_trace"]
    assert trace[0][0] == 0 and s["stage1"]["sd_start"] == trace[0][1]
    assert s["stage1"]["steps"] == trace[-1][0] and s["stage2"]["steps"] > 0
    assert s["stage1"]["reached_threshold"] == (trace[-1][1] < 0.05)


def test_victim_learned_the_backdoor(chain):
    victim = json.loads((chain / "eval" / "victim" / "metrics.json").read_text())
    # 40 poisoned rows and a tiny random model: the rare-word shortcut is learned long before the task.
    assert victim["asr"] >= 0.9
    assert victim["n_clean"] == 200 and victim["n_poison"] == 100
    assert victim["asr_c"]["1"] == victim["asr"]


def test_an_attack_says_when_its_model_never_learned_its_task(chain, tiny_encoder, tmp_path):
    """One optimiser step leaves a random tiny BERT guessing: `bdcli attack` measures it on the dev rows and
    says so on stderr, in its manifest and in its model card. The chain's victim carries the same check."""
    res = bdcli("attack", "finetune", "--model", tiny_encoder, "--data", chain / "poisoned", "--max-steps", "1",
                "--out", tmp_path / "guess")
    summary = json.loads((tmp_path / "guess" / "manifest.json").read_text())["summary"]
    assert summary["heldout"]["split"] == "dev" and summary["heldout"]["rows"] == 100
    dev = [json.loads(line)["label"] for line in (chain / "poisoned" / "dev.jsonl").read_text().splitlines()]
    chance = max(dev.count(y) for y in set(dev)) / len(dev)
    assert summary["heldout"]["acc"] <= chance + 0.05
    assert "never learned its task" in res.stderr
    assert any("never learned its task" in w for w in summary["warnings"])
    assert "never learned its task" in (tmp_path / "guess" / "README.md").read_text()
    victim = json.loads((chain / "victim" / "manifest.json").read_text())["summary"]
    warned = any("never learned its task" in w for w in victim.get("warnings", []))
    assert warned == (victim["heldout"]["acc"] <= chance + 0.05)


def test_the_held_out_check_spreads_over_a_sorted_split_and_stays_quiet_on_a_learned_model(monkeypatch):
    from bdcli import api
    from bdcli.data.dataset import Corpus, TextDataset

    class Cfg:
        max_length, batch_size, precision = 32, 8, "fp32"

    # A dev split sorted by label, longer than the check reads: its first rows alone hold one label.
    labels = [0] * 600 + [1] * 600
    dev = TextDataset([f"row {i}" for i in range(1200)], labels, ["negative", "positive"])
    corpus = Corpus("mine", ["negative", "positive"], {"dev": dev})
    seen = []

    def right(loaded, ds, *args):
        seen.append(list(ds.labels))
        return list(ds.labels)

    monkeypatch.setattr(api, "_device_of", lambda model: "cpu")
    monkeypatch.setattr(api, "_predict", right)
    loaded = SimpleNamespace(model=None)
    out = api._with_heldout_check({"warnings": ["kept"]}, loaded, corpus, Cfg)
    assert out["heldout"] == {"split": "dev", "rows": api.HELDOUT_ROWS, "acc": 1.0} and out["warnings"] == ["kept"]
    assert seen[0].count(0) == seen[0].count(1) == api.HELDOUT_ROWS // 2
    monkeypatch.setattr(api, "_predict", lambda loaded, ds, *args: [1] * len(ds))
    out = api._with_heldout_check({}, loaded, corpus, Cfg)
    assert out["heldout"]["acc"] == 0.5 and len(out["warnings"]) == 1
    assert "ACC 50.00 on 512 clean dev rows, where always predicting its most frequent label" in out["warnings"][0]


def test_report_prints_the_paper_layout_from_the_metrics(chain):
    res = bdcli("report", chain / "eval", "--format", "csv")
    lines = res.stdout.strip().splitlines()
    # The tiny victim may not learn its task in its few steps; the report says so on stderr, never in the table.
    victim_acc = json.loads((chain / "eval" / "victim" / "metrics.json").read_text())["acc"]
    assert ("victim never learned its task" in res.stderr) == (victim_acc <= 0.55)
    # One seed per cell, so no std columns; the cost columns come from the models' manifests.
    assert lines[0] == "Method,BadNets ACC,BadNets ASR,Δ,Cost steps,Cost s"
    rows = {line.split(",")[0]: line.split(",")[1:] for line in lines[1:]}
    assert list(rows) == ["Victim", "FT", "FTH", "MaxEnt"]
    for name, folder in (("Victim", "victim"), ("FT", "ft"), ("MaxEnt", "maxent")):
        m = json.loads((chain / "eval" / folder / "metrics.json").read_text())
        assert float(rows[name][0]) == pytest.approx(100 * m["acc"], abs=0.006)
        assert float(rows[name][1]) == pytest.approx(100 * m["asr"], abs=0.006)
    v = json.loads((chain / "eval" / "victim" / "metrics.json").read_text())["asr"]
    ft = json.loads((chain / "eval" / "ft" / "metrics.json").read_text())["asr"]
    assert float(rows["FT"][2]) == pytest.approx(100 * (v - ft), abs=0.006)
    res = bdcli("report", chain / "eval")
    assert res.stdout.startswith("| Method")
    # A tiny defended model that answers one label is named on stderr and not ranked; any other can be best.
    from bdcli.report.health import at_chance

    defended = [json.loads((chain / "eval" / f / "metrics.json").read_text()) for f in ("ft", "fth", "maxent")]
    assert ("answers one label" in res.stderr) == any(at_chance(m) for m in defended)
    assert ("**" in res.stdout) == (not all(at_chance(m) for m in defended))


def test_rerun_with_same_inputs_reuses_the_output(chain):
    before = (chain / "ft" / "manifest.json").read_text()
    res = bdcli("defend", "ft", "--model", chain / "victim", "--data", chain.parent / "dummy-never-read", "--out", chain / "ft", ok=False)
    assert res.exit_code != 0  # a different input is not silently reused
    res = bdcli("evaluate", "--model", chain / "ft", "--data", chain / "poisoned", "--out", chain / "eval" / "ft", "--json")
    assert json.loads(res.stdout.strip().splitlines()[-1])["reused"] is True
    assert (chain / "ft" / "manifest.json").read_text() == before


def test_a_different_config_needs_force(chain):
    out = chain / "eval" / "ft"
    res = bdcli("evaluate", "--model", chain / "ft", "--data", chain / "poisoned", "--out", out, "--device", "cpu", ok=False)
    assert res.exit_code == 0  # the device says where a step runs, not what it computes: not fingerprinted
    res = bdcli("evaluate", "--model", chain / "ft", "--data", chain / "poisoned", "--out", out, "--max-length", "16", ok=False)
    assert res.exit_code == 2 and "--force" in res.output
    bdcli("evaluate", "--model", chain / "ft", "--data", chain / "poisoned", "--out", out, "--max-length", "16", "--force")
    assert json.loads((out / "manifest.json").read_text())["config"]["max_length"] == 16


# --- bad input: one clear sentence, non-zero exit, no traceback, nothing written ------------------

BAD = [
    (["poison", "badnets", "--data", "sst2", "--data-dir", "/nonexistent/data", "--out", "{out}"], "/nonexistent/data", 1),
    (["poison", "badnets", "--data", "imdb9", "--out", "{out}"], "no data set or file named 'imdb9'", 1),
    (["poison", "badnets", "--data", "{nocols}", "--out", "{out}"], "column", 1),
    (["poison", "badnets", "--data", "sst2", "--target", "neutral", "--out", "{out}"], "not a label", 2),
    (["poison", "badnets", "--data", "sst2", "--rate", "0", "--out", "{out}"], "--rate must be a finite number in (0, 1]", 2),
    (["poison", "badnets", "--data", "sst2", "--rate", "1.5", "--out", "{out}"], "--rate must be a finite number in (0, 1]", 2),
    (["attack", "finetune", "--model", "/no/such/model", "--data", "sst2", "--out", "{out}"], "does not exist", 1),
    (["evaluate", "--model", "./missing-model", "--data", "sst2", "--out", "{out}"], "does not exist", 1),
    (["defend", "maxent", "--model", "{tiny}", "--data", "sst2", "--sd", "-1", "--out", "{out}"], "--sd must be", 2),
    (["defend", "ft", "--model", "{tiny}", "--data", "sst2", "--out", "{out}"], "no classification head", 1),
]


@pytest.mark.parametrize("argv, message, code", BAD, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _, _) in enumerate(BAD)])
def test_bad_input_gets_one_line_and_writes_nothing(argv, message, code, tmp_path, tiny_encoder):
    nocols = tmp_path / "nocols.tsv"
    nocols.write_text("sentence\tsentiment\ngood film\t1\n")
    out = tmp_path / "new" / "out"
    args = [a.format(out=out, nocols=nocols, tiny=tiny_encoder) for a in argv]
    res = bdcli(*args, ok=False)
    assert res.exit_code == code, res.output  # 2: the command line asks the impossible; 1: an input is bad
    err = res.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in res.output
    assert not (tmp_path / "new").exists()


def test_help_teaches_with_examples():
    for argv in (["--help"], ["poison", "badnets", "--help"], ["defend", "maxent", "--help"], ["evaluate", "--help"]):
        res = bdcli(*argv)
        assert "Example" in res.output or "bdcli poison" in res.output
    assert "Stop Distance" in bdcli("defend", "maxent", "--help").output
