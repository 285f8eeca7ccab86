from ..registry import import_components

# Every spec module registers its component: a new one needs no line here. The specs import no torch;
# each names its implementation module, imported when the component runs.
from . import specs  # noqa: E402

import_components(specs.__name__, specs.__path__)
from .base import ATTACKS, SCENARIOS, AttackConfig  # noqa: E402
from .specs.finetune import FinetuneAttackConfig  # noqa: E402

__all__ = ["ATTACKS", "SCENARIOS", "AttackConfig", "FinetuneAttackConfig"]
