"""Prometheus figures of one serving replica (``GET /metrics``), in a private registry.

* ``recsys_serve_requests_total{endpoint,status}`` and ``recsys_serve_request_seconds{endpoint}``
  (histogram): every answered request by HTTP status, and its time inside the replica.
* ``recsys_serve_slates_total{policy}``: slates served per policy.
* ``recsys_serve_snapshot_version`` and ``recsys_serve_snapshot_age_seconds`` (how far behind the
  shards the scoring statistics may be), ``recsys_serve_snapshot_refreshes_total{result}``.
* ``recsys_serve_impressions_total{outcome}``: ``queued`` for Kafka, ``delivered``,
  ``undelivered`` (served, but Kafka did not take the impression: counted, never silent) and
  ``rejected`` (the buffer was full, the request got a 503 instead of a slate);
  ``recsys_serve_impressions_buffered``: queued, not acknowledged yet.
* ``recsys_serve_feedback_total{outcome}``: ``queued`` / ``rejected`` feedback events.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25,
                     0.5, 1.0, 2.5)


class ServingMetrics:
    """The replica's counters; gauges that mirror live state read it at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recsys_serve_requests", "Answered requests by endpoint and "
                                "HTTP status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("recsys_serve_request_seconds", "Time inside the replica per "
                                 "request", ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.slates = Counter("recsys_serve_slates", "Slates served per policy", ["policy"],
                              registry=r)
        self.refreshes = Counter("recsys_serve_snapshot_refreshes", "Snapshot polls by result "
                                 "(new, unchanged, error)", ["result"], registry=r)
        self.impressions = Counter("recsys_serve_impressions", "Impressions by outcome",
                                   ["outcome"], registry=r)
        self.feedback = Counter("recsys_serve_feedback", "Feedback events by outcome",
                                ["outcome"], registry=r)
        self._version = Gauge("recsys_serve_snapshot_version", "Version of the statistics "
                              "being served (sum over shards)", registry=r)
        self._age = Gauge("recsys_serve_snapshot_age_seconds", "How far behind the shards the "
                          "served statistics may be", registry=r)
        self._buffered = Gauge("recsys_serve_impressions_buffered", "Impressions queued for "
                               "Kafka and not acknowledged yet", registry=r)
        self._delivered = Gauge("recsys_serve_impressions_delivered", "Impressions Kafka "
                                "acknowledged", registry=r)
        self._undelivered = Gauge("recsys_serve_impressions_undelivered", "Impressions served "
                                  "whose delivery to Kafka failed", registry=r)

    def bind(self, *, version: Callable[[], float], age_s: Callable[[], float],
             buffered: Callable[[], float], delivered: Callable[[], float],
             undelivered: Callable[[], float]) -> None:
        """Read these live values at every scrape."""
        self._version.set_function(version)
        self._age.set_function(age_s)
        self._buffered.set_function(buffered)
        self._delivered.set_function(delivered)
        self._undelivered.set_function(undelivered)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
