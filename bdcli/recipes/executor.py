"""Where a plan's steps run. The runner only needs ``start`` / ``poll`` / ``stop``: a local pool of
worker processes now; a cluster executor (Ray, say) can stand behind the same interface, which is why a
step travels as JSON and shares no in-process state with the runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import BdcliError
from .memory import describe_kill


@dataclass
class Task:
    id: str
    step_json: dict
    out: Path
    log: Path
    progress: Path
    pid: int | None = None  # the step's process, once a local executor has started it


@dataclass
class Finished:
    task: Task
    returncode: int
    message: str  # the last line the step printed on failure, its summary on success
    peak_rss_mb: float | None = None  # the step's peak resident memory, where the executor measures it


class Executor(Protocol):
    slots: int
    local: bool  # its steps run on this machine, so this machine's free memory is theirs to share

    def start(self, task: Task) -> None: ...

    def poll(self) -> list[Finished]: ...

    def running(self) -> list[Task]: ...

    def stop(self) -> None: ...


class LocalProcessExecutor:
    """Each step in its own process, ``slots`` at a time, each given ``threads`` intra-op threads.

    The processes are forked from one server that imported torch and bdcli once (``zygote.py``): a step
    gets a fresh process, as isolated as ``python -m bdcli.steps``, without seconds of imports."""

    local = True

    def __init__(self, slots: int, threads: int, lock_wait_s: float = 3600, start_timeout_s: float = 300):
        self.slots, self.threads, self.lock_wait_s = slots, threads, lock_wait_s
        self.start_timeout_s = start_timeout_s
        self._tasks: dict[str, Task] = {}
        self._server: subprocess.Popen | None = None
        self._buf = b""

    def _ensure_server(self) -> subprocess.Popen:
        if self._server is None:
            import time

            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            self._server = subprocess.Popen([sys.executable, "-m", "bdcli.recipes.zygote"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, env=env)
            os.set_blocking(self._server.stdout.fileno(), False)
            deadline = time.monotonic() + self.start_timeout_s
            while not any(m.get("ready") for m in self._messages()):
                if self._server.poll() is not None or time.monotonic() > deadline:
                    raise BdcliError("the recipe runner's worker server did not start (python -m bdcli.recipes.zygote)")
                time.sleep(0.05)
        return self._server

    def _messages(self) -> list[dict]:
        try:
            chunk = self._server.stdout.read() if self._server else None
        except BlockingIOError:
            chunk = None
        if chunk:
            self._buf += chunk
        lines = self._buf.split(b"\n")
        self._buf = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]

    def start(self, task: Task) -> None:
        server = self._ensure_server()
        task.out.parent.mkdir(parents=True, exist_ok=True)
        task.log.parent.mkdir(parents=True, exist_ok=True)
        spec = task.log.with_suffix(".step.json")
        spec.write_text(json.dumps(task.step_json, indent=2))
        cmd = {"id": task.id, "spec": str(spec), "out": str(task.out), "log": str(task.log),
               "progress": str(task.progress), "threads": self.threads, "lock_wait_s": self.lock_wait_s}
        server.stdin.write((json.dumps(cmd) + "\n").encode())
        server.stdin.flush()
        self._tasks[task.id] = task

    def poll(self) -> list[Finished]:
        if self._server is None:
            return []
        done = []
        for msg in self._messages():
            if "rc" not in msg:  # a fork: the step's process id, for the runner's memory accounting
                if msg.get("id") in self._tasks:
                    self._tasks[msg["id"]].pid = msg.get("pid")
                continue
            task = self._tasks.pop(msg.get("id"), None)
            if task is None:
                continue
            rc, peak = int(msg["rc"]), msg.get("peak_rss_mb")
            lines = [ln for ln in task.log.read_text(errors="replace").splitlines() if ln.strip()] if task.log.exists() else []
            message = describe_kill(rc, peak) or (lines[-1] if lines else f"exit {rc}")
            done.append(Finished(task, rc, message if rc else "", peak))
        if self._tasks and self._server.poll() is not None:
            # The server died (killed from outside): its steps did not finish.
            for task in self._tasks.values():
                done.append(Finished(task, 1, "the worker server died while the step ran"))
            self._tasks.clear()
        return done

    def running(self) -> list[Task]:
        return list(self._tasks.values())

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            try:
                self._server.stdin.close()  # end of input: the server stops its children and exits
            except OSError:
                pass
            try:
                self._server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
        self._server = None
        self._tasks.clear()


def default_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))
