"""``--data``: the one way every command turns a user's data argument into a Corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import BdcliError
from .dataset import Corpus, TextDataset
from .folder import is_data_folder, read_data_folder
from .named import DATASETS, load_named
from .readers import FORMATS, RowReport, read_table

# Split -> the file stems that may hold it in a folder of the user's own files.
_USER_SPLITS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}


def load_corpus(
    spec: str,
    data_dir: str | Path | None = None,
    *,
    text_col: str = "text",
    label_col: str = "label",
    text_b_col: str | None = None,
    label_names: Sequence[str] | None = None,
    bad_rows: str = "error",
    encoding: str = "utf-8",
) -> Corpus:
    """Resolve ``spec``, in this order: a bdcli data folder; a folder of the user's own
    ``train``/``dev`` (or ``validation``)/``test`` files; a single file (the train split); the name of a
    registered data set (looked up in ``data_dir``, else the hub).

    The column and label options apply to the user's own files only; data folders and named sets
    carry their own. ``bad_rows="drop"`` drops malformed and duplicate rows of the user's files; what
    was found lands in ``Corpus.warnings`` either way.
    """
    path = Path(spec).expanduser()
    columns = {"text_col": text_col, "label_col": label_col, "text_b_col": text_b_col, "bad_rows": bad_rows,
               "encoding": encoding}
    if path.is_dir():
        return read_data_folder(path) if is_data_folder(path) else _read_user_folder(path, columns, label_names)
    if path.is_file():
        train, warnings = _read_reported(path, columns, label_names)
        return Corpus(path.stem, train.label_names, {"train": train}, source=str(path), warnings=warnings)
    if spec in DATASETS:
        return load_named(spec, data_dir)
    raise BdcliError(f"no data set or file named {spec!r} (named sets: {', '.join(DATASETS.names())})")


def _read_user_folder(folder: Path, columns: dict, label_names: Sequence[str] | None) -> Corpus:
    files = {split: _split_file(folder, stems) for split, stems in _USER_SPLITS.items()}
    if files["train"] is None:
        raise BdcliError(
            f"{folder} is neither a bdcli data folder nor holds a train file "
            f"({', '.join('train' + s for s in FORMATS)})"
        )
    train, warnings = _read_reported(files["train"], columns, label_names)
    # dev and test take train's label set, so that a label string means the same index in every split.
    splits: dict[str, TextDataset] = {"train": train}
    for split in ("dev", "test"):
        if files[split] is not None:
            splits[split], more = _read_reported(files[split], columns, train.label_names)
            warnings += more
    return Corpus(folder.resolve().name, train.label_names, splits, source=str(folder), warnings=warnings)


def _read_reported(path: Path, columns: dict, label_names: Sequence[str] | None) -> tuple[TextDataset, list[str]]:
    report = RowReport()
    ds = read_table(path, **columns, label_names=label_names, report=report)
    return ds, report.messages(path)


def _split_file(folder: Path, stems: tuple[str, ...]) -> Path | None:
    candidates = [folder / f"{stem}{suffix}" for stem in stems for suffix in FORMATS]
    found = [p for p in candidates if p.is_file()]
    if len(found) > 1:
        raise BdcliError(f"{folder} holds several files for one split ({', '.join(p.name for p in found)}): keep one")
    return found[0] if found else None
