"""Turn ``metrics.json`` files into the paper's result tables (Table 1 / Table 2 layout).

The table is a plain ``pandas.DataFrame`` of numbers so that it stays usable as data:

* index: ``Method`` (row labels), or ``(Dataset, Method)`` when the records span several data sets;
* columns: ``(attack, "ACC" | "ASR")`` pairs in the paper's attack order, plus ``("Δ", "")``;
  records without an attack (clean data) give a single ``("Clean", "ACC")`` column in front;
* values: percent, rounded to 2 decimals; NaN where there is nothing to show.

Two things a plain frame cannot say live in ``table.attrs``:

* ``attrs["victims"]``: the index keys of the victim rows, whose Δ the renderers print as "-"
  (their Δ cell is NaN, like a row that has no victim to compare with, so the column stays numeric);
* ``attrs["marks"]``: a frame shaped like the table holding "best" / "second" / "" so that each
  renderer can style the winners its own way (bold/underline, \\textbf/\\underline, <b>/<u>, rich styles);
* ``attrs["unmarked"]``: a sentence for each column of a block left without marks because a method has
  no number there (a partial run): the best of the methods present need not be the best.

``render(table, fmt)`` returns text for ``FORMATS``; ``rich_table(table)`` returns a ``rich.table.Table``
for terminals (rich is not a text format, so it is kept out of ``render``'s ``str`` contract).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
from rich.table import Table as RichTable

from ..errors import BdcliError, UsageError
from .health import at_chance

METRICS_FILE = "metrics.json"

# Rows that are not a defense; every defense is named by its catalog entry (bdcli.registry).
METHOD_NAMES = {"victim": "Victim", "clean": "Clean model"}
# Baselines first, as in the paper; every other method follows in first-seen order.
METHOD_ORDER = ("victim", "clean", "ft", "fth", "freelb", "fine-pruning")


def method_display(method: str) -> str:
    from ..registry import display_name

    return METHOD_NAMES.get(method) or display_name(method, ("defense",)) or method


def attack_display(attack: str) -> str:
    from ..registry import display_name

    return display_name(attack, ("poisoner", "attack")) or attack


def attack_order(wanted: Iterable[str] = ()) -> list[str]:
    """Display names of the catalog's attacks in the papers' column order, those ``wanted`` (a recipe's
    attack names, in any spelling the catalog knows) first and in its order."""
    from ..registry import entries

    named = sorted((e.order, e.display) for k in ("poisoner", "attack") for e in entries(k) if e.name != "finetune")
    return _wanted_first((d for _, d in named), [attack_display(w) for w in wanted])


CLEAN = "Clean"  # column for records evaluated on clean data only (attack null)

# The papers' spelling of each data set, which recipes' paper numbers use.
DATASET_NAMES = {"sst2": "SST-2", "ag_news": "AG", "agnews": "AG", "mr": "MR", "hsol": "HS", "yelp": "Yelp"}

ACC, ASR = "ACC", "ASR"
DELTA = ("Δ", "")
COST_STEPS, COST_SECONDS = ("Cost", "steps"), ("Cost", "s")
BEST, SECOND = "best", "second"
FORMATS = ("markdown", "csv", "latex", "html")


# ----------------------------------------------------------------------------------------- collect


def collect(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """Load every ``metrics.json`` under ``paths`` (files are taken as given, folders searched
    recursively, skipping folders whose name starts with "."), each record with its ``path`` added.

    Order: the arguments' order, sorted within each folder; a file reached twice is read once.
    """
    paths = [Path(p) for p in paths]
    files: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        for file in _metrics_files(path):
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    if not files:
        where = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise BdcliError(f"no {METRICS_FILE} under {where}")
    return [_load(file) for file in files]


def _metrics_files(path: Path) -> list[Path]:
    if not path.exists():
        raise BdcliError(f"{path} does not exist")
    if path.is_file():
        return [path]
    found = []
    for folder, subfolders, names in os.walk(path):
        # Dot-folders are temporary outputs of interrupted runs; pruning here also skips their children.
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        if METRICS_FILE in names:
            found.append(Path(folder) / METRICS_FILE)
    rank = _plan_rank(path)
    if rank:
        # A store keeps the folders of steps its plan superseded (a cell rerun with other settings), so
        # that going back reuses them; the plan names the current ones, and only those are results.
        found = [f for f in found if str(f) in rank]
    return sorted(found, key=lambda f: (rank.get(str(f), len(rank)), str(f)))


def _plan_rank(root: Path) -> dict[str, int]:
    """A recipe store or archive (``plan.json`` at its root) is read in the plan's order, so rows come in
    the recipe's order of defenses as in ``bdcli run``'s own report, not in the order of hashed folder
    names. Empty where there is no plan of ours: every file is read, sorted by path."""
    plan = root / "plan.json"
    if not plan.is_file():
        return {}
    try:
        nodes = json.loads(plan.read_text(encoding="utf-8")).get("nodes") or []
        return {str((root / n["folder"] / METRICS_FILE)): i for i, n in enumerate(nodes) if n.get("folder")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, KeyError):
        return {}  # not our plan


def _load(file: Path) -> dict[str, Any]:
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BdcliError(f"{file} is not a readable JSON file: {e}") from None
    if not isinstance(record, dict):
        raise BdcliError(f"{file} does not hold a JSON object")
    _check(record, str(file))
    return {**record, "path": str(file)}


def _check(record: dict[str, Any], where: str) -> None:
    # build_table also takes records that never went through collect, so it checks them too.
    if not _is_fraction(record.get("acc")):
        raise BdcliError(f"{where} has no 'acc' value between 0 and 1")
    if record.get("asr") is not None and not _is_fraction(record["asr"]):
        raise BdcliError(f"{where} has an 'asr' that is not a number between 0 and 1")


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


# -------------------------------------------------------------------------------------- build_table


@dataclass
class _Sample:
    acc: float
    asr: float
    seed: Any
    lineage: str | None  # the upstream fingerprints: the same result reached twice is one sample
    cost: dict[str, Any] | None
    one_label: bool = False  # clean ACC at chance: the model answers one label (report/health.py)


@dataclass
class _Row:
    dataset: str
    label: str
    method: str
    cells: dict[str, tuple[float, float]] = field(default_factory=dict)  # attack -> mean (acc, asr) fractions
    paths: dict[str, str] = field(default_factory=dict)  # attack -> file, to name duplicates
    samples: dict[str, list[_Sample]] = field(default_factory=dict)  # attack -> one per seed

    @property
    def is_victim(self) -> bool:
        return self.method == "victim"

    def one_label(self, attack: str | None) -> bool:
        """Whether some seed's model answers one label, under ``attack`` (None: under any attack)."""
        cells = [self.samples.get(attack, [])] if attack is not None else list(self.samples.values())
        return any(s.one_label for samples in cells for s in samples)


