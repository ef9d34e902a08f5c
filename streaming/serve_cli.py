"""``recsys serve``: the serving app on the live streaming pipeline, until SIGTERM or Ctrl-C.

Resolves Kafka and Ray like every command (configured, detached broker, or embedded), starts the
streaming pipeline (resuming from its newest checkpoint) with named shards, deploys the Ray Serve
app that scores with their snapshots, and prints where everything is: the app's URL, its docs and
its own metrics (``GET /metrics``: requests, latency, shed load), and the stream's Prometheus
metrics (``streaming.metrics``: consumer lag, events/s, dead letters, freshness, checkpoints) on a
second port (``--metrics-port``). Then a status line: records through the pipeline, lag, events/s,
checkpoint age (redrawn on a terminal, a plain line every 30 s in a log).

The HTTP ports are checked before anything starts: a taken port is one line that says which port
and how to choose another, with exit status 2.

SIGTERM (what Kubernetes sends) and SIGINT (Ctrl-C) stop it the same way (``recsys.shutdown``):
one line naming what stops, then the app goes down (no new requests), the pipeline checkpoints
and ends with its Kafka clients, and the local Ray instance and the embedded broker stop, if this
command started them (a configured cluster or broker is left running); exit status 0. A second
signal, or a stop that takes over 30 s, kills every process it started and exits 128 + the signal
number.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from recsys.checkpoint import CheckpointError
from recsys.commands import CommandError, add_command
from recsys.config import Settings
from recsys.progress import StatusLine
from recsys.schema import read_user_features
from recsys.serving.server import PortInUseError, claim_serve_port, ensure_port_free
from recsys.shutdown import Stopping, stop_on_signals

STATUS_EVERY_S = 1.0


def run_serve(args: argparse.Namespace) -> int:
    from streaming.services import kafka_cluster, ray_runtime
    from streaming.stream_cli import name_kafka, name_ray, statistics_template

    settings = claim_serve_port(args.settings, args.port)
    if args.metrics_port:
        ensure_port_free("127.0.0.1", args.metrics_port, name="--metrics-port",
                         fix="choose another (0: any free port)")
    if settings.serve.user_features_uri:  # read inside the replicas: check it before they start
        try:
            read_user_features(settings.serve.user_features_uri, name="serve.user_features_uri")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    template = statistics_template(settings)
    with stop_on_signals("recsys serve") as stopping, kafka_cluster(settings) as cluster:
        name_kafka(stopping, cluster)
        stopping.check()
        with ray_runtime(settings) as ray_origin:
            name_ray(stopping, ray_origin)
            stopping.check()
            _serve_until_stopped(args, settings, cluster, template, stopping)
    return 0


def _serve_until_stopped(args: argparse.Namespace, settings: Settings, cluster: Any,
                         template: Any, stopping: Stopping) -> None:
    """The live stack on ``cluster`` until ``--duration`` or a stop signal, with a status line."""
    from streaming.live import live_stack
    from streaming.metrics import PipelineMetrics
    from streaming.stream_cli import checkpoint_location

    stopping.started("the pipeline (with a last checkpoint)")
    stopping.started("the serving app")
    with live_stack(settings, cluster.bootstrap, template, checkpoint_location(settings, cluster),
                    client_options=cluster.client_options,
                    lake_uri=None if args.no_lake else settings.lake_uri,
                    check_stop=stopping.check) as stack:
        stopping.check()  # a signal during the start (inside Ray) stops here
        metrics = PipelineMetrics(stack.pipeline)
        metrics_port = metrics.start(args.metrics_port)
        try:
            print(f"recsys serve: {stack.url}  (docs {stack.url}/docs, serving metrics "
                  f"{stack.url}/metrics)")
            print(f"  stream metrics http://127.0.0.1:{metrics_port}/metrics; kafka "
                  f"{cluster.bootstrap} ({cluster.origin}); policies "
                  f"{', '.join(stack.service_config.policies)}; traffic "
                  f"{stack.service_config.traffic}", flush=True)
            for line in _model_lines(stack.url):
                print(line, flush=True)
            _show_status(args, stack, metrics, stopping)
        finally:
            metrics.stop()


def _model_lines(url: str) -> list[str]:
    """One line per policy that follows a registered model: the version it serves, or why it
    serves none yet (its requests get a 503 until the URI resolves; the other policies serve)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            models = json.loads(response.read()).get("models") or {}
    except (OSError, ValueError):
        return []
    return [f"  policy {name} follows {m['uri']}: "
            + (f"version {m['model_version']} ({m['kind']})" if m["ready"] else
               f"not loaded ({m['error'] or 'not looked up yet'}); its requests get a 503 until "
               "it resolves")
            for name, m in models.items()]


def _show_status(args: argparse.Namespace, stack: Any, metrics: Any, stopping: Stopping
                 ) -> None:
    status = StatusLine(sys.stdout)
    started = time.monotonic()
    try:
        while args.duration is None or time.monotonic() - started < args.duration:
            time.sleep(STATUS_EVERY_S)
            if not stack.driver.alive:
                break
            metrics.collect()
            stopping.check()
            status.show(f"  {stack.driver.records:>10,} records · {metrics.status_line()} · up "
                        f"{time.monotonic() - started:.0f} s")
    finally:
        status.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "serve", run_serve,
        help="serve slates over HTTP from the live streaming pipeline until SIGTERM or Ctrl-C",
        description="Ray Serve app (POST /recommend, POST /feedback, GET /health, GET /metrics) "
                    "on the streaming pipeline's shards, with the stream's own Prometheus "
                    "metrics on a second port; settings in the [serve] section.",
        expected=(CheckpointError, TimeoutError, PortInUseError),
    )
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port of the app (default: serve.port, 8000)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="port of the stream's Prometheus metrics (default 0: any free port, "
                             "printed at start)")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until SIGTERM or Ctrl-C)")
    parser.add_argument("--no-lake", action="store_true", help="do not write the Parquet lake")
