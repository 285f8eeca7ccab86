from ..registry import import_components

# Every module registers its components: a new one needs no line here.
import_components(__name__, __path__)
from .base import ATTACKS, SCENARIOS, AttackConfig
from .finetune import FinetuneAttackConfig

__all__ = ["ATTACKS", "SCENARIOS", "AttackConfig", "FinetuneAttackConfig"]
