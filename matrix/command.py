"""The `mkosi` command: `mkosi [-C DIR] matrix ...` goes to the matrix, anything else to mkosi.

Kept apart from matrix.cli so that a single build does not pay for importing the matrix (rich's
live display, the scheduler, the release code): start-up time is part of every build's time.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def matrix_arguments(argv: Sequence[str]) -> list[str] | None:
    """The matrix's own arguments when the command line is `mkosi [-C DIR] matrix ...`, else None."""
    return arguments_after(argv, "matrix")


def arguments_after(argv: Sequence[str], verb: str) -> list[str] | None:
    """`-C DIR` and what follows `verb` when the command line is `[-C DIR] VERB ...`, else None."""
    prefix: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("-C", "--directory") and i + 1 < len(argv):
            prefix += argv[i : i + 2]
            i += 2
        elif argv[i].startswith("--directory=") or (argv[i].startswith("-C") and len(argv[i]) > 2):
            prefix.append(argv[i])
            i += 1
        else:
            break
    return [*prefix, *argv[i + 1 :]] if argv[i : i + 1] == [verb] else None


def entry() -> None:
    """The `mkosi` command."""
    argv = sys.argv[1:]
    arguments = matrix_arguments(argv)
    if arguments is None:
        from mkosi import cli

        cli.main(argv)
        return
    from matrix import cli as matrix_cli

    matrix_cli.run(arguments)
