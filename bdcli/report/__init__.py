"""Result tables in the papers' layouts, over seeds, beside the papers' numbers."""

from .compare import drift, long_form, paper_comparison, render_comparison, to_json, write_report
from .table import FORMATS, TableOrder, build_table, collect, render, rich_table

__all__ = ["FORMATS", "TableOrder", "build_table", "collect", "render", "rich_table", "drift", "long_form", "paper_comparison",
           "render_comparison", "to_json", "write_report"]
