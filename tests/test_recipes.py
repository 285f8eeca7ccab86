"""Recipes: expansion into steps (shared steps run once), validation of every shipped recipe, bad input,
and the runner end to end on the tiny model (kill and resume, --jobs, mean ± std)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bdcli.errors import BdcliError, UsageError
from bdcli.recipes import describe_plan, expand, load_recipe
from tests.helpers import bdcli

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


MATRIX = """
name: matrix
datasets: [{data}]
model: {model}
seeds: [1, 2]
attacks:
  BadNets: {{poison: {{name: badnets, rate: 0.2}}, attack: {{max_steps: 2}}}}
  AddSent: {{poison: {{name: addsent, rate: 0.2}}, attack: {{max_steps: 2}}}}
defenses:
  FT: {{name: ft, max_steps: 2}}
  FTH: {{name: fth, max_steps: 2}}
  Ours: {{name: maxent, maxent_max_steps: 2, max_steps: 2}}
"""


def test_matrix_expands_to_exactly_the_steps_it_needs(tmp_path, tiny_encoder, small_sst2):
    rec = load_recipe(_write(tmp_path, MATRIX.format(data=small_sst2, model=tiny_encoder)))
    plan = expand(rec)
    kinds = [n.step.kind for n in plan.nodes.values()]
    # Per attack and seed: one poisoned set, one victim and its evaluation, then a defense and its
    # evaluation per defense: 2 attacks x 2 seeds x (3 + 3 x 2) = 36 steps.
    assert len(plan.nodes) == 36
    assert kinds.count("poison") == 4 and kinds.count("attack") == 4
    assert kinds.count("defend") == 12 and kinds.count("evaluate") == 16
    victims = [n for n in plan.nodes.values() if n.step.kind == "attack"]
    # Each victim serves its own row and all three defenses of its attack and seed.
    assert all(len(v.cells) == 4 for v in victims)
    for node in plan.nodes.values():
        if node.step.kind == "defend":
            (dep,) = node.deps
            assert plan.nodes[dep].step.kind == "attack"
    text = describe_plan(plan, None)
    assert "36 steps" in text and "0 already done" in text


def test_a_clean_model_is_shared_by_the_attacks_that_start_from_it(tmp_path, tiny_encoder, small_sst2):
    text = f"""
name: shared-clean
datasets: [{small_sst2}]
model: {tiny_encoder}
seeds: [1]
attacks:
  SOS: {{poison: {{name: sos}}, clean: {{max_steps: 2}}, attack: {{name: sos, max_steps: 2}}}}
  EP: {{poison: {{name: badnets, triggers: cf}}, clean: {{max_steps: 2}}, attack: {{name: ep, max_steps: 2}}}}
"""
    plan = expand(load_recipe(_write(tmp_path, text)))
    clean = [n for n in plan.nodes.values() if n.id.endswith("/clean/s1")]
    assert len(clean) == 1 and sorted(clean[0].cells) == ["%s/EP/s1/victim" % small_sst2, "%s/SOS/s1/victim" % small_sst2]
    # 2 poisoned sets, 1 clean model, 2 attacks, 2 evaluations.
    assert len(plan.nodes) == 7


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_every_shipped_recipe_validates_and_expands(path, data_dir):
    from bdcli.recipes.schema import read_yaml

    profiles = [None, *((read_yaml(path).get("profiles") or {}).keys())]
    for profile in profiles:
        rec = load_recipe(path, profile)
        plan = expand(rec)
        assert plan.nodes, f"{path} ({profile}) expands to nothing"


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name != "tiny.yaml"],
                         ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES if p.name != "tiny.yaml"])
def test_every_shipped_recipe_spells_its_paper_numbers_as_the_report_names_its_data_sets(path):
    """A paper key the report does not produce would leave "Ours" empty beside the paper's numbers
    (tiny.yaml runs on a test folder of its own name)."""
    from bdcli.recipes.schema import read_yaml
    from bdcli.report.table import DATASET_NAMES

    raw = read_yaml(path)
    named = {DATASET_NAMES.get(d, d) for d in raw["datasets"]}
    assert set(((raw.get("report") or {}).get("paper") or {})) <= named


def test_baselines_recipe_reuses_the_quick_start_victims(data_dir):
    """The ablation recipe promises to run only its new defenses in a store of the quick start: its
    poison and attack steps, and its FT, FTH and Ours rows, must be the quick start's steps exactly."""
    base = expand(load_recipe(REPO / "recipes" / "maxent" / "baselines-sst2.yaml", None))
    qs = expand(load_recipe(REPO / "recipes" / "quickstart.yaml", None))
    shared_kinds = {"poison", "attack"}
    qs_fps = {n.fingerprint for n in qs.nodes.values()}
    base_fps = {n.fingerprint for n in base.nodes.values()}
    seed42 = {n.fingerprint for n in base.nodes.values() if n.step.kind in shared_kinds and "/s42/" in n.id}
    assert len(seed42) == 2 and seed42 <= qs_fps
    # The quick start plans seed 42 only; every step of it (FT, FTH and Ours included) is reused.
    assert qs_fps <= base_fps


