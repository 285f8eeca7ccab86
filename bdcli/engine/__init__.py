from .device import autocast, resolve_device
from .inference import REPRESENTATIONS, forward_all, representation
from .loop import Hook, TrainConfig, TrainResult, TrainState, seed_everything, train
from .objectives import OBJECTIVES, cross_entropy, max_entropy, prediction_entropy

__all__ = [
    "autocast", "resolve_device", "REPRESENTATIONS", "forward_all", "representation", "Hook", "TrainConfig",
    "TrainResult", "TrainState", "seed_everything", "train", "OBJECTIVES", "cross_entropy", "max_entropy",
    "prediction_entropy",
]