@dataclass(frozen=True)
class TableOrder:
    """A recipe's order for its table: data-set blocks (``["yelp", "mr", "hsol"]``), attack columns and
    method rows (its attack and defense names, in any spelling the catalog knows). What it does not name
    follows: data sets in first-seen order, attacks in the catalog's, methods in first-seen order. Within
    that, the victim and the papers' baselines (METHOD_ORDER) always come first. Without one, an archive
    extended run by run shows its blocks in the order the runs were archived and its columns in the
    catalog's order, which is the maximum-entropy paper's, not GBA's."""

    datasets: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()

    @classmethod
    def of(cls, recipe: Any) -> "TableOrder":
        """The order of a validated recipe (``bdcli.recipes.Recipe``)."""
        return cls(tuple(recipe.datasets), tuple(a.key for a in recipe.attacks), tuple(k for k, _ in recipe.defenses))


def build_table(records: Iterable[dict[str, Any]], order: TableOrder = TableOrder()) -> pd.DataFrame:
    """Arrange records as the paper's table (see the module docstring), in ``order``."""
    rows = _group_rows(list(records))
    attacks = _attack_columns(rows, order.attacks)
    datasets = dataset_order([r.dataset for r in rows], order.datasets)
    rows = sorted(rows, key=_row_sort_key(rows, datasets, list(order.methods)))
    victims = _victims(rows)

    columns = pd.MultiIndex.from_tuples(
        [(a, m) for a in attacks for m in _metrics_of(a)] + [DELTA], names=["Attack", "Metric"]
    )
    with_cost = any(s.cost for r in rows for ss in r.samples.values() for s in ss)
    if with_cost:
        columns = columns.append(pd.MultiIndex.from_tuples([COST_STEPS, COST_SECONDS]))
    data = [_row_values(r, attacks, victims.get(r.dataset)) + (_cost(r) if with_cost else []) for r in rows]
    index = _index(rows, several_datasets=len(datasets) > 1)
    table = pd.DataFrame(data, index=index, columns=columns, dtype=float)
    stds = [_row_stds(r, attacks) + ([math.nan, math.nan] if with_cost else []) for r in rows]
    ns = [_row_ns(r, attacks) + ([0, 0] if with_cost else []) for r in rows]
    table.attrs["std"] = pd.DataFrame(stds, index=index, columns=columns, dtype=float)
    table.attrs["n"] = pd.DataFrame(ns, index=index, columns=columns, dtype=float)
    table.attrs["datasets"] = datasets
    table.attrs["victims"] = [index[i] for i, r in enumerate(rows) if r.is_victim]
    table.attrs["marks"], table.attrs["unmarked"] = _marks(table, rows)
    return table


