"""Readers for labelled text files, the users' own and the shipped formats; each returns a TextDataset.

Every bad input becomes a one-sentence BdcliError that names the file (and the line, where there is
one), because these files come from users and a traceback tells them nothing.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import BdcliError
from .dataset import TextDataset

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "json"}
# Integer labels name their own classes 0..max; a larger max is an id column or a typo, and would
# allocate a label list of that size.
MAX_INT_LABEL = 10_000
# Bounded so that int() never meets Python's limit on digits; longer numbers are no class index anyway.
_INT = re.compile(r"-?[0-9]{1,18}")

# A row as every format yields it: where it is ("line 5", "row 3") and its fields by column name.
Row = tuple[str, dict]
BAD_ROWS = ("error", "drop")


@dataclass
class RowReport:
    """What a reader found wrong in a file, for the manifest and the user: malformed rows (where, why)
    and exact duplicates (same text, and text_b, as an earlier row)."""

    malformed: list[tuple[str, str]] = field(default_factory=list)
    duplicates: int = 0
    dropped: int = 0

    def messages(self, path: Path) -> list[str]:
        out = []
        if self.malformed:
            out.append(f"{path}: dropped {len(self.malformed)} malformed row(s), first: {self.malformed[0][1]}")
        if self.duplicates:
            verb = "dropped" if self.dropped > len(self.malformed) else "kept"
            out.append(f"{path}: {verb} {self.duplicates} row(s) that repeat an earlier row's text")
        return out


def read_table(
    path: str | Path,
    *,
    text_col: str = "text",
    label_col: str = "label",
    text_b_col: str | None = None,
    label_names: Sequence[str] | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
    bad_rows: str = "error",
    report: RowReport | None = None,
) -> TextDataset:
    """Read a ``.tsv``/``.csv``/``.jsonl``/``.json`` file with a header (or JSON keys) naming its columns.

    Columns match case-insensitively. Labels are integers 0..K-1 or strings; strings map to
    ``label_names`` if given, else to their sorted unique values.

    Malformed rows (wrong field count, missing or empty field, a label outside ``label_names``) are an
    error naming the first one and their count; with ``bad_rows="drop"`` they are dropped, and so are
    exact duplicates of an earlier row. ``report`` receives the counts either way.
    """
    if bad_rows not in BAD_ROWS:
        raise BdcliError(f"unknown bad_rows {bad_rows!r}: use one of {', '.join(BAD_ROWS)}")
    report = report if report is not None else RowReport()
    path = Path(path)
    fmt = _format(path, fmt)
    text = _read_text(path, encoding)
    if fmt in ("tsv", "csv"):
        columns, rows = _delimited_rows(path, text, fmt, report)
    else:
        columns, rows = _json_rows(path, text, report)
    if not rows and not report.malformed:
        raise BdcliError(f"{path} is empty: it has no data rows")
    cells = []
    if rows:
        text_key = _column(path, columns, text_col)
        label_key = _column(path, columns, label_col)
        b_key = None if text_b_col is None else _column(path, columns, text_b_col)
        cells = _cells(path, rows, text_key, label_key, b_key, label_names, report)
    if report.malformed and bad_rows == "error":
        n = len(report.malformed)
        more = f" ({n} malformed rows in all)" if n > 1 else ""
        raise BdcliError(f"{report.malformed[0][1]}{more}; fix the file or drop such rows with --drop-bad-rows")
    seen: set[tuple[str, str | None]] = set()
    kept = []
    for cell in cells:
        key = (cell[1], cell[3])
        if key in seen:
            report.duplicates += 1
            if bad_rows == "drop":
                continue
        seen.add(key)
        kept.append(cell)
    report.dropped = len(report.malformed) + (report.duplicates if bad_rows == "drop" else 0)
    if not kept:
        raise BdcliError(f"{path} has no usable rows left after dropping {report.dropped} bad row(s)")
    labels, names = _labels(path, [(where, y) for where, _, y, _ in kept], label_names)
    return TextDataset(
        texts=[t for _, t, _, _ in kept],
        labels=labels,
        label_names=names,
        text_b=None if text_b_col is None else [b or "" for _, _, _, b in kept],
    )


def _cells(path, rows, text_key, label_key, b_key, label_names, report) -> list[tuple[str, str, str, str | None]]:
    """(where, text, raw label, text_b) of every well-formed row; the others go to ``report``."""
    names = None if label_names is None else list(label_names)
    out = []
    for where, row in rows:
        try:
            t = _cell(path, where, row, text_key)
            y = _cell(path, where, row, label_key)
            b = None if b_key is None else _cell(path, where, row, b_key)
            if not y:
                raise BdcliError(f"{where} of {path} has an empty label")
            if names is not None:
                _label_index(path, where, y, {n: i for i, n in enumerate(names)}, names)
        except BdcliError as e:
            report.malformed.append((where, str(e)))
            continue
        out.append((where, t, y, b))
    return out


def read_text_label_files(
    x_path: str | Path,
    y_path: str | Path,
    *,
    label_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> TextDataset:
    """Read line-aligned text and label files (Yelp's ``*_x.txt`` / ``*_y.txt``)."""
    x_path, y_path = Path(x_path), Path(y_path)
    texts = _lines(x_path, encoding)
    raw = _lines(y_path, encoding)
    if len(texts) != len(raw):
        raise BdcliError(
            f"{x_path} has {len(texts)} lines but {y_path} has {len(raw)}; "
            f"the text and label files must be line-aligned"
        )
    labels, names = _labels(y_path, [(f"line {i}", y) for i, y in enumerate(raw, 1)], label_names)
    return TextDataset(texts=texts, labels=labels, label_names=names)


def read_lines(path: str | Path, label: int, label_names: Sequence[str], encoding: str = "utf-8") -> TextDataset:
    """Read a one-sentence-a-line file whose rows all have ``label`` (MR's ``rt-polarity.pos``).

    Blank lines are skipped.
    """
    path = Path(path)
    texts = [t for t in _lines(path, encoding) if t]
    return TextDataset(texts=texts, labels=[label] * len(texts), label_names=list(label_names))


# --- reading and splitting ------------------------------------------------------------------------
def _format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise BdcliError(
                f"cannot tell the format of {path} from its suffix: name it .tsv, .csv, .jsonl or .json, or pass fmt"
            )
    elif fmt not in FORMATS.values():
        raise BdcliError(f"unknown format {fmt!r} for {path}: use one of {', '.join(FORMATS.values())}")
    return fmt


def _read_text(path: Path, encoding: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BdcliError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise BdcliError(f"{path} is a directory, not a data file") from None
    except OSError as e:
        raise BdcliError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode(encoding)
    except LookupError:
        raise BdcliError(f"unknown encoding {encoding!r} given for {path}") from None
    except UnicodeDecodeError as e:
        raise BdcliError(
            f"{path} is not valid {encoding} text (byte {data[e.start]:#04x} at offset {e.start}): "
            f"pass its encoding (--encoding latin-1, say)"
        ) from None
    # Spreadsheet exports start with a byte-order mark, which would otherwise glue onto the first column name.
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise BdcliError(f"{path} is empty")
    return text


def _lines(path: Path, encoding: str) -> list[str]:
    # split("\n"), not splitlines(): the latter also breaks at \x85, \x0c, \u2028, ... inside a text.
    lines = [line.strip() for line in _read_text(path, encoding).split("\n")]
    while not lines[-1]:
        lines.pop()
    return lines


def _delimited_rows(path: Path, text: str, fmt: str, report: RowReport) -> tuple[list[str], list[Row]]:
    # newline="" hands \r\n to csv untranslated, so quoted fields keep working and CRLF files read clean.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
    header: list[str] | None = None
    rows: list[Row] = []
    end = 0
    try:
        for fields in reader:
            # A quoted field may span lines: report the line a row starts on.
            start, end = end + 1, reader.line_num
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if header is None:
                header = fields
            elif len(fields) != len(header):
                report.malformed.append((f"line {start}", (
                    f"line {start} of {path} has {len(fields)} fields but the header has {len(header)} "
                    f"(a stray {'tab' if fmt == 'tsv' else 'comma'} or an unbalanced quote?)"
                )))
            else:
                rows.append((f"line {start}", dict(zip(header, fields))))
    except csv.Error as e:
        raise BdcliError(f"cannot parse line {reader.line_num} of {path} as {fmt.upper()}: {e}") from None
    return header or [], rows


def _json_rows(path: Path, text: str, report: RowReport) -> tuple[list[str], list[Row]]:
    """A JSON array of objects, or JSON Lines (one object a line), whatever the suffix says."""
    if text.lstrip().startswith("["):
        items = [("row", i, obj) for i, obj in enumerate(_json(path, "", text), 1)]
    else:
        lines = enumerate(text.split("\n"), 1)
        items = [("line", n, _json(path, f"line {n} of ", line)) for n, line in lines if line.strip()]
    rows: list[Row] = []
    for unit, n, obj in items:
        if not isinstance(obj, dict):
            report.malformed.append((f"{unit} {n}", f"{unit} {n} of {path} is not a JSON object with named fields"))
            continue
        rows.append((f"{unit} {n}", obj))
    return (list(rows[0][1]) if rows else []), rows


def _json(path: Path, where: str, text: str):
    try:
        return json.loads(text)
    # ValueError covers JSONDecodeError and over-long integers; RecursionError, absurdly deep nesting.
    except (ValueError, RecursionError) as e:
        raise BdcliError(f"{where}{path} is not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from None


# --- columns, fields and labels -------------------------------------------------------------------
def _column(path: Path, columns: list[str], want: str) -> str:
    if want in columns:
        return want
    for c in columns:
        if c.lower() == want.lower():
            return c
    found = ", ".join(repr(c) for c in columns) or "none"
    raise BdcliError(f"{path} has no column {want!r} (columns found: {found})")


def _cell(path: Path, where: str, row: dict, key: str) -> str:
    value = row.get(key)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        raise BdcliError(f"{where} of {path} has no {key!r} field")
    raise BdcliError(f"{where} of {path}: field {key!r} is {type(value).__name__}, not text or a whole number")


def _labels(path: Path, raw: list[tuple[str, str]], label_names: Sequence[str] | None) -> tuple[list[int], list[str]]:
    for where, value in raw:
        if not value:
            raise BdcliError(f"{where} of {path} has an empty label")
    if label_names is not None:
        names = list(label_names)
        index = {name: i for i, name in enumerate(names)}
        return [_label_index(path, where, value, index, names) for where, value in raw], names
    if all(_INT.fullmatch(value) for _, value in raw):
        return _int_labels(path, raw)
    names = sorted({value for _, value in raw})
    index = {name: i for i, name in enumerate(names)}
    return [index[value] for _, value in raw], names


def _label_index(path: Path, where: str, value: str, index: dict[str, int], names: list[str]) -> int:
    # A label may be given by name or by position; the name wins where both could apply.
    if value in index:
        return index[value]
    if _INT.fullmatch(value) and 0 <= int(value) < len(names):
        return int(value)
    raise BdcliError(
        f"label {value!r} on {where} of {path} is outside the label set "
        f"({', '.join(f'{i}={n}' for i, n in enumerate(names))})"
    )


def _int_labels(path: Path, raw: list[tuple[str, str]]) -> tuple[list[int], list[str]]:
    labels = [int(value) for _, value in raw]
    for (where, value), y in zip(raw, labels):
        if not 0 <= y <= MAX_INT_LABEL:
            raise BdcliError(
                f"label {value!r} on {where} of {path} is outside the label set: integer labels must be "
                f"class indices 0..K-1 (give label_names to map other values)"
            )
    return labels, [str(i) for i in range(max(labels) + 1)]