def test_a_transfer_recipes_defenses_are_estimated_on_the_whole_clean_split(data_dir):
    """A defense without a scenario of its own defends its victim's: in Table 1's transfer recipe that
    is every one of SST-2's 6,920 train rows (217 steps of 32), not outsourcing's 10% (22)."""
    from bdcli.recipes.plan import estimate_steps

    plan = expand(load_recipe(REPO / "recipes" / "maxent" / "table1-sst2.yaml", "cpu"), only="sst2/BadNets/*")
    est = estimate_steps(plan)
    assert plan.nodes["sst2/BadNets/s1/FT/defend"].step.config.scenario is None
    assert est["sst2/BadNets/s1/FT/defend"] == (217, 217) and est["sst2/BadNets/s1/FT-steps/defend"] == (400, 400)


@pytest.mark.parametrize("name, cfg", [("badnets", {"rate": 0.1}), ("sos", {"rate": 0.1, "negative_rate": 0.1}),
                                       ("sos", {"rate": 0.2, "negative_rate": 0.0})])
def test_a_poisoners_planned_rows_are_the_rows_it_makes(name, cfg, small_sst2):
    """The dry run counts an embedding attack's steps by the rows it trains on (poisoned, and SOS's
    negatives): the poisoner's planned count must be what poisoning really gives."""
    from bdcli.data import load_corpus
    from bdcli.poison import POISONERS

    corpus = load_corpus(str(small_sst2))
    poisoner = POISONERS.get(name)(POISONERS.get(name).Config(**cfg))
    out = poisoner.apply(corpus)
    train = out.split("train")
    n_in = len(corpus.split("train"))
    made = sum(bool(p) for p in train.poisoned) + (len(train) - n_in)  # poisoned rows and SOS's added negatives
    assert poisoner.config.planned_rows(n_in) == (len(train), made)


def test_an_embedding_attacks_steps_are_estimated_on_its_poisoned_rows(data_dir):
    """EP trains its trigger embedding on the poisoned rows only: on AG's News (11,111 train rows, 10%
    poisoned) that is 1,111 rows, 35 steps of 32, not the whole split's 348 (which the clean model takes)."""
    from bdcli.recipes.plan import estimate_steps

    rec = load_recipe(REPO / "recipes" / "gba" / "table2.yaml", "cpu", ["datasets=[agnews]", "seeds=[1]"])
    est = estimate_steps(expand(rec, only="agnews/EP/*"))
    assert est["agnews/clean/s1"] == (348, 348) and est["agnews/EP/s1/attack"] == (35, 35)


def test_gba_head_recipe_reuses_table2_and_counts_the_head_steps(data_dir):
    """The head ablation promises to run only its GBA+head rows in a store of table2.yaml's cpu profile,
    and its dry run counts the head's own training steps."""
    from bdcli.recipes.plan import estimate_steps

    t2 = expand(load_recipe(REPO / "recipes" / "gba" / "table2.yaml", "cpu"))
    head = expand(load_recipe(REPO / "recipes" / "gba" / "mlm-head.yaml", None))
    t2_fps = {n.fingerprint for n in t2.nodes.values()}
    rest = [n for n in head.nodes.values() if "/GBA+head/" not in n.id]
    assert len(rest) == 20 and {n.fingerprint for n in rest} <= t2_fps  # MR and HS, two seeds
    steps = estimate_steps(head)
    plain, with_head = steps["mr/BadNets/s1/GBA/defend"], steps["mr/BadNets/s1/GBA+head/defend"]
    assert with_head == (plain[0] + 400, plain[1] + 400)


def test_gba_step_size_recipe_reuses_table2s_victims_and_writes_the_trigger_rmse(data_dir):
    t2 = expand(load_recipe(REPO / "recipes" / "gba" / "table2.yaml", "cpu"))
    sweep = expand(load_recipe(REPO / "recipes" / "gba" / "step-size.yaml", None))
    t2_fps = {n.fingerprint for n in t2.nodes.values()}
    shared = sorted(n.id for n in sweep.nodes.values() if n.fingerprint in t2_fps)
    assert shared == sorted(f"mr/BadNets/s{s}/{k}" for s in (1, 2) for k in ("poison", "attack", "GBA/defend"))
    evals = [n for n in sweep.nodes.values() if n.step.kind == "evaluate"]
    assert evals and all(tuple(n.step.config.trigger_rmse) == ("cf", "mn", "bb", "tq", "mb") for n in evals)


