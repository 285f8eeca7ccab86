"""Trust: a run killed at a chosen step of any stage resumes from that step to the same result bit for
bit, concurrent writers are refused, a diverging run stops and publishes nothing, bad rows are counted
and reported or dropped, and the same seed gives the same metrics.

Every process here trains at one torch thread: the thread count changes every weight from the first
step (docs/trust-resume.md), so "bit for bit" holds at a fixed count, and a resume goes on at the count
its checkpoint was written at."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import bdcli

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--batch-size", "8", "--max-length", "32", "--checkpoint-every", "2"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _env(**extra: str) -> dict:
    # One thread, as the in-process runs (the one_thread fixture): the only count results are compared at.
    return {**os.environ, "BDCLI_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _cli(argv: list, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bdcli.cli.app", *map(str, argv)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **popen)


def _kill_at(argv: list, stage: str, step: int, out: Path, resume: bool = False) -> None:
    """Run ``bdcli argv`` in a subprocess that SIGKILLs itself right after the checkpoint of ``step`` in
    ``stage`` (BDCLI_FAULT_KILL_AT); check it died there and published nothing."""
    proc = _cli([*argv, "--out", out, *(["--resume"] if resume else [])], env=_env(BDCLI_FAULT_KILL_AT=f"{stage}:{step}"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {stage}:{step} (exit {proc.returncode}): {err.decode()}"
    assert not out.exists()  # atomic: a killed run publishes nothing
    (ckpt,) = out.parent.glob(f".{out.name}.ckpt-*")
    assert json.loads((ckpt / stage / "state.json").read_text())["step"] == step


def _resumed_from(manifest: dict) -> list[dict]:
    """Every stage's ``resumed_from`` that is set, in the order the summary lists the stages."""
    found: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("resumed_from"):
                found.append(node["resumed_from"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(manifest["summary"])
    return sorted(found, key=lambda r: r["stage"])


def _metrics(model: Path, asr_data: Path, out: Path) -> dict:
    bdcli("evaluate", "--model", model, "--data", asr_data, "--max-length", "32", "--out", out)
    m = json.loads((out / "metrics.json").read_text())
    # Everything but the model's path and the wall time its training took.
    return {k: v for k, v in m.items() if k not in ("model", "cost")} | {"steps": m.get("cost", {}).get("steps")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_sst2, tiny_encoder) -> Path:
    runs = tmp_path_factory.mktemp("trust")
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--out", runs / "poisoned")
    bdcli("poison", "sos", "--data", small_sst2, "--target", "1", "--out", runs / "sos-data")
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3", "--max-steps", "4",
          *FAST, "--out", runs / "victim")
    return runs


def _case(name: str, runs: Path, small_sst2: Path, tiny_encoder: Path) -> tuple[list, list[tuple[str, int]], Path]:
    """The command, the (stage, step) points to kill it at, one per stage, and its ASR set."""
    clean = ["--model", runs / "victim", "--data", small_sst2, "--clean-fraction", "0.25"]
    if name == "attack":
        return (["attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3",
                 "--max-steps", "8", *FAST], [("train-1", 4)], runs / "poisoned")
    if name == "maxent":  # an unreachable Stop Distance: stage 1 runs its 6 steps, then stage 2 its 6
        return (["defend", "maxent", *clean, "--sd", "1e-9", "--maxent-lr", "1e-3", "--maxent-max-steps", "6",
                 "--sd-every", "2", "--max-steps", "6", *FAST], [("train-1", 2), ("train-2", 4)], runs / "poisoned")
    if name == "nad":  # teacher, then student
        return (["defend", "nad", *clean, "--lr", "1e-3", "--nad-teacher-lr", "1e-3", "--max-steps", "6", *FAST],
                [("train-1", 2), ("train-2", 4)], runs / "poisoned")
    if name == "fine-pruning":  # the re-train is its one training stage
        return (["defend", "fine-pruning", *clean, "--prune-ratio", "0.5", "--prune-batches", "2", "--max-steps", "6",
                 *FAST], [("train-1", 4)], runs / "poisoned")
    assert name == "sos"  # given an encoder: a clean fine-tune (0.1 epoch of 320 rows: 4 steps), then the trigger rows
    return (["attack", "sos", "--model", tiny_encoder, "--data", runs / "sos-data", "--clean-epochs", "0.1",
             "--max-steps", "6", *FAST], [("train-1", 2), ("train-2", 4)], runs / "sos-data")


@pytest.mark.parametrize("name", ["attack", "maxent", "nad", "fine-pruning", "sos"])
def test_killed_run_resumes_from_the_step_it_was_killed_at(name, tmp_path, runs, small_sst2, tiny_encoder):
    args, kills, asr_data = _case(name, runs, small_sst2, tiny_encoder)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    bdcli(*args, "--out", ref)
    # Killed in every stage: the first run in stage 1, its resume in stage 2, and so on.
    for i, (stage, step) in enumerate(kills):
        _kill_at(args, stage, step, killed, resume=i > 0)
    (ckpt,) = tmp_path.glob(".killed.ckpt-*")
    kept = tmp_path / "kept-checkpoint"
    shutil.copytree(ckpt, kept)
    bdcli(*args, "--out", killed, "--resume")

    new_m = json.loads((killed / "manifest.json").read_text())
    ref_m = json.loads((ref / "manifest.json").read_text())
    # (a) each stage names the step it was picked up at; a restart would name none
    assert _resumed_from(new_m) == [{"stage": s, "step": n} for s, n in kills]
    assert _resumed_from(ref_m) == []
    # (d) nothing left behind once the output is published
    assert not list(tmp_path.glob(".killed.ckpt-*")) and not list(tmp_path.glob(".killed.tmp-*"))
    # (b) the same weights, bit for bit, and (c) the same metrics
    assert _same_weights(ref, killed)
    assert ref_m["fingerprint"] == new_m["fingerprint"]
    assert _metrics(ref, asr_data, tmp_path / "eval-ref") == _metrics(killed, asr_data, tmp_path / "eval-killed")

    if name == "attack":
        # The weights come from the checkpoint: resumed from a tampered one, the result is not the reference's.
        shutil.rmtree(killed)
        shutil.copytree(kept, ckpt)
        w = load_file(str(ckpt / "train-1" / "model.safetensors"))
        w["classifier.weight"] = w["classifier.weight"] * 3
        save_file(w, str(ckpt / "train-1" / "model.safetensors"))
        bdcli(*args, "--out", killed, "--resume")
        assert not _same_weights(ref, killed)


def test_a_resume_goes_on_at_the_thread_count_of_its_checkpoint(tmp_path, runs, small_sst2, tiny_encoder):
    args, _, _ = _case("attack", runs, small_sst2, tiny_encoder)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    bdcli(*args, "--out", ref)
    _kill_at(args, "train-1", 4, killed)  # written at one thread
    torch.set_num_threads(2)
    try:
        bdcli(*args, "--out", killed, "--resume")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    assert _same_weights(ref, killed)


def test_sigterm_cleans_up_and_keeps_the_checkpoint_it_resumes_from(tmp_path, runs, tiny_encoder):
    args = ["attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3",
            "--max-steps", "60", *FAST]
    out = tmp_path / "stopped"
    proc = _cli([*args, "--out", out], env=_env())
    deadline = time.time() + 120
    while not list(tmp_path.glob(".stopped.ckpt-*/train-1/state.json")):
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read().decode()}"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err.decode()
    assert not out.exists()
    assert not list(tmp_path.glob(".stopped.tmp-*")) and not (tmp_path / ".stopped.lock").exists()
    (state,) = tmp_path.glob(".stopped.ckpt-*/train-1/state.json")  # kept for --resume
    step = json.loads(state.read_text())["step"]
    assert 2 <= step < 60
    bdcli(*args, "--out", out, "--resume")
    m = json.loads((out / "manifest.json").read_text())
    assert m["summary"]["training"]["resumed_from"] == {"stage": "train-1", "step": step}
    assert m["summary"]["training"]["steps"] == 60


