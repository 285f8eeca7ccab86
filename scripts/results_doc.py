#!/usr/bin/env python
"""Regenerate (or check) the tables of docs/results.md from the archived runs under docs/results/.

Each generated table sits between a marker naming the command that makes it and an end marker:

    <!-- bdcli report docs/results/gba-hs --recipe recipes/gba/table2.yaml -->
    | Method | ... |
    <!-- end -->

The script runs every marked `bdcli report ...` (from the repository root) and puts its output between
the markers; the prose around them is left alone. `--check` writes nothing and exits 1, naming each
table, when the doc no longer matches its archive (tests/test_results_doc.py runs it).

    python scripts/results_doc.py            # rewrite docs/results.md
    python scripts/results_doc.py --check    # exit 1 if a table is out of date
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "results.md"
BLOCK = re.compile(r"^<!-- (bdcli report [^\n]*?) -->\n(.*?)^<!-- end -->$", re.S | re.M)


def run_report(command: str) -> str:
    argv = shlex.split(command)
    if argv[:2] != ["bdcli", "report"]:
        raise SystemExit(f"only 'bdcli report' commands make tables, not: {command}")
    env = {**os.environ, "BDCLI_PROGRESS": "0", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "bdcli.cli.app", *argv[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed: {proc.stderr.strip()}")
    return proc.stdout.strip() + "\n"


def regenerate(text: str) -> tuple[str, list[str]]:
    """The doc with every marked table remade, and the commands whose table changed."""
    changed: list[str] = []

    def remake(m: re.Match) -> str:
        body = run_report(m.group(1))
        if body != m.group(2):
            changed.append(m.group(1))
        return f"<!-- {m.group(1)} -->\n{body}<!-- end -->"

    return BLOCK.sub(remake, text), changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table is out of date")
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args()
    text = args.doc.read_text(encoding="utf-8")
    new, changed = regenerate(text)
    if not BLOCK.search(text):
        print(f"{args.doc} has no generated table", file=sys.stderr)
        return 1
    if args.check:
        for command in changed:
            print(f"out of date: {command}", file=sys.stderr)
        return 1 if changed else 0
    if changed:
        tmp = args.doc.with_name(f".{args.doc.name}.tmp")
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, args.doc)
    print(f"{len(changed)} of {len(BLOCK.findall(text))} tables rewritten in {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
