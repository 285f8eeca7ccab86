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
from .usage import OneLineUsageErrors

app = typer.Typer(
    cls=OneLineUsageErrors,
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
    _to_stderr("warning", summary.get("warnings", []) if isinstance(summary, dict) else [])
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


def _step_call(kind: str, name: str):
    """The CLI's call for one command: build the Step and execute it, as the recipe runner does."""

    def call(cfg, model, spec, out, **kw):
        from ..steps import Step, execute

        inputs = {"data": spec}
        if model is not None:
            inputs["model"] = model
        elif kind == "attack":
            inputs["model"] = cfg.model
        return execute(Step(kind, name, cfg, inputs), out, **kw)

    return call


def _register_components() -> None:
    from .. import api
    from ..attacks import ATTACKS
    from ..defenses import DEFENSES
    from ..poison import POISONERS

    for name in POISONERS.names():
        cls = POISONERS.get(name)
        example = f"Example: bdcli poison {name} --data sst2 --target 1 --out runs/sst2-{name}"
        doc = inspect.getdoc(cls) or ""
        poison_app.command(name, help=f"{doc}\n\n{example}", short_help=_short(doc))(
            _command(cls.Config, _step_call("poison", name), with_model=False))
    for name in ATTACKS.names():
        proc = ATTACKS.get(name)
        example = "Example: " + (proc.example or f"bdcli attack {name} --model minilm --data runs/sst2-badnets --lr 5e-5 --out runs/victim")
        attack_app.command(name, help=f"{proc.help}\n\n{example}", short_help=_short(proc.help))(
            _command(proc.Config, _step_call("attack", name), with_model=False))
    for name in DEFENSES.names():
        proc = DEFENSES.get(name)
        example = "Example: " + (proc.example or f"bdcli defend {name} --model runs/victim --data sst2 --out runs/{name}")
        note = "The data must be clean; the defender uses --clean-fraction of its train split."
        defend_app.command(name, help=f"{proc.help}\n\n{note}\n\n{example}", short_help=_short(proc.help))(
            _command(proc.Config, _step_call("defend", name), with_model=True))
    app.command(
        "evaluate",
        help=(
            "Measure ACC on the clean test split and, for poisoned data, ASR (share of triggered non-target "
            "test rows classified as the target label) and per-class ASR_c. Writes metrics.json.\n\n"
            "Example: bdcli evaluate --model runs/maxent --data runs/sst2-badnets --out runs/maxent-eval"
        ),
    )(_command(api.EvalConfig, _step_call("evaluate", "standard"), with_model=True))
    _register_probe_sd()


def _register_probe_sd() -> None:
    from ..probe import PROBES

    proc = PROBES.get("sd")
    asr_opt = _opt("asr_data", None, "--asr-data", ann=Optional[str],
                   help="Poisoned data (a `bdcli poison` folder) whose test-poison split measures ASR.")

    def run(Config, values, *, model, asr_data, data, data_dir, text_col, label_col, encoding, drop_bad_rows, out,
            force, resume, json_out):
        from ..api import DataSpec
        from ..steps import Step, execute

        with guard():
            cfg = Config(**values)
            inputs = {"model": model, "data": _data_spec(data, data_dir, text_col, label_col, encoding, drop_bad_rows)}
            if asr_data is not None:
                inputs["asr_data"] = DataSpec(asr_data, data_dir)
            result = execute(Step("probe", "sd", cfg, inputs), out, force=force, resume=resume)
            if not json_out:
                typer.echo((Path(result.out) / "probe.md").read_text().rstrip())
            _print_result(result, json_out)

    app.command("probe-sd", help=f"{proc.help}\n\nExample: {proc.example}", short_help=_short(proc.help))(
        command_from_config(proc.Config, [MODEL_OPT, asr_opt] + DATA_OPTS + OUT_OPTS, run))


@app.command("run")
def run_recipe(
    recipe: Path = typer.Argument(..., help="A YAML recipe (see recipes/README.md), e.g. recipes/maxent/table2-sst2.yaml."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Store of step outputs and the report (default: runs/<recipe name>[-<profile>])."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="A profile of the recipe, e.g. cpu (the packaged MiniLM, fewer seeds, CPU budgets)."),
    set_: List[str] = typer.Option([], "--set", help="Override any recipe field, repeatable: --set seeds=[1,2] --set attacks.badnets.attack.epochs=1."),
    only: Optional[str] = typer.Option(None, "--only", help="Run only the cells matching this pattern: dataset/attack/seed/defense, e.g. 'sst2/badnets/*' or '*/ft'."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=64, help="Steps run in parallel, each in its own process; the cores are split between them."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=256, help="Torch threads per step (default: cores / jobs; with --executor ray: 1, and each step reserves that many CPUs of the cluster). Results are bit-identical only at the same thread count."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (steps, shared steps, steps already done, training steps) and run nothing."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1, help="Stop the whole run after this many seconds (finished steps are kept)."),
    executor: str = typer.Option("local", "--executor", help="Where steps run: 'local' (processes on this machine) or 'ray' (a Ray cluster, see --address)."),
    address: Optional[str] = typer.Option(None, "--address", help="--executor ray: 'local' (start Ray here), 'auto' (the cluster this machine joined), host:port or ray://host:port. --out must then be on storage every node mounts."),
) -> None:
    """Reproduce a whole table from one YAML recipe: expand its matrix (data sets x seeds x attacks x
    defenses) into steps, run each step once (a victim serves all its defenses), reuse every finished
    step found in the store, and write the report (mean ± std over seeds, the paper's numbers beside).

    Example: bdcli run recipes/maxent/table2-sst2.yaml --profile cpu --jobs 2
    """
    with guard():
        from ..recipes import describe_plan, estimate_steps, expand, load_recipe

        from ..errors import UsageError

        if executor not in ("local", "ray"):
            raise UsageError(f"unknown executor {executor!r}; use local or ray")
        if executor == "ray":
            from ..recipes.ray_executor import check_address

            check_address(address or "")
        elif address is not None:
            raise UsageError("--address names a Ray cluster: use it with --executor ray")
        rec = load_recipe(recipe, profile, list(set_))
        plan = expand(rec, only, dry_run=dry_run)
        folder = out or Path("runs") / (rec.name + (f"-{profile}" if profile else ""))
        if dry_run:
            typer.echo(describe_plan(plan, folder if folder.exists() else None))
            return
        estimate_steps(plan)  # reads every data set the plan names: data that is not here stops the run before any step
        _run_plan(rec, plan, folder, jobs, threads, timeout, profile, executor, address)


def _run_plan(rec, plan, folder: Path, jobs: int, threads: int | None, timeout: float | None, profile: str | None,
              executor_name: str = "local", address: str | None = None) -> None:
    from ..progress import enabled
    from ..recipes import LocalProcessExecutor, default_threads, gather_records, plan_warnings, print_event, run_plan
    from ..report import TableOrder, build_table, write_report

    if executor_name == "ray":
        from ..recipes.ray_executor import RayExecutor

        # Workers resolve paths on their own nodes: the store is named by its absolute path.
        folder = folder.resolve()
        executor = RayExecutor(address, jobs, threads or 1, folder)
    else:
        executor = LocalProcessExecutor(jobs, threads or default_threads(jobs))
    live = enabled()
    try:
        summary = run_plan(plan, folder, executor, on_event=None if live else print_event, live=live, timeout_s=timeout)
    finally:
        executor.stop()
    ran = [i for i, s in summary.status.items() if s == "done" and i not in summary.reused]
    typer.echo(f"{len(ran)} steps ran, {len(summary.reused)} reused, {len(summary.failed)} failed, "
               f"{sum(1 for s in summary.status.values() if s == 'skipped')} skipped (after a failure) in "
               f"{summary.seconds:.0f} s; outputs in {folder}", err=True)
    for id, msg in summary.failed.items():
        typer.echo(f"failed: {id}: {msg}", err=True)
    records = gather_records(plan, folder)
    if records:
        meta = {"recipe": rec.name, "recipe_path": rec.path, "profile": profile, "seeds": rec.seeds,
                "wall_seconds": summary.seconds, "step_seconds": summary.step_seconds,
                "step_peak_rss_mb": summary.peak_rss_mb}
        from ..artifacts import versions

        meta["versions"] = versions()
        title = rec.name + (f" ({profile} profile)" if profile else "")
        figures = []
        try:
            from ..report.figures import draw_figures

            figures = draw_figures([folder], folder / "figures", records=records, recipe=rec.path)
        except BdcliError as e:  # the numbers are in; a figure that cannot be drawn must not fail the run
            typer.echo(f"figures not drawn: {e}", err=True)
        table = build_table(records, TableOrder.of(rec))
        typer.echo(write_report(table, folder, title=title, paper=rec.report.get("paper"), meta=meta,
                                notes=[*rec.notes, *_warn_untrained(records), *plan_warnings(plan, folder)],
                                figures=figures))
    if summary.failed:
        raise typer.Exit(1)


def _warn_untrained(records: list) -> list[str]:
    """Print a warning for each victim that never learned its task and each model that answers one label;
    the sentences, for the report's notes."""
    from ..report.health import one_label_models, untrained_victims

    return _to_stderr("warning", untrained_victims(records) + one_label_models(records))


def _warn_unmarked(table) -> list[str]:
    """Print a note for each column left without a best mark (a method has no number there)."""
    return _to_stderr("note", list(table.attrs.get("unmarked") or []) if table is not None else [])


def _to_stderr(kind: str, lines: list[str]) -> list[str]:
    for line in lines:
        typer.echo(f"{kind}: {line}", err=True)
    return lines


def _collect_warned(paths: list[Path]) -> list:
    """The records under ``paths``, after a warning for each victim among them that never learned its task."""
    from ..report import collect

    records = collect(list(paths))
    _warn_untrained(records)
    return records


def _report_folder(paths: list[Path], out: Path, recipe: Path | None, paper, order, title: str, plots: bool) -> None:
    """``bdcli report ... --out FOLDER``: tables, figures and the one-page HTML report in FOLDER."""
    from ..errors import BdcliError
    from ..report import build_table, collect, write_report
    from ..report.figures import draw_figures, find_inputs

    from ..report.table import METRICS_FILE

    try:
        records = collect(paths)
    except BdcliError as e:
        # Only "nothing to tabulate" gives way to a page of figures; a broken metrics.json still stops.
        if not str(e).startswith(f"no {METRICS_FILE} under") or not find_inputs(paths):
            raise
        records = []  # figure inputs only (a probe, a dynamics table): a page of figures, no table
    figures = draw_figures(paths, out / "figures", records=records, recipe=recipe) if plots else []
    table = build_table(records, order) if records else None
    text = write_report(table, out, title=title, paper=paper, figures=figures,
                        notes=_warn_untrained(records) + _warn_unmarked(table))
    typer.echo(text)
    typer.echo(f"wrote {out / 'report.html'}" + (f" with {len(figures)} figure(s) in {out / 'figures'}" if figures else ""),
               err=True)


@app.command("list")
def list_components(
    kind: Optional[str] = typer.Argument(None, help="poisoner, attack, defense or evaluator (default: all)."),
) -> None:
    """Print the catalog: every component with its version and one line of help.

    Example: bdcli list defense
    """
    with guard():
        from ..registry import KINDS, entries

        wanted = {"poison": "poisoner", "defend": "defense", "defenses": "defense", "attacks": "attack"}.get(kind or "", kind)
        if wanted is not None and wanted not in KINDS:
            from ..errors import UsageError

            raise UsageError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        for e in entries(wanted):
            typer.echo(f"{e.kind:<9} {e.name:<13} v{e.version}  {e.display:<12} {_short(e.help)[:100]}")


@app.command("report")
def report(
    paths: List[Path] = typer.Argument(..., help="metrics.json files or folders to search for them."),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown, csv, latex, html, json or rich."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table to this file instead of stdout; a FOLDER (existing, or a name without a suffix) gets the whole report: every format, figures/*.png and one self-contained report.html."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Print the paper's numbers of this recipe beside ours, its data sets and attacks in its order; its report.sweep names the x axis of the sweep figures."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A JSON report (--format json) to check against: exit 1 if a number drifts past --tolerance."),
    tolerance: float = typer.Option(1.0, "--tolerance", help="Allowed drift for --compare, in percentage points."),
    no_plots: bool = typer.Option(False, "--no-plots", help="With --out FOLDER: write the tables only, no figures (matplotlib not needed)."),
    title: Optional[str] = typer.Option(None, "--title", help="Title of the report page (default: the recipe's name or 'bdcli report')."),
    per_seed: bool = typer.Option(False, "--per-seed", help="One line per evaluated model instead of means: data set, attack, method, seed, ACC, ASR, ASR_c of each class, training steps."),
) -> None:
    """Gather metrics.json files into the papers' table layout: ACC/ASR per attack and method, the Δ
    column (mean ASR drop against the victim), best in bold and second best underlined (a model whose
    clean ACC is at chance answers one label: it is named on stderr and not ranked).

    With --out FOLDER (an existing folder or a name without a suffix) it writes the whole report there:
    report.md/.csv/.tex/.json, figures/*.png for every figure the inputs allow (SD traces, probe-sd's
    Figure 5 and 9-10, training dynamics, t-SNE, sweeps of a recipe store, trigger RMSE), and
    report.html, one self-contained page holding the tables and the figures.

    Example: bdcli report runs/ --format markdown; bdcli report runs/store --recipe R.yaml --out runs/store
    """
    from ..report import FORMATS, TableOrder, build_table, render, rich_table

    with guard():
        from ..errors import BdcliError, UsageError

        if fmt not in FORMATS and fmt not in ("rich", "json"):
            raise UsageError(f"unknown format {fmt!r}; use one of {', '.join([*FORMATS, 'json', 'rich'])}")
        paper, order, name = None, TableOrder(), None
        if recipe is not None:
            from ..recipes import load_recipe

            # Validated as `bdcli run` reads it, so a broken recipe stops here instead of ordering a table.
            spec = load_recipe(recipe)
            # Its data sets, attacks and defenses in its (the paper's) order, whatever order an archive
            # was extended in.
            paper, order, name = spec.report.get("paper"), TableOrder.of(spec), spec.name
        if per_seed:
            if compare is not None:
                raise UsageError("--per-seed lists each model's numbers: it takes no --compare")
            if out is not None and (out.is_dir() or not out.suffix):
                raise UsageError("--per-seed writes one table: give --out a file name with a suffix, e.g. seeds.md")
            _write_text(_per_seed_text(_collect_warned(paths), fmt, order), out)
            return
        if out is not None and compare is None and (out.is_dir() or not out.suffix):
            _report_folder(list(paths), out, recipe, paper, order, title or name or "bdcli report",
                           not no_plots)
            return
        table = build_table(_collect_warned(paths), order)
        _warn_unmarked(table)
        if compare is not None:
            from ..report import drift

            problems = drift(table, compare, tolerance)
            for p in problems:
                typer.echo(f"drift: {p}", err=True)
            if problems:
                typer.echo(f"{len(problems)} numbers drifted past {tolerance} points from {compare}", err=True)
                raise typer.Exit(1)
            typer.echo(f"every number of {compare} holds within {tolerance} points", err=True)
            return
        if fmt == "rich":
            from rich.console import Console

            Console().print(rich_table(table))
            return
        if fmt == "json":
            from ..report import to_json

            text = to_json(table, paper)
        else:
            from ..report import paper_comparison, render_comparison

            text = render(table, fmt)
            if paper:
                text += "\n" + render_comparison(paper_comparison(table, paper), fmt)
        _write_text(text, out)


def _per_seed_text(records: list, fmt: str, order) -> str:
    from ..report.compare import render_flat
    from ..report.seeds import seed_numbers, seed_table

    frame = seed_table(records, order)
    if fmt == "json":
        return frame.to_json(orient="records", indent=2, force_ascii=False) + "\n"
    return render_flat(frame, "markdown" if fmt == "rich" else fmt, seed_numbers(frame))


def _write_text(text: str, out: Optional[Path]) -> None:
    if out is None:
        typer.echo(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, out)
    typer.echo(f"wrote {out}", err=True)


@app.command("archive")
def archive(
    store: Path = typer.Argument(..., help="A recipe store: the --out folder of bdcli run."),
    dest: Path = typer.Argument(..., help="The archive folder; created, or extended if it holds the same recipe."),
    replace: bool = typer.Option(False, "--replace", help="Take the store's files where the archive holds other numbers for the same step."),
) -> None:
    """Copy a recipe store's results without model weights or data (its plan, and each finished step's
    manifest, metrics, trigger RMSE, geometry and dynamics): a folder small enough to commit, that
    bdcli report reads like the store. Archiving a later run of the same recipe (more seeds, in a fresh
    store) into the same folder extends it; where that run reran a cell with other settings (a column's
    attack budget changed), its steps supersede the archived ones, which leave the archive with every step
    that read them.

    Example: bdcli run recipes/gba/table2.yaml --profile cpu --out runs/gba; bdcli archive runs/gba
    docs/results/gba-table2; bdcli report docs/results/gba-table2 --recipe recipes/gba/table2.yaml
    """
    with guard():
        from ..recipes.archive import archive_store

        s = archive_store(store, dest, replace=replace)
        typer.echo(f"archived {s.steps} finished steps of {store} into {dest}: {len(s.new)} new, "
                   f"{len(s.replaced)} replaced, {len(s.kept)} already there"
                   + (f", {len(s.superseded)} earlier steps superseded (e.g. {s.superseded[0]})" if s.superseded else "")
                   + (f"; {len(s.unfinished)} planned steps are not finished and were left out" if s.unfinished else ""),
                   err=True)


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