def dataset_order(seen: Iterable[str], wanted: Iterable[str] = ()) -> list[str]:
    """The data sets in ``seen`` (display names, first-seen order), those ``wanted`` (any spelling) first."""
    return _wanted_first(seen, [DATASET_NAMES.get(d, d) for d in wanted])


def _wanted_first(seen: Iterable[str], wanted: list[str]) -> list[str]:
    """``seen`` without repeats, the items of ``wanted`` first and in its order, the rest as they came."""
    first = list(dict.fromkeys(seen))
    return sorted(first, key=lambda d: (wanted_rank(d, wanted), first.index(d)))


def _group_rows(records: list[dict[str, Any]]) -> list[_Row]:
    if not records:
        raise BdcliError("no results to tabulate")
    rows: dict[tuple[str, str], _Row] = {}
    for rec in records:
        _check(rec, _where(rec))
        method = rec.get("method")
        dataset, attack, label = record_names(rec)
        if not label:
            raise BdcliError(f"{_where(rec)} has neither 'method' nor 'label'")
        # The victims of different attacks make one row, as in the papers' tables, whatever their labels.
        key = (dataset, "\0victim") if method == "victim" else (dataset, label)
        row = rows.setdefault(key, _Row(dataset, label, method or ""))
        seed = rec.get("seed")
        lineage = json.dumps(rec["upstream"], sort_keys=True) if rec.get("upstream") else None
        samples = row.samples.setdefault(attack, [])
        same_seed = [s for s in samples if s.seed == seed]
        if same_seed and lineage is not None and same_seed[0].lineage == lineage:
            continue  # one result reached through two paths (a store and a copy of it)
        if same_seed:
            what, fix = ("two victims", "report them separately") if method == "victim" else (
                f"{label!r}", "give one a distinct 'label' or report them separately")
            seeds = f" with seed {seed}" if seed is not None else ""
            raise BdcliError(
                f"ambiguous: {row.paths[attack]} and {_where(rec)} both report {what} on {dataset} / {attack}{seeds}; {fix}"
            )
        if row.label != label:
            row.label = METHOD_NAMES["victim"]
        samples.append(_Sample(float(rec["acc"]), math.nan if rec.get("asr") is None else float(rec["asr"]), seed,
                               lineage, rec.get("cost"), at_chance(rec) is not None))
        row.cells[attack] = (_mean([x.acc for x in samples]), _mean([x.asr for x in samples]))
        row.paths[attack] = _where(rec)
    return list(rows.values())


def record_names(rec: dict[str, Any]) -> tuple[str, str, str | None]:
    """A record's data set, attack and row label as the tables print them (the papers' spelling)."""
    method = rec.get("method")
    dataset = DATASET_NAMES.get(rec.get("dataset") or "", rec.get("dataset") or "?")
    attack = attack_display(rec["attack"]) if rec.get("attack") else CLEAN
    return dataset, attack, rec.get("label") or (method_display(method) if method else None)


def method_rank(method: str | None) -> int:
    """Baselines first, in the papers' order (METHOD_ORDER); every other method after them."""
    return wanted_rank(method, METHOD_ORDER)


