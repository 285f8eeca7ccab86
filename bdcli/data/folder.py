"""bdcli's own data folder: what ``bdcli poison`` writes and every later command reads.

Layout: one ``<split>.jsonl`` per split (``train``, ``dev``, ``test``, and ``test-poison`` for poisoned
data), ``data.json`` = {"name", "label_names", "source", "splits": {split: rows}}, and ``poison.json``
(the poisoner's record) for poisoned data. ``data.json`` is the table of contents: only the splits it
lists are read, so a stale ``*.jsonl`` left by an earlier write is ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import BdcliError
from .dataset import Corpus, TextDataset

META = "data.json"
POISON = "poison.json"
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


def is_data_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


def write_data_folder(corpus: Corpus, folder: str | Path) -> None:
    """Write ``corpus`` to ``folder`` (created if need be; an existing one must be empty or a data folder)."""
    folder = Path(folder)
    _check_writable(corpus, folder)
    meta = {
        "name": corpus.name,
        "label_names": list(corpus.label_names),
        "source": corpus.source,
        "splits": {split: len(ds) for split, ds in corpus.splits.items()},
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for split, ds in corpus.splits.items():
            ds.to_jsonl(folder / f"{split}.jsonl")
        _write_json(folder / META, meta)
        if corpus.poison is not None:
            _write_json(folder / POISON, corpus.poison)
        else:
            # Rewriting clean data over a poisoned folder must not leave it marked as poisoned.
            (folder / POISON).unlink(missing_ok=True)
    except OSError as e:
        raise BdcliError(f"cannot write the data folder {folder}: {e.strerror or e}") from None


def read_data_folder(path: str | Path) -> Corpus:
    folder = Path(path)
    meta = _read_meta(folder)
    names = meta["label_names"]
    splits = {split: _read_split(folder, split, rows, names) for split, rows in meta["splits"].items()}
    poison = _read_json(folder, POISON) if (folder / POISON).is_file() else None
    if poison is not None and not isinstance(poison, dict):
        raise BdcliError(f"the data folder {folder} is broken: {POISON} must hold a JSON object")
    return Corpus(meta["name"], list(names), splits, source=meta.get("source", ""), poison=poison)


def _check_writable(corpus: Corpus, folder: Path) -> None:
    # Split names become file names, and read_data_folder must find them again.
    bad = [s for s in corpus.splits if not _SPLIT_NAME.fullmatch(s)]
    if bad or not corpus.splits:
        raise BdcliError(
            f"cannot write {corpus.name!r} to {folder}: it needs at least one split, named with letters, "
            f"digits, '-' or '_' (got: {', '.join(map(repr, corpus.splits)) or 'none'})"
        )
    if folder.exists() and not folder.is_dir():
        raise BdcliError(f"cannot write a data folder at {folder}: it is a file")
    # Never scatter train.jsonl etc. among someone's unrelated files.
    if folder.is_dir() and any(folder.iterdir()) and not is_data_folder(folder):
        raise BdcliError(f"{folder} exists and is not a bdcli data folder: choose a new or empty folder")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(folder: Path, name: str):
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except OSError as e:
        raise BdcliError(f"cannot read {folder / name}: {e.strerror or e}") from None
    except (ValueError, RecursionError):
        raise BdcliError(f"the data folder {folder} is broken: {name} is not valid JSON") from None


def _read_meta(folder: Path) -> dict:
    if not is_data_folder(folder):
        raise BdcliError(f"{folder} is not a bdcli data folder (it has no {META})")
    meta = _read_json(folder, META)
    ok = (
        isinstance(meta, dict)
        and isinstance(meta.get("name"), str)
        and isinstance(meta.get("label_names"), list)
        and all(isinstance(n, str) for n in meta["label_names"])
        and isinstance(meta.get("source", ""), str)
        and isinstance(meta.get("splits"), dict)
        and meta["splits"]
        and all(_SPLIT_NAME.fullmatch(s) and isinstance(n, int) for s, n in meta["splits"].items())
    )
    if not ok:
        raise BdcliError(
            f"the data folder {folder} is broken: {META} must hold a name, label_names, a source and "
            f"a non-empty splits table of split name -> row count"
        )
    return meta


def _read_split(folder: Path, split: str, rows: int, label_names: list[str]) -> TextDataset:
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise BdcliError(f"the data folder {folder} is broken: {META} lists {path.name}, which is missing")
    try:
        ds = TextDataset.from_jsonl(path, label_names)
    except OSError as e:
        raise BdcliError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise BdcliError(f"the data folder {folder} is broken: {path.name} is not UTF-8") from None
    except BdcliError as e:
        # from_jsonl names the file, but the label-range check inside TextDataset does not.
        raise BdcliError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    if len(ds) != rows:
        raise BdcliError(f"the data folder {folder} is broken: {path.name} has {len(ds)} rows but {META} says {rows}")
    return ds
