"""The artifact contract between commands: one output folder per command, written atomically, with a
``manifest.json`` that says how to reproduce it.

A command's body writes into a hidden temporary folder beside the target; only when it finished does the
folder get its manifest and get renamed into place, so a reader never sees a half-written result. The
manifest records the step itself (``bdcli.steps.Step``) and its ``fingerprint``, which lets a rerun with
the same inputs find the finished output instead of redoing it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import BdcliError, UsageError

MANIFEST = "manifest.json"


def hash_path(path: Path) -> str:
    """Content hash of a file, or of a folder's files (names and bytes, manifest excluded, so that a
    rerun that only rewrote times does not invalidate everything downstream)."""
    h = hashlib.sha256()
    path = Path(path)
    if path.is_file():
        files = [path]
        root = path.parent
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)
        root = path
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def describe_input(spec: str | Path) -> dict[str, Any]:
    """An input as the manifest records it: a local path with its content hash, or a name (a hub id or
    a named data set) that is resolved elsewhere."""
    p = Path(spec)
    if p.exists():
        return {"path": str(p.resolve()), "sha256": hash_path(p)}
    return {"name": str(spec)}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    import torch
    import transformers

    return {
        "bdcli": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def config_dict(config: Any) -> dict[str, Any]:
    from .steps import config_dict as _config_dict

    return _config_dict(config)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class StepResult:
    out: Path
    manifest: dict[str, Any]
    reused: bool


def run_step(
    out: str | Path,
    *,
    step: Any,
    command: str,
    config: Any,
    kind: str,
    body: Callable[[Path], dict[str, Any] | None],
    force: bool = False,
    resume: bool = False,
    lock_wait_s: float = 0,
) -> StepResult:
    """Run ``body(tmp_folder)`` and publish its folder at ``out`` with a manifest.

    ``step`` (a ``bdcli.steps.Step`` with concrete inputs) is what the output is a result of: its
    fingerprint decides reuse, and the manifest records it. ``config`` is the config as resolved
    against the inputs (a defense's scenario read from its victim, say), recorded beside it. ``body``
    returns extra manifest fields (``provenance``, summary figures). If ``out`` already holds a finished
    result with the same fingerprint, the body is not run. On any failure the temporary folder (and any
    parent folder this call created) is removed, so nothing half-written remains; training checkpoints
    stay (in a hidden folder beside ``out``) so that ``resume=True`` continues a killed run where it
    stopped. ``lock_wait_s`` > 0 waits that long for another run writing ``out`` (then reuses its
    result) instead of refusing at once.
    """
    from .steps import all_inputs, fingerprint, input_fingerprint

    out = Path(out)
    cfg = config_dict(config)
    fp = fingerprint(step)
    from .engine.distributed import world

    if not world().main:
        return _run_follower(out, fp, cfg, body, force, resume)
    described = {}
    for name, spec in all_inputs(step).items():
        path = getattr(spec, "data", spec)
        described[name] = {**describe_input(path), "fingerprint": input_fingerprint(spec, {})}

    # Folders this call creates are removed again if it fails (unless they hold a checkpoint), so a
    # bad input leaves nothing behind.
    created: list[Path] = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _output_lock(out, lock_wait_s):
            return _run_locked(out, step, command, cfg, described, fp, kind, body, force, resume)
    except BaseException:
        if not checkpoint_root(out, fp).exists():
            for d in created:
                try:
                    d.rmdir()
                except OSError:
                    pass
        raise


def _run_follower(out: Path, fp: str, cfg: dict, body, force: bool, resume: bool) -> StepResult:
    """A torchrun rank other than 0: it trains its share (the engine syncs it with rank 0) but
    publishes nothing and writes no checkpoint; rank 0 alone writes ``out``. It may read rank 0's
    checkpoints to resume. It makes rank 0's reuse-or-refuse decision too, so that it never waits
    for a rank 0 that will not train."""
    from .engine.checkpoint import checkpointing

    if out.exists() and not force:
        old = read_manifest(out)
        if old is not None and old.get("fingerprint") == fp:
            return StepResult(out, old, reused=True)
        raise UsageError(f"output folder {out} already holds a different result; pass --force to replace it")

    with tempfile.TemporaryDirectory(prefix="bdcli-rank-") as tmp:
        with checkpointing(checkpoint_root(out, fp), int(cfg.get("checkpoint_every") or 0), resume):
            extra = body(Path(tmp)) or {}
    return StepResult(out, {"fingerprint": fp, **extra}, reused=False)


def checkpoint_root(out: Path, fp: str) -> Path:
    # Keyed by fingerprint: a checkpoint is only ever resumed by the very same computation.
    return out.parent / f".{out.name}.ckpt-{fp[:16]}"


class _output_lock:
    """An advisory lock beside ``out``: a second run writing to the same output is refused rather than
    left to race the first one's rename."""

    def __init__(self, out: Path, wait_s: float = 0):
        self.out, self.wait_s = out, wait_s
        self.path = out.parent / f".{out.name}.lock"
        self.fh = None

    def __enter__(self) -> None:
        import time

        deadline = time.monotonic() + self.wait_s
        while True:
            self.fh = open(self.path, "w")
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                self.fh.close()
                self.fh = None
            if time.monotonic() >= deadline:
                waited = f" (waited {self.wait_s:.0f} s)" if self.wait_s else ""
                raise BdcliError(f"another bdcli run is writing {self.out}{waited}; wait for it to finish or choose "
                                 "another --out")
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def _run_locked(out, step, command, cfg, described, fp, kind, body, force, resume) -> StepResult:
    from .engine.checkpoint import checkpointing

    if out.exists():
        old = read_manifest(out)
        if old is not None and old.get("fingerprint") == fp and not force:
            return StepResult(out, old, reused=True)
        if not force:
            why = "a different result" if old is not None else "files bdcli did not write"
            raise UsageError(f"output folder {out} already holds {why}; pass --force to replace it")
        if old is None and any(out.iterdir()):
            # --force replaces bdcli outputs only; never delete a user's unrelated folder.
            raise UsageError(f"refusing to replace {out}: it is not a bdcli output folder")

    # Holding the lock means no other run writes here, so temporary folders beside ``out`` are what a
    # killed run (SIGKILL, power loss) could not clean up: sweep them.
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    ckpt = checkpoint_root(out, fp)
    if not resume and ckpt.exists():
        shutil.rmtree(ckpt)  # an explicit fresh start
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    started = now()
    try:
        with checkpointing(ckpt, int(cfg.get("checkpoint_every") or 0), resume):
            extra = body(tmp) or {}
        manifest = {
            "bdcli_manifest": 1,
            "kind": kind,
            "command": command,
            "step": step.to_json(),
            "config": cfg,
            "inputs": described,
            "fingerprint": fp,
            "upstream": {name: d["fingerprint"] for name, d in described.items()},
            "seed": cfg.get("seed"),
            "device": extra.pop("device", cfg.get("device")),
            "versions": versions(),
            "started": started,
            "finished": now(),
            **extra,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
        shutil.rmtree(ckpt, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return StepResult(out, manifest, reused=False)


def provenance_of(folder: str | Path) -> dict[str, Any]:
    """What an earlier bdcli output says it holds (method, attack, data set, scenario); empty for a
    folder bdcli did not write."""
    m = read_manifest(Path(folder))
    return dict(m.get("provenance", {})) if m else {}
