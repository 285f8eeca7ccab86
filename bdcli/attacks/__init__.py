from . import finetune  # noqa: F401  (registers the attack)
from .base import ATTACKS, SCENARIOS, AttackConfig
from .finetune import FinetuneAttackConfig

__all__ = ["ATTACKS", "SCENARIOS", "AttackConfig", "FinetuneAttackConfig"]