def test_prune_ratio_recipe_reuses_the_baselines_and_counts_no_steps_for_prune_only(data_dir):
    """In the cpu profile the sweep's victim is the quick start's, and its ratio-0.5 rows are
    baselines-sst2.yaml's FP and FP-emb; a prune-only row trains nothing."""
    from bdcli.recipes.plan import estimate_steps

    sweep = expand(load_recipe(REPO / "recipes" / "maxent" / "figures6-8-prune-ratio.yaml", "cpu"))
    base = expand(load_recipe(REPO / "recipes" / "maxent" / "baselines-sst2.yaml", "cpu"))
    base_fps = {n.fingerprint for n in base.nodes.values()}
    reused = [n.id for n in sweep.nodes.values() if n.fingerprint in base_fps]
    assert len(reused) == 7  # poison, victim, its evaluation, FP 0.5 and FP-emb 0.5 with theirs
    steps = estimate_steps(sweep)
    assert steps["sst2/BadNets/s42/prune-only-emb 0.3/defend"] == (0, 0)
    assert steps["sst2/BadNets/s42/FP-emb 0.3/defend"] == (66, 66)


@pytest.fixture
def no_data(monkeypatch):
    """A machine without the data: no data directory, and the hub out of reach."""
    import bdcli.data.named as named
    import bdcli.steps as steps

    monkeypatch.delenv("BDCLI_DATA_DIR", raising=False)
    monkeypatch.setattr(named, "_hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(steps, "_CORPORA", {})  # nothing loaded by an earlier test in this process


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_every_shipped_recipe_dry_runs_without_its_data(path, tmp_path, no_data):
    """A user reads a recipe's plan before fetching the data: no data directory and no hub still
    gives the plan (exit 0, nothing written), with the unread data named instead of a step count."""
    out = tmp_path / "out"
    res = bdcli("run", path, "--out", out, "--dry-run")
    head = res.output.splitlines()[:6]
    assert any(ln.startswith("not readable here") and "could not be reached" in ln for ln in head), res.output
    assert "step(s) whose data could not be read" in res.output and "[todo]" in res.output
    assert not out.exists()


def test_only_a_dry_run_goes_on_without_the_data(tmp_path, no_data):
    """Only a dry run tolerates unread data: planning a real run of a rewrite attack (whose fingerprint
    hashes its rewrite table) without the data stops with the reason, before any step runs."""
    rec = load_recipe(REPO / "recipes" / "maxent" / "table1-sst2.yaml", None)
    plan = expand(rec, "sst2/StyleBkd/s1/victim", dry_run=True)
    assert plan.unreadable and "could not be reached" in plan.unreadable[0]
    with pytest.raises(BdcliError, match="could not be reached"):
        expand(rec, "sst2/StyleBkd/s1/victim")
    out = tmp_path / "out"
    res = bdcli("run", REPO / "recipes" / "tiny.yaml", "--out", out, ok=False)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "could not be reached" in lines[0], res.output
    assert not out.exists()


def test_set_overrides_any_field_and_refuses_unknown_keys(tmp_path, tiny_encoder, small_sst2):
    path = _write(tmp_path, MATRIX.format(data=small_sst2, model=tiny_encoder))
    rec = load_recipe(path, None, ["seeds=[7]", "attacks.BadNets.attack.lr=3e-4", "defenses.FTH=false"])
    assert rec.seeds == [7]
    assert rec.attacks[0].attack.config.lr == pytest.approx(3e-4)
    assert [k for k, _ in rec.defenses] == ["FT", "Ours"]
    with pytest.raises(UsageError, match="unknown field 'lrr'.*'lr'"):
        load_recipe(path, None, ["attacks.BadNets.attack.lrr=1"])
    with pytest.raises(UsageError, match="no 'attacks.BadNet'.*'BadNets'"):
        load_recipe(path, None, ["attacks.BadNet.attack.lr=1"])
    with pytest.raises(UsageError, match="unknown recipe key 'seed'.*'seeds'"):
        load_recipe(path, None, ["seed=1"])


@pytest.mark.parametrize("text, message", [
    ("name: x\ndatasets: [sst2\n", "YAML syntax error at line 3, column 1"),
    ("name: x\ndatasets: [sst2]\nseeds: [1]\nattacks: {BadNets: {poison: {name: badnets}}}\ndefences: {}\n",
     "unknown recipe key 'defences' (did you mean 'defenses'?)"),
    ("name: x\ndatasets: [sst2]\nseeds: [1]\nattacks: {BadNets: {poison: {name: badnet}}}\n", "unknown poisoner 'badnet'"),
    ("name: x\ndatasets: [sst2]\nseeds: [1]\nattacks: {BadNets: {attack: {lr: fast}}}\n", "must be a number, got 'fast'"),
    ("name: x\ndatasets: [sst2]\nseeds: [1, 1]\nattacks: {BadNets: {}}\n", "duplicate seeds [1]"),
    ("name: x\ndatasets: [sst2]\nseeds: []\nattacks: {BadNets: {}}\n", "the matrix is empty (seeds has no entry)"),
    ("name: x\ndatasets: [sst2]\nseeds: [1]\nattacks: {BadNets: {poison: {rate: nan}}}\n", "must be a finite number"),
    ("name: x\ndatasets: [sst2]\nseeds: [1]\nattacks: {BadNets: {poison: {seed: 3}}}\n", "seeds come from the recipe"),
])
def test_bad_recipes_get_one_line_and_exit_2_with_nothing_written(tmp_path, text, message):
    path = _write(tmp_path, text)
    out = tmp_path / "out"
    res = bdcli("run", path, "--out", out, ok=False)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not out.exists()


def test_a_missing_recipe_and_a_bad_set_are_usage_errors(tmp_path):
    res = bdcli("run", tmp_path / "nope.yaml", ok=False)
    assert res.exit_code == 2 and "does not exist" in res.output
    path = REPO / "recipes" / "tiny.yaml"
    res = bdcli("run", path, "--set", "nothere=1", "--dry-run", ok=False)
    assert res.exit_code == 2 and "unknown recipe key 'nothere'" in res.output


# ------------------------------------------------------------------------------------------ the runner


def _env() -> dict:
    env = {**os.environ, "BDCLI_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_argv(tiny_encoder, small_sst2, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bdcli.cli.app", "run", str(REPO / "recipes" / "tiny.yaml"),
            "--set", f"model={tiny_encoder}", "--set", f"datasets=[{small_sst2}]", "--set", "attacks.AddSent=false",
            "--threads", "1", "--out", str(out), *extra]


def _metrics(out: Path) -> dict[str, dict]:
    plan = json.loads((out / "plan.json").read_text())
    got = {}
    for node in plan["nodes"]:
        if node["step"]["kind"] == "evaluate":
            m = json.loads((out / node["folder"] / "metrics.json").read_text())
            got[node["id"]] = {k: m[k] for k in ("acc", "asr", "seed", "label")}
    return got


def _finished(out: Path) -> dict[str, str]:
    """Published step folder -> the time its manifest says it finished. Hidden folders beside them are a
    running step's staging folder, whose manifest may be half-written: they are not results yet."""
    return {p.parent.name: json.loads(p.read_text())["finished"] for p in (out / "steps").glob("*/manifest.json")
            if not p.parent.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_encoder, small_sst2) -> Path:
    """The tiny recipe run once, uninterrupted, two steps at a time."""
    out = tmp_path_factory.mktemp("recipe") / "jobs2"
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, out, "--jobs", "2"), env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return out


