from . import insert  # noqa: F401  (registers the poisoners)
from .base import POISONERS, PoisonConfig, Poisoner, insert_at_random_word
from .insert import AddSentConfig, BadNetsConfig

__all__ = ["POISONERS", "PoisonConfig", "Poisoner", "insert_at_random_word", "AddSentConfig", "BadNetsConfig"]
