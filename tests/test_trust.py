"""Trust: interrupted runs resume to the same result bit for bit, concurrent writers are refused,
bad rows are counted and reported or dropped, and the same seed gives the same metrics."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import bdcli


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, small_sst2) -> Path:
    out = tmp_path_factory.mktemp("trust") / "poisoned"
    bdcli("poison", "badnets", "--data", small_sst2, "--rate", "0.1", "--target", "1", "--out", out)
    return out


def _kill_midway(argv: list[str], out: Path, rng: random.Random, env: dict,
                 sig: signal.Signals = signal.SIGKILL) -> subprocess.Popen:
    """Start ``bdcli argv`` in a subprocess, wait for its first checkpoint, then send it ``sig`` after a
    random delay. Returns the process once it is dead."""
    proc = subprocess.Popen([sys.executable, "-m", "bdcli.cli.app", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(out.parent.glob(f".{out.name}.ckpt-*/train-*/state.json")):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read().decode()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within 120 s")
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(sig)
    proc.wait()
    return proc


@pytest.mark.parametrize("case", ["attack", "maxent"])
def test_killed_run_resumes_to_the_same_result(case, tmp_path, poisoned, small_sst2, tiny_encoder):
    seed = random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    print(f"kill-point seed {seed}")
    if case == "attack":
        args = ["attack", "finetune", "--model", str(tiny_encoder), "--data", str(poisoned), "--lr", "2e-3",
                "--max-steps", "400", "--batch-size", "8", "--checkpoint-every", "3"]  # outlasts the kill delay on a quiet machine
    else:
        victim = tmp_path / "victim"
        bdcli("attack", "finetune", "--model", tiny_encoder, "--data", poisoned, "--lr", "2e-3", "--epochs", "2",
              "--batch-size", "16", "--out", victim)
        # Stage 1 is long enough to be killed in; stage 2 follows: a kill may land in either.
        args = ["defend", "maxent", "--model", str(victim), "--data", str(small_sst2), "--clean-fraction", "0.5",
                "--sd", "1e-9", "--maxent-lr", "1e-3", "--maxent-max-steps", "200", "--sd-every", "4",
                "--batch-size", "8", "--max-steps", "200", "--checkpoint-every", "3"]  # both stages outlast the kill delay
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    bdcli(*args, "--out", ref)
    env = {**os.environ, "BDCLI_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    _kill_midway([*args, "--out", str(killed)], killed, rng, env)

    assert not killed.exists()  # atomic: a killed run publishes nothing
    assert list(tmp_path.glob(".killed.ckpt-*"))
    bdcli(*args, "--out", killed, "--resume")
    assert not list(tmp_path.glob(".killed.ckpt-*"))  # cleaned up once the output is published
    assert not list(tmp_path.glob(".killed.tmp-*"))  # the killed run's temporary folder is swept
    assert _same_weights(ref, killed)
    ref_m = json.loads((ref / "manifest.json").read_text())
    new_m = json.loads((killed / "manifest.json").read_text())
    assert ref_m["fingerprint"] == new_m["fingerprint"]
    if case == "maxent":
        s_ref, s_new = ref_m["summary"]["stage1"], new_m["summary"]["stage1"]
        assert s_ref["sd_trace"] == s_new["sd_trace"] and s_ref["steps"] == s_new["steps"]
    for out in (ref, killed):
        bdcli("evaluate", "--model", out, "--data", poisoned, "--out", tmp_path / f"eval-{out.name}")
    m1 = json.loads((tmp_path / "eval-ref" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "eval-killed" / "metrics.json").read_text())
    assert (m1["acc"], m1["asr"]) == (m2["acc"], m2["asr"])


def test_sigterm_cleans_up_and_keeps_the_checkpoint(tmp_path, poisoned, tiny_encoder):
    args = ["attack", "finetune", "--model", str(tiny_encoder), "--data", str(poisoned), "--lr", "2e-3",
            "--max-steps", "200", "--batch-size", "8", "--checkpoint-every", "2"]
    out = tmp_path / "stopped"
    env = {**os.environ, "BDCLI_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    proc = _kill_midway([*args, "--out", str(out)], out, random.Random(0), env, sig=signal.SIGTERM)
    assert proc.returncode == 130
    assert "interrupted" in proc.stderr.read().decode()
    assert not out.exists()
    assert not list(tmp_path.glob(".stopped.tmp-*")) and not (tmp_path / ".stopped.lock").exists()
    assert list(tmp_path.glob(".stopped.ckpt-*/train-*/state.json"))  # kept for --resume
    bdcli(*args, "--out", out, "--resume")
    assert (out / "manifest.json").exists()


def test_same_seed_same_metrics_bit_for_bit(tmp_path, poisoned, tiny_encoder):
    args = ["attack", "finetune", "--model", tiny_encoder, "--data", poisoned, "--lr", "2e-3", "--max-steps", "12",
            "--batch-size", "16", "--seed", "5"]
    bdcli(*args, "--out", tmp_path / "a")
    bdcli(*args, "--out", tmp_path / "b")
    assert _same_weights(tmp_path / "a", tmp_path / "b")
    bdcli(*args[:-1], "6", "--out", tmp_path / "c")
    assert not _same_weights(tmp_path / "a", tmp_path / "c")
    for name in "ab":
        bdcli("evaluate", "--model", tmp_path / name, "--data", poisoned, "--out", tmp_path / f"e{name}")
    ma = json.loads((tmp_path / "ea" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "eb" / "metrics.json").read_text())
    # Everything but the model's path and the wall time its training took (cost.seconds).
    assert ma["cost"]["steps"] == mb["cost"]["steps"]
    assert {k: v for k, v in ma.items() if k not in ("model", "cost")} == {k: v for k, v in mb.items() if k not in ("model", "cost")}


def test_a_second_writer_to_the_same_output_is_refused(tmp_path, poisoned):
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
