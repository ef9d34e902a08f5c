"""Resolve the services a command needs from configuration: use what is configured, start what
is not, and stop only what was started here."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

from recsys.config import Settings
from recsys.ray_runtime import ray_runtime as shared_ray_runtime
from streaming.broker import (
    EmbeddedKafka,
    free_port,
    is_our_jvm,
    metadata_available,
    read_state,
)

log = logging.getLogger(__name__)

DIRECT_INGRESS_PORTS = (20_000, 32_000)
"""Where a local instance's replicas' HTTP ports are drawn from (a block of 100): above Ray's
worker ports (10002-19999), below Linux's ephemeral ports (32768-)."""
LOCAL_DRAINING_S = 2.0
"""Seconds a stopping serving replica of a local Ray instance drains (see
:func:`serving_ingress_environment`)."""


@dataclass(frozen=True)
class KafkaCluster:
    """A reachable cluster: its bootstrap servers, client options, and how we got it."""

    bootstrap: str
    client_options: dict
    origin: str  # "configured", "detached broker", or "embedded broker"
    startup_seconds: float | None = None


def running_cluster(settings: Settings) -> KafkaCluster | None:
    """The configured cluster, else a broker left running by ``recsys broker start``; None when
    there is neither (nothing is started here)."""
    if settings.kafka.bootstrap:
        return KafkaCluster(settings.kafka.bootstrap, settings.kafka.client_options(),
                            "configured")
    state = read_state(settings.kafka_data_dir)
    if state is not None and is_our_jvm(state) and metadata_available(state.bootstrap):
        return KafkaCluster(state.bootstrap, {"client": settings.kafka.client}, "detached broker")
    return None


@contextlib.contextmanager
def kafka_cluster(settings: Settings) -> Iterator[KafkaCluster]:
    """:func:`running_cluster`; else an embedded broker started now and stopped (with its data
    deleted) when the block exits."""
    running = running_cluster(settings)
    if running is not None:
        yield running
        return
    broker = EmbeddedKafka.from_settings(settings, temporary=True)
    try:  # start inside: a stop signal after the JVM started still stops it
        broker.start()
        yield KafkaCluster(broker.bootstrap, {"client": settings.kafka.client}, "embedded broker",
                           broker.startup_seconds)
    finally:
        broker.stop()


def serving_ingress_environment(settings: Settings) -> None:
    """Choose Ray Serve's ingress for a Ray instance started by this process (the choice is read
    from the environment when Serve starts; explicit RAY_SERVE_* variables win). HAProxy's stats
    and metrics listeners get free ports: their fixed defaults (8404, 9101) collide when two
    instances share a host. A stopping replica drains for :data:`LOCAL_DRAINING_S`, not Serve's
    30 s: that period lets an external load balancer deregister it, and a local instance has
    none (its own HAProxy is updated by the Serve controller), so 30 s was only a slow exit.

    Where replicas listen is not set here: Ray Serve binds each replica's direct-ingress port
    to the one HTTP host it is started with (``serve.host``, what HAProxy binds too) and reads
    no variable for it (``RAY_SERVE_DEFAULT_HTTP_HOST`` is ignored under HAProxy and applies
    only when no host is given); ``serve.replica_host`` is applied in the replica
    (``recsys.serving.auth.bind_replica_http``). HAProxy's stats and metrics listeners bind
    every interface whatever is set (Ray's template): keep those ports firewalled."""
    haproxy = settings.serve.ingress == "haproxy"
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1" if haproxy else "0")
    if haproxy:
        for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
            os.environ.setdefault(name, str(free_port()))
        # Replicas' own HTTP ports: a block of this instance's, not Serve's shared 30000-31000,
        # so that a second instance on the host (tests, benchmarks) never gets a port its
        # neighbour's HAProxy still routes to (requests would reach the other app).
        low = DIRECT_INGRESS_PORTS[0] + 100 * random.randrange(
            (DIRECT_INGRESS_PORTS[1] - DIRECT_INGRESS_PORTS[0]) // 100)
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", str(low))
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", str(low + 100))
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
                              str(LOCAL_DRAINING_S))


@contextlib.contextmanager
def ray_runtime(settings: Settings) -> Iterator[str]:
    """``recsys.ray_runtime`` with the serving ingress environment set before a local start."""
    with shared_ray_runtime(settings, serving_ingress_environment) as origin:
        yield origin
