"""Rewrite triggers: HiddenKiller's syntactic paraphrase and StyleBkd's text style.

The trigger is not a word but a rewrite of the whole sentence, made by a paraphrase model (SCPN,
STRAP) that needs hub weights. Poisoning therefore reads the rewrites from a **rewrite table**, a folder
with ``train.*`` and ``test.*`` files (tsv, csv, jsonl or json) whose rows rewrite the clean rows. A
live paraphraser can be registered in ``PARAPHRASERS`` (name -> ``(texts) -> rewrites``) and named in
the config instead; none is registered here. poison.json records which one ran.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from ..data.dataset import Corpus, TextDataset
from ..data.named import resolve_data_dir
from ..data.readers import FORMATS, read_table
from ..errors import BdcliError, UsageError
from ..registry import Registry
from .base import POISONERS, PoisonConfig, Poisoner, asr_dataset, non_target_rows, replace_rows

Paraphraser = Callable[[list[str]], list[str]]
# Live paraphrasers: name -> a function rewriting a list of texts into the trigger form, one output per
# input ("" where it fails). Register one with ``@PARAPHRASERS.register("scpn")``.
PARAPHRASERS: Registry[Paraphraser] = Registry("paraphraser")


@dataclass
class RewriteConfig(PoisonConfig):
    # A folder with train.* and test.* rewrites, or the name of one in the data directory. None: the
    # poisoner's own table for the data set, "<dataset>-syntactic-scpn" or "<dataset>-style-bible".
    table: str | None = None
    table_text_col: str = "sentence"
    table_label_col: str = "label"
    # A name in PARAPHRASERS, used instead of a table.
    paraphraser: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.table = (self.table or "").strip() or None
        self.paraphraser = (self.paraphraser or "").strip() or None
        if self.table is not None and self.paraphraser is not None:
            raise UsageError("give a rewrite table or a paraphraser, not both")
        if self.paraphraser is not None:
            PARAPHRASERS.get(self.paraphraser)  # an unknown name fails here, before any data is read


@dataclass
class _Rewrites:
    """Rewrites of the clean splits from one source."""

    source: str  # "table" or "live"
    train: dict[int, str]  # clean train row -> its rewrite (at least every candidate row)
    # Test rewrites: clean test row -> rewrite when aligned with the clean test split; else the table's
    # own rows, which rewrite non-target test rows in an order of their own.
    test: dict[int, str] | TextDataset
    table: str | None = None


class RewritePoisoner(Poisoner):
    """Replaces whole rows by their rewrites; see the module docstring."""

    Config = RewriteConfig
    table_suffix: ClassVar[str]  # default table: "<dataset><table_suffix>"
    trigger: ClassVar[str]  # what the rewrite is, for poison.json

    def transform(self, text: str, rng: random.Random) -> str:
        raise NotImplementedError(f"{self.name} rewrites whole rows from a table or a paraphraser; use apply()")

    def apply(self, corpus: Corpus) -> Corpus:
        cfg = self.config
        target = corpus.label_index(cfg.target)
        train, test = corpus.split("train"), corpus.split("test")
        candidates = self.candidate_rows(train, target)
        rw = self._live(corpus, target, candidates) if cfg.paraphraser else self._table(corpus, target)

        # Rows whose rewrite failed (empty) cannot carry the trigger: pick among the others.
        pool = [i for i in candidates if rw.train[i].strip()]
        who = "training rows" if cfg.candidates == "all" else "non-target training rows"
        chosen = self.sample_rows(pool, len(train), random.Random(f"{cfg.seed}-train"), f"{who} have a non-empty rewrite")
        new_train = replace_rows(train, {i: rw.train[i].strip() for i in chosen}, label=target)

        if isinstance(rw.test, dict):
            rows = non_target_rows(corpus, target)
            kept = [i for i in rows if rw.test[i].strip()]
            if not kept:
                raise BdcliError(f"every rewrite of the {len(rows)} non-target test rows is empty: no ASR set")
            asr_set = asr_dataset(test, kept, [rw.test[i].strip() for i in kept])
            n_dropped, source_rows = len(rows) - len(kept), kept
        else:
            own = rw.test
            kept = [j for j, t in enumerate(own.texts) if t.strip()]
            if not kept:
                raise BdcliError(f"the rewrite table {rw.table} has no non-empty test rewrite: no ASR set")
            asr_set = TextDataset([own.texts[j].strip() for j in kept], [own.labels[j] for j in kept],
                                  list(corpus.label_names), [True] * len(kept))
            n_dropped, source_rows = len(own) - len(kept), None

        record = self.base_record(corpus, target, chosen, source_rows)
        record.update(
            {
                "trigger": self.trigger,
                "rewrite_source": rw.source,
                "table": rw.table,
                "paraphraser": cfg.paraphraser,
                "n_empty_rewrites_skipped": len(candidates) - len(pool),
                # True: the ASR set rewrites the test rows listed in test_poison_source_rows. False: it is
                # the table's own test file (rewrites of non-target rows, row order not the clean one's).
                "test_poison_aligned": source_rows is not None,
                "n_test_poison_empty_dropped": n_dropped,
            }
        )
        return self.poisoned_corpus(corpus, new_train, asr_set, record)

    # --- sources ------------------------------------------------------------------------------------
    def _live(self, corpus: Corpus, target: int, candidates: list[int]) -> _Rewrites:
        name = self.config.paraphraser
        fn = PARAPHRASERS.get(name)
        train = corpus.split("train")
        rows = non_target_rows(corpus, target)

        def call(texts: list[str]) -> list[str]:
            out = list(fn(texts))
            if len(out) != len(texts) or not all(isinstance(t, str) for t in out):
                raise BdcliError(f"paraphraser {name!r} must return one text per input: got {len(out)} for {len(texts)}")
            return out

        # Only the rows that may be used are paraphrased.
        test_texts = call([corpus.split("test").texts[i] for i in rows])
        return _Rewrites("live", dict(zip(candidates, call([train.texts[i] for i in candidates]))),
                         dict(zip(rows, test_texts)))

    def extra_inputs(self, corpus: Callable[[], Corpus]) -> dict[str, str]:
        if self.config.paraphraser:
            return {}
        return {"rewrite_table": str(self._table_folder(corpus))}

    def _table(self, corpus: Corpus, target: int) -> _Rewrites:
        folder = self._table_folder(lambda: corpus)
        train, test = corpus.split("train"), corpus.split("test")
        cols = {"text_col": self.config.table_text_col, "label_col": self.config.table_label_col,
                "label_names": corpus.label_names}
        train_file = _split_file(folder, "train")
        if train_file is None:
            raise BdcliError(
                f"the rewrite table {folder} lacks a train split (no train{'/'.join(FORMATS)} file): poisoning "
                f"needs a rewrite of every training row"
            )
        table_train = read_table(train_file, **cols)
        if len(table_train) != len(train):
            raise BdcliError(
                f"the rewrite table {train_file} has {len(table_train)} rows but the train split of "
                f"{corpus.name!r} has {len(train)}: its row i must rewrite train row i"
            )
        _check_labels(table_train, train, train_file, "train")

        test_file = _split_file(folder, "test")
        if test_file is None:
            raise BdcliError(f"the rewrite table {folder} lacks a test split (no test{'/'.join(FORMATS)} file)")
        table_test = read_table(test_file, **cols)
        test_rw: dict[int, str] | TextDataset
        if len(table_test) == len(test):
            _check_labels(table_test, test, test_file, "test")
            test_rw = dict(enumerate(table_test.texts))
        else:
            # Not line-aligned: it must be rewrites of the non-target test rows only.
            bad = [j for j, y in enumerate(table_test.labels) if y == target]
            if bad:
                raise BdcliError(
                    f"the rewrite table {test_file} has {len(table_test)} rows, not the {len(test)} of the test "
                    f"split, so it must hold rewrites of non-target rows only, but {len(bad)} rows (first: row "
                    f"{bad[0] + 1}) have the target label {corpus.label_names[target]!r}"
                )
            if test.text_b is not None:
                raise BdcliError(f"{corpus.name!r} has sentence pairs: its rewrite table's test file must be line-aligned")
            test_rw = table_test
        return _Rewrites("table", dict(enumerate(table_train.texts)), test_rw, str(folder))

    def _table_folder(self, load_corpus: Callable[[], Corpus]) -> Path:
        """The rewrite table's folder. ``load_corpus`` is called only when --table is not a folder
        already, so that planning a step with one given needs no data."""
        if self.config.table is not None and (path := Path(self.config.table).expanduser()).is_dir():
            return path
        corpus = load_corpus()
        table = self.config.table or f"{corpus.name}{self.table_suffix}"
        # A name is looked up beside the clean set's own folder (the data directory it was read from, even
        # one given by --data-dir), then in $BDCLI_DATA_DIR.
        homes: list[Path] = []
        source = Path(corpus.source) if corpus.source else None
        if source is not None and source.name == corpus.name and source.is_dir():
            homes.append(source.parent)
        data_dir = resolve_data_dir(None)
        if data_dir is not None and data_dir not in homes:
            homes.append(data_dir)
        for home in homes:
            if (home / table).is_dir():
                return home / table
        where = ", ".join(str(h) for h in homes) if homes else "nowhere (BDCLI_DATA_DIR is unset)"
        raise BdcliError(
            f"rewrite table {table!r} not found: it is not a folder, and no folder of that name is in the data "
            f"directory (looked in {where}); pass --table FOLDER with train and test rewrites"
        )


def _split_file(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{suffix}" for suffix in FORMATS if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise BdcliError(f"{folder} holds several {stem} files ({', '.join(p.name for p in found)}): keep one")
    return found[0] if found else None


def _check_labels(table: TextDataset, clean: TextDataset, path: Path, split: str) -> None:
    # The shipped tables keep the original labels: a mismatch means the rows are not aligned.
    bad = [i for i, (a, b) in enumerate(zip(table.labels, clean.labels)) if a != b]
    if bad:
        raise BdcliError(
            f"the rewrite table {path} is not line-aligned with the {split} split: {len(bad)} rows (first: row "
            f"{bad[0] + 1}) have a label other than the clean row's"
        )


@dataclass
class HiddenKillerConfig(RewriteConfig):
    rate: float = 0.3  # the maximum-entropy paper's Appendix C.1


@POISONERS.register("hiddenkiller", display="HiddenKiller", order=50)
class HiddenKiller(RewritePoisoner):
    """HiddenKiller (Qi et al. 2021, "Hidden Killer: Invisible Textual Backdoor Attacks with Syntactic
    Trigger"): the trigger is a syntactic structure; poisoned rows are replaced by their SCPN paraphrase
    with the template S(SBAR)(,)(NP)(VP)(.) and relabelled to the target. Default rate 0.3, the
    maximum-entropy paper's Appendix C.1.

    SCPN needs hub weights, so the paraphrases come from a rewrite table: --table FOLDER holding train.*
    and test.* (tsv/csv/jsonl; columns --table-text-col, --table-label-col), or the name of such a folder
    in the data directory ($BDCLI_DATA_DIR). Default: <dataset>-syntactic-scpn there (sst2-syntactic-scpn
    ships). The train file must be line-aligned with the clean train split (row i rewrites train row i);
    rows with an empty rewrite are never picked. The ASR set is the rewrites of the non-target test rows:
    if the test file is line-aligned, those rows of it; otherwise it must hold non-target rows only (as
    sst2-syntactic-scpn's does) and is used whole. Empty rewrites are dropped and counted in poison.json.
    agnews-syntactic-scpn has no train file, so it cannot poison agnews.

    --paraphraser NAME uses a live paraphraser registered in bdcli.poison.PARAPHRASERS instead of a table;
    none ships. poison.json records which ran (rewrite_source: table or live, table, paraphraser).
    """

    name = "hiddenkiller"
    Config = HiddenKillerConfig
    table_suffix = "-syntactic-scpn"
    trigger = "syntactic template S(SBAR)(,)(NP)(VP)(.) (SCPN paraphrase)"


@dataclass
class StyleBkdConfig(RewriteConfig):
    rate: float = 0.2  # the maximum-entropy paper's Appendix C.1


@POISONERS.register("stylebkd", display="StyleBkd", order=60)
class StyleBkd(RewritePoisoner):
    """StyleBkd (Qi et al. 2021, "Mind the Style of Text! Adversarial and Backdoor Attacks Based on Text
    Style Transfer"): the trigger is a text style; poisoned rows are replaced by their Bible-style STRAP
    rewrite and relabelled to the target. Default rate 0.2 and the Bible style, the maximum-entropy
    paper's Appendix C.1.

    STRAP needs hub weights, so the rewrites come from a rewrite table: --table FOLDER holding train.* and
    test.* (tsv/csv/jsonl; columns --table-text-col, --table-label-col), or the name of such a folder in
    the data directory ($BDCLI_DATA_DIR). Default: <dataset>-style-bible there (sst2-style-bible and
    agnews-style-bible ship). The train file must be line-aligned with the clean train split (row i
    rewrites train row i); rows whose rewrite is empty (a failed rewrite, which the shipped Bible files
    hold a few of) are never picked, and their number is recorded. The ASR set is the rewrites of the
    non-target test rows, empty ones dropped and counted; a test file that is not line-aligned must hold
    non-target rows only and is used whole.

    --paraphraser NAME uses a live paraphraser registered in bdcli.poison.PARAPHRASERS instead of a table;
    none ships. poison.json records which ran (rewrite_source: table or live, table, paraphraser).
    """

    name = "stylebkd"
    Config = StyleBkdConfig
    table_suffix = "-style-bible"
    trigger = "Bible text style (STRAP rewrite)"


# The CLI shows __doc__ as help; dedent it so that its later paragraphs do not render indented.
for _cls in (HiddenKiller, StyleBkd):
    _cls.__doc__ = inspect.cleandoc(_cls.__doc__ or "")
del _cls
