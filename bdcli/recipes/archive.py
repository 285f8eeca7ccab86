"""A recipe store's results without its weights and data, small enough to commit.

A store holds model weights and poisoned data sets (hundreds of MB a step) and lives on the machine that
ran it. ``bdcli archive STORE DEST`` copies what the report and its figures read: the store's
``plan.json`` and, for each finished step of that plan, its manifest (config, inputs, versions, the
training summary) and the small results beside it (metrics, trigger RMSE, geometry, dynamics). So
``bdcli report DEST --recipe R`` regenerates a table on any machine, and a later run of the same recipe
(more seeds, another data set, in a fresh store) is archived into the same DEST to extend it: the plans
are merged, steps already there are kept, and a step whose file differs from the archived one (the same
fingerprint with other numbers: another thread count or machine) is refused unless ``replace``. A step
that only ran again (a deterministic poison step a fresh store redoes) differs in when, where and how fast
it ran, not in what it made: those files count as the same and the archived ones stay.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BdcliError, UsageError

PLAN = "plan.json"
STEP_FOLDER = re.compile(r"steps/[0-9a-f]{8,64}")
# What a report, its figures and a reader checking provenance need; never weights, data or tokenizers.
# Keys that say when, where or how fast a step ran: a rerun that made the same thing differs only in these.
RUN_ONLY = frozenset({"started", "finished", "git_commit", "seconds", "samples_per_s", "resumed_from"})
STORE_PATH = re.compile(r"^.*/(steps/[0-9a-f]{8,64})$")
KEPT = ("manifest.json", "metrics.json", "trigger_rmse.json", "geometry.json", "probe.json", "dynamics.csv")


@dataclass
class ArchiveSummary:
    steps: int = 0  # finished steps of the plan found in the store
    new: list[str] = field(default_factory=list)  # node ids whose files were copied
    kept: list[str] = field(default_factory=list)  # node ids already archived, identical
    replaced: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # archived node ids the store's plan reran with other settings
    unfinished: list[str] = field(default_factory=list)  # planned, no manifest in the store


def read_plan(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BdcliError(f"{path} is not a readable plan: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise BdcliError(f"{path} is not a bdcli run plan (no 'nodes' list)")
    for node in doc["nodes"]:
        # A plan names the folders files are copied from and to: only the store's own step folders.
        if not (isinstance(node, dict) and isinstance(node.get("id"), str) and isinstance(node.get("fingerprint"), str)
                and (node.get("folder") is None or STEP_FOLDER.fullmatch(str(node["folder"])))):
            raise BdcliError(f"{path} is not a bdcli run plan: a node without an id, a fingerprint or a steps/<hash> folder")
    return doc


def merge_plans(old: dict[str, Any], new: dict[str, Any], where: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The new plan's nodes, then the old plan's that it does not hold; and the old nodes it supersedes.

    A node of the old plan is superseded when the new plan holds its id with another fingerprint (the same
    cell rerun with other settings or newer code), and so is every old node that read a superseded one:
    kept, they would put one victim's row beside defenses of another, or two victims in one cell."""
    if old.get("recipe") != new.get("recipe"):
        raise UsageError(
            f"{where} holds recipe {old.get('recipe')!r}, not {new.get('recipe')!r}: archive each recipe into its own folder"
        )
    known = {n["fingerprint"] for n in new["nodes"]}
    earlier = [n for n in old["nodes"] if n["fingerprint"] not in known]
    ids = {n["id"] for n in new["nodes"]}
    stale = {n["id"] for n in earlier if n["id"] in ids}
    grew = True
    while grew:
        more = {n["id"] for n in earlier if n["id"] not in stale and stale.intersection(n.get("deps") or ())}
        stale |= more
        grew = bool(more)
    superseded = [n for n in earlier if n["id"] in stale]
    # The latest plan's order first (the report reads steps in plan order), then what only the old plan had.
    nodes = new["nodes"] + [n for n in earlier if n["id"] not in stale]
    resolved = dict(new.get("resolved") or {})
    seeds = [*((old.get("resolved") or {}).get("seeds") or []), *(resolved.get("seeds") or [])]
    if seeds:
        resolved["seeds"] = sorted(set(seeds), key=seeds.index)  # every seed the archive now holds
    return {**new, "resolved": resolved, "nodes": nodes}, superseded


def _what_it_made(value: Any) -> Any:
    """A result file's JSON less ``RUN_ONLY`` keys, with store paths cut to their step folder."""
    if isinstance(value, dict):
        return {k: _what_it_made(v) for k, v in value.items() if k not in RUN_ONLY}
    if isinstance(value, list):
        return [_what_it_made(v) for v in value]
    if isinstance(value, str):
        return STORE_PATH.sub(r"\1", value)
    return value


def same_result(name: str, archived: bytes, new: bytes) -> bool:
    """Whether two versions of a step's file ``name`` hold the same result (see the module doc)."""
    if archived == new:
        return True
    if not name.endswith(".json"):
        return False
    try:
        return _what_it_made(json.loads(archived)) == _what_it_made(json.loads(new))
    except ValueError:
        return False


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a kill mid-copy leaves the old file or the new one, never half of one


def archive_store(store: Path, dest: Path, replace: bool = False) -> ArchiveSummary:
    """Copy ``store``'s plan and its finished steps' small files into ``dest`` (see the module doc).

    Every conflict is found before anything is written, so a refused archive leaves ``dest`` as it was."""
    store, dest = Path(store), Path(dest)
    if not (store / PLAN).is_file():
        raise UsageError(f"{store} is not a recipe store: it has no {PLAN} (bdcli run --out writes one)")
    if dest.resolve() == store.resolve():
        raise UsageError("the archive must be another folder than the store")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a folder")
    plan = read_plan(store / PLAN)
    merged, superseded = merge_plans(read_plan(dest / PLAN), plan, dest) if (dest / PLAN).exists() else (plan, [])

    summary = ArchiveSummary()
    copies: list[tuple[Path, bytes]] = []
    conflicts: list[str] = []
    for node in plan["nodes"]:
        folder = node.get("folder")
        if not folder or not (store / folder / "manifest.json").is_file():
            summary.unfinished.append(node.get("id", "?"))
            continue
        summary.steps += 1
        changed = differs = False
        for name in KEPT:
            src = store / folder / name
            if not src.is_file():
                continue
            data, target = src.read_bytes(), dest / folder / name
            if target.exists():
                if same_result(name, target.read_bytes(), data):
                    continue
                differs = True
                if not replace:
                    conflicts.append(f"{node['id']} ({name})")
                    continue
            copies.append((target, data))
            changed = True
        if changed:
            (summary.replaced if differs else summary.new).append(node["id"])
        else:
            summary.kept.append(node["id"])
    if conflicts:
        raise BdcliError(
            f"{dest} already holds other results in {len(conflicts)} files of these steps, e.g. {conflicts[0]} "
            "(same fingerprint, other numbers: another thread count or machine); pass --replace to take the new ones"
        )
    for target, data in copies:
        _write(target, data)
    _write(dest / PLAN, (json.dumps(merged, indent=1) + "\n").encode("utf-8"))
    # The plan no longer names them: their files go too, so that a committed archive holds what it reports.
    summary.superseded = [n["id"] for n in superseded]
    in_use = {n.get("folder") for n in merged["nodes"]}
    for folder in {n.get("folder") for n in superseded} - in_use - {None}:
        for name in KEPT:
            (dest / folder / name).unlink(missing_ok=True)
        try:
            (dest / folder).rmdir()
        except OSError:
            pass  # something else lives there; never remove what the archive did not write
    return summary