def test_tiny_recipe_runs_end_to_end_to_a_mean_and_std_table(reference):
    report = (reference / "report.md").read_text()
    assert "| Victim" in report and "| FT" in report and "| Ours" in report
    assert " ± " in report  # two seeds: every cell is mean ± std
    cells = json.loads((reference / "report.json").read_text())["cells"]
    victim_asr = [c for c in cells if c["method"] == "Victim" and c["metric"] == "ASR"]
    assert victim_asr and victim_asr[0]["n"] == 2
    assert len(_metrics(reference)) == 6  # 2 seeds x (victim, FT, Ours)


def test_killed_run_resumes_redoing_nothing_and_matches_jobs_2(tmp_path, reference, tiny_encoder, small_sst2):
    out = tmp_path / "jobs1"
    argv = _run_argv(tiny_encoder, small_sst2, out, "--jobs", "1")
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    rng = random.Random()
    want = rng.randint(2, 8)  # kill once this many of the 14 steps have finished
    deadline = time.time() + 600
    while len(_finished(out)) < want if (out / "steps").exists() else True:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no progress within 600 s"
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 1.0))
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and every worker, at once
    proc.wait()
    before = _finished(out)
    assert 2 <= len(before) < 14
    rerun = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    after = _finished(out)
    assert len(after) == 14
    # Nothing finished before the kill was redone: each kept its manifest.
    assert {k: after[k] for k in before} == before
    assert f"{len(before)} reused" in rerun.stderr
    # One step at a time or two: the same metrics, and after a kill too.
    assert _metrics(out) == _metrics(reference)


