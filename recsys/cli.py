"""The ``recsys`` command line.

Subcommands come from the ``recsys.commands`` entry-point group, so packages that depend on
recsys (streaming, simulators, offline) contribute commands without recsys importing them. An entry
point is ``register(subparsers)``: it adds one subparser with ``recsys.commands.add_command``.
Every command receives the resolved configuration as ``args.settings``, resolved and validated
before the command starts anything; a misspelt flag, setting or ``RECSYS_*`` variable is answered
with the closest names, and a failure the user can fix is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import NoReturn

from recsys.commands import USAGE_ERROR, CommandError, Run, add_command, run_command
from recsys.config import (
    ConfigError,
    ConfigWarning,
    Settings,
    load_settings,
    parse_assignments,
)
from recsys.validation import did_you_mean

ENTRY_POINT_GROUP = "recsys.commands"

_GLOBAL_FLAGS: list[tuple[str, str, str]] = [
    ("--data-dir", "data_dir", "project data directory (default .recsys)"),
    ("--kafka-bootstrap", "kafka.bootstrap", "use this Kafka cluster instead of the embedded one"),
    ("--ray-address", "ray.address", "Ray cluster address (ray://host:10001); default: local"),
    ("--mlflow-tracking-uri", "mlflow.tracking_uri", "mlflow tracking server or store URI"),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a misspelt command or choice is answered with the closest names."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        choices = [c for action in self._actions for c in (action.choices or ())]
        hints = [did_you_mean(name, choices) for name in _invalid_choices(message) if choices]
        super().error("; ".join([message, *filter(None, hints)]))


def _invalid_choices(message: str) -> list[str]:
    """The names argparse reported as invalid choices (``invalid choice: 'x' (choose ...``)."""
    marker = "invalid choice: "
    if marker not in message:
        return []
    rest = message.split(marker, 1)[1]
    return [rest.split(" (choose", 1)[0].strip("'\"")]


def _add_global_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("configuration (file < environment < these flags)")
    group.add_argument(
        "--config",
        default=default,
        metavar="PATH",
        help="TOML config file (default: $RECSYS_CONFIG, else ./recsys.toml)",
    )
    for flag, key, help_text in _GLOBAL_FLAGS:
        group.add_argument(flag, dest=key, default=default, help=help_text)
    group.add_argument(
        "--set",
        dest="assignments",
        action="append",
        metavar="SECTION.KEY=VALUE",
        default=default,
        help="set any configuration key; repeatable",
    )


def _cmd_info(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    print(
        "recsys configuration"
        + (f" (file: {settings.config_file})" if settings.config_file else " (no config file)")
    )
    width = max(len(k) for k in settings.flat())
    for key, value in settings.flat().items():
        if "password" in key and value is not None:
            value = "********"
        print(f"  {key:<{width}}  {value!s:<40}  [{settings.sources[key]}]")
    print("\nderived")
    print(f"  mlflow tracking URI    {settings.mlflow_tracking_uri}")
    print(f"  mlflow artifacts       {settings.mlflow_artifact_location}")
    print(
        "  kafka                  "
        + (settings.kafka.bootstrap or "embedded broker (started on demand)")
    )
    print(
        f"  ray                    {settings.ray.address or 'local instance (started on demand)'}"
    )
    commands = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    print(f"\ncommands: info, {', '.join(commands)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="recsys",
        description="An online recommender that learns while it serves.",
    )
    _add_global_flags(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_command(subparsers, "info", _cmd_info,
                help="print the resolved configuration and its sources")
    for entry_point in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
    ):
        try:
            register = entry_point.load()
        except ImportError as exc:
            # One broken plugin must not take the whole CLI down; say what is missing.
            add_command(subparsers, entry_point.name, _unavailable(exc),
                        help=f"(unavailable: {exc})")
            continue
        register(subparsers)
    for sub in subparsers.choices.values():
        _add_global_flags(sub, suppress=True)
        if sub.get_default("command_parser") is None:  # registered without add_command
            sub.set_defaults(command_parser=sub)
    return parser


def _unavailable(exc: Exception) -> Run:
    def run(_: argparse.Namespace) -> int:
        raise CommandError(f"cannot load this command: {exc}")

    return run


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """argparse's message for arguments ``parser`` does not take, with the closest flags."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    hints = [did_you_mean(extra.split("=", 1)[0], flags, n=2)
             for extra in extras if extra.startswith("-")]
    return "; ".join(["unrecognized arguments: " + " ".join(extras), *filter(None, hints)])


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; arguments the command does not take exit with the command's usage (not the
    top level's) and the flags closest to the misspelt ones."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command_parser = getattr(args, "command_parser", parser)
        command_parser.error(_unrecognized(command_parser, extras))
    return args


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The configuration the flags resolve to; ignored configuration is warned about on stderr,
    one line each."""
    cli = {key: getattr(args, key, None) for _, key, _ in _GLOBAL_FLAGS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        cli.update(parse_assignments(getattr(args, "assignments", None)))
        settings = load_settings(config_file=getattr(args, "config", None), cli=cli)
    for warning in caught:
        if issubclass(warning.category, ConfigWarning):
            print(f"recsys: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename,
                                 warning.lineno)
    return settings


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks and context managers run and the
    services a command started are stopped in order (the default action skips all cleanup)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    exit_cleanly_on_sigterm()
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        args.settings = settings_from_args(args)
    except ConfigError as exc:
        parser.exit(USAGE_ERROR, f"recsys: configuration error: {exc}\n")
    try:
        return run_command(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
