"""Start-up: the CLI's help, the catalog and a recipe's plan import neither torch nor transformers (they
cost seconds per command); each component's implementation is found when it runs. Timing is measured by
bench/startup.py, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")

# Runs the CLI in a fresh interpreter with the given argv, then prints which heavy modules it imported.
DRIVER = """
import json, sys
argv = json.loads(sys.argv[1])
sys.argv = ["bdcli", *argv]
from bdcli.cli.app import app
code = 0
try:
    app()
except SystemExit as e:
    code = e.code or 0
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


def _run(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argv)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)
    last = proc.stderr.strip().splitlines()[-1]
    return {**json.loads(last), "stdout": proc.stdout}


def test_importing_the_cli_imports_no_torch():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = f"import sys, bdcli.cli.app; print([m for m in {HEAVY!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["list"], ["attack", "ripples", "--help"],
                                  ["defend", "maxent", "--help"], ["poison", "--help"], ["run", "--help"]],
                         ids=lambda a: " ".join(a))
def test_help_version_and_list_import_no_torch(argv):
    res = _run(argv)
    assert res["code"] == 0 and res["stdout"].strip()
    assert res["heavy"] == [], f"bdcli {' '.join(argv)} imported {res['heavy']}"


def test_a_recipe_dry_run_imports_no_torch(small_sst2, tiny_encoder):
    argv = ["run", str(REPO / "recipes" / "tiny.yaml"), "--set", f"model={tiny_encoder}",
            "--set", f"datasets=[{small_sst2}]", "--dry-run"]
    res = _run(argv)
    assert res["code"] == 0 and "to run" in res["stdout"], res
    assert res["heavy"] == []


def test_every_component_names_an_implementation_that_exists():
    from bdcli.registry import _registry, entries

    for e in entries():
        if e.kind in ("attack", "defense"):
            proc = _registry(e.kind).get(e.name)
            assert callable(proc.run), f"{e.kind} {e.name}: {proc.module} has no such function"
            assert proc.run.__module__ == e.module


def test_torch_free_spellings_agree_with_the_engine():
    from bdcli.defenses.specs import maxent
    from bdcli.engine.inference import REPRESENTATIONS
    from bdcli.metrics.geometry import SD_PAIRS

    assert maxent.REPRESENTATIONS == REPRESENTATIONS and maxent.SD_PAIRS == SD_PAIRS
