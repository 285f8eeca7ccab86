from ..registry import import_components

# Every spec module registers its component: a new one needs no line here. The specs import no torch;
# each names its implementation module, imported when the component runs.
from . import specs  # noqa: E402

import_components(specs.__name__, specs.__path__)
from .base import DEFENSES, SCENARIO_CLEAN_FRACTION, DefenseConfig  # noqa: E402
from .specs.finetune import FTConfig, FTHConfig  # noqa: E402
from .specs.maxent import PRESETS, MaxEntConfig  # noqa: E402


def __getattr__(name: str):
    # The Stop Distance hook needs torch: imported on first use, not with the catalog.
    if name == "StopDistanceHook":
        from .stop_distance import StopDistanceHook

        return StopDistanceHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFENSES", "SCENARIO_CLEAN_FRACTION", "DefenseConfig", "FTConfig", "FTHConfig", "PRESETS", "MaxEntConfig",
    "StopDistanceHook",
]
