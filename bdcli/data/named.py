"""The named data sets: read from a local data directory, else from the Hugging Face hub.

A data directory holds one folder per set, named as the set and in its upstream format (see
``BDCLI_DATA_DIR``). Every set comes out with the splits ``train``, ``dev`` and ``test``. Where
upstream has no such split, bdcli carves one with a fixed seed (0), never the user's seed, so that
"mr's test split" means the same rows in every run and on every machine.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import BdcliError
from ..registry import Registry
from .dataset import Corpus, TextDataset
from .readers import read_lines, read_table, read_text_label_files

SPLITS = ("train", "dev", "test")
SPLIT_SEED = 0


@dataclass(frozen=True)
class NamedDataset:
    name: str
    label_names: tuple[str, ...]
    hub_id: str
    description: str
    # The set's own folder in the data directory -> splits.
    load_local: Callable[[Path], dict[str, TextDataset]]
    # Raises HubUnreachable when the hub cannot deliver.
    load_hub: Callable[[], dict[str, TextDataset]]


DATASETS: Registry[NamedDataset] = Registry("data set")


class HubUnreachable(BdcliError):
    """The hub could not deliver a data set (offline, moved, gated)."""


def resolve_data_dir(explicit: str | Path | None) -> Path | None:
    """The data directory: ``explicit`` (``--data-dir``) if given, else ``$BDCLI_DATA_DIR``, else None."""
    if explicit is not None and str(explicit):
        path, origin = Path(explicit), "the data_dir argument (--data-dir)"
    elif os.environ.get("BDCLI_DATA_DIR"):
        path, origin = Path(os.environ["BDCLI_DATA_DIR"]), "BDCLI_DATA_DIR"
    else:
        return None
    if not path.is_dir():
        raise BdcliError(f"the data directory {path} (from {origin}) does not exist or is not a directory")
    return path


def load_named(name: str, data_dir: str | Path | None) -> Corpus:
    """Load a registered set from ``data_dir`` (resolved as in resolve_data_dir), else from the hub."""
    spec = DATASETS.get(name)
    root = resolve_data_dir(data_dir)
    if root is not None and (root / name).is_dir():
        return Corpus(name, list(spec.label_names), spec.load_local(root / name), source=str(root / name))
    try:
        splits = spec.load_hub()
    except HubUnreachable as e:
        where = f"the data directory {root}" if root is not None else "any data directory (none is set)"
        raise BdcliError(
            f"data set {name!r} is not in {where} and the hub could not be reached ({e}): "
            f"set BDCLI_DATA_DIR or --data-dir"
        ) from None
    return Corpus(name, list(spec.label_names), splits, source=f"hub:{spec.hub_id}")


# --- seeded splits --------------------------------------------------------------------------------
def stratified_split(ds: TextDataset, shares: Sequence[float], seed: int = SPLIT_SEED) -> list[TextDataset]:
    """Cut ``ds`` into parts of the given shares, label by label, each part in the original row order."""
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in shares]
    for y in range(ds.num_labels):
        rows = [i for i, lab in enumerate(ds.labels) if lab == y]
        rng.shuffle(rows)
        cuts = [0] + [round(b * len(rows)) for b in itertools.accumulate(shares)]
        cuts[-1] = len(rows)  # float sums may fall a hair short of 1
        for k, part in enumerate(parts):
            part.extend(rows[cuts[k] : cuts[k + 1]])
    return [ds.subset(sorted(part)) for part in parts]


def _carve_dev(splits: dict[str, TextDataset], n_dev: int) -> dict[str, TextDataset]:
    """Split about ``n_dev`` rows (stratified, seed 0) off ``train`` as ``dev``."""
    train, dev = stratified_split(splits["train"], (1 - n_dev / len(splits["train"]), n_dev / len(splits["train"])))
    return {"train": train, "dev": dev, "test": splits["test"]}


def _concat(parts: Sequence[TextDataset]) -> TextDataset:
    return TextDataset(
        texts=[t for p in parts for t in p.texts],
        labels=[y for p in parts for y in p.labels],
        label_names=list(parts[0].label_names),
    )


# --- local folders --------------------------------------------------------------------------------
def _local_tsv(label_names: Sequence[str]) -> Callable[[Path], dict[str, TextDataset]]:
    # sst2, agnews and hsol: train/dev/test.tsv with a `sentence` and a `label` column (any case).
    def load(folder: Path) -> dict[str, TextDataset]:
        return {s: read_table(folder / f"{s}.tsv", text_col="sentence", label_names=label_names) for s in SPLITS}

    return load


def _local_yelp(folder: Path) -> dict[str, TextDataset]:
    names = DATASETS.get("yelp").label_names
    return {s: read_text_label_files(folder / f"{s}_x.txt", folder / f"{s}_y.txt", label_names=names) for s in SPLITS}


def _local_mr(folder: Path) -> dict[str, TextDataset]:
    names = DATASETS.get("mr").label_names
    # The files are Windows-1252 (a superset of Latin-1): their 0x85/0x96/0x97 bytes are "…", "–"
    # and "—". Read as Latin-1 they become C1 control characters, which tokenizers drop and
    # str.splitlines() breaks lines at.
    whole = _concat([read_lines(folder / f"rt-polarity.{f}", y, names, "cp1252") for y, f in enumerate(("neg", "pos"))])
    return dict(zip(SPLITS, stratified_split(whole, (0.8, 0.1, 0.1))))


# --- the hub ----------------------------------------------------------------------------------------
def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub's host answers at all. Without this check an offline machine waits through
    huggingface_hub's five retries (about half a minute of retry lines) before the same error."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return True  # the user asked for the local hub cache: let `datasets` read it
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _hub(hub_id: str) -> Any:
    if not _hub_reachable():
        raise HubUnreachable(f"no connection to the hub while loading {hub_id!r}")
    try:
        import datasets

        return datasets.load_dataset(hub_id)
    # Offline, renamed, gated or a missing `datasets` all leave the user the same fix: a data directory.
    except Exception as e:  # noqa: BLE001
        raise HubUnreachable(f"{type(e).__name__} while loading {hub_id!r}") from None


def _from_hub(
    split: Any,
    label_names: Sequence[str],
    text: str = "text",
    label: str = "label",
    relabel: Callable[[int], int] = int,
) -> TextDataset:
    return TextDataset(
        texts=[str(t).strip() for t in split[text]],
        labels=[relabel(int(y)) for y in split[label]],
        label_names=list(label_names),
    )


def _hub_three_splits(hub_id: str, label_names: Sequence[str]) -> dict[str, TextDataset]:
    d = _hub(hub_id)
    return {s: _from_hub(d[h], label_names) for s, h in zip(SPLITS, ("train", "validation", "test"))}


def _hub_agnews() -> dict[str, TextDataset]:
    spec = DATASETS.get("agnews")
    d = _hub(spec.hub_id)
    return _carve_dev({s: _from_hub(d[s], spec.label_names) for s in ("train", "test")}, 10_000)


def _hub_yelp() -> dict[str, TextDataset]:
    spec = DATASETS.get("yelp")
    d = _hub(spec.hub_id)
    # Some mirrors label 1 (negative) / 2 (positive).
    offset = 0 if 0 in set(d["train"]["label"]) else 1
    splits = {s: _from_hub(d[s], spec.label_names, relabel=lambda y: y - offset) for s in ("train", "test")}
    return _carve_dev(splits, 10_000)


def _hub_hsol() -> dict[str, TextDataset]:
    spec = DATASETS.get("hsol")
    d = _hub(spec.hub_id)
    # class 0 hate speech and 1 offensive language are both toxic (1); 2 neither is clean (0).
    whole = _from_hub(d["train"], spec.label_names, text="tweet", label="class", relabel=lambda c: int(c != 2))
    return dict(zip(SPLITS, stratified_split(whole, (0.8, 0.1, 0.1))))


def _register(ds: NamedDataset) -> None:
    DATASETS.register(ds.name)(ds)


_SENTIMENT = ("negative", "positive")
_AGNEWS = ("World", "Sports", "Business", "Sci/Tech")
_register(NamedDataset(
    name="sst2",
    label_names=_SENTIMENT,
    hub_id="SetFit/sst2",
    description="SST-2 sentence polarity, the HiddenKiller/StyleBkd split (6,920 / 872 / 1,821).",
    load_local=_local_tsv(_SENTIMENT),
    load_hub=lambda: _hub_three_splits("SetFit/sst2", _SENTIMENT),
))
_register(NamedDataset(
    name="agnews",
    label_names=_AGNEWS,
    hub_id="fancyzhx/ag_news",
    description=(
        "AG's News topics. Local: the StyleAttack 11,106-row train subset, 10,000 dev rows from the official "
        "train set and the official test set, lower-cased. Hub: the full official train set less a seeded "
        "(seed 0) stratified 10,000-row dev split, and the official test set."
    ),
    load_local=_local_tsv(_AGNEWS),
    load_hub=_hub_agnews,
))
_register(NamedDataset(
    name="mr",
    label_names=_SENTIMENT,
    hub_id="cornell-movie-review-data/rotten_tomatoes",
    description=(
        "Movie Review sentence polarity v1.0 (Pang & Lee), 5,331 + 5,331 sentences. Upstream has no split: "
        "locally bdcli makes a fixed stratified 80/10/10 train/dev/test split with seed 0 (8,530 / 1,066 / "
        "1,066), whatever the user's seed; the hub copy keeps its own split of the same sizes."
    ),
    load_local=_local_mr,
    load_hub=lambda: _hub_three_splits("cornell-movie-review-data/rotten_tomatoes", _SENTIMENT),
))
_register(NamedDataset(
    name="yelp",
    label_names=_SENTIMENT,
    hub_id="fancyzhx/yelp_polarity",
    description=(
        "Yelp review polarity. Local: the balanced BadActs subset (14,000 / 2,999 / 3,001). Hub: the full set, "
        "with a seeded (seed 0) stratified 10,000-row dev split taken from train."
    ),
    load_local=_local_yelp,
    load_hub=_hub_yelp,
))
_register(NamedDataset(
    name="hsol",
    label_names=("clean", "toxic"),
    hub_id="tdavidson/hate_speech_offensive",
    description=(
        "Hate speech and offensive language (Davidson et al.), binary clean/toxic. Local: the OpenBackdoor split "
        "(5,823 / 2,485 / 2,485), whose dev and test are the same rows upstream, kept so. Hub: hate and "
        "offensive count as toxic, split 80/10/10 stratified with seed 0 into disjoint train/dev/test."
    ),
    load_local=_local_tsv(("clean", "toxic")),
    load_hub=_hub_hsol,
))
