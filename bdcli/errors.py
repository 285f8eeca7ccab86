"""Errors a user can act on.

Anything raised as a ``BdcliError`` is printed by the CLI as one sentence on stderr, without a
traceback; everything else is a bug and keeps its traceback.
"""


class BdcliError(Exception):
    """A failure the user can fix (bad file, missing model, ...). Exit code 1."""

    exit_code = 1


class UsageError(BdcliError):
    """The command line or config asks for something impossible. Exit code 2, like argparse/typer."""

    exit_code = 2
