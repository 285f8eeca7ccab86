from . import insert  # noqa: F401  (registers the poisoners)
from . import rewrite, sos  # noqa: F401  (registers the poisoners)
from . import neuba  # noqa: F401  (registers the NeuBA ASR-set poisoner)
from .base import POISONERS, PoisonConfig, Poisoner, insert_at_random_word
from .insert import AddSentConfig, BadNetsConfig
from .rewrite import PARAPHRASERS, HiddenKillerConfig, RewriteConfig, StyleBkdConfig
from .sos import SOSConfig

__all__ = ["POISONERS", "PoisonConfig", "Poisoner", "insert_at_random_word", "AddSentConfig", "BadNetsConfig",
           "SOSConfig", "RewriteConfig", "HiddenKillerConfig", "StyleBkdConfig", "PARAPHRASERS"]
