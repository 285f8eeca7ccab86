"""YAML recipes: read, apply a profile and ``--set`` overrides, validate into typed configs.

A recipe names the axes of a results table: data sets, seeds, attacks (each a small pipeline: poison,
optionally a clean model to start from, the attack, and in the transfer scenario the user's clean
fine-tune) and defenses, plus evaluation and the report (with the paper's own numbers). See
``recipes/README.md`` for the format; ``bdcli run RECIPE --dry-run`` shows what it expands to.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configs import build_config, convert
from ..errors import UsageError

TOP_LEVEL = ("name", "description", "paper", "notes", "datasets", "model", "scenario", "seeds", "target", "attacks",
             "defenses", "evaluate", "report", "profiles", "clean_reference")
ATTACK_PARTS = ("poison", "clean", "attack", "user_finetune")
SCENARIOS = ("outsourcing", "transfer")


@dataclass
class Component:
    """One step's component as the recipe configures it: the registered name and its typed config."""

    name: str
    config: Any


@dataclass
class AttackSpec:
    key: str  # the recipe's name for this attack column (badnets, ripple, ...)
    poison: Component
    attack: Component
    clean: Component | None = None  # a clean fine-tune the attack starts from (SOS, EP)
    user_finetune: Component | None = None  # transfer scenario: the user's clean fine-tune of the attacked model


@dataclass
class Recipe:
    name: str
    path: str
    datasets: list[str]
    model: str
    scenario: str
    seeds: list[int]
    attacks: list[AttackSpec]
    defenses: list[tuple[str, Component]]
    evaluate: Any  # EvalConfig
    clean_reference: bool = False
    description: str = ""
    paper: str = ""
    notes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the resolved document, for the manifest


def load_recipe(path: str | Path, profile: str | None = None, overrides: list[str] = ()) -> Recipe:
    """Read ``path``, apply ``profile`` then each ``key=value`` of ``overrides``, and validate."""
    doc = read_yaml(path)
    profiles = doc.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise UsageError(f"{path}: 'profiles' must be a mapping of profile name: overrides")
    if profile is not None:
        if profile not in profiles:
            raise UsageError(f"{path}: no profile {profile!r}{_nearest(profile, profiles)}; profiles: "
                             f"{', '.join(profiles) or 'none'}")
        for key, value in (profiles[profile] or {}).items():
            set_path(doc, str(key), value, f"profile {profile!r}")
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        set_path(doc, key.strip(), yaml.safe_load(value) if value.strip() else "", "--set")
    return validate(doc, str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe {path} does not exist" if not p.exists() else f"recipe {path} is not a file")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{path}: YAML syntax error{where}: {e.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a readable YAML file: {e}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a recipe is a YAML mapping, got {type(doc).__name__}")
    return doc


def set_path(doc: dict[str, Any], key: str, value: Any, origin: str) -> None:
    """Set ``a.b.c`` in ``doc``. Every part but the last must exist; the last may be new only inside a
    component's options (validation then checks it is a field of that component's config)."""
    parts = key.split(".")
    if not all(parts):
        raise UsageError(f"{origin}: bad key {key!r}")
    if len(parts) == 1 and parts[0] not in TOP_LEVEL:
        raise UsageError(f"{origin}: unknown recipe key {parts[0]!r}{_nearest(parts[0], TOP_LEVEL)}")
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[: i + 1])
            known = list(node) if isinstance(node, dict) else []
            raise UsageError(f"{origin}: the recipe has no {where!r}{_nearest(part, known)}")
        if node[part] is None:
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict):
        raise UsageError(f"{origin}: {'.'.join(parts[:-1])!r} is not a mapping")
    if len(parts) > 1 and parts[-1] not in node and not _is_component(parts[:-1]):
        raise UsageError(f"{origin}: the recipe has no {key!r}{_nearest(parts[-1], list(node))}")
    node[parts[-1]] = value


def _is_component(parts: list[str]) -> bool:
    # attacks.X.<part>, defenses.X, evaluate: mappings of a component's options, where a new key is a field.
    return (len(parts) == 3 and parts[0] == "attacks" and parts[2] in ATTACK_PARTS) or \
        (len(parts) == 2 and parts[0] == "defenses") or parts == ["evaluate"]


