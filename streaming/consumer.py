"""Consuming events with explicit partition assignment, offsets the caller controls, and a
dead-letter path for anything that fails to decode or validate.

There is deliberately no consumer group: partitions are assigned by the caller (as Flink and Spark
do) and offsets are read with ``positions()`` and restored with ``seek()``, so a checkpoint can
store them together with the state they produced. Kafka never moves a partition behind our back.

The Kafka library is the one ``client_options["client"]`` names (``kafka.client``): kafka-python or
confluent-kafka, behind ``recsys.kafka_clients.ConsumerClient``; both read ``read_committed`` by
default, and their end offsets and positions agree (the last stable offset; past commit markers).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from itertools import repeat

import msgspec

from recsys.events import (
    EVENT_TYPES,
    TOMBSTONE,
    Event,
    EventValidationError,
    decode,
    decode_batch,
)
from recsys.kafka_clients import FetchSettings, make_consumer
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


class ConsumedEvent(msgspec.Struct, frozen=True, gc=False):
    """A decoded, validated event and where it was read from (a struct: built for every record
    read, a frozen dataclass cost 6x as much)."""

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
    is a bug and raises. ``fetch`` sets the fetch sizes and waits (default: up to
    ``max_partition_fetch_bytes`` per partition, 64 MiB per fetch).
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
        dead_letter: bool | Collection[str] = True,
        fetch: FetchSettings | None = None,
        **client_options: object,
    ) -> None:
        self.assignment = [(str(topic), int(p)) for topic, p in partitions]
        if not self.assignment:
            raise ValueError(message("partitions", "at least one (topic, partition) pair", "none"))
        self.expected_types = dict(
            CONTRACT_TOPIC_TYPES if expected_types is None else expected_types
        )
        not_types = {t: v for t, v in self.expected_types.items() if not isinstance(v, type)}
        if not_types:
            raise TypeError(f"expected_types: map each topic to an event class, got {not_types}")
        self._consumer = make_consumer(
            bootstrap, self.assignment, client_options, isolation_level=isolation_level,
            fetch=fetch or FetchSettings(max_partition_fetch_bytes=max_partition_fetch_bytes),
        )
        self.client = self._consumer.library  # "kafka-python" or "confluent"
        self.dead_letter_topic = dead_letter_topic
        # True: send every undecodable record; False or a collection: send only those of the named
        # topics, count the others (another role owns their dead letters: one letter per record)
        self.dead_letter = (dead_letter if isinstance(dead_letter, bool)
                            else frozenset(str(t) for t in dead_letter))
        self._owns_dlq = dead_letter_producer is None
        self._dlq = dead_letter_producer or EventProducer(bootstrap, **client_options)
        self.consumed = 0
        self.decoded = 0
        self.dead_lettered = 0  # undecodable records, sent or left to their owner
        self.dead_letters_sent = 0
        self.dead_letter_reasons: Counter[str] = Counter()
        self._paused_at_target: set[tuple[str, int]] = set()

    # -- offsets ---------------------------------------------------------------------------

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Continue each given partition from the given offset (the next record to read)."""
        for (topic, partition), offset in offsets.items():
            if (topic, partition) not in self.assignment:
                raise ValueError(
                    message("offsets", "partitions assigned to this consumer",
                            f"{topic}[{partition}], which is not assigned here")
                )
            self._consumer.seek((topic, partition), offset)

    def seek_to_beginning(self) -> None:
        self._consumer.seek_to_beginning(self.assignment)

    def seek_to_end(self) -> None:
        self._consumer.seek_to_end(self.assignment)

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read for every assigned partition (what a checkpoint stores)."""
        return {tp: self._consumer.position(tp) for tp in self.assignment}

    def end_offsets(self) -> dict[tuple[str, int], int]:
        """Where each assigned partition ends for this reader (read_committed: the last stable
        offset, so a reader that reached it has read every committed record)."""
        return self._consumer.end_offsets(self.assignment)

    def beginning_offsets(self) -> dict[tuple[str, int], int]:
        """The first offset still held of each assigned partition."""
        return self._consumer.beginning_offsets(self.assignment)

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
            self._consumer.resume(list(self._paused_at_target))
            self._paused_at_target = set()
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumedEvent] = []
        consumed = 0
        try:
            for batch in batches:
                topic, partition = batch.topic, batch.partition
                stop = None if until is None else until.get((topic, partition))
                if stop is not None and batch.offsets[-1] >= stop:
                    batch = batch.head(bisect.bisect_left(batch.offsets, stop))
                    self._consumer.seek((topic, partition), stop)
                expected = self.expected_types.get(topic)
                consumed += len(batch)
                # One C-level pass for the batch (recsys.events.decode_batch); records are looked
                # at one by one only in a batch with a bad or misplaced record.
                events, errors = decode_batch(batch.values)
                if not errors and (expected is None
                                   or all(map(isinstance, events, repeat(expected)))):
                    out += map(ConsumedEvent, events, repeat(topic), repeat(partition),
                               batch.offsets, batch.timestamps)
                    continue
                bad = dict(errors)
                for index, (event, offset, key, value, timestamp) in enumerate(zip(
                    events, batch.offsets, batch.keys, batch.values, batch.timestamps, strict=True
                )):
                    try:
                        if index in bad:
                            raise bad[index]
                        self._check_type(event, topic, expected)
                    except DEAD_LETTER_ERRORS as exc:
                        self._dead_letter(topic, partition, offset, key, value, exc)
                        continue
                    out.append(ConsumedEvent(event, topic, partition, offset, timestamp))
        except Exception:
            for batch in batches:
                if len(batch):
                    self._consumer.seek((batch.topic, batch.partition), batch.offsets[0])
            raise
        self.consumed += consumed
        self.decoded += len(out)
        return out

    @staticmethod
    def _decode(value: bytes | None, topic: str, expected: type | None) -> Event:
        if value is None:
            raise EventValidationError(TOMBSTONE)
        return EventConsumer._check_type(decode(value), topic, expected)

    @staticmethod
    def _check_type(event: Event, topic: str, expected: type | None) -> Event:
        if expected is not None and not isinstance(event, expected):
            raise EventValidationError(
                f"a {type(event).__name__} record does not belong on topic {topic} "
                f"(expected {expected.__name__})"
            )
        return event

    def reached(self, until: Mapping[tuple[str, int], int]) -> bool:
        """Whether every partition in ``until`` has been read up to its given offset."""
        return all(self._consumer.position(tp) >= offset for tp, offset in until.items())

    def read_until(
        self, until: Mapping[tuple[str, int], int], timeout_s: float = 60.0
    ) -> list[ConsumedEvent]:
        """Read each partition in ``until`` up to (not including) its offset, and no further."""
        unknown = [k for k in until if k not in self.assignment]
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
            tp for tp in self.assignment
            if tp in until and self._consumer.position(tp) >= until[tp]
        }
        if reached - self._paused_at_target:
            self._consumer.pause(list(reached - self._paused_at_target))
        if self._paused_at_target - reached:
            self._consumer.resume(list(self._paused_at_target - reached))
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
        if self.dead_letter is True or (self.dead_letter and topic in self.dead_letter):
            self._dlq.send_dead_letter(self.dead_letter_topic, source_topic=topic,
                                       partition=partition, offset=offset, key=key, value=value,
                                       reason=reason)
            self.dead_letters_sent += 1
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
