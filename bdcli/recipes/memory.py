"""How much memory a recipe step takes, measured, and whether the next one fits beside those running.

The local executor's fork server reports each finished step's peak resident memory (``wait4``'s
``ru_maxrss``, which a step killed by the kernel's out-of-memory killer has too). The runner keeps these
peaks in the store (``logs/peak-rss.json``) under the step's id with its seed blanked out, since the
same step at another seed takes about as much: ``mr/NeuBA/s*/attack``. Before it starts a step beside
others it asks whether that step's measured peak fits in what the machine has left, counting what the
running steps may still grow to; a step never seen before starts as it always did.

This is what turns an out-of-memory kill into something a rerun avoids: a NeuBA attack step holds about
10 GB, and three such steps side by side overrun a 24 GiB machine. The first run measures (even the
killed step's peak is a lower bound of its need); the same command run again keeps such steps apart.
It never waits forever: a step starts whenever nothing else runs, whatever its estimate.

A peak counts the pages a step shares with the fork server it came from (torch's libraries, a few
hundred MB) as its own, so the sum over steps overstates the need a little: the safe side.

Linux only (``/proc``); elsewhere nothing is measured and every step starts as soon as a slot is free.
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

PEAKS = "peak-rss.json"  # under the store's logs/
HEADROOM = 0.10  # of the machine's memory, left to everything else (page cache the steps read through, the shell)


def step_key(step_id: str) -> str:
    """``mr/NeuBA/s2/attack`` -> ``mr/NeuBA/s*/attack``: one key for a step at every seed."""
    return re.sub(r"(^|/)s\d+(?=/|$)", r"\1s*", step_id)


def meminfo_mb() -> tuple[float, float] | None:
    """(total, available) memory of this machine in MB, or None where /proc/meminfo is not there."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        return None
    return int(fields["MemTotal"]) / 1024, int(fields["MemAvailable"]) / 1024


def rss_mb(pid: int | None) -> float:
    """A live process's resident memory in MB (0 when it is gone or unknown)."""
    if not pid:
        return 0.0
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else 0.0


class PeakLog:
    """The store's measured peaks: ``{key: {"peak_rss_mb", "step", "rc"}}``, the largest kept per key."""

    def __init__(self, logs: Path):
        self.path = Path(logs) / PEAKS
        try:
            self.peaks: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.peaks = {}  # no record yet, or not one this tool wrote: measure afresh

    def estimate(self, step_id: str) -> float | None:
        rec = self.peaks.get(step_key(step_id))
        try:
            return float(rec["peak_rss_mb"]) if rec else None
        except (KeyError, TypeError, ValueError):
            return None

    def record(self, step_id: str, peak_mb: float, rc: int) -> None:
        key = step_key(step_id)
        if (self.estimate(step_id) or 0.0) >= peak_mb:
            return
        self.peaks[key] = {"peak_rss_mb": round(peak_mb, 1), "step": step_id, "rc": rc}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{PEAKS}.tmp")
        tmp.write_text(json.dumps(self.peaks, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


@dataclass
class Running:
    estimate_mb: float | None  # its measured peak at an earlier run or seed, if any
    rss_mb: float  # what it holds now


def fits(need_mb: float | None, running: list[Running], total_mb: float, available_mb: float,
         headroom: float = HEADROOM) -> bool:
    """Whether a step that peaked at ``need_mb`` before can start now beside ``running``.

    What the running steps may still grow by (their estimate less what they hold) is taken off the
    available memory first; a share ``headroom`` of the machine stays free."""
    if need_mb is None or not running:
        return True
    growth = sum(max(0.0, (r.estimate_mb or 0.0) - r.rss_mb) for r in running)
    return need_mb + growth <= available_mb - headroom * total_mb


def describe_kill(rc: int, peak_mb: float | None) -> str | None:
    """The one-line reason for a step ended by a signal (``rc`` is minus its number), or None."""
    if rc >= 0:
        return None
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    held = f" after holding {peak_mb / 1024:.1f} GB" if peak_mb else ""
    if rc == -signal.SIGKILL:
        return (f"killed by SIGKILL{held}, most likely by the kernel's out-of-memory killer; run the same "
                f"command again: the runner now knows this step's memory and starts it only where it fits")
    return f"killed by {name}{held}"