def wanted_rank(item: str | None, wanted: Sequence[str]) -> int:
    """``item``'s place in ``wanted`` (an order to follow); after all of them where it is not one."""
    return wanted.index(item) if item in wanted else len(wanted)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    """Sample standard deviation (n - 1), NaN for fewer than two values, as the papers' ± reads."""
    if len(values) < 2 or any(math.isnan(v) for v in values):
        return math.nan
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _where(record: dict[str, Any]) -> str:
    return str(record.get("path", "a record"))


def _percent(fraction: float) -> float:
    return round(100 * fraction, 2)


def _attack_columns(rows: list[_Row], wanted: Iterable[str] = ()) -> list[str]:
    seen = list(dict.fromkeys(a for r in rows for a in r.cells))
    known = attack_order(wanted)
    clean = [CLEAN] if CLEAN in seen else []
    return clean + [a for a in known if a in seen] + [a for a in seen if a not in known and a != CLEAN]


def _metrics_of(attack: str) -> tuple[str, ...]:
    return (ACC,) if attack == CLEAN else (ACC, ASR)


def _row_sort_key(rows: list[_Row], datasets: list[str], methods: list[str]) -> Callable[[_Row], tuple[int, ...]]:
    first_seen = {id(r): i for i, r in enumerate(rows)}

    def key(r: _Row) -> tuple[int, ...]:
        return datasets.index(r.dataset), method_rank(r.method), wanted_rank(r.label, methods), first_seen[id(r)]

    return key


def _victims(rows: list[_Row]) -> dict[str, _Row]:
    # _group_rows keeps one victim row per data set (Δ needs a single reference).
    return {r.dataset: r for r in rows if r.is_victim}


def _row_values(row: _Row, attacks: list[str], victim: _Row | None) -> list[float]:
    values = []
    for a in attacks:
        acc, asr = row.cells.get(a, (math.nan, math.nan))
        values += [_percent(acc), _percent(asr)] if a != CLEAN else [_percent(acc)]
    return values + [_delta(row, victim)]


def _row_stds(row: _Row, attacks: list[str]) -> list[float]:
    values = []
    for a in attacks:
        ss = row.samples.get(a, [])
        acc, asr = _std([100 * s.acc for s in ss]), _std([100 * s.asr for s in ss])
        values += [round(acc, 2), round(asr, 2)] if a != CLEAN else [round(acc, 2)]
    return values + [math.nan]


def _row_ns(row: _Row, attacks: list[str]) -> list[float]:
    values = []
    for a in attacks:
        n = len(row.samples.get(a, []))
        values += [n, n] if a != CLEAN else [n]
    return values + [0]


def _cost(row: _Row) -> list[float]:
    """Mean training steps and seconds of the row's models (the step that made each), over attacks and seeds."""
    costs = [s.cost for ss in row.samples.values() for s in ss if s.cost]
    if not costs:
        return [math.nan, math.nan]
    return [round(_mean([c.get("steps", 0) for c in costs]), 1), round(_mean([c.get("seconds", 0) for c in costs]), 1)]


def _delta(row: _Row, victim: _Row | None) -> float:
    """Mean ASR drop against the victim in points, over the attacks both rows report an ASR for.

    Taken from the unrounded fractions, as the paper does (its AG/FP Δ of 66.71 is 66.70 from the
    printed digits)."""
    if victim is None or row is victim:
        return math.nan
    drops = [
        victim.cells[a][1] - asr
        for a, (_, asr) in row.cells.items()
        if a in victim.cells and not math.isnan(asr) and not math.isnan(victim.cells[a][1])
    ]
    return round(100 * sum(drops) / len(drops), 2) if drops else math.nan


def _index(rows: list[_Row], several_datasets: bool) -> pd.Index:
    if several_datasets:
        return pd.MultiIndex.from_tuples([(r.dataset, r.label) for r in rows], names=["Dataset", "Method"])
    return pd.Index([r.label for r in rows], name="Method")


# A victim whose triggered rows reach the target label at most this often (%) carries no backdoor: the
# defenses' ASR in its column ranks nothing.
NO_BACKDOOR_ASR = 5.0


