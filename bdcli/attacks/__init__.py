from . import finetune  # noqa: F401  (registers the attack)
from . import neuba  # noqa: F401  (registers neuba)
from . import embedding  # noqa: F401  (registers sos and ep)
from . import ripple  # noqa: F401  (registers ripple and ripples)
from .base import ATTACKS, SCENARIOS, AttackConfig
from .finetune import FinetuneAttackConfig

__all__ = ["ATTACKS", "SCENARIOS", "AttackConfig", "FinetuneAttackConfig"]
