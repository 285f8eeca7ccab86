from . import finetune, maxent  # noqa: F401  (registers the defenses)
from .base import DEFENSES, SCENARIO_CLEAN_FRACTION, DefenseConfig
from .finetune import FTConfig, FTHConfig
from .maxent import PRESETS, MaxEntConfig, StopDistanceHook

__all__ = [
    "DEFENSES", "SCENARIO_CLEAN_FRACTION", "DefenseConfig", "FTConfig", "FTHConfig", "PRESETS", "MaxEntConfig",
    "StopDistanceHook",
]