def test_second_run_of_the_same_recipe_reuses_everything(reference, tiny_encoder, small_sst2):
    before = _finished(reference)
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, reference, "--jobs", "2"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "0 steps ran, 14 reused" in proc.stderr
    assert _finished(reference) == before


def test_dry_run_counts_done_steps_and_writes_nothing(reference, tiny_encoder, small_sst2, tmp_path):
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, reference, "--dry-run"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "14 steps" in proc.stdout and "14 already done, 0 to run" in proc.stdout
    fresh = tmp_path / "fresh"
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, fresh, "--dry-run"), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "0 already done, 14 to run" in proc.stdout
    assert not fresh.exists()


def test_a_steps_warnings_reach_the_runs_report_once_each_with_the_steps_that_gave_them(reference, tiny_encoder,
                                                                                      small_sst2, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(reference, store)
    attacks = [n for n in json.loads((store / "plan.json").read_text())["nodes"] if n["step"]["kind"] == "attack"]
    assert len(attacks) == 2
    for node in attacks:
        path = store / node["folder"] / "manifest.json"
        manifest = json.loads(path.read_text())
        # Every attack that trains a classifier measured it on held-out rows.
        assert manifest["summary"]["heldout"]["rows"] > 0
        manifest["summary"]["warnings"] = [*manifest["summary"].get("warnings", []), "a sentence both steps wrote"]
        path.write_text(json.dumps(manifest))
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, store, "--jobs", "2"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "0 steps ran, 14 reused" in proc.stderr, proc.stderr
    report = (store / "report.md").read_text()
    assert report.count("a sentence both steps wrote") == 1
    assert f"{attacks[0]['id']} and 1 more step(s): a sentence both steps wrote" in report


# ------------------------------------------------------------------------------------- the archive


def _report_cells(path: Path) -> list[dict]:
    res = bdcli("report", path, "--format", "json")
    return json.loads(res.stdout)["cells"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_archive_reports_what_its_store_reports_without_weights_or_data(reference, tmp_path):
    dest = tmp_path / "archive"
    res = bdcli("archive", reference, dest)
    assert "14 finished steps" in res.stderr and "14 new" in res.stderr
    names = {Path(p).name for p in _tree(dest)}
    assert names <= {"plan.json", "manifest.json", "metrics.json"}
    assert not any(p.suffix in (".safetensors", ".jsonl") for p in dest.rglob("*"))
    assert _report_cells(dest) == _report_cells(reference)
    # Archiving the same store again changes nothing.
    before = _tree(dest)
    assert "0 new, 0 replaced, 14 already there" in bdcli("archive", reference, dest).stderr
    assert _tree(dest) == before


def test_an_archive_grows_by_a_later_seed_and_refuses_other_numbers_for_a_step(reference, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(reference, store, ignore=shutil.ignore_patterns("*.safetensors", "*.jsonl"))
    full_plan = (store / "plan.json").read_text()
    plan = json.loads(full_plan)
    plan["nodes"] = [n for n in plan["nodes"] if "/s1/" in n["id"]]
    plan["resolved"]["seeds"] = [1]
    (store / "plan.json").write_text(json.dumps(plan))
    dest = tmp_path / "archive"
    assert "7 new" in bdcli("archive", store, dest).stderr
    assert {c["n"] for c in _report_cells(dest) if c["n"] is not None} == {1}

    (store / "plan.json").write_text(full_plan)  # the second seed's run
    assert "7 new, 0 replaced, 7 already there" in bdcli("archive", store, dest).stderr
    assert _report_cells(dest) == _report_cells(reference)
    assert json.loads((dest / "plan.json").read_text())["resolved"]["seeds"] == [1, 2]

    # The same step run again in another store, later, by newer code and at another speed made the same
    # thing: kept as archived, not a conflict.
    trained = next(n for n in plan["nodes"] if n["step"]["kind"] == "attack")
    manifest = store / trained["folder"] / "manifest.json"
    archived = (dest / trained["folder"] / "manifest.json").read_bytes()
    assert f"{reference}/steps/" in manifest.read_text()  # it names the steps it read by their store path
    rerun = json.loads(manifest.read_text().replace(str(reference), "/elsewhere/store"))
    rerun.update(started="2030-01-01T00:00:00+00:00", finished="2030-01-01T00:01:00+00:00")
    rerun["versions"]["git_commit"] = "f" * 40
    rerun["summary"]["training"]["seconds"] *= 3
    manifest.write_text(json.dumps(rerun))
    assert "0 new, 0 replaced, 14 already there" in bdcli("archive", store, dest).stderr
    assert (dest / trained["folder"] / "manifest.json").read_bytes() == archived

    # The same step with other numbers (another machine): refused, nothing written; --replace takes it.
    node = next(n for n in plan["nodes"] if n["step"]["kind"] == "evaluate")
    metrics = store / node["folder"] / "metrics.json"
    m = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**m, "acc": 0.0}))
    before = _tree(dest)
    res = bdcli("archive", store, dest, ok=False)
    assert res.exit_code == 1 and "pass --replace" in res.output and node["id"] in res.output
    assert _tree(dest) == before
    assert "1 replaced" in bdcli("archive", store, dest, "--replace").stderr
    assert json.loads((dest / node["folder"] / "metrics.json").read_text())["acc"] == 0.0


