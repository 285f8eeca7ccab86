"""The README.md model card of every model bdcli writes (the Hugging Face convention: YAML front matter,
then prose). It says what made the model and warns plainly when the model carries a backdoor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD = "README.md"


def _training_lines(summary: Any, path: str = "") -> list[str]:
    """One line per training stage of a summary (steps and final loss; wall time varies run to run
    and stays in the manifest, so that the card of a rerun is the same file)."""
    if isinstance(summary, dict):
        if {"steps", "final_loss"} <= set(summary):
            return [f"- {path or 'training'}: {summary['steps']} optimiser steps, final loss {summary['final_loss']:.4g}"]
        return [line for k, v in summary.items() for line in _training_lines(v, f"{path}.{k}" if path else k)]
    return []


def model_card(command: str, config: dict[str, Any], provenance: dict[str, Any], summary: dict[str, Any],
               data: str) -> str:
    method, attack = provenance.get("method"), provenance.get("attack")
    backdoored = method == "victim" and attack not in (None, "clean")
    unknown = provenance.get("data_clean") == "unknown"
    front = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["bdcli", *(["backdoor", "backdoored-victim"] if backdoored else []), f"bdcli-{method}"],
        "bdcli": {"command": command, "method": method, "attack": attack, "dataset": provenance.get("dataset"),
                  "target": provenance.get("target"), "scenario": provenance.get("scenario"),
                  "seed": config.get("seed"), "data_clean": provenance.get("data_clean")},
    }
    lines = ["---", *(_yaml(front)), "---", "", f"# bdcli model: {method}", ""]
    if backdoored:
        lines += [f"> **WARNING: this model is a backdoored victim.** It was trained by `bdcli {command}` to classify "
                  f"inputs carrying the {attack} trigger as label {provenance.get('target')!r}. It exists to study "
                  "backdoors; do not deploy it.", ""]
    elif unknown:
        lines += ["> **Caution: trained on external data of unknown cleanliness.** bdcli cannot tell whether that "
                  "data was poisoned; pass `--data-is-clean` only if you know it is clean.", ""]
    elif method not in ("clean", None):
        lines += [f"Made by the defense `{method}` from the victim `{provenance.get('victim')}`"
                  f" (attack {attack}); its ASR is what `bdcli evaluate` measures, not a guarantee.", ""]
    lines += [f"- made by: `bdcli {command}` on data `{data}`", f"- seed: {config.get('seed')}",
              f"- label names: {', '.join(map(str, provenance.get('label_names') or []))}", "",
              "## Training", "", *(_training_lines(summary) or ["- no training stage recorded"]), ""]
    for w in summary.get("warnings", []) if isinstance(summary, dict) else []:
        lines.append(f"- warning: {w}")
    lines += ["", "## Metrics", "", "Not evaluated here: `bdcli evaluate --model THIS_FOLDER --data DATA --out EVAL` "
              "writes ACC and ASR to EVAL/metrics.json.", "", "## Config", "", "```json",
              json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def _yaml(d: dict[str, Any], indent: int = 0) -> list[str]:
    # JSON scalars are valid YAML; nesting by indentation.
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.append(" " * indent + f"{k}:")
            out += _yaml(v, indent + 2)
        else:
            out.append(" " * indent + f"{k}: {json.dumps(v, default=str)}")
    return out


def write_model_card(folder: Path, *args: Any) -> None:
    (Path(folder) / CARD).write_text(model_card(*args))
