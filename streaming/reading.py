"""What every Kafka-reading actor shares: an explicit assignment, batch reads, bounded drains.

``Learner``, ``Joiner`` and ``LakeWriter`` each own a fixed set of (topic, partition) pairs and
an ``EventConsumer``; they differ only in what they do with a batch (``_handle``) and in what a
checkpoint must flush (their own ``pause``/``restore``). This base
gives them one ``step`` (one poll), one ``drain`` (read up to given offsets, never past them, in
time slices so a coordinator's ``pause`` gets in between), the offset queries, ``resume``, and the
ownership check, so the checkpoint coordinator drives all of them the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from recsys.validation import message
from streaming.consumer import ConsumedEvent, EventConsumer

Offsets = dict[tuple[str, int], int]


@dataclass(frozen=True)
class DrainProgress:
    """Where a ``drain`` call left off: records consumed so far, and whether the target is met
    (the object is truthy exactly when ``done``)."""

    consumed: int
    done: bool

    def __bool__(self) -> bool:
        return self.done


class ConsumingActor:
    """Base of the actors that read their own partitions (see the module docs).

    Subclasses set ``role`` (used in messages), ``_assignment``, ``_consumer`` and ``_paused``,
    and implement ``_handle(batch)``.
    """

    role = "reader"
    _assignment: list[tuple[str, int]]
    _consumer: EventConsumer
    _paused: bool
    busy_s: float = 0.0

    def _handle(self, batch: list[ConsumedEvent]) -> None:
        raise NotImplementedError

    # -- reading -----------------------------------------------------------------------------

    def step(self, max_records: int = 10_000, timeout_ms: int = 200) -> int:
        """Poll one batch and handle it; returns the records read (none while paused)."""
        if self._paused:
            return 0
        started = time.perf_counter()
        batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        self._handle(batch)
        self.busy_s += time.perf_counter() - started
        return len(batch)

    def drain(self, until: Mapping[tuple[str, int], int], max_seconds: float = 0.5,
              max_records: int = 10_000) -> DrainProgress:
        """Read and handle up to (not including) ``until``'s offsets for up to ``max_seconds``;
        call again until ``done`` (a bounded replay). Reads nothing while paused."""
        self._check_owned("until", until)
        started = time.perf_counter()
        while (not self._paused and time.perf_counter() - started < max_seconds
               and not self._consumer.reached(until)):
            self._handle(self._consumer.poll(timeout_ms=100, max_records=max_records,
                                             until=until))
        self.busy_s += time.perf_counter() - started
        return DrainProgress(self._consumer.consumed, self._consumer.reached(until))

    # -- offsets -----------------------------------------------------------------------------

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this actor reads."""
        return list(self._assignment)

    def positions(self) -> Offsets:
        """The next offset to read per assigned (topic, partition)."""
        return self._consumer.positions()

    def end_offsets(self) -> Offsets:
        """The current end offset (the next offset to be written) per assigned partition."""
        return self._consumer.end_offsets()

    def seek(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Continue the given partitions (a subset of the assignment) from the given offsets."""
        self._consumer.seek(offsets)

    def resume(self) -> None:
        """Read again after ``pause``."""
        self._paused = False

    def is_paused(self) -> bool:
        return self._paused

    def _check_owned(self, name: str, offsets: Mapping[tuple[str, int], int]) -> None:
        foreign = sorted(set(offsets) - set(self._assignment))
        if foreign:
            raise ValueError(
                message(name, f"partitions of this {self.role}'s assignment {self._assignment}",
                        f"{foreign}, which are not assigned to this {self.role}")
            )
