from .aliases import MODEL_ALIASES, resolve_model

__all__ = ["MODEL_ALIASES", "resolve_model", "LoadedModel", "load_classifier", "save_classifier"]


def __getattr__(name: str):
    # Loading needs torch and transformers: imported on first use, so that resolving an alias (a recipe's
    # fingerprint, the CLI's help) does not pay for them.
    if name in ("LoadedModel", "load_classifier", "save_classifier"):
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
