"""What every Kafka-reading actor shares: an explicit assignment, batch reads, bounded drains.

``Learner``, ``Joiner`` and ``LakeWriter`` each own a fixed set of (topic, partition) pairs and
an ``EventConsumer``; they differ only in what they do with a batch (``_handle``) and in what a
checkpoint must flush (their own ``pause``/``restore``). This base
gives them one ``step`` (one poll), one ``drain`` (read up to given offsets, never past them, in
time slices so a coordinator's ``pause`` gets in between), the offset queries, ``resume``, and the
ownership check, so the checkpoint coordinator drives all of them the same way.

Transactions: an actor built with a ``transactional_id`` owns one transactional ``EventProducer``
for everything it produces (rewards, dead letters). A transaction is open while it reads: begun by
``restore`` and ``resume`` (and before any read or send that finds none open), committed by the
subclass's ``pause`` through ``_commit_output`` (the checkpoint's barrier), aborted by ``restore``
(what was produced since the checkpoint is replayed) and by ``close`` unless paused. A replaced
actor's open transaction is aborted by its successor's ``init_transactions`` (same id, fencing), so
``read_committed`` readers never see a record twice. Without an id: idempotent sends, flushed at
``pause`` (at least once across recoveries).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from kafka.errors import InvalidTransactionTimeoutError

from recsys.producer import EventProducer
from recsys.validation import message
from streaming.consumer import ConsumedEvent, EventConsumer

Offsets = dict[tuple[str, int], int]

# How long a transaction may stay open before the broker aborts it: the broker's default ceiling
# (transaction.max.timeout.ms, 15 min), so an open transaction rides through a Kafka outage of up to
# stream.kafka_outage_budget_s (10 min by default) plus a checkpoint interval. An aborted one is not
# lost data (the actor is replaced and replays from its checkpoint), only a costlier recovery. A
# zombie's open transaction holds read_committed readers back at most this long, and only until a
# successor with the same transactional id starts (its init aborts it at once).
TRANSACTION_TIMEOUT_MS = 900_000


def output_producer(bootstrap: str, transactional_id: str | None,
                    options: Mapping[str, object]) -> EventProducer:
    """A reading actor's one producer (its output and dead letters): transactional with an id
    (``TRANSACTION_TIMEOUT_MS``; building it fences a predecessor with the same id and aborts
    its open transaction), idempotent without."""
    if transactional_id is None:
        return EventProducer(bootstrap, **options)
    try:
        return EventProducer(bootstrap, transactional_id=transactional_id,
                             transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, **options)
    except InvalidTransactionTimeoutError as exc:
        raise ValueError(message(
            "transaction_timeout_ms", "at most the broker's transaction.max.timeout.ms",
            TRANSACTION_TIMEOUT_MS,
            "raise transaction.max.timeout.ms on the brokers to at least this (Kafka's "
            "default is 900000)")) from exc


def abort_lingering_transactions(bootstrap: str, transactional_ids: Iterable[str],
                                 options: Mapping[str, object]) -> None:
    """Fence each transactional id, aborting what is open under it: for the ids of actors a
    pipeline no longer starts (fewer joiners, learners or lake writers than in its last run).
    No successor would fence them, and their open transaction holds ``read_committed`` readers
    of its partitions back until the broker's timeout (``TRANSACTION_TIMEOUT_MS``)."""
    for transactional_id in transactional_ids:
        output_producer(bootstrap, transactional_id, options).close()


def dead_letter_choice(dead_letter_topics: Collection[str] | None, reads: Collection[str],
                       role: str) -> bool | frozenset[str]:
    """``EventConsumer``'s ``dead_letter`` for an actor that dead-letters the undecodable
    records of ``dead_letter_topics`` (None: every topic it reads) and only counts the others
    (their owner sends them: one dead letter per record)."""
    if dead_letter_topics is None:
        return True
    chosen = frozenset(str(t) for t in ([dead_letter_topics] if isinstance(dead_letter_topics, str)
                                        else dead_letter_topics))
    foreign = sorted(chosen - set(reads))
    if foreign:
        raise ValueError(message("dead_letter_topics", f"topics this {role} reads {sorted(reads)}",
                                 foreign))
    return chosen


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

    Subclasses set ``role`` (used in messages), ``_assignment``, ``_consumer``, ``_producer``
    (their one producer, shared with the consumer for dead letters) and ``_paused``, and
    implement ``_handle(batch)``; their ``pause`` ends with ``_commit_output``, their ``restore``
    starts with ``_abort_output`` and ends with ``_begin_output``.
    """

    role = "reader"
    _assignment: list[tuple[str, int]]
    _consumer: EventConsumer
    _producer: EventProducer
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
        self._begin_output()
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
        if not self._paused:
            self._begin_output()
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
        """Read again after ``pause`` (in a new transaction, with a transactional id)."""
        self._paused = False
        self._begin_output()

    def is_paused(self) -> bool:
        return self._paused

    # -- output transactions (module docs) -----------------------------------------------------

    @property
    def transactional(self) -> bool:
        """Whether this actor's output is written in transactions (it has a transactional id)."""
        return self._producer.transactional_id is not None

    def _begin_output(self) -> None:
        """Open a transaction for what is produced next, unless one is open (or no id)."""
        if self.transactional and not self._producer.in_transaction:
            self._producer.begin()

    def _commit_output(self) -> None:
        """Make everything produced so far durable and visible: commit the open transaction
        (flushing first), or flush without an id. A failure raises: the checkpoint fails and
        the actor's successor aborts what this one left open."""
        if self.transactional:
            self._producer.commit()
        else:
            self._producer.flush()

    def _abort_output(self) -> None:
        """Discard what was produced in the open transaction (a rollback replays it). Flushes
        first: an abort fails the sends still queued (TransactionAbortedError), which the
        producer would report at its next flush as lost records."""
        if self.transactional and self._producer.in_transaction:
            self._producer.flush()
            self._producer.abort()

    def _close_output(self) -> None:
        """On ``close``: commit what is open if paused (a checkpoint's cut covers it), else
        abort it (records past the last cut are replayed by whoever restores it); flush
        without an id."""
        if not self.transactional:
            self._producer.flush()
        elif self._paused:
            self._producer.commit()
        else:
            self._producer.abort()

    def _check_owned(self, name: str, offsets: Mapping[tuple[str, int], int]) -> None:
        foreign = sorted(set(offsets) - set(self._assignment))
        if foreign:
            raise ValueError(
                message(name, f"partitions of this {self.role}'s assignment {self._assignment}",
                        f"{foreign}, which are not assigned to this {self.role}")
            )
