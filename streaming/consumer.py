"""Consuming events with explicit partition assignment, offsets the caller controls, and a
dead-letter path for anything that fails to decode or validate.

There is deliberately no consumer group: partitions are assigned by the caller (as Flink and Spark
do) and offsets are read with ``positions()`` and restored with ``seek()``, so a checkpoint can
store them together with the state they produced. Kafka never moves a partition behind our back.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

from recsys.events import (
    EVENT_TYPES,
    DeadLetter,
    Event,
    EventValidationError,
    decode,
    encode_dead_letter,
)
from streaming.producer import EventProducer
from streaming.topics import DEAD_LETTER

CONTRACT_TOPIC_TYPES: dict[str, type] = {cls.topic: cls for cls in EVENT_TYPES}


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """A decoded, validated event and where it was read from."""

    event: Event
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class EventConsumer:
    """Reads events from explicitly assigned partitions.

    Records that fail to decode or validate, or whose type does not belong on their topic, are sent
    to the dead-letter topic with their raw bytes, source topic/partition/offset and the reason, and
    counted in ``dead_lettered`` / ``dead_letter_reasons``; consumption goes on.
    """

    def __init__(
        self,
        bootstrap: str,
        partitions: Iterable[tuple[str, int]],
        dead_letter_topic: str = DEAD_LETTER,
        expected_types: Mapping[str, type] | None = None,
        dead_letter_producer: EventProducer | None = None,
        max_partition_fetch_bytes: int = 8 * 1024 * 1024,
        **client_options: object,
    ) -> None:
        self.assignment = [TopicPartition(topic, p) for topic, p in partitions]
        if not self.assignment:
            raise ValueError("partitions: assign at least one (topic, partition) pair")
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=64 * 1024 * 1024,
            **client_options,
        )
        self._consumer.assign(self.assignment)
        self.dead_letter_topic = dead_letter_topic
        self.expected_types = CONTRACT_TOPIC_TYPES if expected_types is None else expected_types
        self._owns_dlq = dead_letter_producer is None
        self._dlq = dead_letter_producer or EventProducer(bootstrap, **client_options)
        self.consumed = 0
        self.decoded = 0
        self.dead_lettered = 0
        self.dead_letter_reasons: Counter[str] = Counter()

    # -- offsets ---------------------------------------------------------------------------

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Continue each given partition from the given offset (the next record to read)."""
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp not in self.assignment:
                raise ValueError(f"cannot seek {topic}[{partition}]: it is not assigned here")
            self._consumer.seek(tp, offset)

    def seek_to_beginning(self) -> None:
        self._consumer.seek_to_beginning(*self.assignment)

    def seek_to_end(self) -> None:
        self._consumer.seek_to_end(*self.assignment)

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read for every assigned partition (what a checkpoint stores)."""
        return {(tp.topic, tp.partition): self._consumer.position(tp) for tp in self.assignment}

    def end_offsets(self) -> dict[tuple[str, int], int]:
        ends = self._consumer.end_offsets(self.assignment)
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    def lag(self) -> int:
        """Records still to read on the assigned partitions."""
        ends, positions = self.end_offsets(), self.positions()
        return sum(max(0, ends[k] - positions[k]) for k in ends)

    # -- reading ---------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 500, max_records: int = 10_000) -> list[ConsumedEvent]:
        """Fetch, decode and validate the next records; bad ones go to the dead-letter topic."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumedEvent] = []
        for tp, records in batches.items():
            expected = self.expected_types.get(tp.topic)
            for record in records:
                self.consumed += 1
                try:
                    if record.value is None:
                        raise EventValidationError("empty record value (tombstone)")
                    event = decode(record.value)
                    if expected is not None and not isinstance(event, expected):
                        raise EventValidationError(
                            f"a {type(event).__name__} record does not belong on topic {tp.topic} "
                            f"(expected {expected.__name__})"
                        )
                except Exception as exc:
                    self._dead_letter(
                        tp.topic, tp.partition, record.offset, record.key, record.value, exc
                    )
                    continue
                self.decoded += 1
                out.append(
                    ConsumedEvent(event, tp.topic, tp.partition, record.offset, record.timestamp)
                )
        return out

    def read_until_end(self, timeout_s: float = 60.0) -> list[ConsumedEvent]:
        """Read everything up to the end offsets seen at the call (a bounded replay)."""
        targets = self.end_offsets()
        deadline = time.monotonic() + timeout_s
        out: list[ConsumedEvent] = []
        while any(self._consumer.position(TopicPartition(*k)) < v for k, v in targets.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"did not reach end offsets {targets} within {timeout_s}s")
            out += self.poll(timeout_ms=200)
        return out

    def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        exc: Exception,
    ) -> None:
        reason = (
            str(exc) if isinstance(exc, EventValidationError) else f"{type(exc).__name__}: {exc}"
        )
        record = DeadLetter(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            reason=reason,
            failed_at_ms=int(time.time() * 1000),
        )
        self._dlq.send_raw(self.dead_letter_topic, key, encode_dead_letter(record))
        self.dead_lettered += 1
        self.dead_letter_reasons[reason.split(":", 1)[0]] += 1

    def flush(self) -> None:
        """Block until every dead letter written so far is acknowledged (before a checkpoint)."""
        self._dlq.flush()

    def close(self) -> None:
        try:
            if self._owns_dlq:
                self._dlq.close()
        finally:
            self._consumer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
