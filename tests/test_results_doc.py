"""docs/results.md's generated tables match the archived runs they come from (scripts/results_doc.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "results_doc.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_every_generated_table_of_the_results_doc_matches_its_archive():
    proc = _run("--check")
    assert proc.returncode == 0, proc.stderr


def test_a_stale_table_is_named_and_rewritten_and_the_prose_is_kept(tmp_path):
    archive = next(p.parent for p in sorted((REPO / "docs" / "results").glob("*/plan.json")))
    command = f"bdcli report {archive.relative_to(REPO)} --per-seed"
    doc = tmp_path / "doc.md"
    doc.write_text(f"Prose before.\n\n<!-- {command} -->\n| a typed-in table |\n<!-- end -->\n\nProse after.\n")
    proc = _run("--check", "--doc", str(doc))
    assert proc.returncode == 1 and f"out of date: {command}" in proc.stderr
    assert "typed-in" in doc.read_text()  # --check writes nothing
    assert _run("--doc", str(doc)).returncode == 0
    text = doc.read_text()
    assert text.startswith("Prose before.\n\n") and text.endswith("<!-- end -->\n\nProse after.\n")
    assert "typed-in" not in text and "| Dataset | Attack | Method | Seed |" in text
    assert _run("--check", "--doc", str(doc)).returncode == 0
