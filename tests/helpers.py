"""Run the real CLI in-process, the way a user would call it."""

from __future__ import annotations

from typer.testing import CliRunner

from bdcli.cli.app import app

runner = CliRunner()


def bdcli(*args: str, ok: bool = True):
    res = runner.invoke(app, [str(a) for a in args])
    if ok and res.exit_code != 0:
        raise AssertionError(f"bdcli {' '.join(map(str, args))} failed ({res.exit_code}):\n{res.output}\n{res.exception!r}")
    return res
