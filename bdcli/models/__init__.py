from .aliases import MODEL_ALIASES, resolve_model
from .load import LoadedModel, load_classifier, save_classifier

__all__ = ["MODEL_ALIASES", "resolve_model", "LoadedModel", "load_classifier", "save_classifier"]
