"""The lake writer as a Ray actor: reads impressions, feedback and rewards from Kafka and writes
them to the Parquet lake (``streaming.lake.LakeSink``), exactly once per offset range.

``LakeWriter`` owns an explicit assignment of partitions of the three topics (no consumer group).
``step`` reads one batch with an ``EventConsumer`` (records that fail to decode or validate go to
the dead-letter topic with their reason), hands it to the sink, sends the records the sink
rejected (valid events no lake column can hold) to the dead-letter topic with theirs, and lets
the sink write buffers that are due (size and age cuts). Nothing is held between calls outside
the sink: after ``step`` returns, the sink has been given exactly the records before
``positions()``.

Checkpoint hooks (the same names and meaning as ``streaming.joiner.Joiner``'s):

* ``drain(until)`` reads up to exactly ``until`` on the given partitions, never past;
* ``pause()`` stops reading, makes every dead letter durable, then cuts every buffer with
  ``sink.flush(until=positions)`` and returns the durable offsets, which equal the positions
  (checked): a checkpoint that records them finds everything below them in the lake;
* ``restore(offsets)`` takes the offsets of the *whole* assignment, seeks the consumer to them
  and calls ``sink.restore``, which deletes this writer's files that start at or after them
  (written after the checkpoint, or before a first checkpoint), so the replay rewrites the same
  ranges. Call it on **every** start, with the checkpoint's offsets or, without a checkpoint,
  with the offsets reading starts from (usually the beginning of each partition): a writer that
  was never restored does not clean up what a crashed predecessor wrote.
* ``resume()`` reads on.

Dead letters: the writer sends those of the records the lake cannot hold, and the undecodable
records of the topics it owns (``dead_letter_topics``; None: all three, alone; in the pipeline
the joiners own impressions and feedback, the lake writers rewards); the others are counted. With
a ``transactional_id`` they are written in a transaction committed by ``pause`` after the lake
flush (``streaming.reading``), so a replay after a failure does not repeat them; without one they
are at least once, and ``(source_topic, partition, offset)`` identifies repeats. Rewards re-sent
by a recovered non-transactional joiner are new records at new offsets; the lake keeps them (each
offset once) and ``scan_lake(root, "rewards")`` keeps the first of each ``(request_id, item_id)``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray

from recsys.events import Feedback, Impression, Reward, encode
from recsys.schema import TableName
from recsys.storage import PathLike
from recsys.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, REWARDS
from recsys.validation import message
from streaming.consumer import ConsumedEvent, EventConsumer
from streaming.lake import LakeSink, RejectedRecord, RestoreReport
from streaming.reading import ConsumingActor, Offsets, dead_letter_choice, output_producer

__all__ = ["LakeWriter", "LakeWriterActor", "LakeWriterCounters"]


_TABLES: tuple[TableName, ...] = ("impressions", "feedback", "rewards")
_EVENT_TYPES: dict[str, type] = {"impressions": Impression, "feedback": Feedback,
                                 "rewards": Reward}


@dataclass(frozen=True)
class LakeWriterCounters:
    """Counts since the writer started: records read, what reached the lake, what did not."""

    consumed: int  # Kafka records read
    records_written: int  # records buffered or written by the sink
    rows_written: int
    files_written: int
    bytes_written: int
    buffered_records: int
    files_removed: int  # by restore: written after the restored offsets
    straddling_files: int
    undecodable: int  # records that failed to decode (dead-lettered here or by their owner)
    rejected: int  # valid events the lake cannot hold, dead-lettered
    dead_letters: int  # undecodable records of owned topics + rejected records sent
    undecodable_reasons: dict[str, int] = field(default_factory=dict)
    rejected_reasons: dict[str, int] = field(default_factory=dict)


class LakeWriter(ConsumingActor):
    """Writes its partitions of impressions, feedback and rewards to the Parquet lake at ``root``.

    ``partitions``: the partition indices to read of every topic, or ``{table: indices}`` with
    tables among ``impressions``, ``feedback``, ``rewards`` (a table left out is not read; the
    topics need not have the same partition counts). ``max_records``, ``max_age_s``,
    ``compression`` and ``filesystem`` go to the ``LakeSink``. ``transactional_id``: dead
    letters in transactions committed by ``pause``; ``dead_letter_topics``: the input topics whose
    undecodable records it dead-letters (None: all it reads) — see the module docs.
    """

    role = "lake writer"

    def __init__(
        self,
        bootstrap: str,
        root: PathLike,
        partitions: Iterable[int] | Mapping[str, Iterable[int]],
        *,
        impressions_topic: str = IMPRESSIONS,
        feedback_topic: str = FEEDBACK,
        rewards_topic: str = REWARDS,
        dead_letter_topic: str = DEAD_LETTER,
        max_records: int = 100_000,
        max_age_s: float = 60.0,
        compression: str = "zstd",
        filesystem: Any = None,
        client_options: Mapping[str, object] | None = None,
        transactional_id: str | None = None,
        dead_letter_topics: Collection[str] | None = None,
    ) -> None:
        topics = {"impressions": impressions_topic, "feedback": feedback_topic,
                  "rewards": rewards_topic}
        if len(set(topics.values())) != len(topics):
            raise ValueError(message("topics", "three different topic names", topics))
        self._assignment = _assignment(partitions, topics)
        self._topics = topics
        self._dead_letter_topic = dead_letter_topic
        self.sink = LakeSink(
            root,
            tables={topic: table for table, topic in topics.items()},
            max_records=max_records,
            max_age_s=max_age_s,
            compression=compression,
            filesystem=filesystem,
        )
        options = dict(client_options or {})
        self._producer = output_producer(bootstrap, transactional_id, options)
        self._consumer = EventConsumer(
            bootstrap,
            self._assignment,
            dead_letter_topic=dead_letter_topic,
            expected_types={topics[t]: _EVENT_TYPES[t] for t in _TABLES},
            dead_letter_producer=self._producer,
            dead_letter=dead_letter_choice(dead_letter_topics, {t for t, _ in self._assignment},
                                           self.role),
            **options,
        )
        self._paused = False
        self._rejected_sent = 0

    # -- reading and writing (``step`` and ``drain`` come from ConsumingActor) -----------------

    def _handle(self, batch: list[ConsumedEvent]) -> None:
        self._write(batch)

    def _write(self, batch: list[ConsumedEvent]) -> None:
        """Hand ``batch`` to the sink (``write`` also writes the buffers that are due) and
        dead-letter what it rejected."""
        self.sink.write(batch)
        self._send_rejected(self.sink.take_rejected())

    def _send_rejected(self, rejected: list[RejectedRecord]) -> None:
        """Each record the lake cannot hold to the dead-letter topic, with the sink's reason."""
        if not rejected:
            return
        self._begin_output()
        for record in rejected:
            self._producer.send_dead_letter(
                self._dead_letter_topic, source_topic=record.topic, partition=record.partition,
                offset=record.offset, key=record.event.key, value=encode(record.event),
                reason=record.reason)
        self._rejected_sent += len(rejected)

    # -- checkpoint hooks --------------------------------------------------------------------

    def pause(self) -> Offsets:
        """Stop reading; write every buffer and return the offsets below which everything read
        is in the lake (equal to ``positions()``), with every dead letter acknowledged."""
        self._paused = True
        self._send_rejected(self.sink.take_rejected())
        positions = self.positions()
        durable = self.sink.flush(until=positions)
        mine = {tp: durable.get(tp) for tp in self._assignment}
        if mine != positions:
            raise RuntimeError(
                f"pause: the lake is durable up to {mine} but the reader stands at {positions}; "
                "a record was read without reaching the sink (a bug)"
            )
        self._commit_output()  # after the lake: a failed flush leaves the dead letters to abort
        return positions

    def restore(self, offsets: Mapping[tuple[str, int], int]) -> RestoreReport:
        """Seek every assigned partition to ``offsets`` and roll the lake back to them (delete
        this writer's files that start at or after them); returns what the sink removed."""
        given = {(str(topic), int(p)): int(o) for (topic, p), o in offsets.items()}
        mine = set(self._assignment)
        foreign, missing = sorted(set(given) - mine), sorted(mine - set(given))
        if foreign or missing:
            raise ValueError(
                message("offsets", f"exactly this lake writer's partitions {sorted(mine)}",
                        f"not assigned here: {foreign}, missing: {missing}",
                        "restore with the assignment the checkpoint was taken with")
            )
        negative = {tp: o for tp, o in given.items() if o < 0}
        if negative:
            raise ValueError(message("offsets", "offsets >= 0", negative))
        self._abort_output()
        self._consumer.seek(given)
        report = self.sink.restore(given)
        self._begin_output()
        return report

    def counters(self) -> LakeWriterCounters:
        """Counters since start: records read, written, files, rejected and dead-lettered."""
        sink = self.sink.counters()
        return LakeWriterCounters(
            consumed=self._consumer.consumed,
            records_written=sink.records,
            rows_written=sink.rows_written,
            files_written=sink.files_written,
            bytes_written=sink.bytes_written,
            buffered_records=sink.buffered_records,
            files_removed=sink.files_removed,
            straddling_files=sink.straddling_files,
            undecodable=self._consumer.dead_lettered,
            rejected=sink.rejected,
            dead_letters=self._consumer.dead_letters_sent + self._rejected_sent,
            undecodable_reasons=dict(self._consumer.dead_letter_reasons),
            rejected_reasons=dict(sink.rejected_reasons),
        )

    def close(self) -> None:
        """Make the dead letters sent durable (with a transactional id: commit if paused, else
        abort) and close the Kafka clients. Buffers are not written: call ``pause`` first to
        make everything read durable."""
        try:
            self._close_output()
        finally:
            try:
                self._consumer.close()
            finally:
                self._producer.close()