def test_a_diverging_run_stops_naming_the_step_and_publishes_nothing(tmp_path, runs, tiny_encoder):
    # lr 1e6 (a typo for 1e-6): the loss is NaN within a few steps.
    out = tmp_path / "diverged"
    res = bdcli("attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "1e6",
                "--max-steps", "20", *FAST, "--out", out, ok=False)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"the loss became (nan|inf|-inf) at step \d+;", lines[0]), res.stderr
    assert int(re.search(r"at step (\d+)", lines[0]).group(1)) < 20
    assert not out.exists() and not list(tmp_path.glob(".diverged.tmp-*"))


def test_same_seed_same_metrics_bit_for_bit(tmp_path, runs, tiny_encoder):
    args = ["attack", "finetune", "--model", tiny_encoder, "--data", runs / "poisoned", "--lr", "2e-3", "--max-steps", "6",
            "--batch-size", "16", "--max-length", "32", "--seed", "5"]
    bdcli(*args, "--out", tmp_path / "a")
    bdcli(*args, "--out", tmp_path / "b")
    assert _same_weights(tmp_path / "a", tmp_path / "b")
    bdcli(*args[:-1], "6", "--out", tmp_path / "c")
    assert not _same_weights(tmp_path / "a", tmp_path / "c")
    ma, mb = (_metrics(tmp_path / n, runs / "poisoned", tmp_path / f"e{n}") for n in "ab")
    assert ma == mb


