"""Run a plan: finished steps are found by fingerprint in the store under ``--out`` (so a killed run
resumes with nothing finished redone), independent steps run in parallel, a failing step stops its
descendants while the rest go on, and a live view shows what is done, running and queued."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artifacts import read_manifest
from ..errors import BdcliError
from .archive import PLAN, merge_plans, read_plan
from .executor import Executor, Task
from .memory import PeakLog, Running, fits, meminfo_mb, rss_mb
from .plan import Node, Plan, estimate_steps

DONE, RUNNING, QUEUED, FAILED, SKIPPED = "done", "running", "queued", "failed", "skipped"


@dataclass
class RunSummary:
    out: Path
    status: dict[str, str]
    reused: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # id -> message
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # id -> the step's peak resident memory

    @property
    def ok(self) -> bool:
        return not self.failed


def step_folder(out: Path, node: Node) -> Path:
    return Path(out) / "steps" / node.fingerprint[:20]


def is_done(out: Path, node: Node) -> bool:
    m = read_manifest(step_folder(out, node))
    return bool(m) and m.get("fingerprint") == node.fingerprint


def write_plan(plan: Plan, out: Path) -> list[str]:
    """``plan.json``: every node with its step, fingerprint, folder and the cells it serves.

    A store that already holds a plan of the same recipe keeps its nodes after the new ones: runs of
    one recipe with ``--only`` subsets or more seeds fill one store, and its plan (which ``bdcli
    archive`` and the report's row order read) must name all of them, not only the last run's. Returns
    the ids of earlier nodes the new plan supersedes (see ``merge_plans``): their folders stay on disk,
    unnamed, so that going back to the earlier settings reuses them."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "recipe": plan.recipe.name,
        "recipe_path": plan.recipe.path,
        "resolved": plan.recipe.raw,
        "nodes": [{"id": n.id, "fingerprint": n.fingerprint, "folder": str(step_folder(out, n).relative_to(out)),
                   "deps": n.deps, "cells": n.cells, "aliases": n.aliases, "step": n.step.to_json()}
                  for n in plan.nodes.values()],
    }
    doc = json.loads(json.dumps(doc, default=str))
    try:
        earlier = read_plan(out / PLAN) if (out / PLAN).is_file() else None
    except BdcliError:
        earlier = None  # not a plan this tool wrote: the new one takes its place
    superseded: list[dict] = []
    if earlier is not None and earlier.get("recipe") == doc["recipe"]:
        doc, superseded = merge_plans(earlier, doc, out)
    tmp = out / ".plan.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out / PLAN)
    return [n["id"] for n in superseded]


def describe_plan(plan: Plan, out: Path | None) -> str:
    """The dry-run text: each step with its state, the shared steps, and the training it will cost."""
    unknown: dict[str, str] = {}
    est = estimate_steps(plan, unknown)
    lines, todo_low, todo_high, n_done = [], 0, 0, 0
    peaks = PeakLog(out / "logs") if out is not None else None
    for node in plan.nodes.values():
        done = out is not None and is_done(out, node)
        n_done += done
        low, high = est.get(node.id, (0, 0))
        if not done:
            todo_low, todo_high = todo_low + low, todo_high + high
        cost = "" if node.id not in est else (f"  {low} steps" if low == high else f"  {low}-{high} steps")
        shared = f"  shared by {len(node.cells)} cells" if len(node.cells) > 1 else ""
        peak = peaks.estimate(node.id) if peaks and not done else None
        memory = f"  peak {peak / 1024:.1f} GB (measured)" if peak else ""
        lines.append(f"  [{'done' if done else 'todo'}] {node.id}: {node.step.kind} {node.step.name}{cost}{shared}{memory}")
    n = len(plan.nodes)
    reached = sum(1 + len(nd.aliases) for nd in plan.nodes.values())
    head = [
        f"recipe {plan.recipe.name}: {len(plan.recipe.datasets)} data set(s) x {len(plan.recipe.seeds)} seed(s) x "
        f"{len(plan.recipe.attacks)} attack(s) x {len(plan.recipe.defenses)} defense(s)",
        f"{n} steps ({reached - n} reuses of shared steps; {len(plan.shared)} steps serve several cells), "
        f"{n_done} already done, {n - n_done} to run",
        "training steps to run: " + (f"{todo_low}" if todo_low == todo_high else f"{todo_low} to {todo_high}")
        + (f" and those of {len(unknown)} step(s) whose data could not be read" if unknown else "")
        + " (optimiser steps; a Stop Distance stage stops between its floor and its budget)",
    ]
    why = sorted(set(unknown.values()) | set(plan.unreadable))
    notes = [f"not readable here (steps that read it are counted as to run): {w}" for w in why]
    return "\n".join(head + notes + lines)