def _assignment(
    partitions: Iterable[int] | Mapping[str, Iterable[int]], topics: Mapping[str, str]
) -> list[tuple[str, int]]:
    """The (topic, partition) pairs of a ``partitions`` argument, checked."""
    if isinstance(partitions, Mapping):
        unknown = sorted(set(partitions) - set(_TABLES))
        if unknown:
            raise ValueError(
                message("partitions", f"tables among {list(_TABLES)} as keys", unknown)
            )
        by_table = {t: list(partitions[t]) for t in _TABLES if t in partitions}
    else:
        indices = list(partitions)
        by_table = dict.fromkeys(_TABLES, indices)
    assignment: list[tuple[str, int]] = []
    for table, indices in by_table.items():
        bad = [p for p in indices if isinstance(p, bool) or int(p) != p or p < 0]
        if bad:
            raise ValueError(message(f"partitions[{table!r}]", "indices >= 0", bad))
        assignment += [(topics[table], int(p)) for p in sorted({int(p) for p in indices})]
    if not assignment:
        raise ValueError(message("partitions", "at least one partition to write", "none"))
    return assignment


LakeWriterActor = ray.remote(num_cpus=0.5)(LakeWriter)
"""``LakeWriter`` as a Ray actor: decoding and Parquet encoding, so half a CPU."""
