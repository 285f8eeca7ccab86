from . import finetune, maxent, variational  # noqa: F401  (registers the defenses)
from . import freelb  # noqa: F401  (registers freelb)
from . import pruning  # noqa: F401  (registers fine-pruning)
from . import nad  # noqa: F401  (registers nad and nad-c)
from . import gba  # noqa: F401  (registers gba)
from .base import DEFENSES, SCENARIO_CLEAN_FRACTION, DefenseConfig
from .finetune import FTConfig, FTHConfig
from .maxent import PRESETS, MaxEntConfig, StopDistanceHook

__all__ = [
    "DEFENSES", "SCENARIO_CLEAN_FRACTION", "DefenseConfig", "FTConfig", "FTHConfig", "PRESETS", "MaxEntConfig",
    "StopDistanceHook",
]
