"""Prometheus figures of one serving replica (``GET /metrics``), in a private registry.

* ``recsys_serve_requests_total{endpoint,status}`` and ``recsys_serve_request_seconds{endpoint}``
  (histogram): every answered request by HTTP status, and its time from arrival at the
  replica's app (the event loop is kept free of scoring, so arrival is when the request came
  in, and queueing for the scoring thread is inside this time).
* ``recsys_serve_queue_seconds`` (histogram): how long each admitted scoring request waited
  for the scoring thread; ``recsys_serve_shed_total{reason}``: requests answered 503 by
  admission control, ``queue_full`` (``serve.max_queued_requests`` were waiting),
  ``expected_delay`` (those waiting would take over ``serve.max_queue_delay_ms`` to score),
  ``loop_lag`` (the event loop ran over half that budget late: requests wait before the app),
  ``queue_delay`` (it waited over ``serve.max_queue_delay_ms``), ``client_gone`` (its client
  disconnected before it was scored: not scored, not logged); ``recsys_serve_queued_requests``:
  admitted, not started yet; ``recsys_serve_work_seconds`` (histogram): time on the scoring
  thread per request (scoring, logging, serialising), so a request's time splits into its wait,
  its work and the rest (HTTP and the event loop).
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
QUEUE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0)
SHED_REASONS = ("queue_full", "expected_delay", "loop_lag", "queue_delay", "client_gone")


class ServingMetrics:
    """The replica's counters; gauges that mirror live state read it at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recsys_serve_requests", "Answered requests by endpoint and "
                                "HTTP status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("recsys_serve_request_seconds", "Time from arrival at the "
                                 "replica's app to the answer, queueing included",
                                 ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_delay = Histogram("recsys_serve_queue_seconds", "Wait of an admitted "
                                     "scoring request for the scoring thread",
                                     buckets=QUEUE_BUCKETS_S, registry=r)
        self.work = Histogram("recsys_serve_work_seconds", "Time on the scoring thread per "
                              "request (scoring, logging, serialising)",
                              buckets=QUEUE_BUCKETS_S, registry=r)
        self.shed = Counter("recsys_serve_shed", "Requests answered 503 by admission control, "
                            "by reason (queue_full, expected_delay, loop_lag, queue_delay, "
                            "client_gone)", ["reason"], registry=r)
        for reason in SHED_REASONS:  # present (at 0) from the first scrape
            self.shed.labels(reason)
        self._queued = Gauge("recsys_serve_queued_requests", "Scoring requests admitted and "
                             "not started yet", registry=r)
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

    def bind_queue(self, queued: Callable[[], float]) -> None:
        """Read the admission queue's length at every scrape."""
        self._queued.set_function(queued)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
