"""The contract between ``recsys`` and its subcommands: how a command is added, and how the failures
a user can fix reach them.

A package contributes a command through the ``recsys.commands`` entry-point group: a
``register(subparsers)`` function that calls :func:`add_command`. A command reports a failure the
user can fix (a bad argument, a configuration that cannot work, a missing file) by raising
:class:`CommandError`, a ``recsys.config.ConfigError`` or one of the error types it declares as
``expected``; :func:`run_command` prints it as one line, ``recsys <command>: <message>``, on stderr
and returns its exit status (2, a usage or configuration error, unless the error says otherwise).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable

from recsys.config import ConfigError

USAGE_ERROR = 2
"""Exit status of a usage or configuration error (argparse's too)."""

Run = Callable[[argparse.Namespace], int | None]


class CommandError(Exception):
    """A failure the user can fix; the message says what is wrong and what to do."""

    def __init__(self, message: str, exit_code: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    run: Run,
    *,
    help: str,
    description: str | None = None,
    expected: Iterable[type[Exception]] = (),
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` that runs ``run(args)``; errors of the ``expected`` types are
    reported like :class:`CommandError` (one line, exit status 2). Returns its parser, for the
    command's own arguments (``add_command`` on its own subparsers adds nested commands, each
    with its own usage in errors)."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(func=run, expected_errors=tuple(expected), command_parser=parser)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a failure the user can fix becomes one line and an exit status."""
    expected = (CommandError, ConfigError, *getattr(args, "expected_errors", ()))
    try:
        return int(args.func(args) or 0)
    except expected as exc:
        print(f"recsys {args.command}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", USAGE_ERROR)
