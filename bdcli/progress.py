"""Rich progress bars on stderr for long work; silent when stderr is not a terminal (CI logs, tests),
unless BDCLI_PROGRESS=1 forces them on."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def enabled() -> bool:
    flag = os.environ.get("BDCLI_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false")
    return sys.stderr.isatty()


@contextmanager
def progress_bar(total: int | None, desc: str) -> Iterator[Callable[..., None]]:
    """Yields ``update(advance=1, info="")``; ``info`` is a short live status such as the loss."""
    if not enabled():
        yield lambda advance=1, info="": None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console) as p:
        task = p.add_task(desc, total=total, info="")
        yield lambda advance=1, info="": p.update(task, advance=advance, info=info)
