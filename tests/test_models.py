"""Untrusted checkpoints: weights load from safetensors only; pickles never run; no remote code."""

from __future__ import annotations

import json
import pickle

import pytest
from transformers import AutoModelForSequenceClassification

from bdcli.errors import BdcliError
from bdcli.models import load_classifier, resolve_model, save_classifier


class _Boom:
    """Unpickling this object creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_only_checkpoint_is_refused_and_never_unpickled(tmp_path, tiny_encoder):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_encoder / "config.json").read_text())
    marker = tmp_path / "PWNED"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Boom(marker), f)
    with pytest.raises(BdcliError, match="pickle-based weights.*safetensors only"):
        load_classifier(str(folder), label_names=["a", "b"])
    assert not marker.exists()


def test_config_asking_for_custom_code_is_refused(tmp_path, tiny_encoder):
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_encoder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(BdcliError, match="never runs remote code"):
        load_classifier(str(folder), label_names=["a", "b"])


def test_encoder_gets_a_seeded_head_and_saves_as_plain_transformers(tmp_path, tiny_encoder):
    a = load_classifier(str(tiny_encoder), label_names=["neg", "pos"], seed=1)
    b = load_classifier(str(tiny_encoder), label_names=["neg", "pos"], seed=1)
    assert a.new_head and a.label_names == ["neg", "pos"]
    assert (a.model.classifier.weight == b.model.classifier.weight).all()
    save_classifier(a, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and not list((tmp_path / "m").glob("*.bin"))
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    again = load_classifier(str(tmp_path / "m"), label_names=["neg", "pos"])
    assert not again.new_head
    with pytest.raises(BdcliError, match="has 2 labels but the data has 3"):
        load_classifier(str(tmp_path / "m"), label_names=["x", "y", "z"])


def test_missing_model_path_and_aliases(tmp_path, minilm_dir):
    with pytest.raises(BdcliError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    assert resolve_model("minilm") == str(minilm_dir)
    assert resolve_model("bert-base") == "bert-base-uncased"
