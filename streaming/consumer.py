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

import msgspec
from kafka import KafkaConsumer, TopicPartition

from recsys.events import (
    EVENT_TYPES,
    Event,
    EventValidationError,
    decode,
)
from recsys.producer import EventProducer
from recsys.topics import DEAD_LETTER
from recsys.validation import message

CONTRACT_TOPIC_TYPES: dict[str, type] = {cls.topic: cls for cls in EVENT_TYPES}
# Bad input, not bugs: the only failures that go to the dead-letter topic. (``decode`` already turns
# msgspec's errors into EventValidationError; they are listed in case a codec path does not.)
DEAD_LETTER_ERRORS: tuple[type[Exception], ...] = (
    EventValidationError,
    msgspec.DecodeError,
    msgspec.ValidationError,
)


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
    counted in ``dead_lettered`` / ``dead_letter_reasons``; consumption goes on. Any other error
    is a bug and raises.
    """

    def __init__(
        self,
        bootstrap: str,
        partitions: Iterable[tuple[str, int]],
        dead_letter_topic: str = DEAD_LETTER,
        expected_types: Mapping[str, type] | None = None,
        dead_letter_producer: EventProducer | None = None,
        max_partition_fetch_bytes: int = 8 * 1024 * 1024,
        isolation_level: str = "read_committed",
        dead_letter: bool = True,
        **client_options: object,
    ) -> None:
        self.assignment = [TopicPartition(topic, p) for topic, p in partitions]
        if not self.assignment:
            raise ValueError(message("partitions", "at least one (topic, partition) pair", "none"))
        self.expected_types = dict(
            CONTRACT_TOPIC_TYPES if expected_types is None else expected_types
        )
        not_types = {t: v for t, v in self.expected_types.items() if not isinstance(v, type)}
        if not_types:
            raise TypeError(f"expected_types: map each topic to an event class, got {not_types}")
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=64 * 1024 * 1024,
            isolation_level=isolation_level,
            **client_options,
        )
        self._consumer.assign(self.assignment)
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter = dead_letter  # False: another role owns this topic's dead letters
        self._owns_dlq = dead_letter_producer is None
        self._dlq = dead_letter_producer or EventProducer(bootstrap, **client_options)
        self.consumed = 0
        self.decoded = 0
        self.dead_lettered = 0
        self.dead_letter_reasons: Counter[str] = Counter()
        self._paused_at_target: set[TopicPartition] = set()

    # -- offsets ---------------------------------------------------------------------------

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Continue each given partition from the given offset (the next record to read)."""
        for (topic, partition), offset in offsets.items():
            tp = TopicPartition(topic, partition)
            if tp not in self.assignment:
                raise ValueError(
                    message("offsets", "partitions assigned to this consumer",
                            f"{topic}[{partition}], which is not assigned here")
                )
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

    def poll(
        self,
        timeout_ms: int = 500,
        max_records: int = 10_000,
        until: Mapping[tuple[str, int], int] | None = None,
    ) -> list[ConsumedEvent]:
        """Fetch, decode and validate the next records; bad ones go to the dead-letter topic.

        With ``until``, a partition is read only up to (not including) its given offset: records
        at or past it are left unread and the partition's position stays at that offset.

        Only decode and validation failures are dead-lettered. Any other exception is a bug and
        propagates; the partitions of the failed batch are first rewound to the batch's first
        record, so ``positions()`` never counts a record the caller did not receive (dead letters
        already written for that batch are written again when it is read again).
        """
        if until is not None:
            self._pause_reached(until)
        elif self._paused_at_target:
            self._consumer.resume(*self._paused_at_target)
            self._paused_at_target = set()
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumedEvent] = []
        consumed = 0
        try:
            for tp, records in batches.items():
                stop = None if until is None else until.get((tp.topic, tp.partition))
                if stop is not None and records and records[-1].offset >= stop:
                    records = [r for r in records if r.offset < stop]
                    self._consumer.seek(tp, stop)
                expected = self.expected_types.get(tp.topic)
                for record in records:
                    consumed += 1
                    try:
                        event = self._decode(record.value, tp.topic, expected)
                    except DEAD_LETTER_ERRORS as exc:
                        self._dead_letter(
                            tp.topic, tp.partition, record.offset, record.key, record.value, exc
                        )
                        continue
                    out.append(
                        ConsumedEvent(
                            event, tp.topic, tp.partition, record.offset, record.timestamp
                        )
                    )
        except Exception:
            for tp, records in batches.items():
                if records:
                    self._consumer.seek(tp, records[0].offset)
            raise
        self.consumed += consumed
        self.decoded += len(out)
        return out

    @staticmethod
    def _decode(value: bytes | None, topic: str, expected: type | None) -> Event:
        if value is None:
            raise EventValidationError("empty record value (tombstone)")
        event = decode(value)
        if expected is not None and not isinstance(event, expected):
            raise EventValidationError(
                f"a {type(event).__name__} record does not belong on topic {topic} "
                f"(expected {expected.__name__})"
            )
        return event

    def reached(self, until: Mapping[tuple[str, int], int]) -> bool:
        """Whether every partition in ``until`` has been read up to its given offset."""
        return all(
            self._consumer.position(TopicPartition(topic, partition)) >= offset
            for (topic, partition), offset in until.items()
        )

    def read_until(
        self, until: Mapping[tuple[str, int], int], timeout_s: float = 60.0
    ) -> list[ConsumedEvent]:
        """Read each partition in ``until`` up to (not including) its offset, and no further."""
        unknown = [k for k in until if TopicPartition(*k) not in self.assignment]
        if unknown:
            raise ValueError(
                message("until", "partitions assigned to this consumer",
                        f"{unknown}, which are not assigned here")
            )
        deadline = time.monotonic() + timeout_s
        out: list[ConsumedEvent] = []
        while not self.reached(until):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"did not reach offsets {dict(until)} within {timeout_s}s "
                    f"(at {self.positions()})"
                )
            out += self.poll(timeout_ms=200, until=until)
        return out

    def read_until_end(self, timeout_s: float = 60.0) -> list[ConsumedEvent]:
        """Read everything up to the end offsets seen at the call (a bounded replay)."""
        return self.read_until(self.end_offsets(), timeout_s)

    def _pause_reached(self, until: Mapping[tuple[str, int], int]) -> None:
        """Stop fetching partitions already at their target; resume the others."""
        reached = {
            tp
            for tp in self.assignment
            if (tp.topic, tp.partition) in until
            and self._consumer.position(tp) >= until[(tp.topic, tp.partition)]
        }
        if reached - self._paused_at_target:
            self._consumer.pause(*(reached - self._paused_at_target))
        if self._paused_at_target - reached:
            self._consumer.resume(*(self._paused_at_target - reached))
        self._paused_at_target = reached

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
        if self.dead_letter:
            self._dlq.send_dead_letter(self.dead_letter_topic, source_topic=topic,
                                       partition=partition, offset=offset, key=key, value=value,
                                       reason=reason)
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
