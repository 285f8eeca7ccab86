#!/usr/bin/env python
"""Re-measure a recipe store's models on an ASR set built another way: the trigger placed elsewhere,
more trigger words, another trigger word.

A recipe's poison step makes both the attacker's training rows and the ASR set, so a different test
trigger in the recipe would also train different victims. This keeps every model of the store as it is
and changes only the test rows: for each evaluation step of the cells matching ``--cells``, it rebuilds
that cell's poison step with the ``--set`` fields changed (same data, seed and target) and runs the same
evaluation on it. ``OUT/evals`` holds ordinary evaluation outputs (metrics and manifest, no weights
and no data rows: they can be kept in docs/results/) for ``bdcli report``; ``OUT/data`` the test sets.

GBA's Appendix B.2 places EP's test trigger at a random position and RIPPLe's as one or three words;
GBA Table 2's recipe puts both at the start of the sentence (as for BadNets). For example:

    python scripts/retrigger.py runs/gba-mr 'mr/EP/*' --set position=random --out runs/gba-mr-ep-random
    bdcli report runs/gba-mr-ep-random/evals --recipe recipes/gba/table2.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import sys
from pathlib import Path

import yaml

from bdcli.errors import BdcliError
from bdcli.recipes.archive import read_plan
from bdcli.steps import Ref, Step, execute


def overrides(items: list[str], config) -> dict:
    """``key=value`` pairs (YAML values) checked against the poison config's fields."""
    fields = {f.name for f in dataclasses.fields(config)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set takes key=value with key one of {', '.join(sorted(fields))}, got {item!r}")
        value = yaml.safe_load(value)
        out[key] = list(value) if isinstance(value, list) else value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path, help="a `bdcli run` store (or an archive that kept its models)")
    ap.add_argument("cells", help="cells to re-measure, as `bdcli run --only` takes them: 'mr/EP/*'")
    ap.add_argument("--set", dest="sets", action="append", required=True,
                    help="a poison config field to change for the ASR set, repeatable: --set position=random")
    ap.add_argument("--out", type=Path, required=True, help="folder for the new poison sets and evaluations")
    args = ap.parse_args(argv)

    nodes = {n["id"]: n for n in read_plan(args.store / "plan.json")["nodes"]}
    evals = [n for n in nodes.values()
             if n["step"]["kind"] == "evaluate" and any(fnmatch.fnmatch(c, args.cells) for c in n["cells"])]
    if not evals:
        raise SystemExit(f"no evaluation step of {args.store} belongs to a cell matching {args.cells!r}")
    # Every cell is checked before anything is written: a field one poisoner lacks, or a model not run
    # yet, stops the script with nothing half-made.
    poisons: dict[Path, Step] = {}  # the new ASR set's folder -> the poison step that makes it
    jobs: list[tuple[str, Step]] = []
    for node in evals:
        step = Step.from_json(node["step"])
        refs = {k: v.step for k, v in step.inputs.items() if isinstance(v, Ref)}
        poison_id, model_id = refs.get("data"), refs.get("model")
        if poison_id is None or model_id is None or nodes[poison_id]["step"]["kind"] != "poison":
            raise SystemExit(f"{node['id']}: expected a model and a poison step as inputs, got {refs}")
        model = args.store / nodes[model_id]["folder"]
        if not (model / "model.safetensors").is_file():
            raise SystemExit(f"{node['id']}: {model} holds no model.safetensors (not run yet, or archived without models)")
        data = args.out / "data" / poison_id.replace("/", "_")
        if data not in poisons:
            poison = Step.from_json(nodes[poison_id]["step"])
            poison.config = dataclasses.replace(poison.config, **overrides(args.sets, poison.config))
            poisons[data] = poison
        step.inputs = {"model": str(model), "data": str(data)}
        jobs.append((node["id"], step))
    for data, poison in poisons.items():
        execute(poison, data)
    for node_id, step in jobs:
        where = args.out / "evals" / node_id.replace("/", "_")
        execute(step, where)
        metrics = json.loads((where / "metrics.json").read_text())
        asr = "-" if metrics.get("asr") is None else f"{100 * metrics['asr']:.2f}"
        print(f"{node_id}: ACC {100 * metrics['acc']:.2f}  ASR {asr}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BdcliError as e:
        sys.exit(f"error: {e}")
