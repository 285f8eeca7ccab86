"""Recipe steps on a Ray cluster, behind the runner's executor interface (``start`` / ``poll`` / ``stop``).

Each slot is a Ray actor that holds the local executor's fork server (``zygote.py``) on its node: the actor
imports torch once, and every step still runs in a fresh forked process with its own threads and RNG. A
step travels as JSON and writes its output folder, log and progress into the store under ``--out``, so
the store must be a path that the driver and every worker node see alike (a shared file system): the
executor refuses to start when a node cannot see it. The runner's semantics do not change: outputs are
found by fingerprint (a killed run resumes), and a failing step stops only its descendants.

``address``: ``local`` starts a Ray instance inside this process (and stops it at the end); ``auto``
joins the cluster this machine belongs to (``ray start`` ran here); ``host:port`` joins a cluster's head
(its GCS address); ``ray://host:port`` goes through the Ray Client server.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from ..errors import BdcliError, UsageError
from .executor import Finished, Task

# What a worker's environment takes from the driver's: where named data sets and models are, offline
# switches, and the Python path that finds bdcli.
_ENV_PREFIXES = ("BDCLI_", "HF_", "TRANSFORMERS_")
_ENV_NAMES = ("PYTHONPATH",)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'bdcli[dist]'") from None
    return ray


def check_address(address: str) -> str:
    address = (address or "").strip()
    if not address:
        raise UsageError("--executor ray needs --address: local, auto, host:port or ray://host:port")
    if address in ("local", "auto") or address.startswith("ray://"):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--address {address!r} is not local, auto, host:port or ray://host:port")
    return address


class _StepWorker:
    """One slot on some node: a fork server there, one step at a time."""

    def __init__(self, threads: int, lock_wait_s: float, env: dict[str, str], cwd: str):
        os.environ.update(env)
        # Relative paths of the recipe (data, models) mean what they mean at the driver, on a shared file system.
        if os.path.isdir(cwd):
            os.chdir(cwd)
        from .executor import LocalProcessExecutor

        self.executor = LocalProcessExecutor(1, threads, lock_wait_s)
        self.stopped = False

    def node(self) -> str:
        import socket

        return socket.gethostname()

    def run(self, task: Task) -> tuple[int, str, float | None]:
        self.executor.start(task)
        while not self.stopped:
            done = self.executor.poll()
            if done:
                return done[0].returncode, done[0].message, done[0].peak_rss_mb
            time.sleep(0.1)
        return 130, "stopped with the run", None

    def stop(self) -> None:
        # Called while ``run`` waits (the actor runs two calls at a time): the fork server stops its step.
        self.stopped = True
        self.executor.stop()


def _sees(path: str, token: str) -> bool:
    p = Path(path)
    return p.is_file() and p.read_text() == token


class RayExecutor:
    """``slots`` steps at a time, each in an actor reserving ``threads`` CPUs of the cluster."""

    local = False  # the steps' memory is the cluster's nodes', which the runner does not measure

    def __init__(self, address: str, slots: int, threads: int, store: Path, lock_wait_s: float = 3600,
                 start_timeout_s: float = 300):
        self.ray = _import_ray()
        self.address, self.slots, self.threads, self.lock_wait_s = check_address(address), slots, threads, lock_wait_s
        self.store = Path(store).resolve()
        self.start_timeout_s = start_timeout_s
        self._own = False
        self._idle: list = []
        self._busy: dict = {}  # ObjectRef -> (actor, task)
        self._connect()

    # -- setup --------------------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self.ray
        env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES}
        env["TOKENIZERS_PARALLELISM"] = "false"
        self._env = env
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                          runtime_env={"env_vars": env})
            try:
                if self.address == "local":
                    ray.init(**kwargs)
                else:
                    ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise BdcliError(f"could not reach the Ray cluster at {self.address}: {str(e).splitlines()[0]}") from None
            self._own = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < self.threads:
            raise UsageError(f"each step asks for {self.threads} CPUs (--threads) but the Ray cluster has {cpus}")
        self._check_store()

    def _check_store(self) -> None:
        """Every alive node must see the store: a probe file written here is read back there."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.store.mkdir(parents=True, exist_ok=True)
        probe = self.store / f".ray-probe-{uuid.uuid4().hex}"
        token = uuid.uuid4().hex
        probe.write_text(token)
        try:
            sees = ray.remote(num_cpus=0)(_sees)
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            refs = {n["NodeManagerAddress"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                n["NodeID"], soft=False)).remote(str(probe), token) for n in nodes}
            blind = [addr for addr, ok in zip(refs, ray.get(list(refs.values()), timeout=self.start_timeout_s)) if not ok]
        finally:
            probe.unlink(missing_ok=True)
        if blind:
            raise UsageError(f"the store {self.store} is not visible from Ray node(s) {', '.join(blind)}: --out must "
                             "be on storage that every node mounts at the same path")

    def _actor(self):
        ray = self.ray
        cls = ray.remote(num_cpus=self.threads, max_restarts=0, max_concurrency=2)(_StepWorker)
        return cls.remote(self.threads, self.lock_wait_s, self._env, os.getcwd())

    # -- the executor interface ---------------------------------------------------------------------

    def start(self, task: Task) -> None:
        actor = self._idle.pop() if self._idle else self._actor()
        self._busy[actor.run.remote(task)] = (actor, task)

    def poll(self) -> list[Finished]:
        if not self._busy:
            return []
        ready, _ = self.ray.wait(list(self._busy), num_returns=len(self._busy), timeout=0)
        done = []
        for ref in ready:
            actor, task = self._busy.pop(ref)
            try:
                rc, message, peak = self.ray.get(ref)
                self._idle.append(actor)
            except self.ray.exceptions.RayError as e:
                # The actor (or its node) died: the step did not finish; a fresh actor takes the next one.
                rc, message, peak = 1, f"the Ray worker died while the step ran: {str(e).splitlines()[0]}", None
                self.ray.kill(actor)
            done.append(Finished(task, int(rc), message, peak))
        return done

    def running(self) -> list[Task]:
        return [task for _, task in self._busy.values()]

    def stop(self) -> None:
        ray = self.ray
        actors = [a for a, _ in self._busy.values()] + self._idle
        if actors:
            # A clean stop first: each fork server stops its step (no output folder is written).
            try:
                ray.get([a.stop.remote() for a in actors], timeout=60)
            except Exception:  # noqa: BLE001  (a dead actor or a timeout: killed below either way)
                pass
            for a in actors:
                ray.kill(a)
        self._busy.clear()
        self._idle.clear()
        if self._own and ray.is_initialized():
            ray.shutdown()
            self._own = False