def run_plan(plan: Plan, out: Path, executor: Executor, *, on_event: Callable[[str], None] | None = None,
             live: bool = False, timeout_s: float | None = None) -> RunSummary:
    out = Path(out)
    superseded = write_plan(plan, out)
    start = time.monotonic()
    status = {id: (DONE if is_done(out, n) else QUEUED) for id, n in plan.nodes.items()}
    reused = [id for id, s in status.items() if s == DONE]
    summary = RunSummary(out, status, reused)
    children: dict[str, list[str]] = {id: [] for id in plan.nodes}
    for node in plan.nodes.values():
        for d in node.deps:
            children[d].append(node.id)
    started: dict[str, float] = {}
    peaks = PeakLog(out / "logs")
    held: set[str] = set()  # steps kept back for memory, said once each
    say = on_event or (lambda msg: None)
    if superseded:
        say(f"note     this run reruns {len(superseded)} steps of an earlier run in {out} with other settings "
            f"(e.g. {superseded[0]}); the store's plan and its report take the new ones")
    view = _LiveView(plan, status, executor, out) if live else None

    def skip_descendants(id: str) -> None:
        for c in children[id]:
            if status[c] == QUEUED:
                status[c] = SKIPPED
                skip_descendants(c)

    try:
        if view:
            view.start()
        while True:
            for fin in executor.poll():
                id = fin.task.id
                summary.step_seconds[id] = round(time.monotonic() - started[id], 2)
                if fin.peak_rss_mb:
                    summary.peak_rss_mb[id] = fin.peak_rss_mb
                    peaks.record(id, fin.peak_rss_mb, fin.returncode)
                if fin.returncode == 0:
                    status[id] = DONE
                    say(f"done     {id} ({summary.step_seconds[id]:.1f} s)")
                    for w in step_warnings(out, plan.nodes[id]):
                        say(f"warning  {id}: {w}")
                else:
                    status[id] = FAILED
                    summary.failed[id] = fin.message
                    say(f"FAILED   {id}: {fin.message} (log: {fin.task.log})")
                    skip_descendants(id)
            ready = [id for id, s in status.items()
                     if s == QUEUED and all(status[d] == DONE for d in plan.nodes[id].deps)]
            for id in ready:
                if len(executor.running()) >= executor.slots:
                    break
                if not _fits_now(id, executor, peaks, held, say):
                    continue
                node = plan.nodes[id]
                step = _concrete(node, plan, out)
                folder = step_folder(out, node)
                executor.start(Task(id, step.to_json(), folder, out / "logs" / f"{folder.name}.log",
                                    out / "logs" / f"{folder.name}.progress"))
                status[id] = RUNNING
                started[id] = time.monotonic()
                say(f"start    {id}: {node.step.kind} {node.step.name}")
            if not any(s in (RUNNING, QUEUED) for s in status.values()):
                break
            if not executor.running() and not ready:
                break  # nothing runnable is left: every queued step waits on a failed one
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                executor.stop()
                for id, s in status.items():
                    if s in (RUNNING, QUEUED):
                        summary.failed[id] = f"stopped: the run's --timeout of {timeout_s:.0f} s was reached"
                        status[id] = FAILED
                break
            if view:
                view.refresh()
            time.sleep(0.2)
    except BaseException:
        executor.stop()
        raise
    finally:
        if view:
            view.stop()
    summary.seconds = round(time.monotonic() - start, 2)
    return summary


