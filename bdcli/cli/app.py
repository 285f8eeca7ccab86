"""bdcli's command line: thin Typer commands over ``bdcli.api``. Nothing but parsing and printing
lives here."""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from .. import __version__
from ..errors import BdcliError
from .generate import command_from_config

app = typer.Typer(
    name="bdcli",
    help=(
        "Plant, remove and measure backdoors in pre-trained language models.\n\n"
        "A typical chain (each command writes one output folder that the next one reads):\n\n"
        "bdcli poison badnets --data sst2 --rate 0.1 --target 1 --out runs/sst2-badnets\n\n"
        "bdcli attack finetune --model minilm --data runs/sst2-badnets --lr 5e-5 --out runs/victim\n\n"
        "bdcli defend maxent --model runs/victim --data sst2 --sd 0.01 --out runs/maxent\n\n"
        "bdcli evaluate --model runs/maxent --data runs/sst2-badnets --out runs/maxent-eval\n\n"
        "bdcli report runs/ --format markdown"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
poison_app = typer.Typer(help="Poison a clean data set: writes the poisoned train split and the ASR test set.", no_args_is_help=True)
attack_app = typer.Typer(help="Plant a backdoor: train a victim model on poisoned data.", no_args_is_help=True)
defend_app = typer.Typer(help="Remove a backdoor from a classifier with clean data.", no_args_is_help=True)
app.add_typer(poison_app, name="poison")
app.add_typer(attack_app, name="attack")
app.add_typer(defend_app, name="defend")

_DEBUG = {"on": bool(os.environ.get("BDCLI_DEBUG"))}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bdcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _DEBUG["on"] = _DEBUG["on"] or debug


@contextmanager
def guard() -> Iterator[None]:
    """User mistakes become one line on stderr and a non-zero exit (2 for usage, 1 for failures)."""
    try:
        yield
    except BdcliError as e:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; no output folder was written (rerun with --resume to continue from the last "
                   "checkpoint)", err=True)
        raise typer.Exit(130) from None


def _opt(name: str, default: Any, *decls: str, help: str, ann: Any = str, panel: str = "Inputs and outputs") -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(default, *decls, help=help, rich_help_panel=panel), annotation=ann
    )


DATA_OPTS = [
    _opt("data", ..., "--data", help="A named set (sst2, agnews, mr, yelp, hsol), a bdcli data folder, or your own TSV/CSV/JSONL file or folder."),
    _opt("data_dir", None, "--data-dir", help="Folder of the named data sets (default: $BDCLI_DATA_DIR).", ann=Optional[str]),
    _opt("text_col", "text", "--text-col", help="Text column of your own files."),
    _opt("label_col", "label", "--label-col", help="Label column of your own files."),
    _opt("encoding", "utf-8", "--encoding", help="Text encoding of your own files (e.g. latin-1, cp1252)."),
    _opt("drop_bad_rows", False, "--drop-bad-rows", help="Drop malformed and duplicate rows of your own files (counted in the manifest) instead of failing.", ann=bool),
]
OUT_OPTS = [
    _opt("out", ..., "--out", "-o", help="Output folder (written atomically; rerunning with the same inputs reuses it)."),
    _opt("force", False, "--force", help="Replace an existing output folder that holds a different result.", ann=bool),
    _opt("resume", False, "--resume", help="Continue a killed run from its last checkpoint (see --checkpoint-every).", ann=bool),
    _opt("json_out", False, "--json", help="Print a machine-readable JSON summary on stdout.", ann=bool),
]
MODEL_OPT = _opt("model", ..., "--model", help="Model to use: a bdcli model folder, any Hugging Face classifier folder, an alias or a hub id.")


def _data_spec(data: str, data_dir: str | None, text_col: str, label_col: str, encoding: str, drop_bad_rows: bool):
    from ..api import DataSpec

    return DataSpec(data, data_dir, text_col, label_col, drop_bad_rows=drop_bad_rows, encoding=encoding)


def _print_result(result, json_out: bool) -> None:
    m = result.manifest
    if json_out:
        typer.echo(json.dumps({"out": str(result.out), "reused": result.reused, "provenance": m.get("provenance"),
                               "summary": m.get("summary")}, default=str))
        return
    verb = "up to date (same inputs and config), reused" if result.reused else "wrote"
    typer.echo(f"{verb} {result.out}", err=True)
    summary = m.get("summary") or {}
    for warning in summary.get("warnings", []) if isinstance(summary, dict) else []:
        typer.echo(f"warning: {warning}", err=True)
    if "acc" in summary:
        asr = summary.get("asr")
        typer.echo(f"ACC {summary['acc']:.4f}" + (f"  ASR {asr:.4f}" if asr is not None else "  ASR n/a (no poisoned test set)"))


def _command(Config: type, call, *, with_model: bool):
    """One CLI command over one API call: options from ``Config`` plus the shared input/output
    options; ``call(cfg, model, spec, out, force=, resume=)`` does the work."""

    def run(Config, values, *, data, data_dir, text_col, label_col, encoding, drop_bad_rows, out, force, resume, json_out, model=None):
        with guard():
            cfg = Config(**values)
            spec = _data_spec(data, data_dir, text_col, label_col, encoding, drop_bad_rows)
            _print_result(call(cfg, model, spec, out, force=force, resume=resume), json_out)

    return command_from_config(Config, ([MODEL_OPT] if with_model else []) + DATA_OPTS + OUT_OPTS, run)


def _short(text: str) -> str:
    """The first paragraph on one line: the command lists show it, and a docstring's line breaks would
    otherwise break those lines mid-sentence."""
    return " ".join(text.split("\n\n", 1)[0].split())


def _register_components() -> None:
    from .. import api
    from ..attacks import ATTACKS
    from ..defenses import DEFENSES
    from ..poison import POISONERS

    for name in POISONERS.names():
        cls = POISONERS.get(name)
        example = f"Example: bdcli poison {name} --data sst2 --target 1 --out runs/sst2-{name}"
        call = lambda cfg, model, spec, out, n=name, **kw: api.poison(n, cfg, spec, out, **kw)  # noqa: E731
        doc = inspect.getdoc(cls) or ""
        poison_app.command(name, help=f"{doc}\n\n{example}", short_help=_short(doc))(_command(cls.Config, call, with_model=False))
    for name in ATTACKS.names():
        proc = ATTACKS.get(name)
        example = "Example: " + (proc.example or f"bdcli attack {name} --model minilm --data runs/sst2-badnets --lr 5e-5 --out runs/victim")
        call = lambda cfg, model, spec, out, n=name, **kw: api.attack(n, cfg, spec, out, **kw)  # noqa: E731
        attack_app.command(name, help=f"{proc.help}\n\n{example}", short_help=_short(proc.help))(_command(proc.Config, call, with_model=False))
    for name in DEFENSES.names():
        proc = DEFENSES.get(name)
        example = "Example: " + (proc.example or f"bdcli defend {name} --model runs/victim --data sst2 --out runs/{name}")
        note = "The data must be clean; the defender uses --clean-fraction of its train split."
        call = lambda cfg, model, spec, out, n=name, **kw: api.defend(n, cfg, model, spec, out, **kw)  # noqa: E731
        defend_app.command(name, help=f"{proc.help}\n\n{note}\n\n{example}", short_help=_short(proc.help))(_command(proc.Config, call, with_model=True))
    app.command(
        "evaluate",
        help=(
            "Measure ACC on the clean test split and, for poisoned data, ASR (share of triggered non-target "
            "test rows classified as the target label) and per-class ASR_c. Writes metrics.json.\n\n"
            "Example: bdcli evaluate --model runs/maxent --data runs/sst2-badnets --out runs/maxent-eval"
        ),
    )(_command(api.EvalConfig, lambda cfg, model, spec, out, **kw: api.evaluate(cfg, model, spec, out, **kw), with_model=True))


@app.command("report")
def report(
    paths: List[Path] = typer.Argument(..., help="metrics.json files or folders to search for them."),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, csv, latex, html or rich."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table to this file instead of stdout."),
) -> None:
    """Gather metrics.json files into the papers' table layout: ACC/ASR per attack and method, the Δ
    column (mean ASR drop against the victim), best in bold and second best underlined.

    Example: bdcli report runs/ --format markdown
    """
    from ..report import FORMATS, build_table, collect, render, rich_table

    with guard():
        from ..errors import UsageError

        if fmt not in FORMATS and fmt != "rich":
            raise UsageError(f"unknown format {fmt!r}; use one of {', '.join([*FORMATS, 'rich'])}")
        table = build_table(collect(list(paths)))
        if fmt == "rich":
            from rich.console import Console

            Console().print(rich_table(table))
            return
        text = render(table, fmt)
        if out is None:
            typer.echo(text)
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
        typer.echo(f"wrote {out}", err=True)


_register_components()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # Job schedulers and CI stop work with SIGTERM: treat it like Ctrl-C, so that the temporary output
    # folder and the lock are removed and the checkpoint is kept for --resume.
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":
    sys.exit(main())
