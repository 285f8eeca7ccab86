"""Result tables in the paper's layout: ``collect`` metrics.json files, ``build_table``, then
``render`` as markdown / csv / latex / html text, or ``rich_table`` for a terminal."""

from .table import FORMATS, build_table, collect, render, rich_table

__all__ = ["FORMATS", "build_table", "collect", "render", "rich_table"]