def test_an_archive_takes_one_recipe_and_needs_a_store(reference, tmp_path):
    dest = tmp_path / "archive"
    bdcli("archive", reference, dest)
    plan = json.loads((dest / "plan.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "plan.json").write_text(json.dumps({**plan, "recipe": "another"}))
    res = bdcli("archive", other, dest, ok=False)
    assert res.exit_code == 2 and "archive each recipe into its own folder" in res.output
    res = bdcli("archive", tmp_path, tmp_path / "x", ok=False)
    assert res.exit_code == 2 and "no plan.json" in res.output and not (tmp_path / "x").exists()
    # A hostile plan cannot make the archive read or write outside the step folders.
    (other / "plan.json").write_text(json.dumps({**plan, "nodes": [{**plan["nodes"][0], "folder": "steps/../../x"}]}))
    res = bdcli("archive", other, tmp_path / "y", ok=False)
    assert res.exit_code == 1 and "steps/<hash> folder" in res.output and not (tmp_path / "y").exists()


def test_runs_of_subsets_in_one_store_leave_a_plan_naming_every_step(reference, tiny_encoder, small_sst2, tmp_path):
    """Runs of one recipe with --only (a column at a time) fill one store; its plan.json must name the
    steps of every run, or an archive taken after the last run would lose the earlier columns."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(reference, store, ignore=shutil.ignore_patterns("*.safetensors", "*.jsonl"))
    (store / "plan.json").unlink()
    for only in ("*/BadNets/s2/*", "*/BadNets/s1/*"):
        proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, store, "--only", only), env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "0 steps ran, 7 reused" in proc.stderr, proc.stderr
    ids = [n["id"] for n in json.loads((store / "plan.json").read_text())["nodes"]]
    assert len(ids) == len(set(ids)) == 14
    # The latest run's steps first (the report's row order), then the earlier run's.
    assert all("/s1/" in i for i in ids[:7]) and all("/s2/" in i for i in ids[7:])
    assert "14 new" in bdcli("archive", store, tmp_path / "archive").stderr
    # Another recipe's run in the same store replaces the plan, as before (an archive takes one recipe).
    plan = json.loads((store / "plan.json").read_text())
    (store / "plan.json").write_text(json.dumps({**plan, "recipe": "another"}))
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, store, "--only", "*/BadNets/s1/*"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((store / "plan.json").read_text())["nodes"]) == 7


def test_a_cell_rerun_with_other_settings_supersedes_its_steps_and_those_that_read_them(
        reference, tiny_encoder, small_sst2, tmp_path):
    """A column rerun with another attack budget (the RIPPLe victim that never learned its task) must
    leave one victim per cell in the store and in its archive, and no defense row of the old victim."""
    import shutil

    dest = tmp_path / "archive"
    bdcli("archive", reference, dest)
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    old = {n["id"]: n for n in json.loads((store / "plan.json").read_text())["nodes"]}
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, store, "--only", "*/BadNets/s1/victim",
                                    "--set", "attacks.BadNets.attack.max_steps=10"),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "reruns 6 steps of an earlier run" in proc.stderr
    nodes = json.loads((store / "plan.json").read_text())["nodes"]
    ids = [n["id"] for n in nodes]
    assert len(ids) == len(set(ids)) == 10  # s1's poison, attack and victim evaluation, and all of s2
    s1 = {i.rsplit("/", 1)[1] for i in ids if "/s1/" in i}
    assert s1 == {"poison", "attack", "eval-victim"}
    new_attack = next(n for n in nodes if n["id"].endswith("s1/attack"))
    assert new_attack["fingerprint"] != old[new_attack["id"]]["fingerprint"]
    assert new_attack["step"]["config"]["max_steps"] == 10
    cells = {(c["method"], c["metric"]): c["n"] for c in _report_cells(store)}
    assert cells[("Victim", "ASR")] == 2 and cells[("FT", "ASR")] == cells[("Ours", "ASR")] == 1

    res = bdcli("archive", store, dest)
    assert "2 new, 0 replaced, 8 already there, 6 earlier steps superseded" in res.stderr
    for gone in ("attack", "FT/defend", "Ours/eval"):
        assert not (dest / next(n for i, n in old.items() if i.endswith(f"/s1/{gone}"))["folder"]).exists()
    assert len(list((dest / "steps").iterdir())) == 10
    assert _report_cells(dest) == _report_cells(store)


def test_per_seed_lists_each_model_and_its_mean_is_the_tables(reference):
    rows = json.loads(bdcli("report", reference, "--per-seed", "--format", "json").stdout)
    assert len(rows) == 6 and {r["Seed"] for r in rows} == {"1", "2"}
    assert [r["Method"] for r in rows] == ["Victim", "Victim", "FT", "FT", "Ours", "Ours"]
    cells = {(c["method"], c["metric"]): c["mean"] for c in _report_cells(reference) if c["attack"] == "BadNets"}
    for method in ("Victim", "FT", "Ours"):
        mine = [r for r in rows if r["Method"] == method]
        for metric in ("ACC", "ASR"):
            assert abs(sum(r[metric] for r in mine) / 2 - cells[(method, metric)]) < 0.006
    # The small data set names its labels 0 and 1; every row triggered (GBA appendix B.2).
    assert all({"ASR_c 0", "ASR_c 1"} <= set(r) and r["ASR_c rows"] == "every" and r["Steps"] for r in rows)
    text = bdcli("report", reference, "--per-seed").stdout
    assert text.startswith("| Dataset | Attack | Method | Seed | ACC | ASR |")
    res = bdcli("report", reference, "--per-seed", "--out", str(reference / "folder"), ok=False)
    assert res.exit_code == 2 and "--per-seed writes one table" in res.output


def test_retrigger_remeasures_a_stores_models_on_an_asr_set_built_another_way(reference, tmp_path):
    """scripts/retrigger.py: the same models and clean rows (so the same ACC), test triggers at the
    sentence start instead of BadNets' random position, and a field the poisoner lacks refused."""
    script = [sys.executable, str(REPO / "scripts" / "retrigger.py"), str(reference), "*/BadNets/s1/*"]
    out = tmp_path / "start"
    proc = subprocess.run([*script, "--set", "position=start", "--out", str(out)], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    before = {k: v for k, v in _metrics(reference).items() if "/BadNets/s1/" in k}
    assert len(before) == 3 and len(proc.stdout.splitlines()) == 3  # the victim, FT and Ours
    for node_id, old in before.items():
        new = json.loads((out / "evals" / node_id.replace("/", "_") / "metrics.json").read_text())
        assert new["acc"] == old["acc"] and new["seed"] == old["seed"] == 1 and new["label"] == old["label"]
        assert new["asr"] is not None
    assert sorted(p.name for p in (out / "evals").glob("*/*")) == ["manifest.json"] * 3 + ["metrics.json"] * 3
    (data,) = (out / "data").iterdir()
    rows = [json.loads(line) for line in (data / "test-poison.jsonl").read_text().splitlines()]
    trigger_words = json.loads((data / "poison.json").read_text())["triggers"]
    assert rows and all(r["text"].split()[0] in trigger_words for r in rows)
    bad = subprocess.run([*script, "--set", "positon=start", "--out", str(tmp_path / "bad")], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--set takes key=value with key one of" in bad.stderr
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------- memory


def test_the_runner_records_each_steps_peak_memory_under_its_seed_blanked_id(reference, tiny_encoder, small_sst2,
                                                                              tmp_path):
    peaks = json.loads((reference / "logs" / "peak-rss.json").read_text())
    plan = json.loads((reference / "plan.json").read_text())
    from bdcli.recipes.memory import meminfo_mb, step_key

    assert set(peaks) == {step_key(n["id"]) for n in plan["nodes"]}
    total = meminfo_mb()[0]
    # Each step is a process that imported torch: tens of MB at least, and never more than the machine.
    assert all(50 < p["peak_rss_mb"] < total and p["rc"] == 0 for p in peaks.values())
    assert "s*" in next(iter(peaks))
    # The dry run of a store that measured a step shows it beside the steps still to run.
    fresh = tmp_path / "fresh"
    (fresh / "logs").mkdir(parents=True)
    (fresh / "logs" / "peak-rss.json").write_text(json.dumps(peaks))
    proc = subprocess.run(_run_argv(tiny_encoder, small_sst2, fresh, "--dry-run"), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sum("GB (measured)" in line for line in proc.stdout.splitlines()) == 14


def test_a_step_killed_by_sigkill_is_named_as_the_oom_killers_with_its_peak(reference, tmp_path):
    import fcntl

    from bdcli.recipes.executor import LocalProcessExecutor, Task

    plan = json.loads((reference / "plan.json").read_text())
    poison = next(n for n in plan["nodes"] if n["step"]["kind"] == "poison")
    out = tmp_path / "step"
    executor = LocalProcessExecutor(1, 1, lock_wait_s=120)
    # Hold the step's output lock, so that the step waits for it (artifacts._output_lock) until killed.
    with open(tmp_path / ".step.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        task = Task("x/s1/poison", poison["step"], out, tmp_path / "x.log", tmp_path / "x.progress")
        try:
            executor.start(task)
            deadline = time.time() + 120
            while task.pid is None:
                assert not executor.poll() and time.time() < deadline, "the step did not start"
                time.sleep(0.05)
            time.sleep(1.0)
            os.kill(task.pid, signal.SIGKILL)
            done = []
            while not done:
                assert time.time() < deadline, "the killed step was never reported"
                done = executor.poll()
                time.sleep(0.05)
        finally:
            executor.stop()
    (fin,) = done
    assert fin.returncode == -signal.SIGKILL and fin.peak_rss_mb and fin.peak_rss_mb > 50
    assert fin.message.startswith("killed by SIGKILL after holding ") and "out-of-memory killer" in fin.message
    assert not out.exists()


class _FakeExecutor:
    """Finishes each step two polls after it started, and remembers which steps ran side by side."""

    local = True

    def __init__(self, slots: int):
        self.slots, self.tasks, self.together = slots, {}, []

    def start(self, task):
        self.tasks[task.id] = 0
        self.together.append(sorted(self.tasks))

    def poll(self):
        from bdcli.recipes.executor import Finished

        for id in self.tasks:
            self.tasks[id] += 1
        done = [id for id, n in self.tasks.items() if n > 2]
        for id in done:
            del self.tasks[id]
        return [Finished(_task(id), 0, "", 100.0) for id in done]

    def running(self):
        return [_task(id) for id in self.tasks]

    def stop(self):
        self.tasks.clear()


def _task(id: str):
    from bdcli.recipes.executor import Task

    return Task(id, {}, Path("x"), Path("x.log"), Path("x.progress"))


@pytest.mark.parametrize("measured", [False, True])
def test_steps_that_took_more_memory_than_is_left_wait_for_the_running_ones(measured, tmp_path, monkeypatch,
                                                                             tiny_encoder, small_sst2):
    from bdcli.recipes import runner
    from bdcli.recipes.memory import step_key

    plan = expand(load_recipe(_write(tmp_path, MATRIX.format(data=small_sst2, model=tiny_encoder))))
    attacks = [id for id, n in plan.nodes.items() if n.step.kind == "attack"]
    out = tmp_path / "store"
    if measured:  # an earlier run measured 9 GB for each victim's training
        (out / "logs").mkdir(parents=True)
        (out / "logs" / "peak-rss.json").write_text(json.dumps(
            {step_key(a): {"peak_rss_mb": 9000.0, "step": a, "rc": 0} for a in attacks}))
    # A 24 GB machine with 12 GB free and nothing growing: one 9 GB step fits, two do not (10% stays free).
    monkeypatch.setattr(runner, "meminfo_mb", lambda: (24000.0, 12000.0))
    monkeypatch.setattr(runner, "rss_mb", lambda pid: 0.0)
    said = []
    executor = _FakeExecutor(slots=3)
    summary = runner.run_plan(plan, out, executor, on_event=said.append, timeout_s=60)
    assert summary.ok and set(summary.status.values()) == {"done"}
    most = max(sum(id in attacks for id in ids) for ids in executor.together)
    waits = [m for m in said if m.startswith("wait ")]
    if measured:
        assert most == 1 and waits and all("it took 8.8 GB before" in m for m in waits)
        assert len(waits) == len(set(waits))  # each held step is said once
    else:
        assert most >= 2 and not waits


def test_a_steps_warnings_are_said_as_it_ends(tmp_path, monkeypatch, tiny_encoder, small_sst2):
    from bdcli.recipes import runner

    plan = expand(load_recipe(_write(tmp_path, MATRIX.format(data=small_sst2, model=tiny_encoder))))
    attacks = {id for id, n in plan.nodes.items() if n.step.kind == "attack"}
    monkeypatch.setattr(runner, "step_warnings",
                        lambda out, node: ["answers one label"] if node.id in attacks else [])
    said = []
    summary = runner.run_plan(plan, tmp_path / "store", _FakeExecutor(slots=2), on_event=said.append, timeout_s=60)
    assert summary.ok
    warned = [m for m in said if m.startswith("warning  ")]
    assert sorted(warned) == sorted(f"warning  {id}: answers one label" for id in attacks)
    # Each follows its step's "done" line.
    assert all(said[said.index(w) - 1].startswith(f"done     {w.split()[1][:-1]} ") for w in warned)
