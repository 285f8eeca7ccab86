"""The catalog: every component has an entry, help for every option, and a version that moves with its code."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bdcli.cli.fields import FIELD_HELP
from bdcli.registry import LOCK, entries, source_digests
from tests.helpers import bdcli


def test_component_versions_move_with_their_code():
    lock = json.loads((Path(__file__).resolve().parent.parent / "bdcli" / LOCK).read_text())
    now = source_digests()
    stale = []
    for key, cur in now.items():
        old = lock.get(key)
        if old is None:
            stale.append(f"{key} is new: add it to the lock")
        elif cur["digest"] != old["digest"] and cur["version"] == old["version"]:
            stale.append(f"{key} changed (digest {old['digest']} -> {cur['digest']}) at version {cur['version']}")
        elif cur["version"] != old["version"] and cur["digest"] == old["digest"]:
            stale.append(f"{key}: version {old['version']} -> {cur['version']} without a code change")
    gone = sorted(set(lock) - set(now))
    assert not stale and not gone, (
        "; ".join(stale + [f"{g} is in the lock but not registered" for g in gone])
        + ". If the change alters results, bump the component's version (its register(..., version=N)) or "
        "bdcli.steps.ENGINE_VERSION for shared code, so that no result of the old code is reused; then, either "
        "way, run `python -m bdcli.registry --update-lock`."
    )


def test_every_option_of_every_component_has_help():
    missing = []
    for e in entries():
        if e.Config is None:
            continue
        for f in dataclasses.fields(e.Config):
            if not (f.metadata.get("help") or FIELD_HELP.get(f.name)):
                missing.append(f"{e.kind} {e.name}: {f.name}")
    assert not missing, missing


def test_list_prints_the_catalog():
    res = bdcli("list", "defense")
    names = [line.split()[1] for line in res.output.splitlines()]
    assert names[:4] == ["ft", "fth", "freelb", "fine-pruning"] and "maxent" in names and "gba" in names
    assert "v1" in res.output and "FP" in res.output
    assert bdcli("list", "nonsense", ok=False).exit_code == 2
