"""Safe loading and saving of classifiers.

Checkpoints are untrusted input: weights load from safetensors only (never unpickled) and no remote
code runs. A saved model is a plain ``save_pretrained`` folder that ``transformers`` loads with no bdcli
installed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers import logging as hf_logging

from ..errors import BdcliError
from .aliases import resolve_model
from .check import (check_architecture, check_finite, check_loading_info, check_tokenizer_files,
                    check_tokenizer_fits, check_weight_files)
from .prompt import is_prompt_config, load_prompt_classifier

_PICKLE_WEIGHTS = ("pytorch_model.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "tf_model.h5", "flax_model.msgpack")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str
    # True when the checkpoint had no classification head and a fresh one was initialised
    # (an encoder such as the packaged MiniLM, or a transfer-scenario poisoned encoder).
    new_head: bool
    label_names: list[str]


def _check_local_folder(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickled = [p.name for pat in _PICKLE_WEIGHTS for p in folder.glob(pat)]
    if pickled:
        raise BdcliError(
            f"{folder} holds only pickle-based weights ({', '.join(sorted(pickled))}); bdcli loads "
            "safetensors only, because unpickling an untrusted checkpoint can run code"
        )
    raise BdcliError(f"{folder} holds no model weights (*.safetensors)")


# What from_pretrained raises on a folder that is not what its config says (a shape that does not fit,
# a config field of the wrong type): the folder's fault, so one sentence, not a traceback.
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, TypeError, KeyError, IndexError, AttributeError)


def _head_in_checkpoint(folder: Path) -> bool | None:
    """Whether the safetensors files carry a classification head; None when unknown (hub ids)."""
    from safetensors import safe_open

    files = list(folder.glob("*.safetensors"))
    if not files:
        return None
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            if any(k.startswith(("classifier.", "score.")) for k in st.keys()):
                return True
    return False


def load_classifier(
    spec: str,
    *,
    label_names: list[str] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Load a sequence classifier from an alias, folder or hub id.

    ``label_names`` is the data's label set: a model without a head gets one of that size (seeded, so
    runs are reproducible); a model with a head must have the same number of labels.
    """
    source = resolve_model(spec)
    local = Path(source).is_dir()
    if local:
        _check_local_folder(Path(source))
        check_weight_files(Path(source))
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BdcliError(f"cannot read a model config from {spec}: {_first_line(e)}") from None
    if getattr(config, "auto_map", None):
        raise BdcliError(f"{spec} asks to run its own code (auto_map in config.json); bdcli never runs remote code")
    check_architecture(spec, config)
    if local:
        check_tokenizer_files(Path(source))
    if local and is_prompt_config(config):
        # GBA's prompt classifier (models/prompt.py): the encoder plus a soft template, both safetensors.
        return load_prompt_classifier(Path(source), config, label_names)

    has_head = _head_in_checkpoint(Path(source)) if local else None
    if has_head:
        n = config.num_labels
        if label_names is not None and n != len(label_names):
            raise BdcliError(f"model {spec} has {n} labels but the data has {len(label_names)} ({', '.join(label_names)})")
        names = [config.id2label.get(i, str(i)) for i in range(n)]
        # Generic LABEL_0 names mean the model's author named nothing: take the data's names.
        if label_names is not None and all(x == f"LABEL_{i}" for i, x in enumerate(names)):
            names = list(label_names)
    else:
        if label_names is None:
            raise BdcliError(f"model {spec} has no classification head; give data so its labels are known")
        names = list(label_names)
        config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}

    torch.manual_seed(seed)  # the initialisation of a fresh head
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialised" is expected here
    try:
        # Mismatched shapes are loaded as fresh weights and reported, so that the check below can name
        # them; the model is refused either way.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=config,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=local,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local)
    except _LOAD_ERRORS as e:
        raise BdcliError(f"cannot load model {spec}: {_first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(spec, model, info, new_head=not has_head)
    check_tokenizer_fits(spec, tokenizer, config)
    check_finite(spec, model)
    model.float()
    return LoadedModel(model, tokenizer, source, new_head=not has_head, label_names=names)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_classifier(loaded: LoadedModel, folder: Path) -> None:
    folder = Path(folder)
    loaded.model.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(loaded.label_names) + "\n")


logging.getLogger("transformers").setLevel(logging.ERROR)
# bdcli draws its own progress; transformers' per-shard bars would interleave with it.
hf_logging.disable_progress_bar()
