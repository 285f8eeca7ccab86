"""bdcli's training engine side by side with transformers' Trainer on the same fine-tune.

    BDCLI_DATA_DIR=../shared/data python bench/vs_trainer.py            # 120 steps, interleaved twice
    BDCLI_DATA_DIR=../shared/data python bench/vs_trainer.py --acc      # also ACC after one epoch
    BDCLI_DATA_DIR=../shared/data python bench/vs_trainer.py --profile  # where the engine's time goes

Same machine, data (SST-2), model (the packaged MiniLM, alias ``minilm``, same seeded head), batch 32,
lr 5e-5, weight decay 0.01, linear schedule, gradient clipping at 1.0, bf16 autocast (on a GPU: bf16
where supported), batches grouped by length and padded to their longest row. Each trial is its own
subprocess, so the peak RSS is that trial's; the trials alternate (engine, Trainer, engine, Trainer) so
that a change in the machine's load hits both. samples/s counts the training loop only (the engine's
``TrainResult.seconds``, the Trainer's ``train_runtime``); wall is the whole trial, model load and
tokenising included.

The ceiling is the best of a few large matmuls (fp32 and bf16); the engine's model-FLOPs utilisation
(MFU) is 6 x non-embedding parameters x tokens plus the attention matmuls, over the training time,
over the bf16 ceiling. Tokens are the padded tokens the model was given (what it computes on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LR, BATCH, WEIGHT_DECAY, SEED = 5e-5, 32, 0.01, 42


# ---------------------------------------------------------------------------------------------- worker

def _load(acc_rows: int | None):
    from bdcli.data import load_corpus
    from bdcli.models.load import load_classifier

    corpus = load_corpus("sst2", os.environ.get("BDCLI_DATA_DIR"))
    train = corpus.split("train")
    if acc_rows:  # None: the step-count job on the whole split; 0: --acc on the whole split
        train = train.fraction(min(1.0, acc_rows / len(train)), seed=0)
    loaded = load_classifier("minilm", label_names=corpus.label_names, seed=SEED)
    return corpus, train, loaded


class _TokenCounter:
    """Counts what the model computes on: padded tokens, and sum of b*s^2 for the attention matmuls."""

    def __init__(self, model):
        self.tokens = 0
        self.attn = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and module.training:
            b, s = ids.shape
            self.tokens += b * s
            self.attn += b * s * s


class _Clock:
    """Wall and CPU time (all threads of the process) from the end of step 1 to the end of the last
    step, the same way for both: start-up, tokenising and the first step's warm-up are excluded, and on
    a shared machine CPU seconds are the fairer measure of work."""

    def __init__(self):
        self.marks: list[tuple[int, float, float]] = []

    def mark(self, step: int) -> None:
        self.marks.append((step, time.perf_counter(), time.process_time()))

    def on_step(self, state) -> bool:  # an engine hook
        self.mark(state.step)
        return False

    def figures(self, batch: int) -> dict:
        (s0, w0, c0), (s1, w1, c1) = self.marks[0], self.marks[-1]
        n = (s1 - s0) * batch
        return {"timed_samples": n, "timed_wall_s": w1 - w0, "timed_cpu_s": c1 - c0}


def _model_flops(model, counter: _TokenCounter) -> float:
    cfg = model.config
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - emb
    # forward 2 FLOPs per multiply-add, backward twice that; attention: QK^T and AV, 2*s^2*h each.
    return 6.0 * dense * counter.tokens + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * counter.attn


def _accuracy(model, tokenizer, corpus, device: str) -> float:
    from bdcli.engine import forward_all, resolve_device
    from bdcli.engine.batching import encode
    from bdcli.metrics.classification import accuracy

    dev = corpus.split("dev")
    logits = forward_all(model, encode(tokenizer, dev, 128), batch_size=256, device=resolve_device(device),
                         precision="auto")
    return accuracy(logits.argmax(-1).tolist(), list(dev.labels))


def _peak_memory(device: str) -> dict:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_engine(steps: int | None, acc_rows: int | None, device: str, profile: bool) -> dict:
    from bdcli.engine import TrainConfig, train

    t0 = time.perf_counter()
    corpus, data, loaded = _load(acc_rows)
    counter = _TokenCounter(loaded.model)
    cfg = TrainConfig(lr=LR, batch_size=BATCH, weight_decay=WEIGHT_DECAY, max_steps=steps, epochs=1.0,
                      checkpoint_every=0, seed=SEED, device=device, precision="auto")
    if profile:
        return _profiled(loaded, data, cfg)
    clock = _Clock()
    result = train(loaded.model, loaded.tokenizer, data, cfg, desc="engine", hooks=[clock])
    out = {"who": "engine", "steps": result.steps, "samples": result.samples, "train_s": result.seconds,
           "wall_s": time.perf_counter() - t0, "flops": _model_flops(loaded.model, counter),
           "final_loss": result.final_loss, **clock.figures(BATCH)}
    if acc_rows is not None:
        out["acc"] = _accuracy(loaded.model, loaded.tokenizer, corpus, device)
    return {**out, **_peak_memory(device)}


def run_trainer(steps: int | None, acc_rows: int | None, device: str) -> dict:
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    corpus, data, loaded = _load(acc_rows)
    counter = _TokenCounter(loaded.model)
    enc = loaded.tokenizer(data.texts, truncation=True, max_length=128)
    rows = [{"input_ids": ids, "attention_mask": m, "labels": y}
            for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], data.labels)]
    on_cpu = not device.startswith("cuda")
    bf16 = on_cpu or torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "bdcli-bench-trainer"),
        per_device_train_batch_size=BATCH, learning_rate=LR, weight_decay=WEIGHT_DECAY,
        max_steps=steps if steps else -1, num_train_epochs=1.0, lr_scheduler_type="linear", warmup_steps=0,
        max_grad_norm=1.0, bf16=bf16, fp16=not bf16, use_cpu=on_cpu, seed=SEED, data_seed=SEED,
        train_sampling_strategy="group_by_length", logging_steps=10, save_strategy="no", report_to=[],
        dataloader_num_workers=0, disable_tqdm=True,
    )
    from transformers import TrainerCallback

    clock = _Clock()

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.mark(state.global_step)

    trainer = Trainer(model=loaded.model, args=args, train_dataset=rows,
                      data_collator=DataCollatorWithPadding(loaded.tokenizer), callbacks=[Tick()])
    m = trainer.train().metrics
    n_steps = trainer.state.global_step
    out = {"who": "trainer", "steps": n_steps, "samples": round(m["train_samples_per_second"] * m["train_runtime"]),
           "train_s": m["train_runtime"], "wall_s": time.perf_counter() - t0,
           "flops": _model_flops(loaded.model, counter), "final_loss": m.get("train_loss"),
           **clock.figures(BATCH)}
    if acc_rows is not None:
        loaded.model.eval()
        out["acc"] = _accuracy(loaded.model, loaded.tokenizer, corpus, device)
    return {**out, **_peak_memory(device)}


PHASES = ("data", "forward", "backward", "optimizer")


def _profiled(loaded, data, cfg) -> dict:
    """The engine's loop under torch.profiler; the loop labels its phases (bdcli.<phase>)."""
    from torch.profiler import ProfilerActivity, profile

    from bdcli.engine import train

    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = train(loaded.model, loaded.tokenizer, data, cfg, desc="engine")
    wall = time.perf_counter() - t
    totals = {p: 0.0 for p in PHASES}
    for ev in prof.key_averages():
        for p in PHASES:
            if ev.key == f"bdcli.{p}":
                totals[p] += ev.cpu_time_total / 1e6
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {"who": "engine-profile", "steps": result.steps, "train_s": result.seconds, "wall_s": wall,
            "phases": totals, "top_ops": [(e.key, e.self_cpu_time_total / 1e6) for e in top]}