def _marks(table: pd.DataFrame, rows: list[_Row]) -> tuple[pd.DataFrame, list[str]]:
    """The best / second-best marks, and a sentence for each block column left unmarked because a
    method has no number there: the best of the methods present need not be the column's best."""
    marks = pd.DataFrame("", index=table.index, columns=table.columns, dtype=object)
    asr_columns = [j for j, c in enumerate(table.columns) if c[1] == ASR]
    several = len({r.dataset for r in rows}) > 1
    unmarked = []
    for j, column in enumerate(table.columns):
        if column[1] != ASR and column != DELTA:
            continue
        for dataset in dict.fromkeys(r.dataset for r in rows):
            # Winners are picked per data set (block of rows) and never include the victim itself.
            block = [i for i, r in enumerate(rows) if r.dataset == dataset and not r.is_victim]
            victim = next((i for i, r in enumerate(rows) if r.dataset == dataset and r.is_victim), None)
            why = _why_unmarked(table, rows, block, victim, j, asr_columns)
            if why:
                where = " ".join(str(c) for c in column if c)
                unmarked.append(f"{dataset} / {where}: no best marked, {why}" if several
                                else f"{where}: no best marked, {why}")
                continue
            # A model answering one label wins an ASR column by that label alone (report/health.py says so).
            values = {i: table.iat[i, j] for i in block if not rows[i].one_label(None if column == DELTA else column[0])}
            # Lower ASR is better; a larger Δ (bigger drop) is better.
            for i, mark in _rank(values, higher_is_better=column == DELTA).items():
                marks.iat[i, j] = mark
    return marks, unmarked


def _why_unmarked(table: pd.DataFrame, rows: list[_Row], block: list[int], victim: int | None, j: int,
                  asr_columns: list[int]) -> str | None:
    """Why column ``j`` of a block can have no winner, or None when it can."""
    if table.columns[j] == DELTA:
        # Δ is a mean over the attacks a row has: rows with other attacks are not comparable.
        patterns = {tuple(math.isnan(table.iat[i, k]) for k in asr_columns) for i in block}
        return "the rows report different attacks" if len(patterns) > 1 else None
    if victim is not None and table.iat[victim, j] <= NO_BACKDOOR_ASR:
        # NeuBA's trigger lands on a label by chance: on the other one no defense has anything to remove.
        return f"the victim's ASR is {table.iat[victim, j]:.2f}: it holds no backdoor to remove"
    missing = [rows[i].label for i in block if math.isnan(table.iat[i, j])]
    if not missing or len(missing) == len(block):  # a column nobody has is empty, not partial
        return None
    return ", ".join(missing) + (" has" if len(missing) == 1 else " have") + " no result there"


def _rank(values: dict[int, float], higher_is_better: bool) -> dict[int, str]:
    """Best and second-best among ``values`` (position -> value); ties share a mark, and where several
    methods all tie there is no winner to mark (GBA and its ablations all at ASR 100)."""
    distinct = sorted({v for v in values.values() if not math.isnan(v)}, reverse=higher_is_better)
    if len(distinct) == 1 and sum(not math.isnan(v) for v in values.values()) > 1:
        return {}
    wanted = dict(zip(distinct[:2], (BEST, SECOND)))
    return {i: wanted[v] for i, v in values.items() if v in wanted}


# ------------------------------------------------------------------------------------------ render


@dataclass
class _Cell:
    text: str
    mark: str = ""  # BEST, SECOND or ""


