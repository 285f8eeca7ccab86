"""One shape for every command: a ``Step`` is a kind, a component name, a typed config and named inputs.

The CLI, the Python API and the recipe runner all build Steps, and ``execute`` runs one. A step's
``fingerprint`` is what makes results reusable and never stale:

    sha256(kind, component name, component version, engine version, resolved config,
           {input name: fingerprint of that input})

where an input's fingerprint is the fingerprint of the step that produced it (a bdcli output folder,
or a ``Ref`` to a step not run yet) or, for anything from outside, a content hash. Paths never enter
it, so moving a folder changes nothing; a component's ``version`` (see ``bdcli.registry``) does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BdcliError, UsageError
from .registry import Entry, Registry

KINDS = ("poison", "attack", "defend", "evaluate", "probe", "report")
# kind of step -> kind of catalog entry
CATALOG_KIND = {"poison": "poisoner", "attack": "attack", "defend": "defense", "evaluate": "evaluator", "probe": "prober"}

# Shared code every step runs through (the training loop, loading, data folders, metrics). Bump it when
# that code changes results; tests/test_catalog.py pins it to a digest of those packages.
ENGINE_VERSION = 2

# Settings that change where a step runs or how it can be resumed, not what it computes.
NOT_FINGERPRINTED = frozenset({"device", "checkpoint_every", "label"})
# Options whose off value is exactly what the procedure did before the option existed (most add a file to
# an output and change nothing else): left out of the fingerprint while off, so that outputs made before
# the option existed keep their fingerprints.
OFF_VALUES = {"record_dynamics": 0, "geometry": False, "trigger_rmse": None, "rmse_class_tokens": None,
              "mlm_head_steps": 0}

EVALUATORS: Registry[Entry] = Registry("evaluator")


@dataclass(frozen=True)
class Ref:
    """The output of another step of the same plan, by its id."""

    step: str


@dataclass
class Step:
    kind: str
    name: str
    config: Any
    # "data": a DataSpec, a name/path, or a Ref; "model": a name/path or a Ref; procedures may add more
    # (NAD-C's "clean_model", RIPPLe's "proxy_data"). An input named like a config field sets that field.
    inputs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"unknown step kind {self.kind!r}; use one of {', '.join(KINDS)}")

    @property
    def entry(self) -> Entry:
        from .registry import entry

        return entry(CATALOG_KIND[self.kind], self.name)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "version": self.entry.version,
                "config": config_dict(self.config), "inputs": {k: _input_json(v) for k, v in self.inputs.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Step":
        from .api import DataSpec

        step = cls(d["kind"], d["name"], None, {})
        Config = step.entry.Config
        step.config = Config(**d["config"]) if Config is not None else d["config"]
        for k, v in d["inputs"].items():
            if isinstance(v, dict) and "ref" in v:
                step.inputs[k] = Ref(v["ref"])
            elif isinstance(v, dict) and "data" in v:
                step.inputs[k] = DataSpec(**v)
            else:
                step.inputs[k] = v
        return step


def config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return dict(config or {})


def _input_json(value: Any) -> Any:
    if isinstance(value, Ref):
        return {"ref": value.step}
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


# ------------------------------------------------------------------------------------- fingerprints


def fingerprint(step: Step, ref_fingerprints: dict[str, str] | None = None, unreadable: list[str] | None = None) -> str:
    """The step's fingerprint; ``ref_fingerprints`` gives those of the steps its ``Ref`` inputs name.
    With ``unreadable`` (a dry run), data that cannot be read is noted there and fingerprinted as
    unreadable instead of raising: the plan is shown, and its step can match no finished output."""
    payload = fingerprint_payload(step, ref_fingerprints, unreadable)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def fingerprint_payload(step: Step, ref_fingerprints: dict[str, str] | None = None,
                        unreadable: list[str] | None = None) -> dict[str, Any]:
    refs = ref_fingerprints or {}
    cfg = config_dict(step.config)
    inputs = {name: input_fingerprint(value, refs) for name, value in all_inputs(step, unreadable).items()}
    return {
        "kind": step.kind,
        "name": step.name,
        "version": step.entry.version,
        "engine": ENGINE_VERSION,
        # An input's identity is its fingerprint, not the path the config names it by.
        "config": {k: v for k, v in cfg.items() if k not in NOT_FINGERPRINTED and k not in inputs
                   and not (k in OFF_VALUES and v == OFF_VALUES[k])},
        "inputs": inputs,
    }


def all_inputs(step: Step, unreadable: list[str] | None = None) -> dict[str, Any]:
    """The step's inputs plus those its component declares from the config (a proxy corpus, say);
    ``unreadable`` as in :func:`fingerprint`."""
    inputs = dict(step.inputs)
    if step.kind in ("attack", "defend") and step.config is not None:
        from .registry import _registry

        proc = _registry(CATALOG_KIND[step.kind]).get(step.name)
        for name, value in proc.inputs(step.config).items():
            inputs.setdefault(name, value)
    elif step.kind == "evaluate" and getattr(step.config, "asr_data", None) and "data" in inputs:
        from .api import DataSpec, asr_spec

        data = inputs["data"]
        inputs.setdefault("asr_data", asr_spec(step.config, data if isinstance(data, DataSpec) else DataSpec(str(data))))
    elif step.kind == "poison" and step.config is not None and "data" in inputs and not isinstance(inputs["data"], Ref):
        from .poison import POISONERS

        try:
            extra = POISONERS.get(step.name)(step.config).extra_inputs(lambda: _load_data(inputs["data"]))
        except BdcliError as e:
            if unreadable is None:
                raise
            unreadable.append(str(e))
            extra = {"unreadable": Unreadable(str(e))}
        for name, value in extra.items():
            inputs.setdefault(name, value)
    return inputs


@dataclass(frozen=True)
class Unreadable:
    """An input a dry run could not read; its fingerprint matches no finished step."""

    why: str


def input_fingerprint(value: Any, refs: dict[str, str]) -> str:
    from .api import DataSpec

    if isinstance(value, Unreadable):
        return "unreadable:" + value.why
    if isinstance(value, Ref):
        if value.step not in refs:
            raise UsageError(f"input refers to step {value.step!r}, which the plan does not hold")
        return "step:" + refs[value.step]
    if isinstance(value, DataSpec):
        options = {k: v for k, v in dataclasses.asdict(value).items() if k not in ("data", "data_dir")}
        base = _path_or_name_fingerprint(_resolve_data(value))
        return base if options == _DEFAULT_DATA_OPTIONS else base + ";" + json.dumps(options, sort_keys=True)
    return _path_or_name_fingerprint(_resolve_model_or_path(str(value)))


_DEFAULT_DATA_OPTIONS = {"text_col": "text", "label_col": "label", "text_b_col": None, "drop_bad_rows": False,
                         "encoding": "utf-8"}


def _path_or_name_fingerprint(spec: str) -> str:
    from .artifacts import read_manifest

    p = Path(spec)
    if not p.exists():
        return "name:" + spec  # a hub id, resolved elsewhere
    manifest = read_manifest(p) if p.is_dir() else None
    if manifest and manifest.get("fingerprint"):
        return "step:" + manifest["fingerprint"]
    return "sha256:" + content_hash(p)


def _resolve_data(spec: Any) -> str:
    """The local folder a data spec reads (a named set resolves into the data directory)."""
    p = Path(spec.data).expanduser()
    if p.exists():
        return str(p)
    from .data import DATASETS, resolve_data_dir

    if spec.data in DATASETS:
        root = resolve_data_dir(spec.data_dir)
        if root is not None and (root / spec.data).is_dir():
            return str(root / spec.data)
    return spec.data


def _resolve_model_or_path(spec: str) -> str:
    from .models import MODEL_ALIASES, resolve_model

    if spec in MODEL_ALIASES or Path(spec).exists():
        return resolve_model(spec) if spec in MODEL_ALIASES else spec
    from .data import DATASETS, resolve_data_dir

    if spec in DATASETS:  # a named set given as a plain string (RIPPLe's --proxy-data sst2, say)
        root = resolve_data_dir(None)
        if root is not None and (root / spec).is_dir():
            return str(root / spec)
    return spec


_HASHES: dict[tuple[str, int, int], str] = {}


def content_hash(path: Path) -> str:
    """Content hash of a file or folder (names and bytes; a manifest excluded), cached per process by
    path, size and modification time: a plan hashes the same base model for many steps."""
    from .artifacts import hash_path

    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
        key = (str(path), sum(f.stat().st_size for f in files), max((f.stat().st_mtime_ns for f in files), default=0))
    if key not in _HASHES:
        _HASHES[key] = hash_path(path)
    return _HASHES[key]


_CORPORA: dict[str, Any] = {}


def _load_data(spec: Any):
    from .api import DataSpec

    spec = spec if isinstance(spec, DataSpec) else DataSpec(str(spec))
    key = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    if key not in _CORPORA:
        try:
            _CORPORA[key] = spec.load()
        except BdcliError as e:  # kept, so that a plan does not wait for the same unreachable data again
            _CORPORA[key] = e
    if isinstance(_CORPORA[key], Exception):
        raise _CORPORA[key]
    return _CORPORA[key]


# ---------------------------------------------------------------------------------------- execution


def resolve_refs(step: Step, outputs: dict[str, str | Path]) -> Step:
    """The step with each ``Ref`` input replaced by the output folder of the step it names."""
    from .api import DataSpec

    inputs = {}
    for name, value in step.inputs.items():
        if isinstance(value, Ref):
            if value.step not in outputs:
                raise UsageError(f"input {name!r} refers to step {value.step!r}, which has no output yet")
            path = str(outputs[value.step])
            value = DataSpec(path) if name in ("data", "asr_data") else path
        inputs[name] = value
    return Step(step.kind, step.name, step.config, inputs)


def execute(step: Step, out: str | Path, *, force: bool = False, resume: bool = False, lock_wait_s: float = 0):
    """Run one step with concrete inputs and publish its output folder at ``out``."""
    from . import api

    if any(isinstance(v, Ref) for v in step.inputs.values()):
        raise UsageError("execute() needs concrete inputs; resolve the step's references first (resolve_refs)")
    data = step.inputs.get("data")
    if data is not None and not isinstance(data, api.DataSpec):
        data = api.DataSpec(str(data))
    kw = {"force": force, "resume": resume, "lock_wait_s": lock_wait_s}
    cfg = step.config
    if step.kind == "poison":
        return api.poison(step.name, cfg, data, out, **kw)
    if step.kind == "attack":
        if "model" in step.inputs:
            cfg = dataclasses.replace(cfg, model=str(step.inputs["model"]))
        return api.attack(step.name, cfg, data, out, **kw)
    if step.kind == "defend":
        return api.defend(step.name, cfg, str(step.inputs["model"]), data, out, **kw)
    if step.kind == "evaluate":
        return api.evaluate(cfg, str(step.inputs["model"]), data, out, **kw)
    if step.kind == "probe":
        asr = step.inputs.get("asr_data")
        asr = asr if asr is None or isinstance(asr, api.DataSpec) else api.DataSpec(str(asr))
        return api.probe_sd(cfg, str(step.inputs["model"]), data, asr, out, **kw)
    raise UsageError(f"steps of kind {step.kind!r} are not executed by bdcli.steps.execute")


def run_from_file(step_file: str, out: str, resume: bool, lock_wait_s: float) -> int:
    """One step from its JSON form, as a runner's worker process runs it (bdcli/recipes/zygote.py)."""
    step = Step.from_json(json.loads(Path(step_file).read_text()))
    res = execute(step, out, resume=resume, lock_wait_s=lock_wait_s)
    print(json.dumps({"out": str(res.out), "reused": res.reused, "fingerprint": res.manifest.get("fingerprint")}))
    return 0
