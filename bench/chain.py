"""Run the whole chain on real SST-2 with the packaged MiniLM and print the wall time of each step and
the training throughput: poison (BadNets, rate 0.1) -> attack (fine-tune) -> defend (FT, FTH, maxent)
-> evaluate each -> report.

    BDCLI_DATA_DIR=../shared/data python bench/chain.py --out runs/bench

Steps whose output already exists with the same inputs are reused (and reported as such), so a rerun
after an interruption picks up where it stopped; pass --fresh to time everything again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from bdcli import api
from bdcli.attacks import FinetuneAttackConfig
from bdcli.defenses import FTConfig, FTHConfig, MaxEntConfig
from bdcli.poison import BadNetsConfig
from bdcli.report import build_table, collect, render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--attack-lr", type=float, default=5e-5)
    ap.add_argument("--attack-epochs", type=float, default=3)
    ap.add_argument("--sd", type=float, default=0.01)
    ap.add_argument("--maxent-lr", type=float, action="append", help="one maxent run per value (default 2e-5)")
    ap.add_argument("--maxent-max-steps", type=int, default=3000)
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args()
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    timings: list[dict] = []

    def timed(name: str, fn, samples: int | None = None):
        t = time.perf_counter()
        res = fn()
        wall = time.perf_counter() - t
        summ = res.manifest.get("summary") or {}
        rows = [summ.get("training")] + [summ.get(k, {}).get("training") for k in ("stage1", "stage2") if isinstance(summ.get(k), dict)]
        rows = [r for r in rows if r]
        train_s = sum(r["seconds"] for r in rows)
        sps = sum(r["samples_per_s"] * r["seconds"] for r in rows) / train_s if train_s else None
        timings.append({"step": name, "wall_s": round(wall, 1), "reused": res.reused,
                        "train_samples_per_s": round(sps, 1) if sps else None})
        print(f"{name:<28} {wall:8.1f} s" + (f"   train {sps:6.1f} samples/s" if sps else "") + ("   (reused)" if res.reused else ""), flush=True)
        return res

    data = out / "sst2-badnets"
    timed("poison badnets", lambda: api.poison("badnets", BadNetsConfig(rate=0.1, target="1"), api.DataSpec("sst2"), data))
    victim = out / "victim"
    timed("attack finetune", lambda: api.attack(
        "finetune", FinetuneAttackConfig(model=args.model, lr=args.attack_lr, epochs=args.attack_epochs), api.DataSpec(str(data)), victim))
    models = {"victim": victim}
    for name, cfg in (("ft", FTConfig()), ("fth", FTHConfig())):
        models[name] = out / name
        timed(f"defend {name}", lambda n=name, c=cfg: api.defend(n, c, str(victim), api.DataSpec("sst2"), models[n]))
    for lr in args.maxent_lr or [2e-5]:
        key = f"maxent-lr{lr:g}"
        models[key] = out / key
        cfg = MaxEntConfig(sd=args.sd, maxent_lr=lr, maxent_max_steps=args.maxent_max_steps)
        res = timed(f"defend maxent (lr {lr:g})", lambda c=cfg, k=key: api.defend("maxent", c, str(victim), api.DataSpec("sst2"), models[k]))
        s1 = res.manifest["summary"]["stage1"]
        print(f"{'':<28} stage 1: {s1['steps']} steps, SD {s1['sd_start']:.4g} -> {s1['sd_end']:.4g} "
              f"(threshold {s1['sd_threshold']}, reached: {s1['reached_threshold']}); stage 2: {res.manifest['summary']['stage2']['steps']} steps")
    for key, path in models.items():
        label = f"MaxEnt (SD {args.sd}, lr {key.split('lr')[1]})" if key.startswith("maxent") else None
        timed(f"evaluate {key}", lambda p=path, k=key, lab=label: api.evaluate(api.EvalConfig(label=lab), str(p), api.DataSpec(str(data)), out / "eval" / k))

    print()
    print(render(build_table(collect([out / "eval"])), "markdown"))
    print()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "platform": platform.platform()}
    print("machine:", json.dumps(machine))
    (out / "bench.json").write_text(json.dumps({"machine": machine, "args": vars(args), "timings": timings}, indent=2) + "\n")


if __name__ == "__main__":
    main()
