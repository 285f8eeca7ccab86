"""The Ray executor on a local Ray cluster that this test starts and stops: the same plan as the local
executor gives the same metrics, the same failed and skipped steps, and a store the local executor
reuses as it is."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

try:
    import ray  # noqa: F401

    RAY_ERROR = None
except ImportError as e:  # the `dist` extra is not installed
    RAY_ERROR = str(e)

if RAY_ERROR is not None and os.environ.get("CI"):
    raise RuntimeError(f"CI must test the Ray executor, but ray does not import: {RAY_ERROR}")
pytestmark = pytest.mark.skipif(RAY_ERROR is not None, reason=f"ray is not importable ({RAY_ERROR}): pip install 'bdcli[dist]'")

# BadNets x (FT, Ours, and a GBA whose class tokens are not in the vocabulary, so that it fails when it
# runs): 9 steps, one of which fails and one (its evaluation) is skipped.
RECIPE = """
name: ray-small
datasets: [{data}]
model: {model}
seeds: [1]
attacks:
  BadNets: {{poison: {{name: badnets, rate: 0.2}}, attack: {{name: finetune, lr: 1.0e-3, max_steps: 8, batch_size: 16}}}}
defenses:
  FT: {{name: ft, lr: 1.0e-3, max_steps: 4, batch_size: 16, clean_fraction: 0.5}}
  Ours: {{name: maxent, maxent_lr: 1.0e-3, maxent_max_steps: 4, sd_every: 2, sd: 1.0e3, sd_samples: 32, lr: 1.0e-3, max_steps: 4, batch_size: 16, clean_fraction: 0.5}}
  Broken: {{name: gba, class_tokens: "qzxqzxq,xqzxqzq", max_steps: 2}}
evaluate: {{batch_size: 64}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "BDCLI_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def ray_head():
    """``ray start --head`` on free ports with its own temp dir; stopped by signalling its process group
    (not ``ray stop``, which would stop every Ray instance on the machine)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # short: Ray's socket paths must stay under 108 chars
    ray_bin = str(Path(sys.executable).with_name("ray"))
    argv = [ray_bin, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
            "--disable-usage-stats", "--temp-dir", temp,
            "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
            "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
            "--min-worker-port", "0", "--max-worker-port", "0"]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(argv, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"ray start exited: {(Path(temp) / 'head.log').read_text()[-2000:]}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.time() < deadline, "the Ray head did not listen within 120 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Ray's daemons may have left the group (they start their own sessions): end the ones of this head.
        out = subprocess.run(["pgrep", "-f", temp], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _run(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "bdcli.cli.app", "run", str(recipe), "--jobs", "2", "--threads", "1", "--out", str(out),
            *extra]
    return subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)


def _metrics(out: Path) -> dict[str, dict]:
    plan = json.loads((out / "plan.json").read_text())
    got = {}
    for node in plan["nodes"]:
        f = out / node["folder"] / "metrics.json"
        if node["step"]["kind"] == "evaluate" and f.exists():
            m = json.loads(f.read_text())
            got[node["id"]] = {k: m[k] for k in ("acc", "asr", "seed", "label")}
    return got


def _outcome(stderr: str) -> tuple[str, list[str]]:
    """The runner's count line (without its wall time) and its failed steps."""
    lines = stderr.splitlines()
    count = next(ln for ln in lines if " steps ran, " in ln)
    return count.split(" in ")[0], sorted(ln[len("failed: "):].split(": ")[0] for ln in lines if ln.startswith("failed: "))


def test_ray_executor_gives_the_local_executors_results(tmp_path, ray_head, tiny_encoder, small_sst2):
    recipe = tmp_path / "ray-small.yaml"
    recipe.write_text(RECIPE.format(data=small_sst2, model=tiny_encoder))
    local = _run(recipe, tmp_path / "local")
    t0 = time.monotonic()
    remote = _run(recipe, tmp_path / "ray", "--executor", "ray", "--address", ray_head)
    ray_seconds = time.monotonic() - t0
    print(f"the Ray run took {ray_seconds:.1f} s")
    # The broken defense fails on both, its evaluation is skipped, everything else finishes.
    assert local.returncode == 1 and remote.returncode == 1, remote.stderr[-3000:]
    expected = ("7 steps ran, 0 reused, 1 failed, 1 skipped (after a failure)", [f"{small_sst2}/BadNets/s1/Broken/defend"])
    assert _outcome(local.stderr) == expected, local.stderr[-3000:]
    assert _outcome(remote.stderr) == expected, remote.stderr[-3000:]
    got = _metrics(tmp_path / "ray")
    assert len(got) == 3 and got == _metrics(tmp_path / "local")
    report = json.loads((tmp_path / "ray" / "report.json").read_text())["cells"]
    assert {c["method"] for c in report} >= {"Victim", "FT", "Ours"}
    # Same fingerprints, same store: the local executor finds every finished step of the Ray run.
    again = _run(recipe, tmp_path / "ray")
    assert _outcome(again.stderr)[0] == "0 steps ran, 7 reused, 1 failed, 1 skipped (after a failure)", again.stderr[-2000:]


def test_ray_options_are_checked_before_anything_runs():
    recipe = REPO / "recipes" / "tiny.yaml"
    res = subprocess.run([sys.executable, "-m", "bdcli.cli.app", "run", str(recipe), "--executor", "ray"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--executor ray needs --address" in res.stderr
    res = subprocess.run([sys.executable, "-m", "bdcli.cli.app", "run", str(recipe), "--address", "auto"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "use it with --executor ray" in res.stderr
