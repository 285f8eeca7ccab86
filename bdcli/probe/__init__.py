"""Probes: commands that run a procedure once and read it at many points (``bdcli probe-sd``), and the
recorders of what the papers' figures show (training dynamics, representation geometry, trigger RMSE)."""

from __future__ import annotations

from ..registry import Procedure, Registry

# Probes are catalog entries of kind "prober" (Step kind "probe"), so recipes and fingerprints name
# them like any other component.
PROBES: Registry[Procedure] = Registry("prober")

from . import spec  # noqa: E402,F401  (registers probe "sd")
from .spec import ProbeSDConfig, parse_thresholds  # noqa: E402

__all__ = ["PROBES", "ProbeSDConfig", "parse_thresholds"]
