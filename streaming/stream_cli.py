"""``recsys stream`` runs the streaming pipeline; ``recsys checkpoints`` inspects its checkpoints.

``recsys stream`` resolves Kafka and Ray like every command (a configured cluster, a broker left
by ``recsys broker start``, else an embedded one), ensures the topics, builds the statistics of
the ``[stream]`` section, resumes from the newest checkpoint, and runs until SIGTERM or Ctrl-C
(or ``--duration``), printing one status line: events/s, consumer lag, checkpoint age, recoveries,
and what the supervisor is doing (recovering; Kafka unreachable for N s of
``stream.kafka_outage_budget_s``; failed recoveries, deadline kills and stuck readers so far).
It checkpoints at ``stream.checkpoint_interval_s`` and once more on the way out. Both signals stop
it the same way (``recsys.shutdown``): the last checkpoint, then Ray and the embedded broker if it
started them; exit status 0 (a second signal forces the exit, 128 + the signal number).

An embedded broker lives only as long as the command, and a checkpoint names the cluster its
offsets belong to, so on such a broker checkpoints go to ``<checkpoint_uri>/<cluster id>``:
they are kept apart from those of a long-lived cluster, which is what resuming needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from recsys.checkpoint import CheckpointError, CheckpointStore
from recsys.commands import CommandError, add_command
from recsys.config import Settings
from recsys.progress import StatusLine
from recsys.shutdown import Stopping, stop_on_signals
from recsys.storage import join


def statistics_template(settings: Settings) -> Any:
    """Empty statistics over the configured catalogue (dense items or the offline graph); a
    catalogue that cannot be built (a graph file that is missing or malformed) is a
    CommandError, raised before anything starts."""
    from recsys.bandits import stats_for_stream

    try:
        return stats_for_stream(settings.stream)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot build the statistics: {exc}") from None


def checkpoint_location(settings: Settings, cluster: Any) -> str:
    """Where this cluster's checkpoints go: ``settings.checkpoint_uri``, or below it a folder
    named by the cluster id for an embedded broker (see the module docs)."""
    if cluster.origin != "embedded broker":
        return settings.checkpoint_uri
    from streaming.topics import cluster_layout

    cluster_id = cluster_layout(cluster.bootstrap, [], **cluster.client_options).cluster_id
    return join(settings.checkpoint_uri, cluster_id)


def name_kafka(stopping: Stopping, cluster: Any) -> None:
    """Tell ``stopping`` whether a stop ends the Kafka broker (embedded) or leaves it running."""
    if cluster.origin == "embedded broker":
        stopping.started("the embedded Kafka broker")
    else:
        stopping.keeps(f"Kafka at {cluster.bootstrap} ({cluster.origin})")


def name_ray(stopping: Stopping, origin: str) -> None:
    """Tell ``stopping`` whether a stop ends Ray (a local instance) or leaves it running."""
    if origin == "local instance":
        stopping.started("the local Ray instance")
    else:
        stopping.keeps(f"Ray ({origin})")


def _status(pipeline: Any, rate: float, started: float) -> str:
    """The status line: throughput, lag, checkpoint age, recoveries, and the supervisor's state
    when it is not simply running (``streaming.metrics.supervision_text``)."""
    from streaming.metrics import supervision_text
    from streaming.supervisor import ActorsFailed

    age_s = pipeline.checkpoint_age_s
    age = "none yet" if age_s is None else f"{age_s:.0f}s ago"
    try:
        lag = f"{pipeline.lag():>9,}"
    except ActorsFailed:  # a reader is being replaced: the next step recovers it
        lag = f"{'?':>9}"
    line = (f"  {rate:>9,.0f} events/s | lag {lag} | checkpoint {age} | "
            f"recoveries {pipeline.recoveries} | up {time.monotonic() - started:.0f}s")
    supervision = supervision_text(pipeline.health())
    if supervision:
        line += f" | {supervision}"
    if pipeline.registrar is not None:
        line += f" | {_registrations(pipeline.registrar.counters())}"
    return line


def _registrations(counts: dict[str, Any]) -> str:
    """Snapshot registrations in a few words: versions made (the last), failures."""
    text = f"registered {counts['registered']}"
    if counts["last_uri"]:
        text += f" (last {counts['last_uri']})"
    return text + (f", {counts['failed']} failed" if counts["failed"] else "")


def run_stream(args: argparse.Namespace) -> int:
    """``recsys stream``; a catalogue that cannot be built or a checkpoint that belongs elsewhere
    is reported as an error (exit 2), not a traceback."""
    from streaming.services import kafka_cluster, ray_runtime

    settings: Settings = args.settings
    template = statistics_template(settings)
    with stop_on_signals("recsys stream") as stopping, kafka_cluster(settings) as cluster:
        name_kafka(stopping, cluster)
        stopping.check()
        with ray_runtime(settings) as ray_origin:
            name_ray(stopping, ray_origin)
            stopping.started("the pipeline (with a last checkpoint)")
            _stream(args, settings, cluster, template, stopping)
    return 0


def _stream(args: argparse.Namespace, settings: Settings, cluster: Any, template: Any,
            stopping: Stopping) -> None:
    """The pipeline on ``cluster`` until ``--duration`` or a stop signal (raised between steps:
    ``stopping.check``), with a status line; it checkpoints once more on the way out."""
    from recsys.serving.deploy import SHARD_NAME_PREFIX
    from streaming.pipeline import StreamPipeline
    from streaming.registrar import schedule_for, served_policy_spec
    from streaming.topics import ensure_topics, standard_topics

    ensure_topics(cluster.bootstrap, standard_topics(settings.kafka.partitions),
                  settings.kafka.replication_factor, **cluster.client_options)
    checkpoint_uri = checkpoint_location(settings, cluster)
    if cluster.origin == "embedded broker":
        print("note: this embedded broker lives only as long as the command; use "
              "`recsys broker start` or kafka.bootstrap for a pipeline that resumes later")
    pipeline = StreamPipeline(
        cluster.bootstrap, settings.stream, template, checkpoint_uri,
        lake_uri=None if args.no_lake else settings.lake_uri,
        client_options=cluster.client_options, policy_spec=served_policy_spec(settings),
        registrar=schedule_for(settings, checkpoint_uri),
        shard_name_prefix=SHARD_NAME_PREFIX,  # in ray.namespace: a deployed app finds them
    )
    restored = pipeline.start()
    metrics = None
    if args.metrics_port is not None:
        from streaming.metrics import PipelineMetrics

        metrics = PipelineMetrics(pipeline)
        port = metrics.start(args.metrics_port)
        print(f"  metrics http://127.0.0.1:{port}/metrics")
    where = "the beginning" if restored is None else f"checkpoint {restored.checkpoint_id}"
    print(f"recsys stream: kafka {cluster.bootstrap} ({cluster.origin}), "
          f"{settings.stream.learners} learners, {settings.stream.shards} shards, "
          f"{settings.stream.joiners} joiners; resuming from {where}")
    print(f"  checkpoints {checkpoint_uri}" + ("" if args.no_lake else
                                               f"   lake {settings.lake_uri}"))
    if pipeline.registrar is not None:
        print(f"  snapshots registered as {settings.stream.registered_model} every "
              f"{settings.stream.register_every_s:g}s")
    started = time.monotonic()
    window_started, window_events = started, 0
    status = StatusLine(sys.stdout)  # redrawn on a terminal, plain lines in a log
    from streaming.supervisor import PipelineFailed

    failed: PipelineFailed | None = None
    try:
        while args.duration is None or time.monotonic() - started < args.duration:
            stopping.check()
            window_events += pipeline.step()
            now = time.monotonic()
            if now - window_started >= args.status_interval:
                rate = window_events / (now - window_started)
                if metrics is not None:
                    metrics.collect()
                status.show(_status(pipeline, rate, started))
                window_started, window_events = now, 0
    except PipelineFailed as exc:  # the supervisor gave up: no last checkpoint to try
        failed = exc
    finally:
        status.close()
        try:
            if failed is not None:
                raise CommandError(f"the pipeline stopped: {failed}") from None
            report = pipeline.checkpoint()
            print(f"  last checkpoint {report.checkpoint_id} in {report.duration_s:.2f}s")
            stats = pipeline.counters()
            print(f"  recoveries {stats['recoveries']}")
        finally:
            if metrics is not None:
                metrics.stop()
            pipeline.stop(checkpoint=False)  # waits for a registration in progress
        if pipeline.registrar is not None:
            print(f"  {_registrations(pipeline.registrar.counters())}")


def _store(args: argparse.Namespace) -> CheckpointStore:
    return CheckpointStore(args.uri or args.settings.checkpoint_uri)


def _chosen_id(store: CheckpointStore, checkpoint_id: str | None) -> str:
    """``checkpoint_id`` (default: the newest) if ``store`` holds it complete; else a
    CommandError that says which ids there are."""
    ids = store.list()
    if checkpoint_id is None:
        if not ids:
            raise CommandError(f"no complete checkpoint in {store.uri}; `recsys stream` writes "
                               "them (stream.checkpoint_uri, or --uri for another location)",
                               exit_code=1)
        return ids[-1]
    if checkpoint_id not in ids:
        held = (f"{ids[0]} .. {ids[-1]} (`recsys checkpoints list`)" if ids
                else "none (`recsys stream` writes them)")
        raise CommandError(f"no checkpoint {checkpoint_id!r} in {store.uri}; it holds {held}, "
                           "or pass --uri")
    return checkpoint_id


def run_checkpoints(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.action == "list":
        ids = store.list()
        if not ids:
            print(f"no complete checkpoint in {store.uri}")
        for checkpoint_id in ids:
            checkpoint = store.read(checkpoint_id)
            created = datetime.fromtimestamp((checkpoint.created_ms or 0) / 1000, UTC)
            print(f"{checkpoint_id}  {created:%Y-%m-%d %H:%M:%S}Z  cluster "
                  f"{checkpoint.cluster_id}  {len(checkpoint.offsets)} partitions at "
                  f"{sum(checkpoint.offsets.values()):,} records  parts "
                  f"{', '.join(sorted(checkpoint.stats))}")
        return 0
    checkpoint_id = _chosen_id(store, args.id)
    checkpoint = store.read(checkpoint_id)
    if args.action == "show":
        print(json.dumps({
            "checkpoint_id": checkpoint.checkpoint_id,
            "created_ms": checkpoint.created_ms,
            "cluster_id": checkpoint.cluster_id,
            "partitions": checkpoint.partitions,
            "offsets": {f"{t}[{p}]": o for (t, p), o in sorted(checkpoint.offsets.items())},
            "snapshot_id": checkpoint.snapshot_id,
            "items": {name: int(s.n_items) for name, s in sorted(checkpoint.stats.items())},
            "state": sorted(checkpoint.state),
            "meta": checkpoint.meta,
        }, indent=2))
        return 0
    # restore: make it the newest, so the next `recsys stream` resumes from it
    new_id = store.write(checkpoint, prune=False)
    print(f"{checkpoint_id} copied as {new_id}: the next `recsys stream` resumes from it "
          "(events after it are replayed; lake files past it are rewritten)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "stream", run_stream,
        help="run the streaming pipeline (joiners, learners, shards, lake) until SIGTERM or "
             "Ctrl-C",
        description="Kafka → joiners, learners → parameter shards (+ Parquet lake) on Ray, with "
                    "checkpoints; resumes from the newest one.",
        expected=(CheckpointError,),
    )
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until SIGTERM or Ctrl-C)")
    parser.add_argument("--status-interval", type=float, default=1.0,
                        help="seconds between status lines (default 1)")
    parser.add_argument("--no-lake", action="store_true", help="do not write the Parquet lake")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on 127.0.0.1:PORT (0: a free port)")


def register_checkpoints(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "checkpoints", run_checkpoints,
        help="list, show or restore the streaming pipeline's checkpoints",
        description="Inspect checkpoints (stream.checkpoint_uri, or --uri); `restore ID` makes "
                    "an older one the newest so the next `recsys stream` resumes from it.",
        expected=(CheckpointError,),
    )
    parser.add_argument("action", choices=("list", "show", "restore"))
    parser.add_argument("id", nargs="?", default=None,
                        help="checkpoint id (default: the newest)")
    parser.add_argument("--uri", default=None, help="checkpoint location (default: config)")
