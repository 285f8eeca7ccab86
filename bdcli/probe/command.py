"""The ``probe-sd`` command: loads its inputs, runs the probe, publishes one output folder (probe.json,
probe.csv, probe.md, one defended model per reached threshold, dynamics.csv with --record-dynamics)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..artifacts import StepResult, run_step
from ..errors import BdcliError, UsageError
from ..steps import Step


def probe_sd(cfg: Any, model: str, data: Any, asr_data: Any | None, out: str | Path, *, force: bool = False,
             resume: bool = False, lock_wait_s: float = 0) -> StepResult:
    from ..api import _defender_view, _device_of, _with_warnings
    from ..engine.checkpoint import active_root
    from ..models import load_classifier, save_classifier
    from ..steps import fingerprint
    from . import PROBES
    from .dynamics import DynamicsRecorder, pick_probes, recording
    from .sd import threshold_name, write_table

    inputs = {"model": model, "data": data, **({"asr_data": asr_data} if asr_data is not None else {})}
    step = Step("probe", "sd", cfg, inputs)
    model_path, victim_prov, cfg = _defender_view(cfg, model)
    scenario = cfg.scenario
    corpus = data.load()
    if corpus.poison is not None:
        raise UsageError(f"data {data.data} is poisoned ({corpus.poison.get('attack')}); probe-sd needs clean data "
                         f"(for example the named set {corpus.name!r}) and the poisoned set as --asr-data")
    asr_corpus = asr_data.load() if asr_data is not None else None
    if asr_corpus is not None and (asr_corpus.poison is None or "test-poison" not in asr_corpus.splits):
        raise UsageError(f"--asr-data {asr_data.data} holds no poisoned test split (test-poison); give a folder "
                         "`bdcli poison` wrote")
    clean = corpus.split("train").fraction(cfg.clean_fraction, cfg.seed)
    test = corpus.split("test")
    asr_set = asr_corpus.split("test-poison") if asr_corpus is not None else None
    target = int(asr_corpus.poison["target"]) if asr_corpus is not None else victim_prov.get("target")
    fp = fingerprint(step)

    def body(tmp: Path) -> dict[str, Any]:
        from ..defenses.head import reset_head

        victim = load_classifier(model_path, label_names=corpus.label_names, seed=cfg.seed)
        if scenario == "transfer":
            reset_head(victim.model, cfg.seed)  # the defender holds the published encoder, not its head
        elif victim.new_head:
            raise BdcliError(f"model {model} has no classification head; probe-sd in the outsourcing scenario needs "
                             "a classifier (an encoder alone is the transfer scenario: pass --scenario transfer)")
        # What must survive a kill lives with the checkpoints (run_step always keeps some).
        root = active_root()
        if root is None:
            raise BdcliError("probe-sd runs inside a command's checkpoint folder (bdcli.artifacts.run_step)")
        keep = root
        evals = keep / "evals"
        evals.mkdir(parents=True, exist_ok=True)
        recorder = None
        notes: list[str] = []
        if cfg.record_dynamics:
            probes = pick_probes(test, asr_set, target, seed=cfg.seed)
            notes += probes.notes
            recorder = DynamicsRecorder(probes, every=cfg.record_dynamics, rep=cfg.sd_on, max_length=cfg.max_length,
                                        precision=cfg.precision)

        def on_model(i: int, t: float, row: dict[str, Any]) -> dict[str, Any]:
            name = threshold_name(t)
            folder = tmp / name
            save_classifier(victim, folder)
            cached = evals / f"{i}.json"
            if cached.exists():  # evaluated before a kill: not redone
                metrics = json.loads(cached.read_text())
            else:
                metrics = _acc_asr(victim, test, asr_set, target, cfg)
                cached.write_text(json.dumps(metrics))
            stage1 = {"steps": row["stage1_steps"], "reached_threshold": True, "sd_threshold": row["sd_threshold"],
                      "sd_start": row["sd_start"], "sd_end": row["sd_reached"], "sd_pair": row["sd_pair"],
                      "sd_on": cfg.sd_on, "shared_pass": True,
                      "training": {"steps": row["stage1_steps"], "seconds": row["stage1_seconds"],
                                   "samples_per_s": 0.0, "stopped_by_hook": True}}
            manifest = {
                "bdcli_manifest": 1, "kind": "model", "command": f"probe-sd (SD < {t:g})",
                "fingerprint": hashlib.sha256(f"{fp}:{t!r}".encode()).hexdigest(), "seed": cfg.seed,
                "provenance": {**victim_prov, "method": "maxent", "victim": str(model_path), "scenario": scenario,
                               "dataset": victim_prov.get("dataset", corpus.name), "clean_rows": len(clean),
                               "label_names": victim.label_names, "sd_threshold": t},
                "summary": {"stage1": stage1, "stage2": {"steps": row["stage2_steps"],
                                                         "training": row["stage2_training"]},
                            "metrics": metrics},
            }
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            return {**metrics, "model": name}

        with recording(recorder):
            summary = PROBES.get("sd").run(cfg, victim, clean, folder=keep / "snapshots", on_model=on_model)
        for r in summary["rows"]:
            r.pop("stage2_training", None)
        if asr_set is None:
            notes.append("no --asr-data: the table has no ASR")
        summary["warnings"] = summary.get("warnings", []) + notes
        summary["table"] = write_table(summary, tmp)
        if recorder is not None:
            recorder.write_csv(tmp / "dynamics.csv")
        return {
            "device": str(_device_of(victim.model)),
            "provenance": {**victim_prov, "method": "probe-sd", "victim": str(model_path), "scenario": scenario,
                           "dataset": victim_prov.get("dataset", corpus.name), "clean_rows": len(clean)},
            "summary": _with_warnings(summary, corpus),
        }

    return run_step(out, step=step, command="probe-sd", config=cfg, kind="probe", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


def _acc_asr(loaded, test, asr_set, target, cfg) -> dict[str, Any]:
    """ACC on the clean test split and ASR on the poisoned one, as ``bdcli evaluate`` measures them."""
    from ..engine import forward_all, resolve_device
    from ..engine.batching import encode
    from ..metrics import accuracy, attack_success_rate

    device = resolve_device(cfg.device)

    def predict(ds) -> list[int]:
        enc = encode(loaded.tokenizer, ds, cfg.max_length)
        return forward_all(loaded.model, enc, batch_size=128, device=device, precision=cfg.precision).argmax(-1).tolist()

    out: dict[str, Any] = {"acc": accuracy(predict(test), test.labels), "asr": None, "n_clean": len(test), "n_poison": 0}
    if asr_set is not None:
        out.update(asr=attack_success_rate(predict(asr_set), int(target)), n_poison=len(asr_set))
    return out
