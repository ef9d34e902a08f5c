"""Producing events: batching, compression and request-id keys, with delivery accounting."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaProducer

from recsys.events import Event, encode


class EventProducer:
    """Sends contract events to their topics, keyed by request id so that a request's events stay
    on one partition in order.

    Sends are asynchronous and batched (``linger_ms``, ``batch_size``) and compressed; ``flush``
    blocks until every sent record is acknowledged and raises if any delivery failed.
    """

    def __init__(
        self,
        bootstrap: str,
        compression: str = "lz4",
        linger_ms: int = 5,
        batch_size: int = 256 * 1024,
        acks: str | int = "all",
        **client_options: object,
    ) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            compression_type=None if compression == "none" else compression,
            linger_ms=linger_ms,
            batch_size=batch_size,
            acks=acks,
            retries=5,
            max_in_flight_requests_per_connection=5,
            **client_options,
        )
        self.sent = 0
        self.failed = 0
        self._errors: list[BaseException] = []

    def _on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if len(self._errors) < 10:
            self._errors.append(exc)

    def send(self, event: Event, topic: str | None = None) -> None:
        """Queue one event for its contract topic (or ``topic``)."""
        self.send_raw(topic or event.topic, event.key, encode(event))

    def send_many(self, events: Iterable[Event]) -> int:
        n = 0
        for event in events:
            self.send(event)
            n += 1
        return n

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        """Queue already-encoded bytes (dead letters, replays, tests of malformed input)."""
        future = self._producer.send(topic, key=key, value=value, partition=partition)
        future.add_errback(self._on_error)
        self.sent += 1

    def flush(self, timeout_s: float | None = 60.0) -> None:
        self._producer.flush(timeout=timeout_s)
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(
                f"{self.failed} records were not delivered; first error: {errors[0]!r}"
            )

    def close(self, timeout_s: float = 30.0) -> None:
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
