"""Whether Kafka accepts a replica's writes, known without blocking a request.

``GET /health/ready`` must say 503 while the replica could not log what it serves, yet a health
request must never wait on the network: a probe that blocks on a dead broker would turn a Kafka
outage into health checks that time out. So :class:`KafkaReadiness` checks in a background
thread every :data:`CHECK_INTERVAL_S` and the endpoint reads its last verdict. Kafka counts as
accepting writes when all of:

* **the brokers answer** the replica's own producer: a metadata request for the impressions and
  feedback topics, sent over the producer's connections, answered within
  :data:`PROBE_TIMEOUT_S`, with a leader for every partition (a partition without a leader
  refuses writes);
* **queued events move**: events waiting for Kafka have seen an acknowledgement within
  :data:`STALL_S` (a broker can answer metadata yet refuse writes, e.g. too few in-sync replicas
  for ``acks=all``); and the producer's buffer is below ``serve.max_buffered_events``, past
  which requests are refused anyway;
* **the verdict is fresh**: checked within :data:`MAX_VERDICT_AGE_S`; a checker that stopped
  or hangs makes the replica unready rather than ready forever.

Not proven without traffic: that a write would succeed this instant. With no events queued the
brokers' answer is the evidence; under traffic, acknowledgements are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHECK_INTERVAL_S = 1.0
"""Seconds between two checks (one metadata request per replica each)."""
PROBE_TIMEOUT_S = 2.0
"""How long the brokers have to answer a metadata request before Kafka counts as unreachable."""
STALL_S = 5.0
"""Queued events with no acknowledgement for this long mean Kafka is not taking writes."""
MAX_VERDICT_AGE_S = CHECK_INTERVAL_S + PROBE_TIMEOUT_S + 2.0
"""A verdict older than this (the checker stopped or hangs) counts as not writable."""


@dataclass(frozen=True)
class KafkaState:
    """One verdict: ``writable`` or not, why (``detail``), and when it was reached
    (``checked_at``, ``time.monotonic()``)."""

    writable: bool
    detail: str
    checked_at: float

    def age_s(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.checked_at


class KafkaReadiness:
    """Checks in the background whether Kafka accepts ``producer``'s writes to ``topics`` (see
    the module docs); :meth:`state` is the last verdict and costs nothing. ``producer`` is a
    ``recsys.producer.EventProducer``; ``max_buffered`` is ``serve.max_buffered_events``."""

    def __init__(self, producer: Any, topics: Sequence[str], max_buffered: int, *,
                 interval_s: float = CHECK_INTERVAL_S, timeout_s: float = PROBE_TIMEOUT_S,
                 stall_s: float = STALL_S, max_age_s: float = MAX_VERDICT_AGE_S) -> None:
        self.producer = producer
        self.topics = list(topics)
        self.max_buffered = max_buffered
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.stall_s, self.max_age_s = stall_s, max_age_s
        now = time.monotonic()
        # the service fetched the topics' metadata before it was built (EventProducer.warm)
        self._state = KafkaState(True, "the topics' metadata was fetched at start", now)
        self._acked = producer.acked
        self._moved_at = now  # the last acknowledgement, or when events started waiting
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> KafkaReadiness:
        self._thread = threading.Thread(target=self._loop, name="kafka-readiness", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1.0)

    def state(self) -> KafkaState:
        """The last verdict; when a background checker runs and its verdict is older than
        ``max_age_s``, not writable (the checker is stuck or gone)."""
        state = self._state
        if self._thread is not None and state.age_s() > self.max_age_s:
            return KafkaState(False, f"the Kafka check has not finished for "
                              f"{state.age_s():.0f} s", state.checked_at)
        return state

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.check()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def check(self) -> KafkaState:
        """Check once now (blocks up to ``timeout_s``); the new verdict."""
        now = time.monotonic()
        producer = self.producer
        acked, pending = producer.acked, producer.pending
        if acked != self._acked or pending == 0:
            self._acked, self._moved_at = acked, now
        self._state = KafkaState(*self._verdict(now, pending), time.monotonic())
        return self._state

    def _verdict(self, now: float, pending: int) -> tuple[bool, str]:
        if pending >= self.max_buffered:
            return False, (f"{pending} events are waiting for Kafka (serve.max_buffered_events "
                           f"is {self.max_buffered})")
        waited = now - self._moved_at
        if pending and waited > self.stall_s:
            return False, (f"{pending} events have waited {waited:.0f} s with no acknowledgement"
                           " from Kafka")
        try:  # over the producer's own connections, the path its writes take (either library)
            failure = self.producer.writable(self.topics, self.timeout_s)
        except Exception as exc:  # a closed producer, or a client that changed underneath
            failure = f"the metadata request failed: {type(exc).__name__}: {exc}"
        if failure is not None:
            return False, failure
        return True, ("brokers answer" + (f"; {pending} events waiting" if pending else ""))
