"""The data layer: named sets on the real files, users' own files, bdcli data folders, --data resolution."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bdcli.data import (
    DATASETS,
    Corpus,
    TextDataset,
    is_data_folder,
    load_corpus,
    read_data_folder,
    read_table,
    resolve_data_dir,
    write_data_folder,
)
import bdcli.data.named as named_module
from bdcli.data.named import load_named
from bdcli.data.readers import read_lines, read_text_label_files
from bdcli.errors import BdcliError


@pytest.fixture(scope="module")
def named(data_dir: Path) -> dict[str, Corpus]:
    return {name: load_named(name, data_dir) for name in DATASETS}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --- the named sets on the real files -------------------------------------------------------------
@pytest.mark.parametrize(
    "name, sizes, label_names",
    [
        ("sst2", (6920, 872, 1821), ["negative", "positive"]),
        ("agnews", (11106, 10000, 7600), ["World", "Sports", "Business", "Sci/Tech"]),
        ("hsol", (5823, 2485, 2485), ["clean", "toxic"]),
        ("yelp", (14000, 2999, 3001), ["negative", "positive"]),
        ("mr", (8530, 1066, 1066), ["negative", "positive"]),
    ],
)
def test_named_sets_sizes_and_labels(named, data_dir, name, sizes, label_names):
    corpus = named[name]
    assert corpus.name == name
    assert corpus.source == str(data_dir / name)
    assert corpus.label_names == label_names
    assert tuple(len(corpus.split(s)) for s in ("train", "dev", "test")) == sizes
    for ds in corpus.splits.values():
        assert ds.label_names == label_names
        assert set(ds.labels) == set(range(len(label_names)))
        assert not any(ds.poisoned)
        assert all(t == t.strip() and "\r" not in t for t in ds.texts)


def test_sst2_rows(named):
    train = named["sst2"].split("train")
    assert train.texts[0] == (
        "a stirring , funny and finally transporting re-imagining of beauty and the beast and 1930s horror films"
    )
    assert train.labels[:2] == [1, 0]
    assert named["sst2"].split("test").texts[0] == "no movement , no yuks , not much of anything ."
    assert Counter(train.labels) == {1: 3610, 0: 3310}
    assert any("-lrb-" in t for t in train.texts)  # Penn Treebank escapes are data, left as they are


def test_agnews_rows(named):
    train = named["agnews"].split("train")
    assert train.texts[1] == (
        "the company running the japanese nuclear plant hit by a fatal accident is to close its reactors for safety checks ."
    )
    assert train.labels[:2] == [2, 2]
    assert Counter(named["agnews"].split("test").labels) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}


def test_hsol_quoted_rows_and_shared_dev_test(named):
    hsol = named["hsol"]
    train = hsol.split("train")
    assert train.texts[0] == (
        'I had a dream I was in 4th grade again with my class except as my current self and remember '
        'thinking "you\'re crazy, you become a hoe, moron"'
    )
    assert (train.texts[194], train.labels[194]) == ('"bitch"', 1)  # file line 196: """bitch"""
    assert (train.texts[1], train.labels[1]) == (
        "RT If he tell u that u got some good pussy but he never try to hit again.. what that mean?",
        1,
    )
    assert hsol.split("dev").texts == hsol.split("test").texts
    assert hsol.split("dev").labels == hsol.split("test").labels
    assert "same" in DATASETS.get("hsol").description


def test_yelp_rows(named):
    train = named["yelp"].split("train")
    assert train.texts[0].startswith("really didnt see any vegan items on the menu soy milk")
    assert train.labels[:3] == [0, 1, 0]
    assert Counter(train.labels) == {0: 7000, 1: 7000}


def test_mr_fixed_stratified_split(named, data_dir):
    again = load_named("mr", data_dir)
    mr = named["mr"]
    for split in ("train", "dev", "test"):
        assert again.split(split).texts == mr.split(split).texts
        assert again.split(split).labels == mr.split(split).labels
    assert [Counter(mr.split(s).labels) for s in ("train", "dev", "test")] == [
        {0: 4265, 1: 4265},
        {0: 533, 1: 533},
        {0: 533, 1: 533},
    ]
    rows = [(t, y) for ds in mr.splits.values() for t, y in zip(ds.texts, ds.labels)]
    assert len(rows) == len(set(rows)) == 10662
    assert mr.split("dev").texts[:1] != mr.split("test").texts[:1]


def test_mr_decodes_windows_1252(named, data_dir):
    texts = [t for ds in named["mr"].splits.values() for t in ds.texts]
    assert any("château" in t for t in texts)  # é, â: Latin-1 letters
    assert any("hmmm…might i suggest" in t for t in texts)  # 0x85: the one byte Latin-1 gets wrong
    assert not any(0x80 <= ord(c) <= 0x9F for t in texts for c in t)
    neg = read_lines(data_dir / "mr" / "rt-polarity.neg", 0, ["negative", "positive"], "cp1252")
    assert (len(neg), neg.texts[0]) == (5331, "simplistic , silly and tedious .")
    with pytest.raises(BdcliError, match=r"rt-polarity.neg is not valid utf-8 .*--encoding"):
        read_lines(data_dir / "mr" / "rt-polarity.neg", 0, ["negative", "positive"])


@pytest.mark.parametrize(
    "folder, split, rows, empty",
    [
        ("sst2-style-bible", "train", 6920, 0),
        ("sst2-style-bible", "test", 1821, 5),
        ("sst2-syntactic-scpn", "dev", 426, 0),
        ("agnews-style-bible", "test", 7600, 50),
        ("agnews-syntactic-scpn", "dev", 9023, 0),
    ],
)
def test_styleattack_files_parse_without_stray_spaces(data_dir, folder, split, rows, empty):
    ds = read_table(data_dir / folder / f"{split}.tsv", text_col="sentence")
    assert len(ds) == rows
    assert all(t == t.strip() for t in ds.texts)
    # Upstream, a failed rewrite is a row with an empty text; kept, so rows stay line-aligned.
    assert sum(not t for t in ds.texts) == empty
    assert set(ds.label_names) <= {"0", "1", "2", "3"}


def test_styleattack_rows_line_up_with_the_originals(data_dir, named):
    bible = read_table(data_dir / "sst2-style-bible" / "train.tsv", text_col="sentence", label_names=["negative", "positive"])
    assert bible.texts[0] == (
        "a stirring, funny and finally transistor portray of beauty and the beast and 1930s horror movies ."
    )
    assert bible.labels == named["sst2"].split("train").labels


# --- users' own files -----------------------------------------------------------------------------
def test_tsv_with_column_mapping_and_string_labels(tmp_path):
    path = write(tmp_path / "reviews.tsv", "ID\tReview \t Stars\r\n1\t great film \tpos\r\n2\tawful\tneg\r\n3\tfine\tpos\r\n")
    ds = read_table(path, text_col="review", label_col="stars")
    assert ds.texts == ["great film", "awful", "fine"]
    assert ds.label_names == ["neg", "pos"]
    assert ds.labels == [1, 0, 1]
    mapped = read_table(path, text_col="Review", label_col="Stars", label_names=["pos", "neg"])
    assert mapped.labels == [0, 1, 0]


def test_csv_quotes_commas_crlf_and_bom(tmp_path):
    text = '\ufeffsentence,label\r\n"a, b and ""c""",1\r\n"two\nlines",0\r\nplain,1\r\n'
    ds = read_table(write(tmp_path / "d.csv", text), text_col="sentence")
    assert ds.texts == ['a, b and "c"', "two\nlines", "plain"]
    assert ds.labels == [1, 0, 1]
    assert ds.label_names == ["0", "1"]


