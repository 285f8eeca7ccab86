"""probe-sd's config, threshold list and catalog entry, torch-free (the implementation is
``bdcli.probe.sd``), so that the CLI and ``bdcli list`` never import torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..defenses.specs.maxent import MaxEntConfig
from ..errors import UsageError
from ..numbers import check_value
from ..registry import Procedure
from . import PROBES

DEFAULT_THRESHOLDS = ("0.1", "0.05", "0.02", "0.01", "0.005")


def parse_thresholds(value: Any) -> tuple[float, ...]:
    """A Stop Distance threshold list ("0.1,0.05,0.02" or numbers), strictly decreasing: the order
    stage 1 crosses them. Empty, unsorted, duplicated, non-finite or non-positive lists are refused."""
    if isinstance(value, str):
        items = [x.strip() for x in value.split(",")]
    elif isinstance(value, (int, float)):
        items = [value]
    else:
        items = list(value or ())
    items = [x for x in items if not (isinstance(x, str) and not x)]
    if not items:
        raise UsageError("the Stop Distance threshold list is empty; give them largest first, e.g. --sd 0.1,0.05,0.02")
    out = []
    for x in items:
        try:
            t = float(x)
        except (TypeError, ValueError):
            raise UsageError(f"Stop Distance threshold {x!r} is not a number") from None
        try:
            check_value("sd", t)  # the one rule of every Stop Distance threshold
        except UsageError as e:
            raise UsageError(f"Stop Distance threshold {x!r}: {e}") from None
        out.append(t)
    if len(set(out)) != len(out):
        dup = next(t for t in out if out.count(t) > 1)
        raise UsageError(f"the Stop Distance threshold {dup:g} is given twice")
    if any(b >= a for a, b in zip(out, out[1:])):
        raise UsageError("give the Stop Distance thresholds largest first (the order stage 1 crosses them), "
                         f"got {','.join(f'{t:g}' for t in out)}")
    return tuple(out)


@dataclass
class ProbeSDConfig(MaxEntConfig):
    """``defend maxent``'s settings, with a list of Stop Distance thresholds instead of one."""

    sd: tuple[float, ...] = field(default=DEFAULT_THRESHOLDS, metadata={"help": (  # type: ignore[assignment]
        "Stop Distance thresholds, largest first (comma-separated): one stage-1 pass snapshots the model at "
        "the first SD below each, then re-trains and evaluates each snapshot.")})

    def __post_init__(self) -> None:
        if self.preset is not None:
            raise UsageError("probe-sd takes a list of thresholds (--sd), not a preset")
        thresholds = parse_thresholds(self.sd)
        if self.sd_relative and thresholds[0] >= 1:
            raise UsageError(f"relative Stop Distance thresholds must be below 1, got {thresholds[0]:g}")
        # MaxEntConfig checks one threshold; the smallest stands in for the list.
        self.sd = thresholds[-1]  # type: ignore[assignment]
        try:
            super().__post_init__()
        finally:
            self.sd = thresholds


PROBES.register("sd", display="probe-sd", order=10)(
    Procedure(
        "sd",
        ProbeSDConfig,
        "bdcli.probe.sd:probe_stop_distance",
        "One maximum-entropy stage-1 pass with a snapshot at each Stop Distance threshold (--sd, largest first), "
        "then each snapshot re-trained (stage 2) and evaluated (ACC on --data's clean test split, ASR on --asr-data): "
        "the maximum-entropy paper's Figure 5 for the cost of one pass. Takes defend maxent's options.",
        example="bdcli probe-sd --model runs/victim --data sst2 --sd 0.1,0.05,0.02,0.01,0.005 --asr-data runs/sst2-badnets --out runs/probe",
    )
)
