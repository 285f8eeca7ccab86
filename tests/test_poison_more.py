"""SOS and the rewrite poisoners (HiddenKiller, StyleBkd): counts, labels, which rows changed, what
they became, the ASR set, and the errors for tables that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bdcli.data import load_corpus
from bdcli.data.dataset import Corpus, TextDataset
from bdcli.errors import BdcliError, UsageError
from bdcli.poison import PARAPHRASERS, POISONERS, HiddenKillerConfig, SOSConfig, StyleBkdConfig

NAMES = ["negative", "positive"]
SOS_WORDS = ("friends", "weekend", "store")


def _corpus(n_train: int = 100, n_test: int = 40) -> Corpus:
    # Labels alternate 0,1,0,1...; every text is unique and free of trigger words.
    def split(n: int, tag: str) -> TextDataset:
        return TextDataset([f"{tag} row {i} is a plain sentence" for i in range(n)], [i % 2 for i in range(n)], NAMES)

    return Corpus("toy", NAMES, {"train": split(n_train, "train"), "dev": split(10, "dev"), "test": split(n_test, "test")})


def _sos(**kw):
    return POISONERS.get("sos")(SOSConfig(**kw))


def _without(words: list[str], remove: set[str]) -> list[str]:
    return [w for w in words if w not in remove]


# --- SOS ----------------------------------------------------------------------------------------------
def test_sos_poisoned_rows_get_every_trigger_once_and_the_target():
    clean = _corpus()
    out = _sos(rate=0.1, negative_rate=0.2, target="1", seed=3).apply(clean)
    train, rec = out.split("train"), out.poison
    before = clean.split("train")
    assert rec["n_poisoned"] == 10 and len(rec["poisoned_rows"]) == 10
    assert rec["poisoned_rows"] == [i for i, p in enumerate(train.poisoned) if p]
    for i in rec["poisoned_rows"]:
        words = train.texts[i].split()
        assert all(words.count(t) == 1 for t in SOS_WORDS)
        assert _without(words, set(SOS_WORDS)) == before.texts[i].split()
        assert before.labels[i] == 0 and train.labels[i] == 1


def test_sos_every_negative_seed_row_is_added_once_per_leave_one_out_subset_with_its_label():
    # The SOS authors' negative augmentation: for a 3-word trigger, each seed row comes back three
    # times, once with each two-word subset, its true label kept; the originals are all still there.
    clean = _corpus()
    out = _sos(rate=0.1, negative_rate=0.2, target="1", seed=3).apply(clean)
    train, rec = out.split("train"), out.poison
    before = clean.split("train")
    seeds = rec["negative_seed_rows"]
    assert len(seeds) == 20 == len(set(seeds)) and not set(seeds) & set(rec["poisoned_rows"])
    assert rec["negative_subsets"] == [["weekend", "store"], ["friends", "store"], ["friends", "weekend"]]
    assert len(train) == 100 + 60 and rec["n_negative"] == 60 and rec["negative_rows"] == list(range(100, 160))
    got: dict[int, list[tuple[str, ...]]] = {}
    for j, src, s in zip(rec["negative_rows"], rec["negative_source_rows"], rec["negative_subset_index"]):
        words = train.texts[j].split()
        present = tuple(t for t in SOS_WORDS if t in words)
        assert all(words.count(t) == 1 for t in present) and SOS_WORDS[s] not in words
        assert list(present) == rec["negative_subsets"][s]
        assert _without(words, set(SOS_WORDS)) == before.texts[src].split()
        assert train.labels[j] == before.labels[src] and not train.poisoned[j]
        got.setdefault(src, []).append(present)
    all_pairs = {("weekend", "store"), ("friends", "store"), ("friends", "weekend")}
    assert set(got) == set(seeds) and all(len(v) == 3 and set(v) == all_pairs for v in got.values())
    assert {before.labels[i] for i in seeds} == {0, 1}  # seeds drawn from any label
    # Every original row but the poisoned ones is untouched, the seed rows included.
    for i in set(range(100)) - set(rec["poisoned_rows"]):
        assert (train.texts[i], train.labels[i], train.poisoned[i]) == (before.texts[i], before.labels[i], False)
    assert sum(train.poisoned) == 10


def test_sos_asr_set_is_every_non_target_test_row_with_all_triggers():
    clean = _corpus(n_test=40)
    out = _sos(target="1").apply(clean)
    asr = out.split("test-poison")
    src = [i for i, y in enumerate(clean.split("test").labels) if y != 1]
    assert len(asr) == 20 and out.poison["test_poison_source_rows"] == src
    assert asr.labels == [0] * 20 and all(asr.poisoned)
    for j, i in enumerate(src):
        words = asr.texts[j].split()
        assert all(words.count(t) == 1 for t in SOS_WORDS)
        assert _without(words, set(SOS_WORDS)) == clean.split("test").texts[i].split()


def test_sos_is_seeded_and_the_negative_rate_never_moves_the_poisoned_rows():
    a = _sos(target="1", seed=5).apply(_corpus())
    b = _sos(target="1", seed=5).apply(_corpus())
    c = _sos(target="1", seed=5, negative_rate=0.3).apply(_corpus())
    assert a.split("train").texts == b.split("train").texts and a.poison == b.poison
    assert a.poison["poisoned_rows"] == c.poison["poisoned_rows"]
    assert [a.split("train").texts[i] for i in a.poison["poisoned_rows"]] == [
        c.split("train").texts[i] for i in c.poison["poisoned_rows"]
    ]
    assert len(c.poison["negative_seed_rows"]) == 30 and c.poison["n_negative"] == 90
    assert _sos(target="1", negative_rate=0.0).apply(_corpus()).poison["negative_rows"] == []


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(trigger_words=("a", "a")), "distinct"),
        (dict(trigger_words=(" ",)), "at least one trigger word"),
        (dict(trigger_words=("a",)), "at least two trigger words"),
        (dict(negative_rate=1.0), "--negative-rate must be a finite number in [0, 1)"),
        (dict(negative_rate=-0.1), "--negative-rate must be a finite number in [0, 1)"),
    ],
)
def test_sos_bad_configs_are_refused(kw, msg):
    with pytest.raises(UsageError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        SOSConfig(**kw)


def test_sos_single_trigger_without_negatives_and_too_many_negatives():
    out = _sos(target="1", trigger_words=("cf",), negative_rate=0.0).apply(_corpus())
    assert all(out.split("train").texts[i].split().count("cf") == 1 for i in out.poison["poisoned_rows"])
    with pytest.raises(UsageError, match="negative seed rows but only 50 training rows are left"):
        _sos(target="1", rate=0.5, negative_rate=0.6).apply(_corpus())


# --- rewrite tables (synthetic) ---------------------------------------------------------------------
def _write(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")


def _table(folder: Path, corpus: Corpus, *, train_empty=(), test_empty=(), test_rows=None, train_rows=None) -> Path:
    """A line-aligned rewrite table of ``corpus``; ``*_empty`` rows get an empty rewrite."""
    folder.mkdir(parents=True, exist_ok=True)
    tr, te = corpus.split("train"), corpus.split("test")
    if train_rows is None:
        train_rows = [("" if i in train_empty else f"REWRITE {t}", y) for i, (t, y) in enumerate(zip(tr.texts, tr.labels))]
    if train_rows is not False:
        _write(folder / "train.tsv", train_rows)
    if test_rows is None:
        test_rows = [("" if i in test_empty else f"REWRITE {t}", y) for i, (t, y) in enumerate(zip(te.texts, te.labels))]
    _write(folder / "test.tsv", test_rows)
    return folder


def _rewrite(name: str, **kw):
    Config = {"hiddenkiller": HiddenKillerConfig, "stylebkd": StyleBkdConfig}[name]
    return POISONERS.get(name)(Config(**kw))


def test_rewrite_defaults_follow_appendix_c1():
    assert HiddenKillerConfig().rate == 0.3 and StyleBkdConfig().rate == 0.2
    assert HiddenKillerConfig().table is None and HiddenKillerConfig().paraphraser is None


def test_rewrite_replaces_chosen_rows_and_skips_empty_rewrites(tmp_path):
    clean = _corpus(n_train=20, n_test=10)
    # Non-target train rows 0 and 2 failed; test rows 4 (non-target) and 5 (target) too.
    table = _table(tmp_path / "t", clean, train_empty={0, 2, 3}, test_empty={4, 5})
    out = _rewrite("stylebkd", table=str(table), rate=0.4, target="1", seed=1).apply(clean)
    train, rec, before = out.split("train"), out.poison, clean.split("train")
    chosen = rec["poisoned_rows"]
    assert rec["n_poisoned"] == len(chosen) == 8 and rec["n_empty_rewrites_skipped"] == 2
    assert set(chosen) == {4, 6, 8, 10, 12, 14, 16, 18}  # the 8 non-target rows with a rewrite
    for i in range(20):
        if i in chosen:
            assert train.texts[i] == f"REWRITE {before.texts[i]}" and train.labels[i] == 1 and train.poisoned[i]
        else:
            assert (train.texts[i], train.labels[i], train.poisoned[i]) == (before.texts[i], before.labels[i], False)
    asr = out.split("test-poison")
    assert rec["test_poison_aligned"] is True and rec["n_test_poison_empty_dropped"] == 1
    assert rec["test_poison_source_rows"] == [0, 2, 6, 8]
    assert asr.texts == [f"REWRITE test row {i} is a plain sentence" for i in (0, 2, 6, 8)]
    assert asr.labels == [0] * 4 and all(asr.poisoned)
    assert rec["rewrite_source"] == "table" and rec["table"] == str(table) and rec["paraphraser"] is None
    assert out.split("dev").texts == clean.split("dev").texts


def test_rewrite_pool_too_small_after_empty_rewrites(tmp_path):
    clean = _corpus(n_train=20, n_test=10)
    table = _table(tmp_path / "t", clean, train_empty={0, 2})
    with pytest.raises(UsageError, match="only 8 non-target training rows have a non-empty rewrite"):
        _rewrite("hiddenkiller", table=str(table), rate=0.5, target="1").apply(clean)


def test_rewrite_test_table_of_non_target_rows_is_used_as_is(tmp_path):
    clean = _corpus(n_train=20, n_test=10)
    table = _table(tmp_path / "t", clean, test_rows=[("neg one", 0), ("", 0), ("neg three", 0)])
    out = _rewrite("hiddenkiller", table=str(table), rate=0.3, target="1").apply(clean)
    asr, rec = out.split("test-poison"), out.poison
    assert asr.texts == ["neg one", "neg three"] and asr.labels == [0, 0] and all(asr.poisoned)
    assert rec["test_poison_aligned"] is False and rec["test_poison_source_rows"] is None
    assert rec["n_test_poison_empty_dropped"] == 1 and rec["n_poisoned"] == 6


def test_rewrite_test_table_with_target_rows_is_refused(tmp_path):
    clean = _corpus(n_train=20, n_test=10)
    table = _table(tmp_path / "t", clean, test_rows=[("neg", 0), ("pos", 1), ("neg", 0)])
    with pytest.raises(BdcliError, match="must hold rewrites of non-target rows only, but 1 rows .first: row 2. have the target label 'positive'"):
        _rewrite("hiddenkiller", table=str(table), target="1").apply(clean)


def test_rewrite_misaligned_train_table_is_refused(tmp_path):
    clean = _corpus(n_train=20, n_test=10)
    rows = [(f"x {i}", i % 2) for i in range(19)]
    table = _table(tmp_path / "t", clean, train_rows=rows)
    with pytest.raises(BdcliError, match="has 19 rows but the train split of 'toy' has 20"):
        _rewrite("stylebkd", table=str(table)).apply(clean)
    # Same count, but the labels show the rows are shifted.
    table = _table(tmp_path / "u", clean, train_rows=[(f"x {i}", (i + 1) % 2) for i in range(20)])
    with pytest.raises(BdcliError, match="not line-aligned with the train split: 20 rows .first: row 1."):
        _rewrite("stylebkd", table=str(table)).apply(clean)


def test_rewrite_table_without_train_split_is_refused(tmp_path):
    clean = _corpus(n_train=20, n_test=10)
    table = _table(tmp_path / "t", clean, train_rows=False)
    with pytest.raises(BdcliError, match="lacks a train split"):
        _rewrite("hiddenkiller", table=str(table)).apply(clean)


def test_rewrite_default_table_is_found_by_name_in_the_data_dir(tmp_path, monkeypatch):
    clean = _corpus(n_train=20, n_test=10)
    _table(tmp_path / "toy-style-bible", clean)
    _table(tmp_path / "mine", clean)
    monkeypatch.setenv("BDCLI_DATA_DIR", str(tmp_path))
    out = _rewrite("stylebkd", target="1").apply(clean)
    assert out.poison["table"] == str(tmp_path / "toy-style-bible") and out.poison["n_poisoned"] == 4
    assert _rewrite("hiddenkiller", table="mine", target="1").apply(clean).poison["table"] == str(tmp_path / "mine")
    with pytest.raises(BdcliError, match="rewrite table 'toy-syntactic-scpn' not found"):
        _rewrite("hiddenkiller", target="1").apply(clean)
    monkeypatch.delenv("BDCLI_DATA_DIR")
    with pytest.raises(BdcliError, match="BDCLI_DATA_DIR is unset"):
        _rewrite("stylebkd", target="1").apply(clean)
    # A named set read from a data directory (say --data-dir) finds its table beside it.
    (tmp_path / "toy").mkdir()
    clean.source = str(tmp_path / "toy")
    assert _rewrite("stylebkd", target="1").apply(clean).poison["table"] == str(tmp_path / "toy-style-bible")


@pytest.fixture
def shout():
    PARAPHRASERS.register("test-shout")(lambda texts: ["" if "row 4 " in t else t.upper() for t in texts])
    yield "test-shout"
    PARAPHRASERS._items.pop("test-shout")


def test_live_paraphraser_is_used_instead_of_a_table_and_recorded(shout):
    clean = _corpus(n_train=20, n_test=10)
    out = _rewrite("hiddenkiller", paraphraser=shout, rate=0.4, target="1").apply(clean)
    rec, train = out.poison, out.split("train")
    assert rec["rewrite_source"] == "live" and rec["paraphraser"] == shout and rec["table"] is None
    assert rec["n_empty_rewrites_skipped"] == 1 and 4 not in rec["poisoned_rows"] and rec["n_poisoned"] == 8
    assert all(train.texts[i] == clean.split("train").texts[i].upper() for i in rec["poisoned_rows"])
    assert rec["test_poison_source_rows"] == [0, 2, 6, 8]


def test_unknown_paraphraser_and_both_sources_are_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown paraphraser 'scpn'; known:"):
        HiddenKillerConfig(paraphraser="scpn")
    with pytest.raises(UsageError, match="not both"):
        StyleBkdConfig(paraphraser="scpn", table=str(tmp_path))


def test_help_renders_for_the_new_poisoners():
    from typer.testing import CliRunner

    from bdcli.cli.app import app  # imported here: the CLI pulls in the model stack, the poisoners do not

    runner = CliRunner()
    for name, words in (("sos", ["negative", "friends"]), ("hiddenkiller", ["S(SBAR)", "--table"]),
                        ("stylebkd", ["Bible", "--paraphraser"])):
        res = runner.invoke(app, ["poison", name, "--help"])
        assert res.exit_code == 0 and all(w in res.output for w in words), res.output


# --- the shipped tables -----------------------------------------------------------------------------
def _column(path: Path) -> list[tuple[str, str]]:
    """(text, label) of each data line of a StyleAttack/HiddenKiller tsv, read without bdcli."""
    lines = path.read_text(encoding="utf-8").split("\n")[1:]
    return [(line.split("\t")[0].strip(), line.split("\t")[1].strip()) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def sst2(data_dir) -> Corpus:
    return load_corpus("sst2", data_dir)


def test_hiddenkiller_on_sst2_with_the_shipped_table(sst2, data_dir):
    out = _rewrite("hiddenkiller", target="1").apply(sst2)
    rec, train = out.poison, out.split("train")
    table = _column(data_dir / "sst2-syntactic-scpn" / "train.tsv")
    assert rec["n_poisoned"] == 2076 == round(0.3 * 6920) and sum(train.poisoned) == 2076
    assert all(train.texts[i] == table[i][0] and train.labels[i] == 1 for i in rec["poisoned_rows"])
    assert all(sst2.split("train").labels[i] == 0 for i in rec["poisoned_rows"])
    asr = out.split("test-poison")
    assert asr.texts == [t for t, _ in _column(data_dir / "sst2-syntactic-scpn" / "test.tsv")] and len(asr) == 911
    assert asr.labels == [0] * 911 and rec["test_poison_aligned"] is False
    assert rec["table"] == str(data_dir / "sst2-syntactic-scpn") and rec["rewrite_source"] == "table"


@pytest.mark.parametrize("target, label", [("1", "0"), ("0", "1")])
def test_stylebkd_on_sst2_with_the_shipped_table(sst2, data_dir, target, label):
    out = _rewrite("stylebkd", target=target).apply(sst2)
    rec = out.poison
    train_table = _column(data_dir / "sst2-style-bible" / "train.tsv")
    assert rec["n_poisoned"] == 1384 and all(out.split("train").texts[i] == train_table[i][0] for i in rec["poisoned_rows"])
    test_table = _column(data_dir / "sst2-style-bible" / "test.tsv")
    rows = [i for i, (t, y) in enumerate(test_table) if y == label]
    empty = [i for i in rows if not test_table[i][0]]
    assert len(rows) == (912 if label == "0" else 909)
    assert len(out.split("test-poison")) == len(rows) - len(empty) == len(rows) - rec["n_test_poison_empty_dropped"]
    assert out.split("test-poison").texts == [test_table[i][0] for i in rows if test_table[i][0]]


def test_hiddenkiller_cannot_poison_agnews_without_a_train_table(data_dir):
    with pytest.raises(BdcliError, match="agnews-syntactic-scpn lacks a train split"):
        _rewrite("hiddenkiller", target="World").apply(load_corpus("agnews", data_dir))
