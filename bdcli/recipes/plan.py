"""Expand a recipe into a graph of steps. Axes multiply as a matrix (data set x seed x attack x
defense); steps with the same fingerprint are one node, so a victim serves every defense of its cell and
one clean model serves SOS and EP."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import BdcliError, UsageError
from ..steps import Ref, Step, fingerprint
from .schema import Component, Recipe


@dataclass
class Node:
    id: str
    step: Step
    fingerprint: str
    deps: list[str]
    cells: list[str] = field(default_factory=list)  # the table cells (dataset/attack/defense/seed) it serves
    aliases: list[str] = field(default_factory=list)  # ids of the same step reached from other cells


@dataclass
class Plan:
    recipe: Recipe
    nodes: dict[str, Node]  # by id, in topological order
    unreadable: list[str] = field(default_factory=list)  # why a dry run could not read some data

    @property
    def shared(self) -> list[Node]:
        return [n for n in self.nodes.values() if len(n.cells) > 1]

    def folder_name(self, node: Node) -> str:
        return node.fingerprint[:20]


def expand(recipe: Recipe, only: str | None = None, dry_run: bool = False) -> Plan:
    """The plan; with ``dry_run``, data that cannot be read (no data directory here, say) is noted in
    ``Plan.unreadable`` instead of stopping the expansion."""
    from ..api import DataSpec

    builder = _Builder([] if dry_run else None)
    for dataset in recipe.datasets:
        data = DataSpec(dataset)
        for seed in recipe.seeds:
            for atk in recipe.attacks:
                base = f"{dataset}/{atk.key}/s{seed}"
                cells = [f"{base}/victim"] + [f"{base}/{key}" for key, _ in recipe.defenses]
                if recipe.clean_reference:
                    cells.append(f"{base}/clean")
                if only is not None:
                    cells = [c for c in cells if fnmatch.fnmatch(c, only)]
                if not cells:
                    continue
                _cell(builder, recipe, atk, data, dataset, seed, base, cells)
    if not builder.nodes:
        raise UsageError(f"--only {only!r} matches no cell of the recipe" if only else "the recipe expands to no step")
    return Plan(recipe, builder.nodes, sorted(set(builder.unreadable or [])))


def _cell(b: "_Builder", recipe: Recipe, atk, data, dataset: str, seed: int, base: str, cells: list[str]) -> None:
    model = recipe.model
    poisoned = b.add(f"{base}/poison", _step("poison", atk.poison, seed, {"data": data}), cells)
    start = model
    if atk.clean is not None or (recipe.clean_reference and any(c.endswith("/clean") for c in cells)):
        clean_comp = atk.clean or Component("finetune", _default_finetune(recipe))
        clean = b.add(f"{dataset}/clean/s{seed}", _step("attack", clean_comp, seed, {"data": data, "model": model}), cells)
        if atk.clean is not None:
            start = Ref(clean)
        if recipe.clean_reference and any(c.endswith("/clean") for c in cells):
            b.add(f"{base}/eval-clean", _eval(recipe, seed, Ref(clean), Ref(poisoned)), [f"{base}/clean"])
    attacked = b.add(f"{base}/attack", _step("attack", atk.attack, seed, {"data": Ref(poisoned), "model": start}), cells)
    victim = attacked
    if atk.user_finetune is not None:
        victim = b.add(f"{base}/victim", _step("attack", atk.user_finetune, seed, {"data": data, "model": Ref(attacked)}), cells)
    if f"{base}/victim" in cells:
        b.add(f"{base}/eval-victim", _eval(recipe, seed, Ref(victim), Ref(poisoned)), [f"{base}/victim"])
    for key, comp in recipe.defenses:
        cell = f"{base}/{key}"
        if cell not in cells:
            continue
        defended = b.add(cell + "/defend", _step("defend", comp, seed, {"model": Ref(victim), "data": data}), [cell])
        label = comp.config.label if hasattr(comp.config, "label") else None
        b.add(cell + "/eval", _eval(recipe, seed, Ref(defended), Ref(poisoned), label=label or key), [cell])


def _default_finetune(recipe: Recipe):
    from ..attacks import FinetuneAttackConfig

    return FinetuneAttackConfig(scenario=recipe.scenario)


def _step(kind: str, comp: Component, seed: int, inputs: dict[str, Any]) -> Step:
    cfg = comp.config
    if dataclasses.is_dataclass(cfg) and any(f.name == "seed" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, seed=seed)
    return Step(kind, comp.name, cfg, inputs)


def _eval(recipe: Recipe, seed: int, model: Ref, data: Ref, label: str | None = None) -> Step:
    cfg = dataclasses.replace(recipe.evaluate, seed=seed, label=label)
    return Step("evaluate", "standard", cfg, {"model": model, "data": data})


class _Builder:
    def __init__(self, unreadable: list[str] | None = None) -> None:
        self.unreadable = unreadable
        self.nodes: dict[str, Node] = {}
        self.by_fp: dict[str, str] = {}
        self.alias: dict[str, str] = {}

    def add(self, id: str, step: Step, cells: list[str]) -> str:
        """Add ``step`` (its Ref inputs naming ids already added); returns the id that holds it."""
        refs = {}
        for value in step.inputs.values():
            if isinstance(value, Ref):
                refs[value.step] = self.nodes[value.step].fingerprint
        fp = fingerprint(step, refs, self.unreadable)
        if fp in self.by_fp:
            node = self.nodes[self.by_fp[fp]]
            node.cells += [c for c in cells if c not in node.cells]
            if id != node.id and id not in node.aliases:
                node.aliases.append(id)
            return node.id
        if id in self.nodes:
            raise UsageError(f"two different steps would share the id {id!r}; give the recipe's columns distinct names")
        self.nodes[id] = Node(id, step, fp, sorted(refs), list(cells))
        self.by_fp[fp] = id
        return id


# ------------------------------------------------------------------------------------------ estimates


def estimate_steps(plan: Plan, unknown: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """Optimiser steps each training node will take, as (low, high): most are exact; a Stop Distance
    stage stops somewhere between its floor and its budget. A training node whose data cannot be read
    is left out, with the reason in ``unknown`` (by node id) when given, and raises otherwise."""
    rows: dict[str, int] = {}
    poisoned: dict[str, int] = {}  # poison node -> the poisoned rows among its training rows
    why: dict[str, str] = {}
    out: dict[str, tuple[int, int]] = {}
    for node in plan.nodes.values():
        step = node.step
        data = step.inputs.get("data")
        n = None
        if isinstance(data, Ref):
            n = rows.get(data.step)
            if data.step in why:
                why[node.id] = why[data.step]
        elif data is not None:
            from ..steps import _load_data

            try:
                n = len(_load_data(data).split("train"))
            except BdcliError as e:
                if unknown is None:
                    raise
                why[node.id] = str(e)
        if step.kind == "poison" and n:
            n, poisoned[node.id] = step.config.planned_rows(n)
        elif getattr(step.config, "trains_on", None) == "poisoned" and isinstance(data, Ref):
            n = poisoned.get(data.step, n)
        rows[node.id] = n if n is not None else 0
        if step.kind in ("attack", "defend"):
            if n:
                out[node.id] = _training_steps(step, n, plan.recipe.scenario)
            elif node.id in why and unknown is not None:
                unknown[node.id] = why[node.id]
    return out


def _training_steps(step: Step, n_rows: int, scenario: str) -> tuple[int, int]:
    cfg = step.config
    if step.kind == "defend":
        from ..defenses import SCENARIO_CLEAN_FRACTION

        # A defense without a scenario of its own takes its victim's, which in a recipe is the recipe's.
        frac = cfg.clean_fraction if cfg.clean_fraction is not None else SCENARIO_CLEAN_FRACTION[cfg.scenario or scenario]
        n_rows = max(1, round(frac * n_rows))
    main = cfg.max_steps or math.ceil(n_rows / cfg.batch_size) * cfg.epochs
    if getattr(cfg, "retrain", True) is False:  # Fine-Pruning that only prunes
        main = 0
    low = high = int(math.ceil(main))
    if hasattr(cfg, "maxent_max_steps"):  # a Stop Distance stage before the re-training
        low += int(getattr(cfg, "maxent_min_steps", 0) or 0)
        high += int(cfg.maxent_max_steps)
    if hasattr(cfg, "nad_teacher_epochs"):
        teacher = cfg.max_steps or math.ceil(n_rows / cfg.batch_size) * cfg.nad_teacher_epochs
        low, high = low + int(teacher), high + int(teacher)
    head = int(getattr(cfg, "mlm_head_steps", 0) or 0)  # GBA's masked-LM head, trained first
    return low + head, high + head