def _nearest(name: str, known) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate(doc: dict[str, Any], path: str) -> Recipe:
    doc = copy.deepcopy(doc)
    for key in doc:
        if key not in TOP_LEVEL:
            raise UsageError(f"{path}: unknown recipe key {key!r}{_nearest(key, TOP_LEVEL)}")
    for key in ("name", "datasets", "seeds", "attacks"):
        if key not in doc:
            raise UsageError(f"{path}: a recipe needs {key!r}")
    datasets = _list_of(doc["datasets"], str, f"{path}: datasets")
    seeds = _list_of(doc["seeds"], int, f"{path}: seeds")
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise UsageError(f"{path}: duplicate seeds {dup}")
    if len(set(datasets)) != len(datasets):
        raise UsageError(f"{path}: a data set is listed twice in datasets")
    scenario = str(doc.get("scenario", "outsourcing"))
    if scenario not in SCENARIOS:
        raise UsageError(f"{path}: scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    model = str(doc.get("model", "minilm"))
    target = doc.get("target", 1)

    attacks_doc = doc["attacks"] or {}
    defenses_doc = doc.get("defenses") or {}
    if not isinstance(attacks_doc, dict) or not isinstance(defenses_doc, dict):
        raise UsageError(f"{path}: attacks and defenses are mappings of column name: settings")
    # `false` drops a column (a profile's way to leave out what its budget cannot afford); null is the defaults.
    attacks_doc = {k: v for k, v in attacks_doc.items() if v is not False}
    defenses_doc = {k: v for k, v in defenses_doc.items() if v is not False}
    if not datasets or not seeds or not attacks_doc:
        empty = [k for k, v in (("datasets", datasets), ("seeds", seeds), ("attacks", attacks_doc)) if not v]
        raise UsageError(f"{path}: the matrix is empty ({', '.join(empty)} has no entry)")
    attacks = [_attack(key, spec, scenario, target, f"attacks.{key}") for key, spec in attacks_doc.items()]
    defenses = [(key, _component(spec, "defense", f"defenses.{key}", default_name=key)) for key, spec in defenses_doc.items()]

    from ..api import EvalConfig

    evaluate = build_config(EvalConfig, doc.get("evaluate") or {}, "evaluate")
    report = doc.get("report") or {}
    if not isinstance(report, dict):
        raise UsageError(f"{path}: report must be a mapping")
    return Recipe(
        name=str(doc["name"]), path=path, datasets=datasets, model=model, scenario=scenario, seeds=seeds,
        attacks=attacks, defenses=defenses, evaluate=evaluate, clean_reference=bool(doc.get("clean_reference", False)),
        description=str(doc.get("description", "")), paper=str(doc.get("paper", "")),
        notes=[str(n) for n in (doc.get("notes") or [])], report=report, raw=doc,
    )


def _list_of(value: Any, kind: type, where: str) -> list:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a list")
    return [convert(v, kind, where) for v in value]


def _attack(key: str, spec: Any, scenario: str, target: Any, where: str) -> AttackSpec:
    spec = spec or {}
    if not isinstance(spec, dict):
        raise UsageError(f"{where} must be a mapping with {', '.join(ATTACK_PARTS)}")
    for part in spec:
        if part not in ATTACK_PARTS:
            raise UsageError(f"{where}: unknown part {part!r}{_nearest(part, ATTACK_PARTS)}; an attack has "
                             f"{', '.join(ATTACK_PARTS)}")
    poison_doc = dict(spec.get("poison") or {})
    poison_doc.setdefault("target", target)
    poison = _component(poison_doc, "poisoner", f"{where}.poison", default_name=key.lower())
    user = spec.get("user_finetune")
    if user is None and scenario == "transfer":
        user = {}
    attack_doc = dict(spec.get("attack") or {})
    # What the attacker ships: a model for the user to fine-tune (transfer) when the pipeline has that
    # fine-tune, else the classifier itself, in the recipe's scenario.
    attack_doc.setdefault("scenario", "transfer" if user is not None else scenario)
    attack = _component(attack_doc, "attack", f"{where}.attack", default_name="finetune")
    clean = None
    if spec.get("clean") is not None:
        clean = _component({**spec["clean"], "name": "finetune"}, "attack", f"{where}.clean")
    user_finetune = None
    if user is not None:
        user_finetune = _component({**user, "name": "finetune", "scenario": scenario}, "attack", f"{where}.user_finetune")
    return AttackSpec(key, poison, attack, clean, user_finetune)


def _component(doc: Any, kind: str, where: str, default_name: str | None = None) -> Component:
    from ..registry import entry

    doc = dict(doc or {})
    name = str(doc.pop("name", default_name))
    if "seed" in doc:
        raise UsageError(f"{where}: seeds come from the recipe's 'seeds', not from a component")
    for key in ("model", "clean_model") if kind == "attack" else ():
        if key in doc:
            raise UsageError(f"{where}: the model an attack starts from is the recipe's 'model' (or its pipeline), "
                             f"not a {key!r} option")
    try:
        Config = entry(kind, name).Config
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    return Component(name, build_config(Config, doc, where))
