"""torch.compile against eager mode on the engine's kind of step: the packaged MiniLM, batch 32, bf16
autocast, fused AdamW, clipping at 1.0, random lengths (what length bucketing feeds the model).

    python bench/compile_vs_eager.py [--steps 20] [--threads 2]

Each mode runs in its own subprocess, eager first. It prints the time of the first steps (compiling and
recompiling) and the mean time of a step after the first five. The inputs are random token ids: this
measures speed only, never a result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def worker(mode: str, steps: int) -> dict:
    import torch

    from bdcli.models.load import load_classifier

    model = load_classifier("minilm", label_names=["0", "1"], seed=42).model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    net = torch.compile(model) if mode == "compile" else model
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        length = int(torch.randint(8, 48, (1,), generator=g))
        ids = torch.randint(1000, 20000, (32, length), generator=g)
        labels = torch.randint(0, 2, (32,), generator=g)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
    steady = times[5:]
    return {"mode": mode, "first": times[:3], "steady_s": sum(steady) / len(steady), "total_s": sum(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--worker", choices=("eager", "compile"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 6:
        sys.exit("--steps must be at least 6 (the first five are warm-up)")
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.steps)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for mode in ("eager", "compile"):
        cmd = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{mode:<8} first steps {', '.join(f'{t:.2f}' for t in r['first'])} s; "
              f"steady {r['steady_s']:.3f} s/step; all {args.steps} steps {r['total_s']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
