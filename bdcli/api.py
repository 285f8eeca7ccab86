"""The Python API: one function per command. Each loads its inputs, runs the library procedure and
publishes one output folder through the artifact contract (``artifacts.run_step``). The CLI and the
recipe runner are thin layers over these functions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import StepResult, provenance_of, read_manifest, run_step
from .steps import Step
from .data.dataset import Corpus
from .errors import BdcliError, UsageError


@dataclass
class DataSpec:
    """Where a command's data comes from: a named set, a bdcli data folder, or a user's file/folder
    with a column mapping."""

    data: str
    data_dir: str | None = None
    text_col: str = "text"
    label_col: str = "label"
    text_b_col: str | None = None
    drop_bad_rows: bool = False
    encoding: str = "utf-8"

    def load(self) -> Corpus:
        from .data import load_corpus, resolve_data_dir

        return load_corpus(
            self.data,
            resolve_data_dir(self.data_dir),
            text_col=self.text_col,
            label_col=self.label_col,
            text_b_col=self.text_b_col,
            bad_rows="drop" if self.drop_bad_rows else "error",
            encoding=self.encoding,
        )


def _with_warnings(summary: dict[str, Any], corpus: Corpus) -> dict[str, Any]:
    warnings = list(corpus.warnings) + list(summary.get("warnings", []))
    return {**summary, "warnings": warnings} if warnings else summary


def _model_input(model: str) -> str:
    from .models import resolve_model

    return resolve_model(model)


def poison(name: str, cfg: Any, data: DataSpec, out: str | Path, *, force: bool = False, resume: bool = False,
           lock_wait_s: float = 0) -> StepResult:
    """Poison a clean data set: writes train/dev/test, the ASR set ``test-poison`` and ``poison.json``."""
    from .data import write_data_folder
    from .poison import POISONERS

    poisoner = POISONERS.get(name)(cfg)
    corpus = data.load()
    if corpus.poison is not None:
        raise UsageError(f"data {data.data} is already poisoned ({corpus.poison.get('attack')}); start from clean data")

    def body(tmp: Path) -> dict[str, Any]:
        poisoned = poisoner.apply(corpus)
        write_data_folder(poisoned, tmp)
        record = poisoned.poison or {}
        return {
            "provenance": {"attack": name, "dataset": corpus.name, "target": record.get("target")},
            "summary": _with_warnings({"n_train": record.get("n_train"), "n_poisoned": record.get("n_poisoned"),
                                       "n_test_poison": len(poisoned.split("test-poison"))}, corpus),
        }

    step = Step("poison", name, cfg, {"data": data})
    return run_step(out, step=step, command=f"poison {name}", config=cfg, kind="dataset", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


def attack(name: str, cfg: Any, data: DataSpec, out: str | Path, *, force: bool = False, resume: bool = False,
           lock_wait_s: float = 0) -> StepResult:
    """Train a victim on (poisoned) data and save it as a Hugging Face folder; ``cfg.model`` is the
    model it starts from."""
    from .attacks import ATTACKS
    from .models import save_classifier

    proc = ATTACKS.get(name)
    corpus = data.load()
    poison_record = corpus.poison or {}
    # Fine-tuning a poisoned model on clean data is the transfer scenario's victim: the user's own
    # fine-tune of the encoder the attacker published. It inherits the attack it carries.
    base = provenance_of(_model_input(cfg.model)) if not poison_record else {}
    inherited = base.get("attack") not in (None, "clean")

    def body(tmp: Path) -> dict[str, Any]:
        loaded, summary = proc.run(cfg, corpus)
        save_classifier(loaded, tmp)
        return {
            "device": str(_device_of(loaded.model)),
            "provenance": {
                # A fine-tune on clean data from a clean model is the clean reference, not a victim.
                "method": "victim" if inherited or poison_record or name != "finetune" else "clean",
                # finetune plants whatever the data carries; every other attack is named for itself.
                "attack": base["attack"] if inherited else (poison_record.get("attack", "clean") if name == "finetune" else name),
                "dataset": corpus.name,
                "scenario": base.get("scenario", cfg.scenario) if inherited else cfg.scenario,
                "target": base.get("target") if inherited else poison_record.get("target"),
                "base_model": cfg.model,
                "user_finetune_of": str(cfg.model) if inherited else None,
                "label_names": corpus.label_names,
            },
            "summary": _with_warnings(summary, corpus),
        }

    step = Step("attack", name, cfg, {"data": data, "model": cfg.model})
    return run_step(out, step=step, command=f"attack {name}", config=cfg, kind="model", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


def defend(
    name: str, cfg: Any, model: str, data: DataSpec, out: str | Path, *, force: bool = False, resume: bool = False,
    lock_wait_s: float = 0,
) -> StepResult:
    """Purify ``model`` with clean data; the defender's share is ``cfg.clean_fraction`` of the train split."""
    from .defenses import DEFENSES, SCENARIO_CLEAN_FRACTION
    from .models import load_classifier, save_classifier

    proc = DEFENSES.get(name)
    # The step is the config as given: what it resolves to is a function of the inputs, which are hashed.
    step = Step("defend", name, cfg, {"model": model, "data": data})
    model_path = _model_input(model)
    victim_prov = provenance_of(model_path)
    scenario = cfg.scenario or victim_prov.get("scenario") or "outsourcing"
    cfg = dataclasses.replace(
        cfg, scenario=scenario,
        clean_fraction=cfg.clean_fraction if cfg.clean_fraction is not None else SCENARIO_CLEAN_FRACTION[scenario],
    )
    corpus = data.load()
    if corpus.poison is not None:
        raise UsageError(
            f"data {data.data} is poisoned ({corpus.poison.get('attack')}); a defense needs clean data "
            f"(for example the named set {corpus.name!r})"
        )
    clean = corpus.split("train").fraction(cfg.clean_fraction, cfg.seed)

    def body(tmp: Path) -> dict[str, Any]:
        from .defenses.head import reset_head

        victim = load_classifier(model_path, label_names=corpus.label_names, seed=cfg.seed)
        if scenario == "transfer":
            # The defender holds the published encoder, not the attacker's output layer.
            reset_head(victim.model, cfg.seed)
        elif victim.new_head:
            raise BdcliError(
                f"model {model} has no classification head; `defend {name}` in the outsourcing scenario needs a "
                f"classifier (an encoder alone is the transfer scenario: pass --scenario transfer)"
            )
        summary = proc.run(cfg, victim, clean)
        save_classifier(victim, tmp)
        return {
            "device": str(_device_of(victim.model)),
            "provenance": {**victim_prov, "method": name, "victim": str(model_path), "dataset": victim_prov.get("dataset", corpus.name),
                           "scenario": scenario, "clean_rows": len(clean), "label_names": victim.label_names},
            "summary": _with_warnings(summary, corpus),
        }

    return run_step(out, step=step, command=f"defend {name}", config=cfg, kind="model", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


@dataclass
class EvalConfig:
    batch_size: int = 128
    max_length: int = 128
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    label: str | None = None  # the row name `report` shows for this model (default: its method)


def evaluate(
    cfg: EvalConfig, model: str, data: DataSpec, out: str | Path, *, force: bool = False, resume: bool = False,
    lock_wait_s: float = 0,
) -> StepResult:
    """ACC on the clean test split; ASR and per-class ASR on ``test-poison`` when the data has one."""
    from .engine import forward_all, resolve_device, seed_everything
    from .engine.batching import encode
    from .metrics import accuracy, asr_per_class, attack_success_rate
    from .models import load_classifier

    model_path = _model_input(model)
    corpus = data.load()
    test = corpus.split("test")
    asr_set = corpus.splits.get("test-poison")
    poison_record = corpus.poison or {}

    def body(tmp: Path) -> dict[str, Any]:
        seed_everything(cfg.seed)
        loaded = load_classifier(model_path, label_names=corpus.label_names, seed=cfg.seed)
        if loaded.new_head:
            raise BdcliError(f"model {model} has no classification head, so it cannot be evaluated as a classifier")
        device = resolve_device(cfg.device)
        loaded.model.to(device)

        def predict(ds) -> list[int]:
            enc = encode(loaded.tokenizer, ds, cfg.max_length)
            logits = forward_all(loaded.model, enc, batch_size=cfg.batch_size, device=device, precision=cfg.precision)
            return logits.argmax(dim=-1).tolist()

        prov = provenance_of(model_path)
        record: dict[str, Any] = {
            "acc": accuracy(predict(test), test.labels),
            "asr": None,
            "asr_c": {},
            "n_clean": len(test),
            "n_poison": 0,
            # Models written before bdcli told clean fine-tunes apart call them victims of attack "clean".
            "method": "clean" if prov.get("method") == "victim" and prov.get("attack") in (None, "clean")
            else prov.get("method", "external"),
            "label": cfg.label,
            # The model's own attack (ripple, ep, ...) wins over the trigger data it is measured on.
            "attack": prov["attack"] if prov.get("attack") not in (None, "clean") else poison_record.get("attack"),
            "dataset": corpus.name,
            "scenario": prov.get("scenario"),
            "target": poison_record.get("target"),
            "model": str(model),
            "data": data.data,
        }
        manifest = read_manifest(Path(model_path)) or {}
        record.update(
            # The seed of the model's lineage and the fingerprints it came from: `report` groups the seeds
            # of one cell by them.
            seed=manifest.get("seed"),
            upstream={"model": step_input_fingerprint(model), "data": step_input_fingerprint(data)},
            cost=training_cost(manifest),
        )
        if asr_set is not None and poison_record:
            preds = predict(asr_set)
            record.update(
                asr=attack_success_rate(preds, int(poison_record["target"])),
                asr_c=asr_per_class(preds, asr_set.labels, corpus.label_names),
                asr_c_rows="non-target",
                n_poison=len(asr_set),
            )
            every_row = corpus.splits.get("test-poison-all")
            if every_row is not None:
                # GBA's ASR_c: the trigger in EVERY test row, class c's rate over the rows not of c.
                record.update(asr_c=asr_per_class(predict(every_row), every_row.labels, corpus.label_names),
                              asr_c_rows="every", n_poison_all=len(every_row))
        (tmp / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        return {"device": str(device), "provenance": {k: record[k] for k in ("method", "attack", "dataset", "scenario")},
                "summary": _with_warnings({k: record[k] for k in ("acc", "asr")}, corpus)}

    step = Step("evaluate", "standard", cfg, {"model": model, "data": data})
    return run_step(out, step=step, command="evaluate", config=cfg, kind="metrics", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


def step_input_fingerprint(value: Any) -> str:
    from .steps import input_fingerprint

    return input_fingerprint(value, {})


def training_cost(manifest: dict[str, Any]) -> dict[str, Any]:
    """Optimiser steps and training seconds of the step that made a model, over every training stage
    its summary reports (the paper compares methods by steps, Appendix D.1)."""
    stages = _stages(manifest.get("summary") or {})
    return {"steps": sum(s["steps"] for s in stages), "seconds": round(sum(s["seconds"] for s in stages), 2)}


def _stages(summary: Any) -> list[dict[str, Any]]:
    # A training stage's summary is the dict TrainResult.summary() writes; procedures nest them freely.
    if isinstance(summary, dict):
        if {"steps", "seconds", "samples_per_s"} <= set(summary):
            return [summary]
        return [s for v in summary.values() for s in _stages(v)]
    if isinstance(summary, list):
        return [s for v in summary for s in _stages(v)]
    return []


def read_metrics(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "metrics.json").read_text())


def _device_of(model) -> Any:
    return next(model.parameters()).device


def _register_evaluator() -> None:
    from .registry import Entry
    from .steps import EVALUATORS

    EVALUATORS.register("standard")(Entry(
        "evaluator", "standard", 2, "Evaluate", 0,
        "ACC on the clean test split; ASR on the ASR set (test-poison); GBA's per-class ASR_c on every triggered test row (test-poison-all) where the data has it.", EvalConfig, "bdcli.api",
    ))


_register_evaluator()

__all__ = ["DataSpec", "EvalConfig", "poison", "attack", "defend", "evaluate", "read_metrics", "read_manifest"]
