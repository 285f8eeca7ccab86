"""A fork server for recipe steps: one process imports torch, transformers and bdcli once, then forks a
fresh child per step. Each step still runs in its own process (torch's RNG and thread pool are
process-global, and a crash stays in its child), without paying seconds of imports every time.

Protocol: JSON lines. The runner writes ``{"id", "spec", "out", "log", "progress", "threads",
"lock_wait_s"}`` on stdin; the server answers ``{"ready": true}`` once, ``{"id", "pid"}`` as it forks
each child, and ``{"id", "rc", "peak_rss_mb"}`` as each child ends (its peak resident memory, from
``wait4``). End of stdin (the runner died or closed it) or SIGTERM stops every child and the server.

The server itself never runs a torch operation or starts a thread, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback

_STOP = {"flag": False}


def _child(cmd: dict) -> int:
    fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.environ.update({"BDCLI_PROGRESS": "0", "BDCLI_PROGRESS_FILE": cmd["progress"], "OMP_NUM_THREADS": str(cmd["threads"])})

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    import torch
    import typer

    from ..cli.app import guard
    from ..steps import run_from_file

    torch.set_num_threads(int(cmd["threads"]))
    try:
        with guard():
            return run_from_file(cmd["spec"], cmd["out"], True, float(cmd.get("lock_wait_s", 0)))
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        print("error: the step crashed (traceback above)", file=sys.stderr)
        return 1


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The imports every step needs, paid once here instead of in every child.
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from .. import api, attacks, defenses, poison, steps  # noqa: F401
    from ..cli import app  # noqa: F401

    signal.signal(signal.SIGTERM, lambda s, f: _STOP.update(flag=True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the runner, which stops us
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    children: dict[int, str] = {}
    buf = b""
    stdin = sys.stdin.buffer.fileno()
    open_stdin = True
    while True:
        if _STOP["flag"] or not open_stdin:
            _stop_children(children, out)
            return
        ready, _, _ = select.select([stdin], [], [], 0.1)
        if ready:
            chunk = os.read(stdin, 65536)
            if not chunk:
                open_stdin = False
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    cmd = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        rc = 1
                        try:
                            rc = _child(cmd)
                        finally:
                            try:
                                sys.stdout.flush()
                                sys.stderr.flush()
                            finally:
                                os._exit(rc)
                    children[pid] = cmd["id"]
                    out.write(json.dumps({"id": cmd["id"], "pid": pid}) + "\n")
                    out.flush()
        _reap(children, out)


def _reap(children: dict[int, str], out, block: bool = False) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        id = children.pop(pid, None)
        if id is not None:
            rc = os.waitstatus_to_exitcode(status)
            # ru_maxrss is in kB on Linux, the only system the runner measures memory on.
            out.write(json.dumps({"id": id, "rc": rc, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}) + "\n")
            out.flush()


def _stop_children(children: dict[int, str], out) -> None:
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while children and time.monotonic() < deadline:
        _reap(children, out)
        time.sleep(0.05)
    for pid in list(children):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(children, out, block=True)


if __name__ == "__main__":
    main()
