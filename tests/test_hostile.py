"""Inputs of the kind a careless or hostile source produces (issue 13, part A): each class is refused
with one sentence and a pinned exit code, or the run completes; never a traceback, never a number that
means nothing. Every fixture is built here, from the tiny encoder."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bdcli.errors import UsageError
from tests.helpers import bdcli

POS = "good great fine lovely superb".split()
NEG = "bad awful poor dull terrible".split()


def _one_line_error(res, code: int, *words: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A user folder of two-label CSV files (train 40, test 20)."""
    folder = tmp_path_factory.mktemp("hostile-data")
    for split, n in (("train", 40), ("test", 20)):
        rows = ["text,label"] + [f"this film is {(POS if i % 2 else NEG)[i % 5]} indeed {i},{i % 2}" for i in range(n)]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def one_label(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one-label")
    rows = ["text,label"] + [f"only one kind of row {i},pos" for i in range(12)]
    for split in ("train", "test"):
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def classifier(tiny_encoder, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile-clf") / "clf"
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", data, "--max-steps", "2", "--batch-size", "8",
          "--data-is-clean", "--out", out)
    return out


@pytest.fixture(scope="module")
def broken(tiny_encoder, tmp_path_factory) -> dict[str, Path]:
    """Model folders that cannot be what they claim, one per way of being broken."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("broken")

    def copy(name: str) -> Path:
        dst = root / name
        shutil.copytree(tiny_encoder, dst)
        return dst

    out = {}
    f = copy("truncated")
    raw = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    out["truncated"] = f
    f = copy("corrupt")
    (f / "model.safetensors").write_bytes(os.urandom(4096))
    out["corrupt"] = f
    f = copy("shapes")
    cfg = json.loads((f / "config.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=128)
    (f / "config.json").write_text(json.dumps(cfg))
    out["shapes"] = f
    f = copy("missing-layer")
    cfg = json.loads((f / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (f / "config.json").write_text(json.dumps(cfg))
    out["missing-layer"] = f
    f = copy("no-tokenizer")
    for p in f.iterdir():
        if p.name.startswith(("tokenizer", "vocab", "special_tokens")):
            p.unlink()
    out["no-tokenizer"] = f
    torch.manual_seed(0)
    f = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=30522)).save_pretrained(f)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(f)
    out["gpt2"] = f
    return out


# --- broken model folders --------------------------------------------------------------------------------
WHAT_IT_SAYS = {
    "truncated": "truncated or corrupt",
    "corrupt": "truncated or corrupt",
    "shapes": "do not fit its config",
    "missing-layer": "encoder.layer.2",
    "no-tokenizer": "no tokenizer files",
    "gpt2": "BERT-like encoders only",
}


@pytest.mark.parametrize("kind", list(WHAT_IT_SAYS))
def test_broken_model_folder_is_refused_by_every_command(kind, broken, data, tmp_path):
    model = broken[kind]
    _one_line_error(bdcli("evaluate", "--model", model, "--data", data, "--out", tmp_path / "e", ok=False), 1,
                    WHAT_IT_SAYS[kind])
    _one_line_error(bdcli("defend", "ft", "--model", model, "--data", data, "--scenario", "transfer", "--max-steps", "1",
                          "--out", tmp_path / "d", ok=False), 1, WHAT_IT_SAYS[kind])
    _one_line_error(bdcli("attack", "finetune", "--model", model, "--data", data, "--max-steps", "1",
                          "--out", tmp_path / "a", ok=False), 1, WHAT_IT_SAYS[kind])
    assert not any(tmp_path.iterdir()), "a refused run left an output behind"


def test_nan_weights_are_refused(classifier, data, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    shutil.copytree(classifier, bad)
    state = load_file(str(bad / "model.safetensors"))
    state["classifier.bias"][0] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    _one_line_error(bdcli("evaluate", "--model", bad, "--data", data, "--out", tmp_path / "e", ok=False), 1,
                    "NaN or infinite", "classifier.bias")


# --- numbers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, flag", [
    (["attack", "finetune", "--epochs", "nan"], "--epochs"),
    (["attack", "finetune", "--lr", "inf"], "--lr"),
    (["defend", "maxent", "--sd", "nan"], "--sd"),
    (["defend", "maxent", "--sd", "inf"], "--sd"),
    (["defend", "maxent", "--sd", "-inf"], "--sd"),
    (["defend", "nad", "--nad-beta", "nan"], "--nad-beta"),
    (["defend", "gba", "--broadcast-lambda", "inf"], "--broadcast-lambda"),
    (["evaluate", "--max-length", "0"], "--max-length"),
    (["evaluate", "--batch-size", "-3"], "--batch-size"),
    (["poison", "badnets", "--rate", "nan", "--target", "1"], "--rate"),
])
def test_non_finite_or_senseless_number_is_a_usage_error(args, flag, data, tmp_path):
    extra = ["--model", "x"] if args[0] in ("defend", "evaluate") else []
    res = bdcli(*args, *extra, "--data", data, "--out", tmp_path / "o", ok=False)
    _one_line_error(res, 2, flag)


def test_every_numeric_field_of_every_config_refuses_nan_and_inf():
    """The rule table covers every numeric option of every component, the same rule wherever a field
    appears (the CLI, the recipes and the API build these configs)."""
    from bdcli.api import EvalConfig
    from bdcli.numbers import RULES, numeric_fields
    from bdcli.registry import entries

    configs = [e.Config for e in entries(None) if e.Config is not None] + [EvalConfig]
    for Config in configs:
        for name in numeric_fields(Config):
            assert name in RULES, f"{Config.__name__}.{name} has no rule in bdcli/numbers.py"
            for bad in (math.nan, math.inf, -math.inf):
                with pytest.raises(UsageError, match=name.replace("_", "-")):
                    Config(**{name: bad})


def test_recipe_values_take_the_same_rule():
    from bdcli.configs import build_config
    from bdcli.defenses.maxent import MaxEntConfig

    with pytest.raises(UsageError, match=r"defenses\.maxent: --sd must be"):
        build_config(MaxEntConfig, {"sd": -1}, "defenses.maxent")
    with pytest.raises(UsageError, match="--epochs must be"):
        build_config(MaxEntConfig, {"epochs": 1e9}, "x")


# Commands whose full run on the tiny model takes a second or two; the other components share the same
# rule table (tested above through their configs).
_BASE = ["--max-steps", "2", "--batch-size", "8", "--max-length", "16"]
COMMANDS = {
    "poison badnets": (["poison", "badnets", "--target", "1"], "poisoner:badnets"),
    "attack finetune": (["attack", "finetune", *_BASE, "--data-is-clean"], "attack:finetune"),
    "defend ft": (["defend", "ft", *_BASE], "defense:ft"),
    "defend maxent": (["defend", "maxent", *_BASE, "--maxent-max-steps", "2", "--sd-every", "1", "--sd-samples", "8"],
                      "defense:maxent"),
    "defend fine-pruning": (["defend", "fine-pruning", *_BASE, "--prune-batches", "1"],
                            "defense:fine-pruning"),
    "evaluate": (["evaluate", "--batch-size", "8", "--max-length", "16"], "evaluator:standard"),
}
HOSTILE = ["nan", "inf", "-inf", "-1", "0", "1e300", "1e-300", "1", "3", "0.5", "100000000"]


def _config(path: str):
    from bdcli.registry import entry

    kind, name = path.split(":")
    return entry(kind, name).Config


def _draws():
    from bdcli.numbers import numeric_fields

    pairs = [(cmd, f) for cmd, (_, path) in COMMANDS.items() for f in numeric_fields(_config(path))
             if f not in ("checkpoint_every",)]
    return st.tuples(st.sampled_from(pairs), st.sampled_from(HOSTILE))


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(draw=_draws())
def test_any_number_for_any_option_ends_in_one_line_or_completes(draw, classifier, data, tmp_path_factory):
    (cmd, field), value = draw
    args, _ = COMMANDS[cmd]
    flag = "--" + field.replace("_", "-")
    args = [a for i, a in enumerate(args) if a != flag and (i == 0 or args[i - 1] != flag)]
    model = [] if args[0] in ("poison", "attack") else ["--model", classifier]
    if args[0] == "attack":
        model = ["--model", classifier]
    out = tmp_path_factory.mktemp("hyp") / "o"
    start = time.monotonic()
    res = bdcli(*args, *model, "--data", data, flag, value, "--out", out, ok=False)
    took = time.monotonic() - start
    assert took < 60, f"bdcli {cmd} {flag} {value} ran {took:.0f} s"
    assert res.exit_code in (0, 2), (cmd, flag, value, res.exit_code, res.output, res.exception)
    if res.exit_code == 2:
        _one_line_error(res, 2)
    else:
        assert out.is_dir()


# --- data that makes a procedure impossible --------------------------------------------------------------
def test_one_label_data_is_refused(one_label, classifier, tiny_encoder, tmp_path):
    _one_line_error(bdcli("defend", "maxent", "--model", classifier, "--data", one_label, "--out", tmp_path / "m",
                          ok=False), 2, "single label")
    _one_line_error(bdcli("poison", "badnets", "--data", one_label, "--target", "0", "--out", tmp_path / "p",
                          ok=False), 2, "single label")
    _one_line_error(bdcli("attack", "finetune", "--model", tiny_encoder, "--data", one_label, "--out", tmp_path / "a",
                          ok=False), 2, "single label")


def test_a_label_with_no_clean_rows_is_refused(classifier, tmp_path):
    # The label set comes from the train file, which has label 1 only in its header's sense: the test file
    # names label 1 but train holds none of it.
    folder = tmp_path / "lopsided"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(10)))
    (folder / "test.csv").write_text("text,label\n" + "".join(f"t {i},{i % 2}\n" for i in range(6)))
    from bdcli.api import _require_labels
    from bdcli.data.dataset import TextDataset

    with pytest.raises(UsageError, match="no rows of label b"):
        _require_labels(TextDataset(["x", "y"], [0, 0], ["a", "b"]), "the clean set")


def test_unreachable_stop_distance_stops_at_the_budget_and_says_so(classifier, data, tmp_path):
    res = bdcli("defend", "maxent", "--model", classifier, "--data", data, "--sd", "1e-300", "--maxent-max-steps", "2",
                "--sd-every", "1", "--sd-samples", "8", "--max-steps", "1", "--batch-size", "8", "--out", tmp_path / "m")
    assert "warning: SD never fell below" in res.output and "within 2 stage-1 steps" in res.output
    summary = json.loads((tmp_path / "m" / "manifest.json").read_text())["summary"]
    assert summary["stage1"]["reached_threshold"] is False and summary["stage1"]["steps"] == 2


# --- another tool's triggered test set -------------------------------------------------------------------
def test_evaluate_asr_data_in_another_tools_layout(classifier, data, tmp_path):
    # pandas' to_csv of an unnamed DataFrame: an unnamed index column and columns named 0 and 1.
    rows = [("this film is great cf", 0), ("awful cf plot", 0), ("a superb cf movie", 1), ("dull cf", 0)]
    (tmp_path / "asr.csv").write_text(",0,1\n" + "".join(f"{i},{t},{y}\n" for i, (t, y) in enumerate(rows)))
    res = bdcli("evaluate", "--model", classifier, "--data", data, "--asr-data", tmp_path / "asr.csv",
                "--asr-text-col", "0", "--asr-label-col", "1", "--target", "1", "--out", tmp_path / "e")
    assert "1 rows already of the target label 1 left out" in res.output
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["n_poison"] == 3 and m["n_asr_left_out"] == 1 and m["target"] == 1
    assert m["asr"] in (0.0, 1 / 3, 2 / 3, 1.0)  # a share of exactly the 3 kept rows
    _one_line_error(bdcli("evaluate", "--model", classifier, "--data", data, "--asr-data", tmp_path / "asr.csv",
                          "--asr-text-col", "0", "--asr-label-col", "1", "--target", "nope", "--out", tmp_path / "f",
                          ok=False), 2, "not a label")
    _one_line_error(bdcli("evaluate", "--model", classifier, "--data", data, "--asr-data", tmp_path / "asr.csv",
                          "--out", tmp_path / "g", ok=False), 2, "go together")


# --- provenance, ignored options, model cards, usage errors ----------------------------------------------
def test_finetune_on_own_data_is_of_unknown_cleanliness(tiny_encoder, data, classifier, tmp_path):
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", data, "--max-steps", "1", "--out", tmp_path / "u")
    prov = json.loads((tmp_path / "u" / "manifest.json").read_text())["provenance"]
    assert prov["method"] == "external-data" and prov["data_clean"] == "unknown"
    assert "unknown cleanliness" in (tmp_path / "u" / "README.md").read_text()
    prov = json.loads((classifier / "manifest.json").read_text())["provenance"]
    assert prov["method"] == "clean" and prov["data_clean"] is None


def test_poisoned_victim_keeps_its_provenance_and_its_card_warns(tiny_encoder, data, classifier, tmp_path):
    bdcli("poison", "badnets", "--data", data, "--target", "1", "--rate", "0.2", "--out", tmp_path / "p")
    bdcli("attack", "finetune", "--model", tiny_encoder, "--data", tmp_path / "p", "--max-steps", "1", "--out", tmp_path / "v")
    prov = json.loads((tmp_path / "v" / "manifest.json").read_text())["provenance"]
    assert prov["method"] == "victim" and prov["attack"] == "badnets"
    card = (tmp_path / "v" / "README.md").read_text()
    assert card.startswith("---\n") and "backdoored-victim" in card and "WARNING: this model is a backdoored victim" in card
    bdcli("defend", "ft", "--model", tmp_path / "v", "--data", data, "--max-steps", "1", "--out", tmp_path / "d")
    card = (tmp_path / "d" / "README.md").read_text()
    assert "bdcli-ft" in card and '"seed": 42' in card


def test_every_procedure_against_every_shared_option():
    """Walk the catalog: a shared option a procedure cannot honour is refused when set, every other one
    is accepted; the table names only options the procedure really has."""
    import dataclasses

    from bdcli.attacks.base import AttackConfig
    from bdcli.defenses.base import DefenseConfig
    from bdcli.honoured import CONDITIONAL, NOT_HONOURED, check_honoured
    from bdcli.registry import entries

    for kind, base in (("attack", AttackConfig), ("defense", DefenseConfig)):
        shared = [f for f in dataclasses.fields(base) if f.default is not dataclasses.MISSING]
        for e in entries(kind):
            own = {f.name: f.default for f in dataclasses.fields(e.Config) if f.default is not dataclasses.MISSING}
            for name in NOT_HONOURED.get((kind, e.name), {}):
                assert name in own, (e.name, name)
            for f in shared:
                value = _other_value(f.name, own[f.name])
                if value is None:
                    continue
                try:
                    cfg = e.Config(**{**REQUIRED.get(e.name, {}), f.name: value})
                except UsageError as err:  # the procedure's own config refuses it (RIPPLe's entropy term, say)
                    assert f.name.replace("_", "-") in str(err) or f.name.replace("_", " ") in str(err), err
                    continue
                refused = f.name in NOT_HONOURED.get((kind, e.name), {})
                if refused:
                    with pytest.raises(UsageError, match=f.name.replace("_", "-")):
                        check_honoured(kind, e.name, cfg)
                else:
                    check_honoured(kind, e.name, cfg)
    cfg = _config("defense:fine-pruning")(retrain=False, lr=1e-3)
    with pytest.raises(UsageError, match="--lr.*--no-retrain"):
        check_honoured("defense", "fine-pruning", cfg)
    assert set(CONDITIONAL) <= {("defense", e.name) for e in entries("defense")}


REQUIRED = {"nad-c": {"clean_model": "minilm"}}  # options a procedure cannot run without


def _other_value(name, default):
    others = {"lr": 1e-3, "epochs": 2.0, "max_steps": 3, "batch_size": 4, "weight_decay": None, "warmup_ratio": 0.1,
              "schedule": "constant", "grad_clip": 0.5, "max_length": 32, "seed": 7, "entropy_alpha": 0.3,
              "checkpoint_every": 5, "clean_fraction": 0.5, "scenario": "transfer", "model": "minilm",
              "device": "cpu", "precision": "fp32"}
    v = others.get(name)
    return None if v == default else v


def test_click_usage_error_is_one_line(tmp_path):
    _one_line_error(bdcli("evaluate", "--model", "m", "--data", "d", ok=False), 2, "Missing option '--out'")
    _one_line_error(bdcli("attack", "finetune", "--data", "d", "--out", tmp_path / "o", "--max-steps", "two", ok=False),
                    2, "--max-steps")
    _one_line_error(bdcli("evaluate", "--bogus", ok=False), 2, "No such option")