@dataclass
class _Line:
    dataset: str | None  # None: single data set, no Dataset column at all
    label: str
    cells: list[_Cell]
    first_of_block: bool
    last_of_block: bool


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as text: ``markdown`` (best **x**, second <u>x</u>), ``csv`` (plain numbers, one
    header row, no marks, victim Δ left empty), ``latex`` (booktabs; \\textbf / \\underline) or ``html``
    (<b> / <u>). For a terminal use ``rich_table``."""
    renderers = {"markdown": _markdown, "csv": _csv, "latex": _latex, "html": _html}
    if fmt not in renderers:
        raise UsageError(f"unknown report format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return renderers[fmt](table)


def rich_table(table: pd.DataFrame, title: str | None = None) -> RichTable:
    """The table for ``rich.console.Console.print``: best in bold, second-best underlined."""
    from rich.text import Text

    out = RichTable(title=title)
    if _has_datasets(table):
        out.add_column("Dataset")
    out.add_column("Method")
    for name in _flat_names(table, sep="\n"):
        out.add_column(name, justify="right")
    styles = {BEST: "bold", SECOND: "underline", "": ""}
    for line in _lines(table):
        lead = ([line.dataset if line.first_of_block else ""] if line.dataset is not None else []) + [line.label]
        cells = [Text(c.text, style=styles[c.mark]) for c in line.cells]
        out.add_row(*lead, *cells, end_section=line.last_of_block)
    return out


# --- the parts every format shares


def _has_datasets(table: pd.DataFrame) -> bool:
    return isinstance(table.index, pd.MultiIndex)


def _flat_names(table: pd.DataFrame, sep: str = " ") -> list[str]:
    return [attack if not metric else f"{attack}{sep}{metric}" for attack, metric in table.columns]


def _groups(table: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """Column groups for two-row headers: (attack, its metrics); Δ comes as ("Δ", [])."""
    groups: dict[str, list[str]] = {}
    for attack, metric in table.columns:
        groups.setdefault(attack, []).extend([metric] if metric else [])
    return list(groups.items())


def _lines(table: pd.DataFrame) -> list[_Line]:
    marks = _aligned_marks(table)
    stds = _aligned(table, "std")
    victims = set(table.attrs.get("victims", []))
    keys = list(table.index)
    datasets = [k[0] for k in keys] if _has_datasets(table) else [None] * len(keys)
    lines = []
    for i, key in enumerate(keys):
        cells = [
            _Cell(_number(table.iat[i, j], victim_delta=key in victims and col == DELTA,
                          std=stds.iat[i, j] if stds is not None else math.nan), marks.iat[i, j])
            for j, col in enumerate(table.columns)
        ]
        label = key[1] if _has_datasets(table) else key
        first = i == 0 or datasets[i - 1] != datasets[i]
        last = i == len(keys) - 1 or datasets[i + 1] != datasets[i]
        lines.append(_Line(datasets[i], str(label), cells, first, last))
    return lines


def _aligned_marks(table: pd.DataFrame) -> pd.DataFrame:
    # The marks ride in attrs; after slicing the table they must follow its rows and columns.
    marks = table.attrs.get("marks")
    if not isinstance(marks, pd.DataFrame):
        return pd.DataFrame("", index=table.index, columns=table.columns, dtype=object)
    return marks.reindex(index=table.index, columns=table.columns).fillna("")


def _aligned(table: pd.DataFrame, name: str) -> pd.DataFrame | None:
    frame = table.attrs.get(name)
    if not isinstance(frame, pd.DataFrame):
        return None
    return frame.reindex(index=table.index, columns=table.columns)


def _number(value: float, victim_delta: bool = False, std: float = math.nan) -> str:
    """``mean`` or, over several seeds, ``mean ± std``."""
    if victim_delta:
        return "-"
    if pd.isna(value):
        return ""
    return f"{value:.2f} ± {std:.2f}" if not pd.isna(std) else f"{value:.2f}"


# --- formats


def _markdown(table: pd.DataFrame) -> str:
    lead = (["Dataset"] if _has_datasets(table) else []) + ["Method"]
    header = lead + _flat_names(table)
    styled = {BEST: "**{}**", SECOND: "<u>{}</u>", "": "{}"}
    body = [
        ([(line.dataset if line.first_of_block else "")] if line.dataset is not None else [])
        + [_md_escape(line.label)]
        + [styled[c.mark].format(c.text) if c.text else "" for c in line.cells]
        for line in _lines(table)
    ]
    # Padding keeps the raw text readable in a terminal or a diff, not just when rendered.
    widths = [max(len(row[k]) for row in [header, *body]) for k in range(len(header))]
    widths = [max(w, 3) for w in widths]
    left = len(lead)

    def fmt(row: list[str]) -> str:
        cells = [c.ljust(w) if k < left else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join(
        (":" + "-" * (w + 1)) if k < left else ("-" * (w + 1) + ":") for k, w in enumerate(widths)
    ) + "|"
    notes = [f"\n_{_md_escape(u)}._" for u in table.attrs.get("unmarked") or []]
    return "\n".join([fmt(header), rule, *map(fmt, body), *notes]) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _csv(table: pd.DataFrame) -> str:
    flat = table.copy()
    flat.attrs = {}
    flat.columns = _flat_names(table)
    stds = _aligned(table, "std")
    if stds is not None and stds.notna().any().any():
        # Over seeds: each value column is followed by its standard deviation and n.
        ns = _aligned(table, "n")
        parts = []
        for j, name in enumerate(flat.columns):
            parts.append(flat.iloc[:, j].rename(name))
            if table.columns[j] not in (DELTA, COST_STEPS, COST_SECONDS):
                parts += [stds.iloc[:, j].rename(f"{name} std"), ns.iloc[:, j].rename(f"{name} n")]
        flat = pd.concat(parts, axis=1)
    buf = io.StringIO()
    flat.reset_index().to_csv(buf, index=False, float_format="%.2f", lineterminator="\n")
    return buf.getvalue()


def _latex(table: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (needs \\usepackage{booktabs}), two header rows like the paper."""
    lead = (["Dataset"] if _has_datasets(table) else []) + ["Method"]
    groups = _groups(table)
    n_values = len(table.columns)
    top, rules, bottom, col = list(lead), [], [""] * len(lead), len(lead) + 1
    for attack, metrics in groups:
        name = r"$\Delta$" if (attack, "") == DELTA else _tex_escape(attack)
        if len(metrics) > 1:
            top.append(rf"\multicolumn{{{len(metrics)}}}{{c}}{{{name}}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + len(metrics) - 1}}}")
        else:
            top.append(name)
        bottom += metrics or [""]
        col += max(len(metrics), 1)
    styled = {BEST: r"\textbf{{{}}}", SECOND: r"\underline{{{}}}", "": "{}"}
    out = [rf"\begin{{tabular}}{{{'l' * len(lead)}{'r' * n_values}}}", r"\toprule"]
    out += [" & ".join(top) + r" \\", " ".join(rules), " & ".join(bottom) + r" \\", r"\midrule"]
    lines = _lines(table)
    for line in lines:
        lead_cells = ([_tex_escape(line.dataset) if line.first_of_block else ""] if line.dataset is not None else [])
        cells = [styled[c.mark].format(c.text) if c.text else "" for c in line.cells]
        out.append(" & ".join(lead_cells + [_tex_escape(line.label)] + cells) + r" \\")
        if line.last_of_block and line is not lines[-1]:
            out.append(r"\midrule")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


_TEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in text)


def _html(table: pd.DataFrame) -> str:
    lead = (["Dataset"] if _has_datasets(table) else []) + ["Method"]
    top = [f'<th rowspan="2">{name}</th>' for name in lead]
    bottom = []
    for attack, metrics in _groups(table):
        if metrics:
            top.append(f'<th colspan="{len(metrics)}">{html.escape(attack)}</th>')
            bottom += [f"<th>{m}</th>" for m in metrics]
        else:
            top.append(f'<th rowspan="2">{html.escape(attack)}</th>')
    styled = {BEST: "<b>{}</b>", SECOND: "<u>{}</u>", "": "{}"}
    lines = _lines(table)
    block_sizes = _block_sizes(lines)
    rows = []
    for line in lines:
        cells = []
        if line.dataset is not None and line.first_of_block:
            cells.append(f'<th rowspan="{block_sizes[line.dataset]}">{html.escape(line.dataset)}</th>')
        cells.append(f"<th>{html.escape(line.label)}</th>")
        cells += [f"<td>{styled[c.mark].format(html.escape(c.text))}</td>" for c in line.cells]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(
        ["<table>", "<thead>", "<tr>" + "".join(top) + "</tr>", "<tr>" + "".join(bottom) + "</tr>", "</thead>",
         "<tbody>", *rows, "</tbody>", "</table>"]
    ) + "\n"


def _block_sizes(lines: list[_Line]) -> dict[str | None, int]:
    sizes: dict[str | None, int] = {}
    for line in lines:
        sizes[line.dataset] = sizes.get(line.dataset, 0) + 1
    return sizes
