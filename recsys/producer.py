"""Producing events: idempotent, batched, compressed sends keyed by request id, with delivery
accounting. Lives in recsys because both the streaming actors and the serving app produce.

The Kafka library is the one ``client_options["client"]`` names (``kafka.client``: kafka-python or
confluent-kafka, ``recsys.kafka_clients``); both place a key on the partition the Java client would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka.errors import KafkaTimeoutError

from recsys.events import DeadLetter, Event, encode, encode_dead_letter
from recsys.kafka_clients import IDEMPOTENT_SETTINGS, ProducerSettings, make_producer

__all__ = ["IDEMPOTENT_SETTINGS", "EventProducer"]


class EventProducer:
    """Sends contract events to their topics, keyed by request id so that a request's events stay
    on one partition in order.

    The producer is idempotent (``IDEMPOTENT_SETTINGS``): a retry after a lost acknowledgement
    neither duplicates nor reorders records within a partition. Sends are asynchronous, batched
    (``linger_ms``, ``batch_size``) and compressed; ``flush`` blocks until every sent record is
    acknowledged and raises if any delivery failed. A send waits up to ``max_block_ms`` for room
    in a full buffer, then raises ``kafka.errors.KafkaTimeoutError`` (with either library).
    """

    def __init__(
        self,
        bootstrap: str,
        compression: str = "lz4",
        linger_ms: int = 5,
        batch_size: int = 256 * 1024,
        delivery_timeout_ms: int = 120_000,
        transactional_id: str | None = None,
        max_block_ms: int = 60_000,
        transaction_timeout_ms: int = 600_000,
        **client_options: object,
    ) -> None:
        overridden = sorted(set(IDEMPOTENT_SETTINGS) & set(client_options))
        if overridden:
            fixed = ", ".join(f"{k}={IDEMPOTENT_SETTINGS[k]!r}" for k in overridden)
            raise ValueError(
                f"EventProducer is always idempotent; remove {', '.join(overridden)} from the "
                f"client options (fixed to {fixed})"
            )
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self._errors: list[BaseException] = []
        settings = ProducerSettings(
            compression=compression, linger_ms=linger_ms, batch_size=batch_size,
            delivery_timeout_ms=delivery_timeout_ms, max_block_ms=max_block_ms,
            transaction_timeout_ms=transaction_timeout_ms)
        self._client = make_producer(bootstrap, client_options, settings=settings,
                                     transactional_id=transactional_id,
                                     on_ack=self._on_ack, on_error=self._on_error)
        self.client = self._client.library  # "kafka-python" or "confluent"
        # the library's own producer (serving's readiness check asks kafka-python's for metadata)
        self._producer = self._client.raw
        self.transactional_id = transactional_id
        self.in_transaction = False
        if transactional_id is not None:  # fences a predecessor with this id, aborts its open one
            self._client.init_transactions()

    def _on_ack(self) -> None:
        self.acked += 1

    @property
    def pending(self) -> int:
        """Records queued but neither acknowledged nor failed yet (the producer's buffer)."""
        self._client.serve_deliveries()
        return max(0, self.sent - self.acked - self.failed)

    def warm(self, topics: Iterable[str]) -> None:
        """Fetch the topics' metadata now, so the first ``send`` does not block on it; a topic
        the brokers do not know raises ``KafkaTimeoutError`` with either client (kafka-python
        raises it after ``max_block_ms``, librdkafka answers at once with no partitions)."""
        for topic in topics:
            if not self._client.partitions_for(topic):
                raise KafkaTimeoutError(f"topic {topic!r} is not known to the brokers")

    def writable(self, topics: Iterable[str], timeout_s: float) -> str | None:
        """None when the brokers answer a fresh metadata request within ``timeout_s`` with a
        leader for every partition of ``topics``; else why not (serving's readiness check)."""
        return self._client.writable(list(topics), timeout_s)

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if len(self._errors) < 10:
            self._errors.append(exc)

    def send(self, event: Event, topic: str | None = None) -> None:
        """Queue one event for its contract topic (or ``topic``)."""
        self.send_raw(topic or event.topic, event.key, encode(event))

    def send_many(self, events: Iterable[Event]) -> int:
        """Queue events for their contract topics; returns how many were queued."""
        n = 0
        for event in events:
            self.send(event)
            n += 1
        return n

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        """Queue already-encoded bytes (dead letters, replays, tests of malformed input)."""
        self._client.send(topic, key, value, partition)
        self.sent += 1

    def send_dead_letter(
        self, topic: str, *, source_topic: str, partition: int, offset: int,
        key: bytes | None, value: bytes | None, reason: str,
    ) -> None:
        """Queue a ``DeadLetter`` for the record at ``source_topic[partition]@offset``: its raw
        bytes and why it was rejected, stamped now (one shape for every role that rejects)."""
        letter = DeadLetter(source_topic=source_topic, partition=partition, offset=offset,
                            key=key, value=value, reason=reason,
                            failed_at_ms=int(time.time() * 1000))
        self.send_raw(topic, key, encode_dead_letter(letter))

    def flush(self, timeout_s: float | None = 60.0) -> None:
        """Block until every queued record is acknowledged; raise if any was not delivered."""
        self._client.flush(timeout_s)
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(
                f"{self.failed} records were not delivered; first error: {errors[0]!r}"
            ) from errors[0]  # recsys.kafka_clients.is_transient_kafka_error judges the cause

    # -- transactions (only with ``transactional_id``) -----------------------------------------

    def begin(self) -> None:
        """Start a transaction: what is sent until :meth:`commit` is invisible to
        ``read_committed`` readers, and discarded by :meth:`abort` or a successor's fencing."""
        self._transactional("begin")
        self._client.begin_transaction()
        self.in_transaction = True

    def commit(self) -> None:
        """Flush and commit the open transaction (a no-op without one)."""
        self._transactional("commit")
        if self.in_transaction:
            self.flush()
            self._client.commit_transaction()
            self.in_transaction = False

    def abort(self) -> None:
        """Discard the open transaction (a no-op without one)."""
        self._transactional("abort")
        if self.in_transaction:
            self._client.abort_transaction()
            self.in_transaction = False
            self._errors = []  # the discarded records' failures are the abort, not an outage

    def _transactional(self, what: str) -> None:
        if self.transactional_id is None:
            raise RuntimeError(f"{what}: this producer has no transactional_id")

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            self.flush(timeout_s)
        finally:
            self._client.close(timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
