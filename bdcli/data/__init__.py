"""Data: the shared TextDataset/Corpus, readers for users' files, named sets and bdcli data folders."""

from .dataset import Corpus, TextDataset
from .folder import is_data_folder, read_data_folder, write_data_folder
from .load import load_corpus
from .named import DATASETS, resolve_data_dir
from .readers import read_table

__all__ = [
    "TextDataset",
    "Corpus",
    "DATASETS",
    "load_corpus",
    "resolve_data_dir",
    "write_data_folder",
    "read_data_folder",
    "is_data_folder",
    "read_table",
]