def _fits_now(id: str, executor: Executor, peaks: PeakLog, held: set[str], say: Callable[[str], None]) -> bool:
    """Whether step ``id`` may start beside the running steps, by the memory it took before (memory.py)."""
    need = peaks.estimate(id)
    if need is None or not getattr(executor, "local", False):
        return True
    mem = meminfo_mb()
    if mem is None:
        return True
    running = [Running(peaks.estimate(t.id), rss_mb(t.pid)) for t in executor.running()]
    if fits(need, running, *mem):
        held.discard(id)
        return True
    if id not in held:
        held.add(id)
        say(f"wait     {id}: it took {need / 1024:.1f} GB before and {mem[1] / 1024:.1f} GB are free beside "
            f"{len(running)} running step(s); it starts when they fit")
    return False


def _concrete(node: Node, plan: Plan, out: Path):
    from ..steps import resolve_refs

    outputs = {id: step_folder(out, n) for id, n in plan.nodes.items()}
    return resolve_refs(node.step, outputs)


class _LiveView:
    """A rich live table on stderr: counts by state and the running steps with their progress."""

    def __init__(self, plan: Plan, status: dict[str, str], executor: Executor, out: Path):
        from rich.console import Console
        from rich.live import Live

        self.plan, self.status, self.executor, self.out = plan, status, executor, out
        self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)

    def start(self) -> None:
        self.live.start()
        self.refresh()

    def stop(self) -> None:
        self.refresh()
        self.live.stop()

    def refresh(self) -> None:
        from rich.table import Table

        counts = {s: list(self.status.values()).count(s) for s in (DONE, RUNNING, QUEUED, FAILED, SKIPPED)}
        table = Table(title=f"{self.plan.recipe.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        table.add_column("running step")
        table.add_column("progress", justify="right")
        for task in self.executor.running():
            table.add_row(task.id, _progress_text(task.progress))
        self.live.update(table)


def _progress_text(path: Path) -> str:
    try:
        p = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    total = f"/{p['total']}" if p.get("total") else ""
    return f"{p.get('desc', '')} {p.get('n', 0)}{total} {p.get('info', '')}".strip()


def print_event(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def step_warnings(out: Path, node: Node) -> list[str]:
    """The warnings a finished step wrote into its manifest (a model that never learned its task, say)."""
    summary = (read_manifest(step_folder(out, node)) or {}).get("summary")
    return [str(w) for w in summary.get("warnings", [])] if isinstance(summary, dict) else []


def plan_warnings(plan: Plan, out: Path) -> list[str]:
    """Every finished step's warnings, each sentence once with the steps that gave it, for a report's notes:
    a recipe run prints them as they come, a report made later must still say them."""
    by_message: dict[str, list[str]] = {}
    for id, node in plan.nodes.items():
        for w in step_warnings(out, node):
            by_message.setdefault(w, []).append(id)
    return [f"{ids[0]}" + (f" and {len(ids) - 1} more step(s)" if len(ids) > 1 else "") + f": {w}"
            for w, ids in by_message.items()]


def gather_records(plan: Plan, out: Path) -> list[dict[str, Any]]:
    """The metrics of every finished evaluation node of the plan."""
    records = []
    for node in plan.nodes.values():
        if node.step.kind != "evaluate":
            continue
        f = step_folder(out, node) / "metrics.json"
        if f.exists():
            records.append({**json.loads(f.read_text()), "path": str(f)})
    return records