def test_jsonl_and_json_with_text_b(tmp_path):
    rows = [
        {"premise": "a man sleeps", "hypothesis": "a man is awake", "gold": "contradiction"},
        {"premise": "a dog runs", "hypothesis": "an animal moves", "gold": "entailment"},
    ]
    names = ["entailment", "contradiction"]
    jsonl = write(tmp_path / "nli.jsonl", "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    arr = write(tmp_path / "nli.json", json.dumps(rows, indent=1))
    for path in (jsonl, arr):
        ds = read_table(path, text_col="premise", text_b_col="hypothesis", label_col="gold", label_names=names)
        assert (ds.texts, ds.text_b, ds.labels) == (
            ["a man sleeps", "a dog runs"],
            ["a man is awake", "an animal moves"],
            [1, 0],
        )
    ints = read_table(write(tmp_path / "x.data", '{"text": "t", "label": 2}\n'), fmt="jsonl")
    assert (ints.labels, ints.label_names) == ([2], ["0", "1", "2"])


def test_text_label_files(tmp_path):
    x = write(tmp_path / "x.txt", "first text \nsecond\x85text\n")
    y = write(tmp_path / "y.txt", "1\n0\n\n")
    ds = read_text_label_files(x, y, label_names=["negative", "positive"])
    assert (ds.texts, ds.labels) == (["first text", "second\x85text"], [1, 0])


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("absent.tsv", None, {}, r"no such file: .*absent\.tsv"),
        ("empty.tsv", "  \n\n", {}, r"empty\.tsv is empty"),
        ("header.csv", "text,label\n", {}, r"header\.csv is empty: it has no data rows"),
        ("cols.tsv", "sentence\tlabel\nhi\t1\n", {}, r"cols\.tsv has no column 'text' \(columns found: 'sentence', 'label'\)"),
        ("b.tsv", "text\tlabel\nhi\t1\n", {"text_b_col": "hyp"}, r"b\.tsv has no column 'hyp'"),
        ("fields.tsv", "text\tlabel\nok\t1\na\ttab\t0\n", {}, r"line 3 of .*fields\.tsv has 3 fields but the header has 2"),
        ("quote.csv", 'text,label\nok,1\n"open,0\nmore,1\n', {}, r"line 3 of .*quote\.csv has 1 fields"),
        (
            "range.tsv",
            "text\tlabel\na\t0\nb\t2\n",
            {"label_names": ["neg", "pos"]},
            r"label '2' on line 3 of .*range\.tsv is outside the label set \(0=neg, 1=pos\)",
        ),
        ("neg.tsv", "text\tlabel\na\t0\nb\t-1\n", {}, r"label '-1' on line 3 of .*neg\.tsv is outside the label set"),
        ("nolabel.tsv", "text\tlabel\na\t\n", {}, r"line 2 of .*nolabel\.tsv has an empty label"),
        ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", \n', {}, r"line 2 of .*bad\.jsonl is not valid JSON"),
        ("list.jsonl", "[1, 2]", {}, r"row 1 of .*list\.jsonl is not a JSON object"),
        ("miss.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n', {}, r"line 2 of .*miss\.jsonl has no 'label' field"),
        ("kind.jsonl", '{"text": ["a"], "label": 0}\n', {}, r"line 1 of .*kind\.jsonl: field 'text' is list"),
        ("notes.txt", "text\tlabel\n", {}, r"cannot tell the format of .*notes\.txt"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    with pytest.raises(BdcliError, match=message):
        read_table(path, **kwargs)


def test_undecodable_and_unreadable_files(tmp_path):
    latin = write(tmp_path / "latin.tsv", "text\tlabel\ncafé\t0\n", encoding="latin-1")
    with pytest.raises(BdcliError, match=r"latin\.tsv is not valid utf-8 text \(byte 0xe9 .*--encoding latin-1"):
        read_table(latin)
    assert read_table(latin, encoding="latin-1").texts == ["café"]
    with pytest.raises(BdcliError, match=r"unknown encoding 'klingon'"):
        read_table(latin, encoding="klingon")
    with pytest.raises(BdcliError, match=r"is a directory"):
        read_table(tmp_path, fmt="tsv")


def test_text_label_files_must_line_up(tmp_path):
    x = write(tmp_path / "train_x.txt", "a\nb\nc\n")
    y = write(tmp_path / "train_y.txt", "0\n1\n")
    with pytest.raises(BdcliError, match=r"train_x\.txt has 3 lines but .*train_y\.txt has 2"):
        read_text_label_files(x, y)


# --- bdcli data folders ---------------------------------------------------------------------------
def poisoned_corpus() -> Corpus:
    names = ["entailment", "contradiction"]
    train = TextDataset(["p1 cf", "p2"], [1, 0], names, poisoned=[True, False], text_b=["h1", "h2"])
    test = TextDataset(["q1"], [0], names, text_b=["g1"])
    test_poison = TextDataset(["q1 cf"], [1], names, poisoned=[True], text_b=["g1"])
    poison = {"attack": "badnets", "trigger": "cf", "target_label": 1, "rate": 0.5, "changed": [0]}
    return Corpus("nli", names, {"train": train, "test": test, "test-poison": test_poison}, "hub:x/nli", poison)


def assert_same(a: Corpus, b: Corpus) -> None:
    assert (a.name, a.label_names, a.source, a.poison) == (b.name, b.label_names, b.source, b.poison)
    assert list(a.splits) == list(b.splits)
    for split, ds in a.splits.items():
        other = b.splits[split]
        assert (ds.texts, ds.labels, ds.poisoned, ds.text_b) == (other.texts, other.labels, other.poisoned, other.text_b)


def test_data_folder_round_trip(tmp_path):
    corpus = poisoned_corpus()
    folder = tmp_path / "out" / "poisoned"
    write_data_folder(corpus, folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "data.json", "poison.json", "test-poison.jsonl", "test.jsonl", "train.jsonl"
    ]
    assert json.loads((folder / "data.json").read_text()) == {
        "name": "nli",
        "label_names": ["entailment", "contradiction"],
        "source": "hub:x/nli",
        "splits": {"train": 2, "test": 1, "test-poison": 1},
    }
    assert is_data_folder(folder) and not is_data_folder(tmp_path)
    assert_same(read_data_folder(folder), corpus)
    # Rewriting clean data over it drops the stale poison record.
    clean = Corpus("nli", corpus.label_names, {"train": corpus.splits["test"]}, "hub:x/nli")
    write_data_folder(clean, folder)
    again = read_data_folder(folder)
    assert again.poison is None and list(again.splits) == ["train"]


def test_real_set_round_trips_through_a_data_folder(named, tmp_path):
    write_data_folder(named["hsol"], tmp_path / "hsol")
    assert_same(read_data_folder(tmp_path / "hsol"), named["hsol"])


def test_write_refuses_a_foreign_folder(tmp_path):
    write(tmp_path / "notes.md", "mine")
    with pytest.raises(BdcliError, match=r"is not a bdcli data folder"):
        write_data_folder(poisoned_corpus(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "test.jsonl").unlink(), r"broken: data\.json lists test\.jsonl, which is missing"),
        (lambda f: write(f / "test.jsonl", ""), r"broken: test\.jsonl has 0 rows but data\.json says 1"),
        (lambda f: write(f / "data.json", "{"), r"broken: data\.json is not valid JSON"),
        (lambda f: write(f / "data.json", '{"name": "x"}'), r"broken: data\.json must hold"),
        (lambda f: write(f / "poison.json", "nope"), r"broken: poison\.json is not valid JSON"),
        (lambda f: write(f / "poison.json", "[1]"), r"broken: poison\.json must hold a JSON object"),
        (lambda f: write(f / "test.jsonl", '{"text": "a", "label": 7}\n'), r"test\.jsonl: label 7 is outside"),
        (lambda f: write(f / "test.jsonl", '{"txt": "a"}\n'), r"test\.jsonl:1: not a bdcli data row"),
    ],
)
def test_broken_data_folder(tmp_path, damage, message):
    write_data_folder(poisoned_corpus(), tmp_path / "d")
    damage(tmp_path / "d")
    with pytest.raises(BdcliError, match=message):
        read_data_folder(tmp_path / "d")


# --- --data resolution ----------------------------------------------------------------------------
def test_load_corpus_resolution_order(tmp_path, data_dir, monkeypatch):
    write_data_folder(poisoned_corpus(), tmp_path / "made")
    assert load_corpus(str(tmp_path / "made")).poison["attack"] == "badnets"

    user = tmp_path / "mine"
    user.mkdir()
    write(user / "train.tsv", "text\tlabel\na\tspam\nb\tham\n")
    write(user / "validation.csv", "text,label\nc,spam\n")
    write(user / "test.jsonl", '{"text": "d", "label": "ham"}\n')
    corpus = load_corpus(str(user))
    assert (corpus.name, corpus.label_names, list(corpus.splits)) == ("mine", ["ham", "spam"], ["train", "dev", "test"])
    assert (corpus.split("dev").labels, corpus.split("test").labels) == ([1], [0])

    single = load_corpus(str(user / "train.tsv"))
    assert (single.name, list(single.splits), single.source) == ("train", ["train"], str(user / "train.tsv"))

    sst2 = load_corpus("sst2", data_dir)
    assert (sst2.name, sst2.source, len(sst2.split("dev"))) == ("sst2", str(data_dir / "sst2"), 872)

    # An existing path wins over a registered name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sst2").mkdir()
    write(tmp_path / "sst2" / "train.jsonl", '{"text": "local", "label": 0}\n')
    assert load_corpus("sst2", data_dir).split("train").texts == ["local"]

    with pytest.raises(BdcliError, match=r"no data set or file named 'sst3' \(named sets: agnews, hsol, mr, sst2, yelp\)"):
        load_corpus("sst3", data_dir)


def test_load_corpus_user_folder_errors(tmp_path):
    write(tmp_path / "dev.tsv", "text\tlabel\na\t0\n")
    with pytest.raises(BdcliError, match=r"neither a bdcli data folder nor holds a train file"):
        load_corpus(str(tmp_path))
    write(tmp_path / "train.tsv", "text\tlabel\na\t0\n")
    write(tmp_path / "train.csv", "text,label\na,0\n")
    with pytest.raises(BdcliError, match=r"several files for one split \(train\.tsv, train\.csv\)"):
        load_corpus(str(tmp_path))


def test_dev_labels_must_be_in_the_train_label_set(tmp_path):
    write(tmp_path / "train.tsv", "text\tlabel\na\tspam\nb\tham\n")
    write(tmp_path / "dev.tsv", "text\tlabel\nc\teggs\n")
    with pytest.raises(BdcliError, match=r"label 'eggs' on line 2 of .*dev\.tsv is outside the label set \(0=ham, 1=spam\)"):
        load_corpus(str(tmp_path))


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BDCLI_DATA_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    (tmp_path / "x").mkdir()
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    with pytest.raises(BdcliError, match=r"data directory .*nowhere \(from the data_dir argument"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("BDCLI_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(BdcliError, match=r"data directory .*gone \(from BDCLI_DATA_DIR\)"):
        resolve_data_dir(None)
    monkeypatch.delenv("BDCLI_DATA_DIR")
    assert resolve_data_dir(None) is None


# --- the hub fallback, without a network ----------------------------------------------------------
def test_unreachable_hub_says_what_to_do(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(named_module, "_hub_reachable", lambda: True)  # the host answers, the load fails
    expected = (
        rf"data set 'sst2' is not in the data directory {re.escape(str(tmp_path))} "
        r"and the hub could not be reached .*set BDCLI_DATA_DIR or --data-dir"
    )
    with pytest.raises(BdcliError, match=expected):
        load_named("sst2", tmp_path)


def test_no_connection_to_the_hub_fails_at_once_without_retries(tmp_path, monkeypatch):
    import time

    import datasets

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("load_dataset was called although the hub's host did not answer")

    monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    started = time.monotonic()
    with pytest.raises(BdcliError, match=r"no connection to the hub while loading 'SetFit/sst2'"):
        load_named("sst2", tmp_path)
    assert time.monotonic() - started < 5


def test_hub_label_mappings(tmp_path, monkeypatch):
    import datasets

    hub = {
        "tdavidson/hate_speech_offensive": datasets.DatasetDict(
            train=datasets.Dataset.from_dict({"tweet": [f"t{i} " for i in range(30)], "class": [0, 1, 2] * 10})
        ),
        "fancyzhx/yelp_polarity": datasets.DatasetDict(
            train=datasets.Dataset.from_dict({"text": ["a", "b"] * 10_000, "label": [1, 2] * 10_000}),
            test=datasets.Dataset.from_dict({"text": ["c", "d"], "label": [2, 1]}),
        ),
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: hub[hub_id])
    monkeypatch.setattr(named_module, "_hub_reachable", lambda: True)
    hsol = load_named("hsol", tmp_path)
    assert hsol.source == "hub:tdavidson/hate_speech_offensive"
    assert [len(hsol.split(s)) for s in ("train", "dev", "test")] == [24, 3, 3]
    assert Counter(hsol.split("train").labels) == {1: 16, 0: 8}
    assert all(t.startswith("t") and t == t.strip() for t in hsol.split("train").texts)
    yelp = load_named("yelp", tmp_path)
    assert [len(yelp.split(s)) for s in ("train", "dev", "test")] == [10_000, 10_000, 2]
    assert yelp.split("test").labels == [1, 0]
    assert Counter(yelp.split("dev").labels) == {0: 5000, 1: 5000}


# --- fuzz -----------------------------------------------------------------------------------------
HEADERS = ["", "text\tlabel\n", "text,label\n", "text \t label\r\n", '{"text": "a", "label": 0}\n', "["]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.sampled_from(HEADERS),
    body=st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('\t,"\n\r{}[]:0123-'), max_size=80),
    junk=st.binary(max_size=8),
    suffix=st.sampled_from([".tsv", ".csv", ".jsonl", ".json"]),
    label_names=st.sampled_from([None, ["a", "b"]]),
)
def test_read_table_never_crashes(tmp_path_factory, header, body, junk, suffix, label_names):
    path = tmp_path_factory.mktemp("fuzz") / f"f{suffix}"
    path.write_bytes((header + body).encode("utf-8") + junk)
    try:
        ds = read_table(path, label_names=label_names)
    except BdcliError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(ds, TextDataset) and len(ds) > 0
