"""The ``recsys`` command line.

Subcommands come from the ``recsys.commands`` entry-point group, so packages that depend on
recsys (streaming, simulators, offline) contribute commands without recsys importing them. An entry
point is ``register(subparsers)``: it adds one subparser whose defaults set ``func(args) -> int``.
Every command receives the resolved configuration as ``args.settings``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import signal
import sys
import threading
from collections.abc import Sequence

from recsys.config import ConfigError, Settings, load_settings, parse_assignments

ENTRY_POINT_GROUP = "recsys.commands"

_GLOBAL_FLAGS: list[tuple[str, str, str]] = [
    ("--data-dir", "data_dir", "project data directory (default .recsys)"),
    ("--kafka-bootstrap", "kafka.bootstrap", "use this Kafka cluster instead of the embedded one"),
    ("--ray-address", "ray.address", "Ray cluster address (ray://host:10001); default: local"),
    ("--mlflow-tracking-uri", "mlflow.tracking_uri", "mlflow tracking server or store URI"),
]


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
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="An online recommender that learns while it serves.",
    )
    _add_global_flags(parser, suppress=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = subparsers.add_parser("info", help="print the resolved configuration and its sources")
    info.set_defaults(func=_cmd_info)
    for entry_point in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
    ):
        try:
            register = entry_point.load()
        except ImportError as exc:
            # One broken plugin must not take the whole CLI down; say what is missing.
            broken = subparsers.add_parser(entry_point.name, help=f"(unavailable: {exc})")
            broken.set_defaults(func=_unavailable(entry_point.name, exc))
            continue
        register(subparsers)
    for sub in subparsers.choices.values():
        _add_global_flags(sub, suppress=True)
    return parser


def _unavailable(name: str, exc: Exception):
    def run(_: argparse.Namespace) -> int:
        print(f"recsys {name}: cannot load this command: {exc}", file=sys.stderr)
        return 2

    return run


def settings_from_args(args: argparse.Namespace) -> Settings:
    cli = {key: getattr(args, key, None) for _, key, _ in _GLOBAL_FLAGS}
    cli.update(parse_assignments(getattr(args, "assignments", None)))
    return load_settings(config_file=getattr(args, "config", None), cli=cli)


def exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks and context managers run and the
    services a command started are stopped in order (the default action skips all cleanup)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    exit_cleanly_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.settings = settings_from_args(args)
    except ConfigError as exc:
        parser.exit(2, f"recsys: configuration error: {exc}\n")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
