#!/usr/bin/env python
"""Regenerate the documentation's figures from run folders, with the machine that drew them.

    python scripts/figures.py RUN_FOLDER... [--out docs/figures] [--recipe RECIPE] [--note TEXT]...

Every figure `bdcli report --out` would draw from these folders (SD traces of maxent runs, probe-sd's
Figure 5 and Figures 9-10, dynamics.csv, t-SNE of representations.safetensors, sweeps of recipe
stores, trigger RMSE) is written to --out, and --out/README.md lists each one with its caption, the
folders it came from, the command, and the machine (uname, CPU, cores) and versions it ran with. The
folders themselves stay where they are: only the PNG files and the README belong in docs/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "figures"
sys.path.insert(0, str(REPO))


def _shown(path: Path) -> str:
    """The folder as a rerun would name it: relative to the repository where it lies inside it."""
    try:
        return shlex.quote(str(path.resolve().relative_to(REPO)))
    except ValueError:
        return shlex.quote(str(path))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (a maxent output, a probe-sd folder, a recipe store, ...)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--recipe", type=Path, default=None, help="the recipe of a store, for its swept option")
    ap.add_argument("--note", action="append", default=[], help="a line for the README (how the runs were made)")
    args = ap.parse_args(argv)

    from bdcli.errors import BdcliError
    from bdcli.report import collect
    from bdcli.report.figures import draw_figures

    try:
        try:
            records = collect(args.runs)
        except BdcliError as e:
            if not str(e).startswith("no metrics.json under"):
                raise
            records = []
        figures = draw_figures(args.runs, args.out, records=records, recipe=args.recipe)
    except BdcliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not figures:
        print("error: these folders allow no figure", file=sys.stderr)
        return 1
    import matplotlib
    import sklearn
    import torch

    from bdcli import __version__

    u = platform.uname()
    lines = [
        "# Figures", "",
        "Drawn by `scripts/figures.py` (the same code as `bdcli report --out FOLDER`); rerun it to regenerate them.", "",
        f"- command: `python scripts/figures.py {' '.join(shlex.quote(str(r)) for r in args.runs)}"
        + (f" --recipe {args.recipe}" if args.recipe else "")
        + (f" --out {_shown(args.out)}" if args.out.resolve() != DEFAULT_OUT.resolve() else "") + "`",
        f"- drawn: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {u.system} {u.release} {u.machine}; CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"- versions: bdcli {__version__}, torch {torch.__version__}, matplotlib {matplotlib.__version__}, "
        f"scikit-learn {sklearn.__version__}, Python {platform.python_version()}",
        *[f"- {n}" for n in args.note], "",
    ]
    for f in figures:
        lines += [f"## {f.name}", "", f"![{f.name}]({f.name})", "", f.caption, ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print(f"wrote {len(figures)} figure(s) and README.md to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
