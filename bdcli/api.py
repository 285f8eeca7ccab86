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


def _with_warnings(summary: dict[str, Any], corpus: Corpus, more: list[str] = ()) -> dict[str, Any]:
    warnings = list(corpus.warnings) + list(summary.get("warnings", [])) + list(more)
    return {**summary, "warnings": warnings} if warnings else summary


def _require_labels(ds, what: str, need_all: bool = True) -> None:
    """Refuse data a procedure cannot use: an empty split, fewer than two labels, or (``need_all``) a
    label with no rows, which would train or measure a class on nothing."""
    if len(ds) == 0:
        raise UsageError(f"{what} is empty")
    if ds.num_labels < 2:
        raise UsageError(f"{what} has a single label ({ds.label_names[0]}); a classifier needs at least two")
    counts = [0] * ds.num_labels
    for y in ds.labels:
        counts[y] += 1
    empty = [ds.label_names[i] for i, c in enumerate(counts) if c == 0]
    if need_all and empty:
        raise UsageError(f"{what} has no rows of label {', '.join(map(str, empty))} ({len(ds)} rows in all)")


def _defender_view(cfg: Any, model: str) -> tuple[Path, dict, Any]:
    """The suspect model's folder, its provenance, and ``cfg`` with the scenario resolved (the option,
    else the one the victim was made for, else outsourcing) and that scenario's clean share filled in
    where none was given: what every procedure that defends a model starts from."""
    from .defenses import SCENARIO_CLEAN_FRACTION

    model_path = _model_input(model)
    victim_prov = provenance_of(model_path)
    scenario = cfg.scenario or victim_prov.get("scenario") or "outsourcing"
    cfg = dataclasses.replace(
        cfg, scenario=scenario,
        clean_fraction=cfg.clean_fraction if cfg.clean_fraction is not None else SCENARIO_CLEAN_FRACTION[scenario],
    )
    return model_path, victim_prov, cfg


def _external_data(data: "DataSpec") -> bool:
    """Data bdcli did not make or name: a user's own file or folder."""
    from .data import DATASETS
    from .data.folder import is_data_folder

    p = Path(data.data).expanduser()
    if p.exists():
        return not (p.is_dir() and is_data_folder(p))
    return data.data not in DATASETS


