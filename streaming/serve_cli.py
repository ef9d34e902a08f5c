"""``recsys serve``: the serving app on the live streaming pipeline, until Ctrl-C.

Resolves Kafka and Ray like every command (configured, detached broker, or embedded), starts the
streaming pipeline (resuming from its newest checkpoint) with named shards, deploys the Ray Serve
app that scores with their snapshots, prints the URL and the docs URL, and prints one status line
a second: slates served, events/s through the pipeline, consumer lag, checkpoint age.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from recsys.checkpoint import CheckpointError
from recsys.config import Settings


def run_serve(args: argparse.Namespace) -> int:
    from streaming.services import kafka_cluster, ray_runtime
    from streaming.stream_cli import statistics_template

    settings: Settings = args.settings
    try:
        template = statistics_template(settings)
    except (OSError, ValueError) as exc:
        print(f"recsys serve: cannot build the statistics: {exc}", file=sys.stderr)
        return 2
    try:
        with kafka_cluster(settings) as cluster, ray_runtime(settings):
            _serve_until_stopped(args, settings, cluster, template)
    except (CheckpointError, TimeoutError) as exc:
        print(f"recsys serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve_until_stopped(args: argparse.Namespace, settings: Settings, cluster: Any,
                         template: Any) -> None:
    """The live stack on ``cluster`` until ``--duration`` or Ctrl-C, with a status line."""
    from streaming.live import live_stack
    from streaming.stream_cli import checkpoint_location

    with live_stack(settings, cluster.bootstrap, template, checkpoint_location(settings, cluster),
                    client_options=cluster.client_options,
                    lake_uri=None if args.no_lake else settings.lake_uri) as stack:
        print(f"recsys serve: {stack.url}  (docs {stack.url}/docs, metrics {stack.url}/metrics)")
        print(f"  kafka {cluster.bootstrap} ({cluster.origin}); policies "
              f"{', '.join(stack.service_config.policies)}; traffic "
              f"{stack.service_config.traffic}")
        started = time.monotonic()
        try:
            while args.duration is None or time.monotonic() - started < args.duration:
                time.sleep(1.0)
                if not stack.driver.alive:
                    break
                age = stack.pipeline.checkpoint_age_s
                sys.stdout.write(
                    f"\r  pipeline {stack.driver.records:>10,} records | checkpoint "
                    f"{'none yet' if age is None else f'{age:.0f}s ago'} | up "
                    f"{time.monotonic() - started:.0f}s   ")
                sys.stdout.flush()
        except KeyboardInterrupt:
            print("\n  interrupted: stopping")
        print()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve slates over HTTP from the live streaming pipeline until Ctrl-C",
        description="Ray Serve app (POST /recommend, POST /feedback, GET /health, GET /metrics) "
                    "on the streaming pipeline's shards; settings in the [serve] section.",
    )
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--no-lake", action="store_true", help="do not write the Parquet lake")
    parser.set_defaults(func=run_serve)