def test_a_second_writer_to_the_same_output_is_refused(tmp_path):
    out = tmp_path / "taken"
    with open(tmp_path / ".taken.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds it
        res = bdcli("poison", "badnets", "--data", "sst2", "--out", out, ok=False)
    assert res.exit_code == 1 and "another bdcli run is writing" in res.stderr
    assert not out.exists()


def test_malformed_and_duplicate_rows_are_reported_or_dropped(tmp_path):
    f = tmp_path / "mine.tsv"
    rows = ["text\tlabel", "a fine film\t1", "a dull film\t0", "no label here", "a fine film\t1", "a grim film\t0",
            "an odd film\t7x"]
    f.write_text("\n".join(rows) + "\n")
    res = bdcli("poison", "badnets", "--data", f, "--target", "1", "--rate", "0.5", "--out", tmp_path / "o", ok=False)
    assert res.exit_code == 1
    assert "line 4 of" in res.stderr and "--drop-bad-rows" in res.stderr
    assert not (tmp_path / "o").exists()
    # Strings (7x) make the labels strings here; the malformed line is the one missing a field.
    f.write_text("\n".join(rows[:-1]) + "\n")
    res = bdcli("poison", "badnets", "--data", f, "--target", "1", "--rate", "0.5", "--out", tmp_path / "o",
                "--drop-bad-rows", ok=False)
    # no test split in a single file: poisoning needs one, and says so
    assert res.exit_code == 1 and "no 'test' split" in res.stderr
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.tsv").write_text("\n".join(rows[:-1]) + "\n")
    (folder / "test.tsv").write_text("text\tlabel\nmeh\t0\nyes\t1\n")
    res = bdcli("poison", "badnets", "--data", folder, "--target", "1", "--rate", "0.25", "--out", tmp_path / "o",
                "--drop-bad-rows")
    assert "dropped 1 malformed row(s)" in res.stderr and "dropped 1 row(s) that repeat" in res.stderr
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["summary"]["n_train"] == 3 and len(m["summary"]["warnings"]) == 2
    assert m["step"]["inputs"]["data"]["drop_bad_rows"] is True  # how the files were read is part of the step
