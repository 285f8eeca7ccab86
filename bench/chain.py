"""The main job, timed: run the whole chain on real SST-2 with the packaged MiniLM through the real
CLI and print the wall time of each command, the training throughput, and the resulting table.

    BDCLI_DATA_DIR=../shared/data python bench/chain.py --out runs/bench

Chain: poison (BadNets, rate 0.1, target 1) -> attack finetune (lr 5e-5, 3 epochs) -> defend ft, fth,
maxent (outsourcing: 10% clean data) -> evaluate each -> report. Each command is a subprocess, so the
wall times include bdcli's start-up (a few seconds of imports). Steps whose output already exists with
the same inputs are reused and marked so; pass --fresh to time everything again. The figures and the
machine they ran on are written to <out>/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def bdcli_bin() -> list[str]:
    exe = Path(sys.executable).with_name("bdcli")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bdcli.cli.app"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--attack-lr", default="5e-5")
    ap.add_argument("--attack-epochs", default="3")
    ap.add_argument("--sd", default="0.01")
    ap.add_argument("--maxent-lr", action="append", help="one maxent run per value (default: bdcli's default)")
    ap.add_argument("--maxent-max-steps", default=None, help="stage-1 step budget (default: bdcli's default)")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args()
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    timings: list[dict] = []

    def step(name: str, *argv: str) -> dict:
        cmd = [*bdcli_bin(), *argv, "--json"]
        print(f"$ bdcli {shlex.join(argv)}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        summ = res.get("summary") or {}
        parts = [summ.get("training")] + [summ.get(k, {}).get("training") for k in ("stage1", "stage2") if isinstance(summ.get(k), dict)]
        parts = [p for p in parts if p]
        train_s = sum(p["seconds"] for p in parts)
        sps = sum(p["samples_per_s"] * p["seconds"] for p in parts) / train_s if train_s else None
        row = {"step": name, "wall_s": round(wall, 1), "reused": res["reused"], "train_samples_per_s": round(sps, 1) if sps else None}
        timings.append(row)
        print(f"  {name:<26} {wall:8.1f} s" + (f"   training {sps:6.1f} samples/s" if sps else "") + ("   (reused)" if res["reused"] else ""), flush=True)
        for w in summ.get("warnings", []) if isinstance(summ, dict) else []:
            print(f"  warning: {w}", flush=True)
        return res

    data, victim = out / "sst2-badnets", out / "victim"
    step("poison badnets", "poison", "badnets", "--data", "sst2", "--rate", "0.1", "--target", "1", "--out", str(data))
    step("attack finetune", "attack", "finetune", "--model", args.model, "--data", str(data), "--lr", args.attack_lr,
         "--epochs", args.attack_epochs, "--out", str(victim))
    models = {"victim": victim}
    for name in ("ft", "fth"):
        models[name] = out / name
        step(f"defend {name}", "defend", name, "--model", str(victim), "--data", "sst2", "--out", str(models[name]))
    labels = {}
    budget = ["--maxent-max-steps", args.maxent_max_steps] if args.maxent_max_steps else []
    for lr in args.maxent_lr or [None]:
        key = f"maxent-lr{lr}" if lr else "maxent"
        models[key] = out / key
        labels[key] = f"MaxEnt (SD {args.sd}" + (f", lr {lr})" if lr else ")")
        lr_opt = ["--maxent-lr", lr] if lr else []
        res = step(f"defend {key}", "defend", "maxent", "--model", str(victim), "--data", "sst2", "--sd", args.sd,
                   *lr_opt, *budget, "--out", str(models[key]))
        s1, s2 = res["summary"]["stage1"], res["summary"]["stage2"]
        print(f"  {'':<26} stage 1: {s1['steps']} steps, SD {s1['sd_start']:.4g} -> {s1['sd_end']:.4g} "
              f"(threshold {s1['sd_threshold']}, reached: {s1['reached_threshold']}); stage 2: {s2['steps']} steps", flush=True)
    for key, path in models.items():
        extra = ["--label", labels[key]] if key in labels else []
        step(f"evaluate {key}", "evaluate", "--model", str(path), "--data", str(data), *extra, "--out", str(out / "eval" / key))

    print()
    table = subprocess.run([*bdcli_bin(), "report", str(out / "eval")], capture_output=True, text=True, check=True).stdout
    print(table)
    try:
        import torch

        threads = torch.get_num_threads()
        torch_version = torch.__version__
    except ImportError:
        threads, torch_version = None, None
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch_version,
               "torch_threads": threads, "platform": platform.platform(), "load_avg_at_end": os.getloadavg()}
    print("machine:", json.dumps(machine))
    (out / "bench.json").write_text(json.dumps({"machine": machine, "args": vars(args), "timings": timings, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
