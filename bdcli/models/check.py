"""What a model folder must be before bdcli computes any number with it.

A folder from elsewhere is untrusted and may be careless: a truncated download, weights of another
size, a missing tokenizer, a decoder-only architecture. Each of these would otherwise load with some
parts freshly initialised (or some default tokenizer) and be measured at chance accuracy with nothing
said. The loader calls these checks so that every command (evaluate, defend, attack, probe) refuses the
same folders with the same sentence.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import BdcliError

# Architectures bdcli runs as a BERT-like classifier: a bidirectional encoder whose first token is the
# sentence representation (SD, NeuBA, the heads) and whose tokenizer has a mask token (GBA, NeuBA).
ENCODER_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra", "deberta", "deberta-v2",
    "mpnet", "ernie", "megatron-bert", "xlm-roberta-xl", "modernbert",
})
# Files any one of which is a tokenizer's vocabulary; tokenizer_config.json alone is not.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "spm.model")
_SHOWN = 4  # parts named in a message before "and N more"


def _listing(names: list[str]) -> str:
    names = sorted(names)
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def check_architecture(spec: str, config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in ENCODER_TYPES:
        arch = ", ".join(getattr(config, "architectures", None) or []) or "no architecture named"
        raise BdcliError(
            f"model {spec} is a {model_type!r} model ({arch}); bdcli runs BERT-like encoders only "
            f"({', '.join(sorted(ENCODER_TYPES))})"
        )


def check_weight_files(folder: Path) -> None:
    """Every safetensors file opens and its header covers the file (a truncated or corrupt download
    fails here, not with a traceback from the middle of transformers)."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    st.get_slice(k).get_shape()
        except Exception as e:  # SafetensorError, OSError: the file, not bdcli, is at fault
            raise BdcliError(f"weight file {f} is truncated or corrupt ({' '.join(str(e).split())})") from None


def check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise BdcliError(
            f"model folder {folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); without "
            "them the text would be cut into tokens this model never saw"
        )


def check_tokenizer_fits(spec: str, tokenizer, config) -> None:
    size = getattr(config, "vocab_size", None)
    if size is not None and len(tokenizer) > size:
        raise BdcliError(
            f"model {spec}: its tokenizer has {len(tokenizer)} tokens but the embedding has {size} rows, so it is "
            "not this model's tokenizer"
        )


def check_loading_info(spec: str, model, info: dict, *, new_head: bool) -> None:
    """Refuse a model that loaded with parts missing or of the wrong shape; only the classification
    head of a checkpoint that had none may be new."""
    mismatched = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    if mismatched:
        raise BdcliError(
            f"model {spec}: the weights do not fit its config ({len(mismatched)} tensors of another shape: "
            f"{_listing(mismatched)})"
        )
    prefix = getattr(model, "base_model_prefix", "") or ""
    missing = [k for k in info.get("missing_keys") or []]
    allowed = [] if not new_head else [k for k in missing if prefix and not k.startswith(prefix + ".")]
    bad = [k for k in missing if k not in allowed]
    if bad:
        raise BdcliError(
            f"model {spec} lacks {len(bad)} of its weights, which would be randomly initialised: {_listing(bad)}"
        )


def check_finite(spec: str, model: torch.nn.Module) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise BdcliError(f"model {spec} has weights that are NaN or infinite: {_listing(bad)}")
