from ..registry import import_components

# Every module registers its components: a new one needs no line here.
import_components(__name__, __path__)
from .base import DEFENSES, SCENARIO_CLEAN_FRACTION, DefenseConfig
from .finetune import FTConfig, FTHConfig
from .maxent import PRESETS, MaxEntConfig, StopDistanceHook

__all__ = [
    "DEFENSES", "SCENARIO_CLEAN_FRACTION", "DefenseConfig", "FTConfig", "FTHConfig", "PRESETS", "MaxEntConfig",
    "StopDistanceHook",
]
