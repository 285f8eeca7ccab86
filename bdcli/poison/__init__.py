from ..registry import import_components

# Every module registers its components: a new one needs no line here.
import_components(__name__, __path__)
from .base import POISONERS, PoisonConfig, Poisoner, insert_at_random_word
from .insert import AddSentConfig, BadNetsConfig
from .rewrite import PARAPHRASERS, HiddenKillerConfig, RewriteConfig, StyleBkdConfig
from .sos import SOSConfig

__all__ = ["POISONERS", "PoisonConfig", "Poisoner", "insert_at_random_word", "AddSentConfig", "BadNetsConfig",
           "SOSConfig", "RewriteConfig", "HiddenKillerConfig", "StyleBkdConfig", "PARAPHRASERS"]
