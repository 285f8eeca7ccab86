"""Start-up time of the CLI: wall and CPU seconds (the child's user + system) of ``--version``, ``--help``,
``list``, ``attack finetune --help`` and a recipe's ``--dry-run``, each the median of --repeat runs.

Before and after in one run: give --before a checkout of the old code (for example
``git worktree add /tmp/bdcli-before main``); its commands run interleaved with this checkout's, so both
see the same machine load.

    python bench/startup.py [--before /tmp/bdcli-before] [--repeat 5] [--data-dir $BDCLI_DATA_DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

COMMANDS = {
    "--version": ["--version"],
    "--help": ["--help"],
    "list": ["list"],
    "attack finetune --help": ["attack", "finetune", "--help"],
    "run recipes/tiny.yaml --dry-run": ["run", "recipes/tiny.yaml", "--dry-run"],
}


def once(repo: Path, argv: list[str]) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bdcli.cli.app", *argv], cwd=repo, env=env, capture_output=True,
                          timeout=300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bdcli {' '.join(argv)} failed in {repo}: {proc.stderr.decode()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, help="A checkout of the old code to compare with (run interleaved).")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data-dir", default=os.environ.get("BDCLI_DATA_DIR"))
    args = ap.parse_args()
    if args.data_dir:
        os.environ["BDCLI_DATA_DIR"] = args.data_dir
    repos = {"after": HERE} | ({"before": args.before.resolve()} if args.before else {})
    load = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load:.2f} at start; "
          f"median of {args.repeat} runs\n")
    print(f"| command | {' | '.join(f'{k} wall s | {k} CPU s' for k in repos)} |")
    print("|---|" + "---:|" * (2 * len(repos)))
    for name, argv in COMMANDS.items():
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in repos}
        for _ in range(args.repeat):
            for key, repo in repos.items():  # interleaved: both see the same load
                samples[key].append(once(repo, argv))
        cells = []
        for key in repos:
            cells += [f"{statistics.median(w for w, _ in samples[key]):.2f}",
                      f"{statistics.median(c for _, c in samples[key]):.2f}"]
        print(f"| `bdcli {name}` | {' | '.join(cells)} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
