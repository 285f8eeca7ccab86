"""One self-contained HTML page: the tables and every figure embedded as a base64 data URI, so that it
opens anywhere without a network (no external URL, no script from elsewhere)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

STYLE = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
         "figure{margin:2em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;margin-top:.4em}")


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def html_page(title: str, blocks: Sequence[str] = (), figures: Sequence = (), notes: Sequence[str] = ()) -> str:
    """``blocks``: HTML fragments (tables) in order; ``figures``: ``figures.Figure`` items, embedded."""
    t = html.escape(title)
    parts = [f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{t}</title><style>{STYLE}</style>"
             f"</head><body>\n<h1>{t}</h1>"]
    parts += list(blocks)
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for f in figures:
            cap = html.escape(f.caption)
            parts.append(f'<figure id="{html.escape(Path(f.name).stem)}"><img src="{data_uri(f.path)}" '
                         f'alt="{cap}"><figcaption>{cap} <code>figures/{html.escape(f.name)}</code></figcaption></figure>')
    parts.append("</body></html>\n")
    return "\n".join(parts)
