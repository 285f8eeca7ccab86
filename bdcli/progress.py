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
    """Yields ``update(advance=1, info="")``; ``info`` is a short live status such as the loss.

    With ``BDCLI_PROGRESS_FILE`` set (a recipe runner's worker), the state is also written to that file,
    at most twice a second, for the runner's live view."""
    file = os.environ.get("BDCLI_PROGRESS_FILE")
    if not enabled():
        yield _to_file(file, total, desc, lambda advance=1, info="": None) if file else (lambda advance=1, info="": None)
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
        update = lambda advance=1, info="": p.update(task, advance=advance, info=info)  # noqa: E731
        yield _to_file(file, total, desc, update) if file else update


def _to_file(path: str, total: int | None, desc: str, inner: Callable[..., None]) -> Callable[..., None]:
    import json
    import time

    state = {"n": 0, "last": 0.0}

    def update(advance: int = 1, info: str = "") -> None:
        inner(advance=advance, info=info)
        state["n"] += advance
        now = time.monotonic()
        if now - state["last"] >= 0.5 or (total and state["n"] >= total):
            state["last"] = now
            tmp = f"{path}.tmp"
            try:
                with open(tmp, "w") as fh:
                    json.dump({"desc": desc, "n": state["n"], "total": total, "info": info}, fh)
                os.replace(tmp, path)
            except OSError:
                pass  # the live view is a convenience; never fail a step for it

    return update
