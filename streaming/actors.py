"""Ray actors of the streaming layer, defined at module level, one job each.

``PartitionReader`` is the partition worker: it owns an explicit set of Kafka partitions (no
consumer group, so nothing moves behind its back), reads them in batches, and reports and restores
its offsets, which is what a checkpoint coordinator needs from it. The plain class runs in-process;
``PartitionReaderActor`` is the same class as a Ray actor.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import ray

from streaming.consumer import ConsumedEvent, EventConsumer
from streaming.reading import ConsumingActor, DrainProgress, Offsets
from streaming.topics import DEAD_LETTER

__all__ = ["DrainProgress", "PartitionReader", "PartitionReaderActor", "ReaderStats"]


@dataclass(frozen=True)
class ReaderStats:
    """What a reader has read since it started: records, decoded events by type, dead letters."""

    consumed: int
    decoded: int
    dead_lettered: int
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    busy_s: float = 0.0


class PartitionReader(ConsumingActor):
    """Reads its explicitly assigned partitions in batches and keeps their offsets.

    Reading: ``read`` returns one batch of decoded events; ``drain`` reads up to given offsets (and
    not past them) in time slices, counting events by type, for bounded replays. Bad input goes to
    the dead-letter topic (see ``EventConsumer``).

    Checkpoint hooks: ``pause`` stops reading, makes the dead letters written so far durable and
    returns ``positions()`` (the next offset to read per (topic, partition), the form a checkpoint
    stores); ``restore`` seeks every assigned partition to checkpointed offsets; ``resume`` reads
    on. A Ray actor runs one call at a time, so ``drain`` works in slices of ``max_seconds`` to let
    a coordinator's ``pause`` in between.
    """

    def __init__(
        self,
        bootstrap: str,
        assignment: Iterable[tuple[str, int]],
        dead_letter_topic: str = DEAD_LETTER,
        expected_types: Mapping[str, type] | None = None,
        client_options: Mapping[str, object] | None = None,
    ) -> None:
        self._assignment = [(topic, int(partition)) for topic, partition in assignment]
        if len(set(self._assignment)) != len(self._assignment):
            raise ValueError(f"assignment: a partition is listed twice in {self._assignment}")
        self._consumer = EventConsumer(
            bootstrap,
            self._assignment,
            dead_letter_topic=dead_letter_topic,
            expected_types=expected_types,
            **dict(client_options or {}),
        )
        self._paused = False
        self._by_type: Counter[str] = Counter()
        self.busy_s = 0.0

    # -- checkpoint hooks --------------------------------------------------------------------

    def pause(self) -> Offsets:
        """Stop reading until ``resume``; returns the positions, with every dead letter for the
        records before them acknowledged by the broker."""
        self._paused = True
        self._consumer.flush()
        return self.positions()

    def restore(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Seek every assigned partition to a checkpoint's offsets (all of them, no others)."""
        missing = sorted(set(self._assignment) - set(offsets))
        extra = sorted(set(offsets) - set(self._assignment))
        if missing or extra:
            raise ValueError(
                "restore: the checkpoint's partitions do not match this reader's assignment "
                f"(missing {missing}, not assigned here {extra}); restore with the assignment "
                "the checkpoint was taken with"
            )
        self._consumer.seek(offsets)

    # -- reading -----------------------------------------------------------------------------

    def read(self, max_records: int = 10_000, timeout_ms: int = 200) -> list[ConsumedEvent]:
        """One batch of decoded events from the assigned partitions (none while paused)."""
        if self._paused:
            return []
        started = time.perf_counter()
        batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        self._count(batch)
        self.busy_s += time.perf_counter() - started
        return batch

    def _handle(self, batch: list[ConsumedEvent]) -> None:
        self._count(batch)

    def _count(self, batch: list[ConsumedEvent]) -> None:
        self._by_type.update(type(consumed.event).__name__ for consumed in batch)

    def stats(self) -> ReaderStats:
        """Counts since start: records consumed, decoded (by type), dead-lettered (by reason)."""
        return ReaderStats(
            consumed=self._consumer.consumed,
            decoded=self._consumer.decoded,
            dead_lettered=self._consumer.dead_lettered,
            dead_letter_reasons=dict(self._consumer.dead_letter_reasons),
            by_type=dict(self._by_type),
            busy_s=self.busy_s,
        )

    def close(self) -> None:
        """Flush dead letters and close the Kafka clients."""
        self._consumer.close()


PartitionReaderActor = ray.remote(num_cpus=0.5)(PartitionReader)