# ---------------------------------------------------------------------------------------------- parent

def ceiling(device: str) -> dict:
    """Best-of-5 TFLOP/s of an n x n matmul in fp32 and bf16."""
    import torch

    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    n = 4096 if dev.type == "cuda" else 1536
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=dev, dtype=dt)
        b = torch.randn(n, n, device=dev, dtype=dt)
        best = float("inf")
        for _ in range(6):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * n**3 / best / 1e12
    return out


def trial(who: str, args) -> dict:
    plain = who == "engine-plain"
    who = "engine" if plain else who
    cmd = [sys.executable, __file__, "--worker", who, "--device", args.device, "--acc-rows", str(args.acc_rows),
           "--steps", str(args.steps)] + (["--acc"] if args.acc else [])
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "BDCLI_PROGRESS": "0", "BDCLI_ENGINE_PLAIN": "1" if plain else "0"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        sys.exit(f"{who} trial failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120, help="training steps per trial (ignored with --acc)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of (engine, Trainer)")
    ap.add_argument("--acc", action="store_true", help="train one epoch instead and report dev ACC")
    ap.add_argument("--acc-rows", type=int, default=4000,
                    help="training rows for --acc (0: the whole SST-2 train split; hours on a 2-core CPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action="store_true", help="profile the engine's loop only "
                    "(BDCLI_ENGINE_PLAIN=1 profiles the plain loop)")
    ap.add_argument("--with-plain", action="store_true",
                    help="also run the engine's plain loop (BDCLI_ENGINE_PLAIN=1) in each round: before/after")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per trial before giving up")
    ap.add_argument("--worker", choices=("engine", "trainer"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        steps, rows = (None, args.acc_rows) if args.acc else (args.steps, None)
        if args.worker == "engine":
            res = run_engine(steps, rows, args.device, args.profile)
        else:
            res = run_trainer(steps, rows, args.device)
        print(json.dumps(res))
        with open(Path(os.environ.get("TMPDIR", "/tmp")) / "bdcli-vs-trainer.jsonl", "a") as fh:
            fh.write(json.dumps({**res, "plain": os.environ.get("BDCLI_ENGINE_PLAIN", "0")}) + "\n")
        return

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    if args.profile:
        cmd = [sys.executable, __file__, "--worker", "engine", "--device", args.device, "--steps", str(args.steps),
               "--profile"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "BDCLI_PROGRESS": "0"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        train_s = res["train_s"]
        print(f"engine profile, {res['steps']} steps, {train_s:.1f} s in the loop (profiler on):")
        for p, s in res["phases"].items():
            print(f"  {p:<10} {s:7.2f} s  {100 * s / train_s:5.1f}%")
        other = train_s - sum(res["phases"].values())
        print(f"  {'other':<10} {other:7.2f} s  {100 * other / train_s:5.1f}%")
        print("top ops by self CPU time:")
        for name, s in res["top_ops"]:
            print(f"  {s:7.2f} s  {name}")
        return

    ceil = ceiling(args.device)
    print(f"ceiling: fp32 {ceil['fp32']:.3f} TFLOP/s, bf16 {ceil['bf16']:.3f} TFLOP/s (best n x n matmul)")
    what = (f"one epoch of {args.acc_rows or 'all'} SST-2 train rows, ACC on SST-2 dev" if args.acc
            else f"{args.steps} steps")
    print(f"job: MiniLM on SST-2, batch {BATCH}, lr {LR}, bf16 autocast, {what}, {args.rounds} interleaved rounds")
    order = ("engine-plain", "engine", "trainer") if args.with_plain else ("engine", "trainer")
    results: dict[str, list[dict]] = {w: [] for w in order}
    for r in range(args.rounds):
        for who in order:
            res = trial(who, args)
            results[who].append(res)
            mem = f"peak RSS {res['peak_rss_mb']:.0f} MB" + (f", GPU {res['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in res else "")
            acc = f", ACC {res['acc']:.4f}" if "acc" in res else ""
            print(f"round {r + 1} {who:<12} {res['samples'] / res['train_s']:7.1f} samples/s  train {res['train_s']:6.1f} s  "
                  f"wall {res['wall_s']:6.1f} s  {mem}  final loss {res['final_loss']:.4f}{acc}  "
                  f"| steps 2-{res['steps']}: {res['timed_samples'] / res['timed_cpu_s']:.1f} samples per CPU-s", flush=True)
    rate = {w: [x["samples"] / x["train_s"] for x in rs] for w, rs in results.items()}
    mean = {w: sum(v) / len(v) for w, v in rate.items()}
    print(f"engine {mean['engine']:.1f} samples/s (range {min(rate['engine']):.1f}-{max(rate['engine']):.1f}), "
          f"Trainer {mean['trainer']:.1f} samples/s (range {min(rate['trainer']):.1f}-{max(rate['trainer']):.1f})")
    print(f"ratio engine/Trainer: {mean['engine'] / mean['trainer']:.2f}x")
    cpu = {w: sum(x["timed_samples"] for x in rs) / sum(x["timed_cpu_s"] for x in rs) for w, rs in results.items()}
    print("per CPU-second (steps 2..N; the fair figure on a shared machine): "
          + ", ".join(f"{w} {v:.1f}" for w, v in cpu.items()) + f"; ratio engine/Trainer {cpu['engine'] / cpu['trainer']:.2f}x"
          + (f", fast/plain {cpu['engine'] / cpu['engine-plain']:.2f}x" if 'engine-plain' in cpu else ""))
    if args.with_plain:
        print(f"engine plain loop {mean['engine-plain']:.1f} samples/s: ratio plain/Trainer "
              f"{mean['engine-plain'] / mean['trainer']:.2f}x, fast/plain {mean['engine'] / mean['engine-plain']:.2f}x")
    for who in order:
        flops = sum(x["flops"] for x in results[who]) / sum(x["train_s"] for x in results[who])
        print(f"{who}: {flops / 1e12:.3f} model TFLOP/s = MFU {100 * flops / 1e12 / ceil['bf16']:.1f}% of the bf16 ceiling")
    if args.acc:
        for who in order:
            print(f"ACC {who}: " + ", ".join(f"{x['acc']:.4f}" for x in results[who]))


if __name__ == "__main__":
    main()
