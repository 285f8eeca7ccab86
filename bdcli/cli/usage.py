"""Click's own usage errors (a missing --out, a value that is not a number) as one line on stderr and
exit 2, like bdcli's own: Typer would draw them as a five-line box."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

try:  # Typer >= 0.20 carries its own copy of Click
    from typer._click import exceptions as _exc
except ImportError:  # pragma: no cover - older Typer on stock Click
    import click.exceptions as _exc

_ABORT = tuple({typer.Abort, getattr(_exc, "Abort", typer.Abort)})


class OneLineUsageErrors(TyperGroup):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _exc.NoArgsIsHelpError as e:
            e.show()  # a bare `bdcli attack` shows its help, as asked
            sys.exit(e.exit_code)
        except _exc.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{where}", err=True)
            sys.exit(e.exit_code)
        except _ABORT:
            typer.echo("aborted", err=True)
            sys.exit(1)
        # Outside standalone mode Click returns an explicit exit's code instead of exiting with it.
        sys.exit(rv if isinstance(rv, int) else 0)