def _card(tmp: Path, command: str, cfg: Any, provenance: dict, summary: dict, data: "DataSpec") -> None:
    from .modelcard import write_model_card
    from .steps import config_dict

    write_model_card(tmp, command, config_dict(cfg), provenance, summary, str(data.data))


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
    _require_labels(corpus.split("train"), f"the train split of {data.data}")
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

    from .honoured import check_honoured

    proc = ATTACKS.get(name)
    check_honoured("attack", name, cfg)
    corpus = data.load()
    _require_labels(corpus.split("train"), f"the train split of {data.data}", need_all=False)
    poison_record = corpus.poison or {}
    # Fine-tuning a poisoned model on clean data is the transfer scenario's victim: the user's own
    # fine-tune of the encoder the attacker published. It inherits the attack it carries.
    base = provenance_of(_model_input(cfg.model)) if not poison_record else {}
    inherited = base.get("attack") not in (None, "clean")
    # A fine-tune on a user's own data: bdcli cannot know whether that data is poisoned, so the model is
    # not recorded as the clean reference unless the user says the data is clean.
    unknown = (name == "finetune" and not inherited and not poison_record and _external_data(data)
               and not getattr(cfg, "data_is_clean", False))

    def body(tmp: Path) -> dict[str, Any]:
        from .probe.dynamics import finish, recorder_for, recording

        rec = recorder_for(cfg, corpus.split("test"), corpus.splits.get("test-poison"), poison_record.get("target"))
        with recording(rec):
            loaded, summary = proc.run(cfg, corpus)
        summary = finish(rec, tmp, summary)
        if type(cfg).trains_classifier:
            summary = _with_heldout_check(summary, loaded, corpus, cfg)
        save_classifier(loaded, tmp)
        provenance = {
                # A fine-tune on clean data from a clean model is the clean reference, not a victim.
                "method": "external-data" if unknown else
                "victim" if inherited or poison_record or name != "finetune" else "clean",
                # finetune plants whatever the data carries; every other attack is named for itself.
                "attack": base["attack"] if inherited else (poison_record.get("attack", "clean") if name == "finetune" else name),
                "dataset": corpus.name,
                "scenario": base.get("scenario", cfg.scenario) if inherited else cfg.scenario,
                "target": base.get("target") if inherited else poison_record.get("target"),
                "base_model": cfg.model,
                "user_finetune_of": str(cfg.model) if inherited else None,
                "label_names": corpus.label_names,
                "data_clean": "unknown" if unknown else None,
        }
        if unknown:
            provenance["attack"] = None
        summary = _with_warnings(summary, corpus)
        _card(tmp, f"attack {name}", cfg, provenance, summary, data)
        return {"device": str(_device_of(loaded.model)), "provenance": provenance, "summary": summary}

    step = Step("attack", name, cfg, {"data": data, "model": cfg.model})
    return run_step(out, step=step, command=f"attack {name}", config=cfg, kind="model", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


def defend(
    name: str, cfg: Any, model: str, data: DataSpec, out: str | Path, *, force: bool = False, resume: bool = False,
    lock_wait_s: float = 0,
) -> StepResult:
    """Purify ``model`` with clean data; the defender's share is ``cfg.clean_fraction`` of the train split."""
    from .defenses import DEFENSES
    from .models import load_classifier, save_classifier

    from .honoured import check_honoured

    proc = DEFENSES.get(name)
    check_honoured("defense", name, cfg)
    # The step is the config as given: what it resolves to is a function of the inputs, which are hashed.
    step = Step("defend", name, cfg, {"model": model, "data": data})
    model_path, victim_prov, cfg = _defender_view(cfg, model)
    scenario = cfg.scenario
    corpus = data.load()
    if corpus.poison is not None:
        raise UsageError(
            f"data {data.data} is poisoned ({corpus.poison.get('attack')}); a defense needs clean data "
            f"(for example the named set {corpus.name!r})"
        )
    clean = corpus.split("train").fraction(cfg.clean_fraction, cfg.seed)
    _require_labels(clean, f"the defender's clean set (--clean-fraction {cfg.clean_fraction} of the train split of "
                           f"{data.data}, {len(clean)} rows)")

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
        from .probe.dynamics import finish, lineage_poison, recorder_for, recording

        # A defense's data is clean: the poisoned probe rows come from the data the victim was made from.
        lineage = lineage_poison(model_path) if cfg.record_dynamics else None
        rec = recorder_for(cfg, corpus.split("test"), lineage.split("test-poison") if lineage else None,
                           victim_prov.get("target"))
        with recording(rec):
            summary = proc.run(cfg, victim, clean)
        summary = _with_warnings(finish(rec, tmp, summary), corpus)
        save_classifier(victim, tmp)
        provenance = {**victim_prov, "method": name, "victim": str(model_path), "dataset": victim_prov.get("dataset", corpus.name),
                      "scenario": scenario, "clean_rows": len(clean), "label_names": victim.label_names}
        _card(tmp, f"defend {name}", cfg, provenance, summary, data)
        return {"device": str(_device_of(victim.model)), "provenance": provenance, "summary": summary}

    return run_step(out, step=step, command=f"defend {name}", config=cfg, kind="model", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


def probe_sd(cfg: Any, model: str, data: DataSpec, asr_data: DataSpec | None, out: str | Path, *, force: bool = False,
             resume: bool = False, lock_wait_s: float = 0) -> StepResult:
    """One maximum-entropy pass, a snapshot at each Stop Distance threshold of ``cfg.sd``, each re-trained
    and evaluated (ACC on ``data``'s clean test split, ASR on ``asr_data``): see ``bdcli.probe.sd``."""
    from .probe.command import probe_sd as _probe_sd

    return _probe_sd(cfg, model, data, asr_data, out, force=force, resume=resume, lock_wait_s=lock_wait_s)


@dataclass
class EvalConfig:
    batch_size: int = 128
    max_length: int = 128
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    label: str | None = None  # the row name `report` shows for this model (default: its method)
    geometry: bool = False  # also write geometry.json and representations.safetensors (bdcli/probe/geometry.py)
    trigger_rmse: tuple[str, ...] | None = None  # trigger words: also write trigger_rmse.json (GBA Figure 3)
    rmse_class_tokens: tuple[str, ...] | None = None  # one word per label (default: GBA's Table 1 words)
    # A triggered test set made by another tool (any file or folder --data reads, with its column
    # options), measured for ASR against ``target``; it replaces --data's own test-poison split.
    asr_data: str | None = None
    target: str | None = None
    asr_text_col: str | None = None  # columns of --asr-data (default: --text-col / --label-col)
    asr_label_col: str | None = None

    def __post_init__(self) -> None:
        from .numbers import check_numbers

        check_numbers(self)
        if (self.asr_data is None) != (self.target is None):
            raise UsageError("--asr-data and --target go together: give the triggered test set and its target label")


def evaluate(
    cfg: EvalConfig, model: str, data: DataSpec, out: str | Path, *, force: bool = False, resume: bool = False,
    lock_wait_s: float = 0,
) -> StepResult:
    """ACC on the clean test split; ASR and per-class ASR on ``test-poison`` when the data has one."""
    from .engine import resolve_device, seed_everything
    from .metrics import accuracy, asr_per_class, attack_success_rate, label_shares
    from .models import load_classifier

    model_path = _model_input(model)
    corpus = data.load()
    test = corpus.split("test")
    _require_labels(test, f"the test split of {data.data}", need_all=False)
    asr_set = corpus.splits.get("test-poison")
    poison_record = corpus.poison or {}
    asr_note = None
    if cfg.asr_data is not None:
        asr_set, poison_record, asr_note = _external_asr_set(cfg, data, corpus)

    def body(tmp: Path) -> dict[str, Any]:
        seed_everything(cfg.seed)
        loaded = load_classifier(model_path, label_names=corpus.label_names, seed=cfg.seed)
        if loaded.new_head:
            raise BdcliError(f"model {model} has no classification head, so it cannot be evaluated as a classifier")
        device = resolve_device(cfg.device)
        loaded.model.to(device)

        def predict(ds) -> list[int]:
            return _predict(loaded, ds, cfg.max_length, cfg.batch_size, device, cfg.precision)

        prov = provenance_of(model_path)
        record: dict[str, Any] = {
            "acc": accuracy(predict(test), test.labels),
            "asr": None,
            "asr_c": {},
            "n_clean": len(test),
            # What always predicting one label scores, so that a report can tell a victim at chance on an
            # imbalanced set (HS) from one that learned its task.
            "label_shares": label_shares(test.labels, corpus.label_names),
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
            if asr_note is not None:
                record.update(asr_data=cfg.asr_data, n_asr_left_out=asr_note["left_out"])
            every_row = corpus.splits.get("test-poison-all")
            if every_row is not None:
                # GBA's ASR_c: the trigger in EVERY test row, class c's rate over the rows not of c.
                record.update(asr_c=asr_per_class(predict(every_row), every_row.labels, corpus.label_names),
                              asr_c_rows="every", n_poison_all=len(every_row))
        (tmp / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        notes: list[str] = []
        if cfg.geometry:
            from .probe.geometry import write_geometry

            notes += write_geometry(loaded, test, asr_set if poison_record else None,
                                    poison_record.get("target", prov.get("target")), cfg, tmp)
        if cfg.trigger_rmse:
            from .probe.geometry import write_trigger_rmse

            notes += write_trigger_rmse(loaded, cfg.trigger_rmse, prov, tmp, cfg.seed, cfg.rmse_class_tokens)
        return {"device": str(device), "provenance": {k: record[k] for k in ("method", "attack", "dataset", "scenario")},
                "summary": _with_warnings({k: record[k] for k in ("acc", "asr")} | ({"warnings": notes} if notes else {}),
                                          corpus, [asr_note["message"]] if asr_note else [])}

    step = Step("evaluate", "standard", cfg, {"model": model, "data": data})
    return run_step(out, step=step, command="evaluate", config=cfg, kind="metrics", body=body, force=force,
                    resume=resume, lock_wait_s=lock_wait_s)


def asr_spec(cfg: EvalConfig, data: DataSpec) -> DataSpec:
    return dataclasses.replace(data, data=cfg.asr_data, text_col=cfg.asr_text_col or data.text_col,
                               label_col=cfg.asr_label_col or data.label_col)


def _external_asr_set(cfg: EvalConfig, data: DataSpec, corpus: Corpus):
    """The ASR set of ``--asr-data``: its rows (the train split of a single file, the test split of a
    folder) with their true labels, less those already of the target label, which the maximum-entropy
    paper's ASR leaves out (a row of the target class says nothing about the trigger)."""
    from .data import load_corpus, resolve_data_dir

    spec = asr_spec(cfg, data)
    other = load_corpus(spec.data, resolve_data_dir(spec.data_dir), text_col=spec.text_col, label_col=spec.label_col,
                        text_b_col=spec.text_b_col, label_names=corpus.label_names,
                        bad_rows="drop" if spec.drop_bad_rows else "error", encoding=spec.encoding)
    ds = other.splits.get("test-poison") or other.splits.get("test") or other.split("train")
    try:
        target = corpus.label_index(cfg.target)  # type: ignore[arg-type]
    except BdcliError as e:
        raise UsageError(str(e)) from None
    keep = [i for i, y in enumerate(ds.labels) if y != target]
    left_out = len(ds) - len(keep)
    if not keep:
        raise UsageError(f"every one of the {len(ds)} rows of {cfg.asr_data} is of the target label "
                         f"{corpus.label_names[target]}; ASR needs triggered rows with their true, non-target labels")
    message = (f"ASR on {cfg.asr_data}: {len(keep)} rows; {left_out} rows already of the target label "
               f"{corpus.label_names[target]} left out, as the maximum-entropy paper defines ASR")
    record = {"attack": "external", "target": target}
    return ds.subset(keep), record, {"left_out": left_out, "message": message}


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


def _predict(loaded, ds, max_length: int, batch_size: int, device, precision: str) -> list[int]:
    from .engine import forward_all
    from .engine.batching import encode

    logits = forward_all(loaded.model, encode(loaded.tokenizer, ds, max_length), batch_size=batch_size,
                         device=device, precision=precision)
    return logits.argmax(dim=-1).tolist()


HELDOUT_ROWS = 512  # enough to tell a classifier from one that answers one label, in seconds on a CPU


def _with_heldout_check(summary: dict[str, Any], loaded, corpus: Corpus, cfg) -> dict[str, Any]:
    """``summary`` with the trained model's clean ACC on ``HELDOUT_ROWS`` dev rows (test rows where there is
    no dev split), and a warning when that ACC is what answering one label scores.

    A model that never learned its task gets its ASR for free; in the transfer scenario the user's
    fine-tune then teaches it the task and the table shows a victim whose backdoor "faded", with nothing
    to say why (the maximum-entropy Table 1 RIPPLe attacker at 200 steps did exactly that). Predicting
    leaves the weights and the RNG as they were, so the saved model is the one trained."""
    from .metrics import accuracy, label_shares
    from .report.health import at_chance

    split = "dev" if "dev" in corpus.splits else "test"
    full = corpus.split(split)
    n = min(len(full), HELDOUT_ROWS)
    # Spread over the split: a file sorted by label would otherwise give one label's rows only.
    ds = full.subset([i * len(full) // n for i in range(n)])
    if len(set(ds.labels)) < 2:
        return summary
    preds = _predict(loaded, ds, cfg.max_length, max(cfg.batch_size, 64), _device_of(loaded.model), cfg.precision)
    acc = accuracy(preds, ds.labels)
    how = at_chance({"acc": acc, "label_shares": label_shares(ds.labels, corpus.label_names), "dataset": corpus.name})
    checked = {**summary, "heldout": {"split": split, "rows": len(ds), "acc": round(acc, 4)}}
    if how is None:
        return checked
    return {**checked, "warnings": [*summary.get("warnings", []), (
        f"the trained model never learned its task: ACC {100 * acc:.2f} on {len(ds)} clean {split} rows, where "
        f"{how}; its ASR is free, and a fine-tune of it holds little of a backdoor (train it longer or at a "
        "higher --lr)")]}


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

__all__ = ["DataSpec", "EvalConfig", "poison", "attack", "defend", "evaluate", "probe_sd", "read_metrics", "read_manifest"]
