"""``recsys broker start|stop|status``: a long-lived embedded broker for interactive work.

``start`` leaves the broker running after the command exits (state in ``<data_dir>/kafka``);
other commands then use it instead of starting their own. When ``kafka.bootstrap`` names a cluster,
nothing is started: the commands only report on that cluster.
"""

from __future__ import annotations

import argparse
import time

from recsys.commands import add_command
from recsys.config import Settings
from streaming.broker import (
    BrokerError,
    EmbeddedKafka,
    is_our_jvm,
    metadata_available,
    port_open,
    read_state,
    stop_detached,
)


def _report_configured_cluster(settings: Settings, note: str) -> bool:
    """Print whether the configured cluster serves metadata; True when it does."""
    assert settings.kafka.bootstrap
    reachable = metadata_available(settings.kafka.bootstrap, **settings.kafka.client_options())
    print(
        f"kafka.bootstrap is configured ({settings.kafka.bootstrap}){note}: "
        f"cluster {'reachable' if reachable else 'NOT reachable'}"
    )
    return reachable


def _start(settings: Settings) -> int:
    if settings.kafka.bootstrap:
        return 0 if _report_configured_cluster(settings, ", nothing to start") else 1
    state = read_state(settings.kafka_data_dir)
    if state is not None and is_our_jvm(state):
        print(f"already running: {state.bootstrap} (pid {state.pid})")
        return 0
    broker = EmbeddedKafka.from_settings(settings, detached=True, temporary=False)
    try:
        broker.start()
    except BrokerError as exc:
        print(f"could not start the broker: {exc}")
        return 1
    print(f"started Kafka {broker.bootstrap} (pid {broker.pid}) in {broker.startup_seconds:.1f}s")
    print(f"  data and logs: {broker.data_dir}")
    print("  other recsys commands use it automatically; stop it with `recsys broker stop`")
    return 0


def _stop(settings: Settings) -> int:
    if settings.kafka.bootstrap:
        print(
            f"kafka.bootstrap is configured ({settings.kafka.bootstrap}): recsys did not start it "
            "and will not stop it"
        )
        return 0
    state = stop_detached(settings.kafka_data_dir)
    if state is None:
        print("no broker started by `recsys broker start` in this data directory")
        return 0
    if is_our_jvm(state) or port_open(state.port):
        print(f"broker pid {state.pid} did not stop; port {state.port} still open")
        return 1
    print(f"stopped Kafka {state.bootstrap} (pid {state.pid}); no process left, port closed")
    return 0


def _status(settings: Settings) -> int:
    if settings.kafka.bootstrap:
        return 0 if _report_configured_cluster(settings, "") else 3
    state = read_state(settings.kafka_data_dir)
    if state is None or not is_our_jvm(state):
        print("not running" + (" (stale state file)" if state else ""))
        return 3
    healthy = metadata_available(state.bootstrap)
    uptime = time.time() - state.started_at
    print(
        f"running: {state.bootstrap} (pid {state.pid}, up {uptime:.0f}s, "
        f"{'serving metadata' if healthy else 'NOT serving metadata'}); log {state.log_file}"
    )
    return 0 if healthy else 1


def run_broker(args: argparse.Namespace) -> int:
    return {"start": _start, "stop": _stop, "status": _status}[args.action](args.settings)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "broker", run_broker,
        help="start, stop or inspect the embedded Kafka broker",
        description="Manage a long-lived embedded Kafka broker (KRaft, single node).",
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
