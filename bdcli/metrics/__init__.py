from .classification import accuracy, asr_per_class, attack_success_rate, label_shares
from .geometry import SD_PAIRS, centroids, pick_label_pair, stop_distance, within_group_variance

__all__ = [
    "accuracy", "asr_per_class", "attack_success_rate", "label_shares", "SD_PAIRS", "centroids", "pick_label_pair",
    "stop_distance", "within_group_variance",
]
