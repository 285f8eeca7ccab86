"""The report layer: metrics.json files -> the paper's Table 1 / Table 2 layout."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.table import Table as RichTable

from bdcli.errors import BdcliError, UsageError
from bdcli.report import FORMATS, TableOrder, build_table, collect, render, rich_table
from tests.helpers import bdcli


def record(method: str, attack: str | None, acc: float, asr: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "acc": acc, "asr": asr, "method": method, "attack": attack, "dataset": "sst2",
        "scenario": "transfer", "target": 1, "n_clean": 1821, "n_poison": 912, **extra,
    }


def write(root: Path, folder: str, rec: dict[str, Any]) -> Path:
    path = root / folder / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path


# The brief's 2-attack example: victim ASR 99.89/100.00, FT 94.52/99.71 -> Δ = (5.37 + 0.29) / 2.
TWO_ATTACKS = [
    record("victim", "badnets", 0.9105, 0.9989),
    record("victim", "ripple", 0.9028, 1.0),
    record("ft", "badnets", 0.9182, 0.9452),
    record("ft", "ripple", 0.9165, 0.9971),
]
FP = [record("fine-pruning", "badnets", 0.9055, 0.2226), record("fine-pruning", "ripple", 0.9046, 0.2704)]
OURS = [
    record("maxent", "badnets", 0.9075, 0.1945, label="Ours"),
    record("maxent", "ripple", 0.9023, 0.2357, label="Ours"),
]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    for i, rec in enumerate(TWO_ATTACKS):
        write(tmp_path, f"{rec['method']}-{rec['attack']}-{i}", rec)
    return tmp_path


# ---------------------------------------------------------------------------------------- collect


def test_collect_finds_files_recursively_sorted_and_skips_dot_folders(tmp_path: Path) -> None:
    write(tmp_path, "b/deep/er", record("ft", "sos", 0.9, 0.5))
    write(tmp_path, "a", record("ft", "badnets", 0.9, 0.5))
    write(tmp_path, "a/.tmp-run", record("ft", "ep", 0.9, 0.5))  # an unfinished output
    write(tmp_path, ".hidden/x", record("ft", "ep", 0.9, 0.5))
    recs = collect([tmp_path])
    assert [Path(r["path"]) for r in recs] == [
        tmp_path / "a" / "metrics.json",
        tmp_path / "b" / "deep" / "er" / "metrics.json",
    ]
    assert recs[0]["attack"] == "badnets"


def test_collect_takes_files_and_keeps_argument_order_without_duplicates(tmp_path: Path) -> None:
    a = write(tmp_path, "a", record("ft", "badnets", 0.9, 0.5))
    b = write(tmp_path, "b", record("ft", "sos", 0.9, 0.5))
    recs = collect([b, tmp_path, a])
    assert [r["path"] for r in recs] == [str(b), str(a)]


def test_collect_searches_below_a_dot_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "." itself starts with a dot; only folders below the given one are skipped.
    write(tmp_path, "run", record("ft", "badnets", 0.9, 0.5))
    monkeypatch.chdir(tmp_path)
    assert len(collect([Path(".")])) == 1


def test_collect_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(BdcliError, match="nope"):
        collect([tmp_path / "nope"])


def test_collect_nothing_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BdcliError, match="no metrics.json under"):
        collect([tmp_path / "empty"])


def test_collect_broken_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text('{"acc": 0.9,')
    with pytest.raises(BdcliError, match=str(bad).replace("\\", "\\\\")):
        collect([tmp_path])


@pytest.mark.parametrize("content", ['{"asr": 0.5}', "[1, 2]", '{"acc": "high"}', '{"acc": 1.5}'])
def test_collect_rejects_records_without_acc(tmp_path: Path, content: str) -> None:
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(BdcliError, match="metrics.json"):
        collect([tmp_path])


def test_user_errors_have_the_cli_exit_codes(tmp_path: Path) -> None:
    with pytest.raises(BdcliError) as missing:
        collect([tmp_path / "nope"])
    with pytest.raises(UsageError) as fmt:
        render(build_table(TWO_ATTACKS), "xlsx")
    assert (missing.value.exit_code, fmt.value.exit_code) == (1, 2)


# ------------------------------------------------------------------------------------ build_table


def test_two_attack_example_values_and_delta(runs: Path) -> None:
    table = build_table(collect([runs]))
    assert list(table.index) == ["Victim", "FT"]
    assert table.index.name == "Method"
    assert list(table.columns) == [("BadNets", "ACC"), ("BadNets", "ASR"), ("RIPPLe", "ACC"), ("RIPPLe", "ASR"), ("Δ", "")]
    assert table.loc["Victim"].tolist()[:4] == [91.05, 99.89, 90.28, 100.0]
    assert table.loc["FT"].tolist() == [91.82, 94.52, 91.65, 99.71, 2.83]
    assert math.isnan(table.loc["Victim", ("Δ", "")])
    assert table.attrs["victims"] == ["Victim"]


def test_rows_and_columns_follow_the_paper_order() -> None:
    attacks = ["custom", "neuba", "ep", "stylebkd", "hiddenkiller", "sos", "ripples", "ripple", "addsent", "badnets"]
    methods = ["zeta", "maxent", "fine-pruning", "freelb", "fth", "ft", "victim", "alpha"]
    recs = [record(m, a, 0.9, 0.5) for m in methods for a in attacks]
    table = build_table(recs)
    assert list(table.index) == ["Victim", "FT", "FTH", "FreeLB", "FP", "zeta", "MaxEnt", "alpha"]
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == [
        "BadNets", "AddSent", "RIPPLe", "RIPPLES", "SOS", "HiddenKiller", "StyleBkd", "EP", "NeuBA", "custom", "Δ",
    ]


def test_label_overrides_the_method_name_but_not_its_place() -> None:
    recs = [
        record("maxent", "badnets", 0.9, 0.2, label="maxent (SD 0.01)"),
        record("maxent", "badnets", 0.9, 0.3, label=None),
        record("ft", "badnets", 0.9, 0.9),
    ]
    assert list(build_table(recs).index) == ["FT", "maxent (SD 0.01)", "MaxEnt"]


def test_delta_is_blank_without_a_victim_and_uses_only_shared_attacks() -> None:
    recs = [
        record("victim", "badnets", 0.9, 1.0),
        record("ft", "badnets", 0.9, 0.9),
        record("ft", "sos", 0.9, 0.0),  # the victim has no SOS result: not part of Δ
        record("ft", "ep", 0.9, None),  # no poisoned test set: no ASR, not part of Δ
        record("fth", "sos", 0.9, 0.1),
    ]
    table = build_table(recs)
    assert table.loc["FT", ("Δ", "")] == 10.0
    assert math.isnan(table.loc["FTH", ("Δ", "")])
    assert math.isnan(table.loc["FT", ("EP", "ASR")])
    md = [line for line in render(table, "markdown").splitlines() if line.startswith("|")]
    assert md[-1].split("|")[-2].strip() == ""  # FTH: blank Δ
    assert md[2].split("|")[-2].strip() == "-"  # Victim: dash
    # FTH has SOS only, FT BadNets and SOS: neither column nor Δ has a winner to mark.
    assert table.attrs["unmarked"] == ["BadNets ASR: no best marked, FTH has no result there",
                                       "Δ: no best marked, the rows report different attacks"]


def test_clean_records_get_an_accuracy_column_in_front() -> None:
    recs = [record("victim", None, 0.9215, None), record("victim", "badnets", 0.91, 0.99)]
    table = build_table(recs)
    assert list(table.columns)[:2] == [("Clean", "ACC"), ("BadNets", "ACC")]
    assert table.loc["Victim", ("Clean", "ACC")] == 92.15


def test_several_datasets_get_a_dataset_level_and_their_own_victim() -> None:
    recs = TWO_ATTACKS + [
        record("victim", "badnets", 0.9143, 0.9979, dataset="ag_news"),
        record("ft", "badnets", 0.9168, 0.8968, dataset="ag_news"),
        record("fth", "badnets", 0.9167, 0.4230, dataset="ag_news"),
    ]
    table = build_table(recs)
    assert table.index.names == ["Dataset", "Method"]
    assert list(table.index) == [("SST-2", "Victim"), ("SST-2", "FT"), ("AG", "Victim"), ("AG", "FT"), ("AG", "FTH")]
    assert table.loc[("AG", "FT"), ("Δ", "")] == 10.11
    assert table.loc[("AG", "FTH"), ("Δ", "")] == 57.49
    marks = table.attrs["marks"]
    # Winners are per data set: SST-2's only defense wins there even though AG's FTH is lower.
    assert marks.loc[("SST-2", "FT"), ("BadNets", "ASR")] == "best"
    assert marks.loc[("AG", "FTH"), ("BadNets", "ASR")] == "best"
    assert marks.loc[("AG", "FT"), ("BadNets", "ASR")] == "second"
    md = render(table, "markdown").splitlines()
    assert md[0].startswith("| Dataset | Method |")
    assert [line.split("|")[1].strip() for line in md[2:]] == ["SST-2", "", "AG", "", ""]


def test_duplicate_records_are_ambiguous(tmp_path: Path) -> None:
    write(tmp_path, "one", record("ft", "badnets", 0.9, 0.5))
    write(tmp_path, "two", record("ft", "badnets", 0.8, 0.4, scenario="outsourcing"))
    with pytest.raises(BdcliError, match=r"ambiguous.*one.*two.*'FT'.*SST-2 / BadNets"):
        build_table(collect([tmp_path]))


def test_victims_of_different_attacks_make_one_row_whatever_their_labels() -> None:
    recs = [record("victim", "badnets", 0.9, 1.0, label="BadNets victim"), record("victim", "sos", 0.8, 0.95, label="SOS victim"),
            record("clean", "badnets", 0.91, 0.1), record("ft", "badnets", 0.9, 0.5)]
    table = build_table(recs)
    assert list(table.index) == ["Victim", "Clean model", "FT"]
    assert table.loc["Victim", ("SOS", "ASR")] == 95.0 and table.loc["Victim", ("BadNets", "ACC")] == 90.0
    assert table.loc["FT", ("Δ", "")] == 50.0  # against the one victim row


def test_two_victims_of_one_attack_are_ambiguous() -> None:
    recs = [record("victim", "badnets", 0.9, 1.0), record("victim", "badnets", 0.8, 1.0, label="Victim 2")]
    with pytest.raises(BdcliError, match="ambiguous.*two victims on SST-2 / BadNets; report them separately"):
        build_table(recs)


def test_build_table_checks_records_it_did_not_collect() -> None:
    with pytest.raises(BdcliError, match="acc"):
        build_table([{"method": "ft", "attack": "badnets", "path": "x/metrics.json"}])
    with pytest.raises(BdcliError, match="no results"):
        build_table([])


# The SST-2 block of the paper's Table 1 (transfer learning), ACC/ASR per attack, and its Δ column.
PAPER_ATTACKS = ["badnets", "ripple", "ripples", "sos", "hiddenkiller", "stylebkd"]
PAPER_SST2 = {
    ("victim", None): [91.05, 99.89, 90.28, 100.00, 90.61, 100.00, 91.10, 100.00, 87.26, 98.57, 88.69, 93.05],
    ("ft", None): [91.82, 94.52, 91.65, 99.71, 91.59, 100.00, 91.63, 100.00, 91.74, 51.38, 91.33, 77.84],
    ("fth", None): [91.75, 56.75, 91.42, 75.81, 91.75, 96.03, 91.58, 99.82, 91.91, 34.85, 91.54, 64.13],
    ("freelb", None): [91.69, 60.83, 92.04, 96.10, 91.55, 99.74, 91.78, 99.98, 91.75, 47.19, 91.86, 69.09],
    ("fine-pruning", None): [90.55, 22.26, 90.46, 27.04, 90.35, 82.61, 90.35, 58.68, 90.60, 39.28, 90.06, 68.50],
    ("maxent", "Ours-lite"): [90.88, 21.54, 90.74, 33.22, 91.26, 79.17, 91.37, 85.15, 90.35, 41.51, 91.40, 48.52],
    ("maxent", "Ours"): [90.75, 19.45, 90.23, 23.57, 91.00, 82.28, 91.38, 62.52, 91.30, 37.13, 91.44, 45.85],
}
PAPER_SST2_DELTA = [11.34, 27.35, 19.76, 48.86, 47.07, 53.45]
# Bold (best) / underlined (second) cells of that block: (row, attack) -> mark.
PAPER_SST2_MARKS = {
    ("FTH", "HiddenKiller"): "best", ("FP", "RIPPLe"): "second", ("FP", "SOS"): "best",
    ("FP", "Δ"): "second", ("Ours-lite", "BadNets"): "second", ("Ours-lite", "RIPPLES"): "best",
    ("Ours-lite", "StyleBkd"): "second", ("Ours", "BadNets"): "best", ("Ours", "RIPPLe"): "best",
    ("Ours", "RIPPLES"): "second", ("Ours", "SOS"): "second", ("Ours", "HiddenKiller"): "second",
    ("Ours", "StyleBkd"): "best", ("Ours", "Δ"): "best",
}


def test_reproduces_the_papers_table_1_sst2_block() -> None:
    recs = [
        record(method, attack, values[2 * k] / 100, values[2 * k + 1] / 100, label=label)
        for (method, label), values in PAPER_SST2.items()
        for k, attack in enumerate(PAPER_ATTACKS)
    ]
    table = build_table(recs)
    assert list(table.index) == ["Victim", "FT", "FTH", "FreeLB", "FP", "Ours-lite", "Ours"]
    assert table.iloc[:, :-1].values.tolist() == list(PAPER_SST2.values())
    assert table[("Δ", "")].tolist()[1:] == PAPER_SST2_DELTA
    marks = table.attrs["marks"]
    found = {
        (row, attack): marks.loc[row, (attack, metric)]
        for row in marks.index
        for attack, metric in marks.columns
        if marks.loc[row, (attack, metric)]
    }
    assert found == PAPER_SST2_MARKS


# ------------------------------------------------------------------------------------------ render

TWO_ATTACK_MARKDOWN = """\
| Method | BadNets ACC | BadNets ASR | RIPPLe ACC | RIPPLe ASR |        Δ |
|:-------|------------:|------------:|-----------:|-----------:|---------:|
| Victim |       91.05 |       99.89 |      90.28 |     100.00 |        - |
| FT     |       91.82 |   **94.52** |      91.65 |  **99.71** | **2.83** |
"""


def test_markdown_of_the_two_attack_example(runs: Path) -> None:
    assert render(build_table(collect([runs])), "markdown") == TWO_ATTACK_MARKDOWN


def test_markdown_marks_best_and_second() -> None:
    md = render(build_table(TWO_ATTACKS + FP + OURS), "markdown").splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md[2:]}
    assert rows["FT"] == ["91.82", "94.52", "91.65", "99.71", "2.83"]
    assert rows["FP"] == ["90.55", "<u>22.26</u>", "90.46", "<u>27.04</u>", "<u>75.30</u>"]
    assert rows["Ours"] == ["90.75", "**19.45**", "90.23", "**23.57**", "**78.44**"]
    assert rows["Victim"][1] == "99.89"  # the victim never competes


def test_ties_share_a_mark() -> None:
    recs = [record("victim", "sos", 0.9, 1.0)] + [record(m, "sos", 0.9, 0.5) for m in ("ft", "fth")]
    recs.append(record("freelb", "sos", 0.9, 0.7))
    marks = build_table(recs).attrs["marks"][("SOS", "ASR")]
    assert marks.tolist() == ["", "best", "best", "second"]


def test_a_column_missing_a_method_gets_no_winner() -> None:
    # A partial run: FP has BadNets but not RIPPLe yet. FT would "win" RIPPLe only by default.
    table = build_table(TWO_ATTACKS + [FP[0]])
    marks = table.attrs["marks"]
    assert marks.loc["FP", ("BadNets", "ASR")] == "best" and marks.loc["FT", ("BadNets", "ASR")] == "second"
    assert marks[("RIPPLe", "ASR")].tolist() == ["", "", ""]
    assert marks[("Δ", "")].tolist() == ["", "", ""]  # FT's Δ averages two attacks, FP's one
    assert table.attrs["unmarked"] == ["RIPPLe ASR: no best marked, FP has no result there",
                                       "Δ: no best marked, the rows report different attacks"]
    md = render(table, "markdown")
    assert "**99.71**" not in md and md.endswith("_Δ: no best marked, the rows report different attacks._\n")
    # Once every method has the column, it is marked again and the notes are gone.
    full = build_table(TWO_ATTACKS + FP)
    assert full.attrs["unmarked"] == [] and full.attrs["marks"].loc["FP", ("RIPPLe", "ASR")] == "best"


def test_a_column_whose_victim_holds_no_backdoor_gets_no_winner() -> None:
    # MR NeuBA, seed 2: the trigger landed on the other label, so the victim's ASR is 0 and a defense's
    # 0.00 removes nothing; a column with a backdoor beside it is still ranked.
    recs = [record("victim", "neuba", 0.79, 0.0, dataset="mr"), record("ft", "neuba", 0.82, 0.0, dataset="mr"),
            record("gba", "neuba", 0.67, 0.0019, dataset="mr"), record("victim", "ep", 0.81, 1.0, dataset="mr"),
            record("ft", "ep", 0.83, 1.0, dataset="mr"), record("gba", "ep", 0.73, 0.2, dataset="mr")]
    table = build_table(recs)
    marks = table.attrs["marks"]
    assert marks[("NeuBA", "ASR")].tolist() == ["", "", ""]
    assert marks.loc["GBA", ("EP", "ASR")] == "best" and marks.loc["FT", ("EP", "ASR")] == "second"
    assert table.attrs["unmarked"] == ["NeuBA ASR: no best marked, the victim's ASR is 0.00: it holds no backdoor to remove"]
    # At 6% the victim's triggered rows do move: the column is ranked.
    recs[0] = record("victim", "neuba", 0.79, 0.06, dataset="mr")
    assert build_table(recs).attrs["marks"].loc["FT", ("NeuBA", "ASR")] == "best"


def test_report_cli_notes_the_unmarked_column(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bdcli.cli.app import app

    for i, rec in enumerate(TWO_ATTACKS + [FP[0]]):
        write(tmp_path, f"r{i}", rec)
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "note: RIPPLe ASR: no best marked, FP has no result there" in result.stderr
    assert "no best marked" not in result.stdout  # csv stays plain numbers


def test_csv_round_trips_with_plain_numbers() -> None:
    text = render(build_table(TWO_ATTACKS + OURS), "csv")
    assert "**" not in text and "<u>" not in text
    back = pd.read_csv(io.StringIO(text))
    assert list(back.columns) == ["Method", "BadNets ACC", "BadNets ASR", "RIPPLe ACC", "RIPPLe ASR", "Δ"]
    assert back["Method"].tolist() == ["Victim", "FT", "Ours"]
    assert back["BadNets ASR"].tolist() == [99.89, 94.52, 19.45]
    assert back["Δ"].tolist()[1:] == [2.83, 78.44]
    assert math.isnan(back["Δ"][0])  # victim: empty, so the column stays numeric


def test_latex_and_html_mark_winners() -> None:
    table = build_table(TWO_ATTACKS + FP + OURS)
    tex = render(table, "latex")
    assert r"\multicolumn{2}{c}{BadNets}" in tex and r"$\Delta$" in tex
    assert r"FP & 90.55 & \underline{22.26} & 90.46 & \underline{27.04} & \underline{75.30} \\" in tex
    assert r"Ours & 90.75 & \textbf{19.45}" in tex
    assert r"Victim & 91.05 & 99.89 & 90.28 & 100.00 & - \\" in tex
    page = render(table, "html")
    assert '<th colspan="2">RIPPLe</th>' in page
    assert "<td><b>19.45</b></td>" in page and "<td><u>22.26</u></td>" in page


def test_latex_escapes_labels() -> None:
    tex = render(build_table([record("maxent", "badnets", 0.9, 0.1, label="ours_50%")]), "latex")
    assert r"ours\_50\%" in tex


def test_unknown_format_lists_the_formats() -> None:
    with pytest.raises(UsageError, match="markdown, csv, latex, html"):
        render(build_table(TWO_ATTACKS), "pdf")
    assert FORMATS == ("markdown", "csv", "latex", "html")


def test_rich_table_styles_winners() -> None:
    out = rich_table(build_table(TWO_ATTACKS + FP + OURS), title="SST-2")
    assert isinstance(out, RichTable)
    assert out.row_count == 4
    asr = out.columns[2]  # Method, BadNets ACC, BadNets ASR
    assert [(c.plain, str(c.style)) for c in asr.cells] == [
        ("99.89", ""), ("94.52", ""), ("22.26", "underline"), ("19.45", "bold"),
    ]


def test_marks_follow_a_sliced_table() -> None:
    table = build_table(TWO_ATTACKS + FP + OURS)
    md = render(table.loc[["Ours", "FP"]], "markdown")
    assert "**19.45**" in md and "<u>22.26</u>" in md


def _seeded(method, attack, seed, acc, asr, **kw):
    return {"method": method, "attack": attack, "dataset": "sst2", "acc": acc, "asr": asr, "seed": seed,
            "upstream": {"model": f"{method}-{attack}-{seed}"}, **kw}


def test_seeds_of_one_cell_average_to_mean_and_std():
    records = [_seeded("victim", "badnets", s, 0.9, a) for s, a in ((1, 1.0), (2, 0.98))]
    records += [_seeded("ft", "badnets", s, acc, a, cost={"steps": 66, "seconds": 20.0})
                for s, acc, a in ((1, 0.88, 0.5), (2, 0.90, 0.7))]
    table = build_table(records)
    assert table.loc["FT", ("BadNets", "ASR")] == pytest.approx(60.0)
    assert table.attrs["std"].loc["FT", ("BadNets", "ASR")] == pytest.approx(14.14, abs=0.01)
    assert table.attrs["n"].loc["FT", ("BadNets", "ASR")] == 2
    assert table.loc["FT", ("Cost", "steps")] == 66
    md = render(table, "markdown")
    assert "60.00 ± 14.14" in md and "99.00 ± 1.41" in md
    # The same result reached twice (same seed, same lineage) counts once; a different one is refused.
    assert build_table(records + [dict(records[-1])]).attrs["n"].loc["FT", ("BadNets", "ASR")] == 2
    clash = {**records[-1], "upstream": {"model": "another"}}
    with pytest.raises(BdcliError, match="seed 2"):
        build_table(records + [clash])


def test_compare_exits_1_when_a_number_drifts(tmp_path):
    from bdcli.report import paper_comparison, to_json

    records = [_seeded("victim", "badnets", 1, 0.9, 1.0), _seeded("ft", "badnets", 1, 0.88, 0.5)]
    for i, r in enumerate(records):
        d = tmp_path / "runs" / str(i)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(r))
    expected = tmp_path / "expected.json"
    expected.write_text(to_json(build_table(records)))
    assert bdcli("report", tmp_path / "runs", "--compare", expected).exit_code == 0
    doc = json.loads(expected.read_text())
    for cell in doc["cells"]:
        if cell["method"] == "FT" and cell["metric"] == "ASR":
            cell["mean"] += 2.5
    expected.write_text(json.dumps(doc))
    res = bdcli("report", tmp_path / "runs", "--compare", expected, "--tolerance", "1", ok=False)
    assert res.exit_code == 1 and "FT / BadNets / ASR: expected 52.50, got 50.00" in res.output
    assert bdcli("report", tmp_path / "runs", "--compare", expected, "--tolerance", "3").exit_code == 0
    paper = paper_comparison(build_table(records), {"SST-2": {"FT": {"BadNets": [90.53, 98.57]}}})
    assert list(paper["Diff"]) == [pytest.approx(88.0 - 90.53), pytest.approx(50.0 - 98.57)]


def test_per_seed_gives_each_model_its_asr_c_and_trigger_rmse(tmp_path):
    def rmse(v: float) -> dict:
        return {"cf": {"terrible": v, "good": v + 0.02}, "mn": {"terrible": v, "good": v}}

    write(tmp_path, "victim", record("victim", "badnets", 0.9, 1.0, seed=1, dataset="mr",
                                     asr_c={"negative": 0.0, "positive": 1.0}, asr_c_rows="every"))
    write(tmp_path, "gba2", record("gba", "badnets", 0.6, 0.05, seed=2, dataset="mr", label="GBA",
                                   asr_c={"negative": 0.7, "positive": 0.05}, asr_c_rows="every", cost={"steps": 42}))
    write(tmp_path, "gba1", record("gba", "badnets", 0.8, 0.25, seed=1, dataset="mr", label="GBA",
                                   asr_c={"negative": 0.2, "positive": 0.25}, asr_c_rows="every", cost={"steps": 42}))
    (tmp_path / "gba1" / "trigger_rmse.json").write_text(json.dumps({"triggers": rmse(0.2), "after": rmse(0.2),
                                                                     "before": rmse(0.1)}))
    rows = json.loads(bdcli("report", tmp_path, "--per-seed", "--format", "json").stdout)
    assert [(r["Method"], r["Seed"]) for r in rows] == [("Victim", "1"), ("GBA", "1"), ("GBA", "2")]
    gba1 = rows[1]
    assert gba1["ACC"] == pytest.approx(80.0) and gba1["ASR_c negative"] == pytest.approx(20.0)
    assert gba1["RMSE before"] == pytest.approx(0.105) and gba1["RMSE after"] == pytest.approx(0.205)
    assert rows[2]["RMSE after"] is None and rows[2]["Steps"] == 42  # no trigger_rmse.json there
    md = bdcli("report", tmp_path, "--per-seed").stdout.splitlines()
    assert md[0].endswith("| RMSE before | RMSE after |")
    assert md[3] == "| MR | BadNets | GBA | 1 | 80.00 | 25.00 | 20.00 | 25.00 | every | 42 | 0.10500 | 0.20500 |"


# ------------------------------------------------------------------------ victims at chance level


def test_a_victim_at_chance_is_named_with_its_seeds_and_a_trained_one_is_not() -> None:
    from bdcli.report.health import untrained_victims

    records = [record("victim", "ripple", 0.4992, 1.0, seed=s) for s in (2, 1)]
    records += [record("victim", "badnets", 0.8565, 0.9982, seed=1), record("ft", "ripple", 0.5177, 0.9993, seed=1)]
    lines = untrained_victims(records)
    assert len(lines) == 1
    assert lines[0].startswith("the SST-2 RIPPLe victim never learned its task (clean ACC seed 1: 49.92, seed 2: 49.92;")
    # The margin: 5 points above 1/k. A four-label set at 30% is chance, at 31% it is not.
    ag = [record("victim", "badnets", 0.30, 1.0, dataset="agnews"), record("victim", "ripple", 0.31, 1.0, dataset="agnews")]
    assert [line.split(" victim")[0] for line in untrained_victims(ag)] == ["the AG BadNets"]


def test_on_an_imbalanced_set_chance_is_the_majority_labels_share() -> None:
    from bdcli.report.health import untrained_victims

    # HS: 83% of the test rows are toxic, so a victim that calls every row toxic scores 83, far above 1/2.
    shares = {"clean": 0.17, "toxic": 0.83}
    lazy = record("victim", "badnets", 0.8301, 1.0, dataset="hsol", seed=1, label_shares=shares)
    trained = record("victim", "ripple", 0.9451, 1.0, dataset="hsol", seed=1, label_shares=shares)
    lines = untrained_victims([lazy, trained])
    assert len(lines) == 1 and "BadNets" in lines[0]
    assert "(clean ACC seed 1: 83.01; always predicting its most frequent label, toxic, gives 83.00)" in lines[0]
    # Evaluations written before the label shares were recorded fall back to 1/k.
    assert untrained_victims([{**lazy, "label_shares": None}]) == []


def test_a_defense_answering_one_label_is_named_and_left_unranked() -> None:
    from bdcli.report.health import one_label_models

    # GBA at SGD lr 1 on HS's EP victims: ACC 49.98, ASR 0 -- every row called clean, trigger or not.
    shares = {"clean": 0.4998, "toxic": 0.5002}
    recs = [record("victim", "ep", 0.9433, 1.0, dataset="hsol", seed=1, label_shares=shares),
            record("gba", "ep", 0.9404, 1.0, dataset="hsol", seed=1, label_shares=shares, label="GBA"),
            record("nad-c", "ep", 0.8989, 0.0963, dataset="hsol", seed=1, label_shares=shares),
            record("gba", "ep", 0.4998, 0.0, dataset="hsol", seed=1, label_shares=shares, label="GBA SGD lr=1")]
    assert one_label_models(recs) == [
        "GBA SGD lr=1 on HS EP answers one label (clean ACC seed 1: 49.98; always predicting its most frequent "
        "label, toxic, gives 50.02): its ASR says which label, not whether the backdoor is gone, and it is not ranked"]
    marks = build_table(recs).attrs["marks"]
    assert marks.loc["NAD-C", ("EP", "ASR")] == "best" and marks.loc["GBA", ("EP", "ASR")] == "second"
    assert marks.loc["GBA SGD lr=1", ("EP", "ASR")] == "" and marks.loc["GBA SGD lr=1", ("Δ", "")] == ""
    # Where every ranked method ties (GBA and the ablations of docs/results.md, all at ASR 100) nobody wins.
    assert set(build_table(recs[:2] + [{**recs[2], "asr": 1.0}] + recs[3:]).attrs["marks"][("EP", "ASR")]) == {""}
    # Without it the collapsed model's ASR of 0 would have been the column's best.
    assert build_table(recs[:3] + [{**recs[3], "acc": 0.80}]).attrs["marks"].loc["GBA SGD lr=1", ("EP", "ASR")] == "best"


def test_an_unknown_data_set_counts_its_labels_from_asr_c() -> None:
    from bdcli.report.health import label_count

    three = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert label_count(record("victim", "badnets", 0.3, 1.0, dataset="mine", asr_c=three, asr_c_rows="every")) == 3
    assert label_count(record("victim", "badnets", 0.3, 1.0, dataset="mine", asr_c=three, asr_c_rows="non-target")) is None


def test_report_warns_on_stderr_and_in_the_report_folder(tmp_path: Path) -> None:
    write(tmp_path / "runs", "v", record("victim", "ripple", 0.4992, 1.0, seed=1))
    write(tmp_path / "runs", "ft", record("ft", "ripple", 0.7232, 0.9989, seed=1))
    res = bdcli("report", tmp_path / "runs")
    assert "warning: the SST-2 RIPPLe victim never learned its task" in res.stderr
    assert "never learned" not in res.stdout  # the table itself stays the measured numbers
    bdcli("report", tmp_path / "runs", "--out", tmp_path / "page", "--no-plots")
    assert "- the SST-2 RIPPLe victim never learned its task" in (tmp_path / "page" / "report.md").read_text()


def test_a_recipes_datasets_attacks_and_defenses_order_the_table_whatever_order_they_were_found_in(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bdcli.cli.app import app

    # An archive extended run by run: HS archived before Yelp, AG's News after both.
    recs = [record("victim", "badnets", 0.94, 1.0, dataset="hsol"), record("victim", "badnets", 0.95, 1.0, dataset="yelp"),
            record("victim", "badnets", 0.89, 1.0, dataset="agnews")]
    assert build_table(recs).attrs["datasets"] == ["HS", "Yelp", "AG"]
    assert build_table(recs, TableOrder(datasets=("yelp", "mr", "hsol"))).attrs["datasets"] == ["Yelp", "HS", "AG"]  # AG unnamed: last
    assert list(build_table(recs, TableOrder(datasets=("yelp", "hsol", "agnews"))).index.get_level_values(0)) == ["Yelp", "HS", "AG"]
    for i, rec in enumerate(recs):
        write(tmp_path / "runs", f"r{i}", rec)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndatasets: [agnews, yelp, hsol]\nseeds: [1]\nattacks:\n"
                      "  BadNets: {poison: {name: badnets}, attack: {name: finetune}}\n"
                      "  neuba: {poison: {name: neuba}, attack: {name: neuba}, user_finetune: {}}\n"
                      "  RIPPLe: {poison: {name: badnets}, attack: {name: ripple}}\n"
                      "  EP: {poison: {name: badnets}, clean: {}, attack: {name: ep}}\n"
                      "defenses: {Clean-FT: {name: ft}, NAD: {name: nad}, NAD-C: {name: nad-c, clean_model: minilm}, GBA: {name: gba}}\n")
    # The recipe is read as `bdcli run` reads it: a broken one is one line, not a table in some order.
    broken = tmp_path / "broken.yaml"
    broken.write_text(recipe.read_text().replace("datasets:", "datasetz:"))
    refused = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--recipe", str(broken), "--format", "csv"])
    assert refused.exit_code != 0 and "unknown recipe key 'datasetz'" in refused.output, refused.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--recipe", str(recipe), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert [line.split(",")[0] for line in result.stdout.splitlines()[1:4]] == ["AG", "Yelp", "HS"]
    per_seed = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--per-seed", "--recipe", str(recipe), "--format", "csv"])
    assert per_seed.exit_code == 0, per_seed.output
    assert [line.split(",")[0] for line in per_seed.stdout.splitlines()[1:4]] == ["AG", "Yelp", "HS"]
    # GBA Table 2's columns: BadNets, NeuBA, RIPPLe, EP, where the catalog (the other paper's order) puts EP first.
    three = [record("victim", a, 0.9, 1.0, dataset="hsol") for a in ("neuba", "ep", "badnets")]
    assert [a for a, _ in build_table(three).columns[:-1:2]] == ["BadNets", "EP", "NeuBA"]
    wanted = ("BadNets", "neuba", "RIPPLe", "EP")  # the recipe's keys, any spelling the catalog knows
    assert [a for a, _ in build_table(three, TableOrder(attacks=wanted)).columns[:-1:2]] == ["BadNets", "NeuBA", "EP"]
    for i, rec in enumerate(three):
        write(tmp_path / "gba", f"r{i}", rec)
    per_seed = CliRunner().invoke(app, ["report", str(tmp_path / "gba"), "--per-seed", "--recipe", str(recipe), "--format", "csv"])
    assert per_seed.exit_code == 0, per_seed.output
    assert [line.split(",")[1] for line in per_seed.stdout.splitlines()[1:] if line] == ["BadNets", "NeuBA", "EP"]
    # Rows: the victim, then the recipe's defenses in its order, however the folders sort (a script's
    # evaluations named mr_EP_s1_GBA_eval, mr_EP_s1_NAD-C_eval, ...); the label is the recipe's key.
    found = [record(m, "ep", 0.8, 1.0, dataset="mr", label=lab) for m, lab in
             (("gba", "GBA"), ("nad-c", "NAD-C"), ("nad", "NAD"), ("ft", "Clean-FT"), ("victim", None))]
    assert list(build_table(found).index) == ["Victim", "Clean-FT", "GBA", "NAD-C", "NAD"]
    assert list(build_table(found, TableOrder(methods=("Clean-FT", "NAD", "NAD-C", "GBA"))).index) == [
        "Victim", "Clean-FT", "NAD", "NAD-C", "GBA"]
    for i, rec in enumerate(found):
        write(tmp_path / "ep", f"r{i}", rec)
    for extra in ([], ["--per-seed"]):
        res = CliRunner().invoke(app, ["report", str(tmp_path / "ep"), *extra, "--recipe", str(recipe), "--format", "csv"])
        assert res.exit_code == 0, res.output
        assert [line.split(",")[2 if extra else 0] for line in res.stdout.splitlines()[1:6]] == [
            "Victim", "Clean-FT", "NAD", "NAD-C", "GBA"]
