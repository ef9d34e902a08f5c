"""The Kafka → Parquet lake sink: impressions, feedback and rewards as hive-partitioned Parquet,
each Kafka offset range written exactly once, so a replay after a crash rewrites the same files.

``LakeSink`` buffers consumed events per (topic, partition) and cuts offset ranges into files;
``restore`` rolls the lake back to a checkpoint's offsets. ``streaming.lake_writer`` runs it as a
Ray actor; ``recsys.lake.scan_lake`` reads the lake. The layout, the cut and replay rules and what
a scan returns are in the README ("Parquet lake").
"""

from __future__ import annotations

import io
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.events import Feedback, Impression, Reward
from recsys.schema import (
    TableName,
    feedback_to_arrow,
    impressions_to_arrow,
    partition_expressions,
    rewards_to_arrow,
)
from recsys.storage import PathLike, join, resolve, write_bytes_atomic
from recsys.topics import FEEDBACK, IMPRESSIONS, REWARDS
from recsys.validation import message
from streaming.consumer import ConsumedEvent

__all__ = [
    "DEFAULT_TABLES",
    "MAX_EVENT_TIME_MS",
    "LakeFile",
    "LakeSink",
    "LakeSinkCounters",
    "RejectedRecord",
    "RestoreReport",
    "file_name",
    "parse_file_name",
]

Offsets = dict[tuple[str, int], int]

DEFAULT_TABLES: dict[str, TableName] = {
    IMPRESSIONS: "impressions",
    FEEDBACK: "feedback",
    REWARDS: "rewards",
}
"""The contract topics and the lake table each one lands in."""

_EVENT_TYPES: dict[str, type] = {"impressions": Impression, "feedback": Feedback, "rewards": Reward}
_TO_ARROW: dict[str, Callable[..., pa.Table]] = {
    "impressions": impressions_to_arrow,
    "feedback": feedback_to_arrow,
    "rewards": rewards_to_arrow,
}
_OFFSET_DIGITS = 20
# A value the event contract allows but an Arrow column cannot hold (an id beyond int64, a
# feature beyond float32): ``recsys.schema`` raises ValueError, pyarrow OverflowError or an
# ArrowException.
_CONVERSION_ERRORS = (ValueError, OverflowError, pa.ArrowException)
MAX_EVENT_TIME_MS = 253_402_300_800_000
"""10000-01-01T00:00Z: later event times have no date to name their partition directory."""
_FILE_NAME = re.compile(r"^(?P<topic>.+)-p(?P<partition>\d+)-(?P<first>\d{20})-(?P<last>\d{20})")


def file_name(topic: str, partition: int, first: int, last: int) -> str:
    """The file name of the offset range ``[first, last]`` of ``topic``'s ``partition``."""
    return f"{topic}-p{partition}-{first:0{_OFFSET_DIGITS}d}-{last:0{_OFFSET_DIGITS}d}.parquet"


def parse_file_name(name: str) -> tuple[str, int, int, int] | None:
    """``(topic, partition, first, last)`` from a lake file name (or its temporary name), or
    None when the name is not one the sink writes."""
    match = _FILE_NAME.match(name.rsplit("/", 1)[-1])
    if match is None:
        return None
    return (
        match["topic"],
        int(match["partition"]),
        int(match["first"]),
        int(match["last"]),
    )


@dataclass(frozen=True)
class LakeFile:
    """One file the sink wrote: where, which table and offset range, how many rows."""

    path: str
    table: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    rows: int


@dataclass(frozen=True)
class RestoreReport:
    """What ``restore`` did to the lake: files removed (written after the restore offsets) and
    files kept although they straddle an offset (``scan_lake`` de-duplicates their tail)."""

    removed: list[str]
    straddling: list[str]


@dataclass(frozen=True)
class LakeSinkCounters:
    """Counts since the sink started."""

    records: int  # records buffered or written (rejected ones are counted in ``rejected``)
    rows_written: int
    files_written: int
    ranges_written: int
    buffered_records: int
    bytes_written: int
    files_removed: int
    straddling_files: int
    rejected: int = 0
    cuts: dict[str, int] = field(default_factory=dict)  # by reason: size, age, flush
    rejected_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RejectedRecord:
    """A valid event the lake cannot hold (a value outside its column's type), with the reason:
    for the dead-letter topic (``recsys.events.encode(event)`` gives its bytes back)."""

    topic: str
    partition: int
    offset: int
    reason: str
    event: Any


@dataclass
class _Partition:
    """The buffer and range bookkeeping of one (topic, partition)."""

    table: str
    start: int | None = None  # first offset the next range covers (None: the next event's)
    durable: int | None = None  # every offset below it is in the lake
    next_offset: int | None = None  # one past the last offset given to the sink
    tables: list[pa.Table] = field(default_factory=list)
    offsets: list[np.ndarray] = field(default_factory=list)  # record offsets, per table
    records: int = 0
    oldest: float | None = None  # clock reading when the oldest buffered record arrived


class LakeSink:
    """Buffers consumed events per (topic, partition) and writes offset ranges to the lake.

    ``root``: a local path or fsspec URI (``filesystem`` overrides the URI's). ``tables`` maps
    each topic to its table (default: the contract topics, ``DEFAULT_TABLES``). ``max_records``
    and ``max_age_s`` are the cut rules (README, "Parquet lake"); ``clock`` (seconds,
    monotonic) measures buffer age. ``compression`` is the Parquet codec.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        tables: Mapping[str, TableName] | None = None,
        max_records: int = 100_000,
        max_age_s: float = 60.0,
        compression: str = "zstd",
        filesystem: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_records, bool) or int(max_records) != max_records or max_records < 1:
            raise ValueError(message("max_records", "a positive integer", repr(max_records)))
        if not max_age_s > 0:
            raise ValueError(message("max_age_s", "a positive number of seconds", repr(max_age_s)))
        self.tables: dict[str, str] = dict(DEFAULT_TABLES if tables is None else tables)
        bad = {t: name for t, name in self.tables.items() if name not in _EVENT_TYPES}
        if bad:
            raise ValueError(message("tables", f"table names among {sorted(_EVENT_TYPES)}", bad))
        self.root = str(root)
        self.max_records = int(max_records)
        self.max_age_s = float(max_age_s)
        self.compression = compression
        self._fs, self._root = resolve(root, filesystem)
        self._clock = clock
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self._records = 0
        self._rows_written = 0
        self._files_written = 0
        self._ranges_written = 0
        self._bytes_written = 0
        self._files_removed = 0
        self._straddling = 0
        self._cuts = {"size": 0, "age": 0, "flush": 0}
        self._rejected: list[RejectedRecord] = []
        self._rejected_reasons: Counter[str] = Counter()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, batch: Sequence[ConsumedEvent]) -> list[LakeFile]:
        """Buffer a batch of consumed events; returns the files written by size or age cuts.

        The whole batch is checked first (known topic, event type matching its table, offsets
        increasing per partition and past what the sink already holds); a bad batch raises and
        leaves the sink unchanged.
        """
        groups = self._group(batch)
        staged = []
        rejected: list[RejectedRecord] = []
        for key, (events, offsets) in groups.items():
            part = self._partitions.get(key)
            floor = None if part is None else part.next_offset
            offset_array = np.asarray(offsets, dtype=np.int64)
            if offset_array.size > 1 and not bool(np.all(np.diff(offset_array) > 0)):
                raise ValueError(
                    message(f"batch {key[0]}[{key[1]}]", "offsets that increase",
                            f"{offsets[:10]}...",
                            "pass events in the order the consumer returned them")
                )
            if floor is not None and offset_array[0] < floor:
                raise ValueError(
                    message(f"batch {key[0]}[{key[1]}]",
                            f"offsets >= {floor} (earlier ones were already given to the sink)",
                            f"offset {int(offset_array[0])}",
                            "after seeking a reader back, call restore(offsets) with the "
                            "offsets it restarts from")
                )
            table_name = self.tables[key[0]]
            table, kept, refused = _to_table(table_name, key, events, offset_array)
            staged.append((key, table_name, table, kept, int(offset_array[-1]) + 1))
            rejected += refused
        now = self._clock()
        written: list[LakeFile] = []
        for record in rejected:
            self._rejected.append(record)
            self._rejected_reasons[record.reason.split(":", 1)[0]] += 1
        for key, table_name, table, kept, next_offset in staged:
            part = self._partitions.setdefault(key, _Partition(table_name))
            part.next_offset = next_offset
            self._records += int(kept.size)
            if not kept.size:
                continue
            part.tables.append(table)
            part.offsets.append(kept)
            part.records += int(kept.size)
            if part.oldest is None:
                part.oldest = now
            while part.records >= self.max_records:
                written += self._cut_size(key, part, now)
        written += self.flush_due()
        return written

    def _group(
        self, batch: Sequence[ConsumedEvent]
    ) -> dict[tuple[str, int], tuple[list[Any], list[int]]]:
        """The batch's events and offsets by (topic, partition), checking topics and types."""
        groups: dict[tuple[str, int], tuple[list[Any], list[int]]] = {}
        for consumed in batch:
            key = (consumed.topic, consumed.partition)
            group = groups.get(key)
            if group is None:
                table_name = self.tables.get(consumed.topic)
                if table_name is None:
                    raise ValueError(
                        message("batch", f"topics with a lake table {sorted(self.tables)}",
                                f"topic {consumed.topic!r}",
                                "map it with LakeSink(tables={topic: table})")
                    )
                group = groups[key] = ([], [])
            expected = _EVENT_TYPES[self.tables[consumed.topic]]
            if type(consumed.event) is not expected:
                raise TypeError(
                    message(f"batch {consumed.topic}[{consumed.partition}] offset "
                            f"{consumed.offset}",
                            f"a recsys.events.{expected.__name__} for the "
                            f"{self.tables[consumed.topic]} table", type(consumed.event).__name__)
                )
            group[0].append(consumed.event)
            group[1].append(consumed.offset)
        return groups

    def _cut_size(self, key: tuple[str, int], part: _Partition, now: float) -> list[LakeFile]:
        """Write exactly the first ``max_records`` buffered records as one range."""
        offsets = np.concatenate(part.offsets)
        table = pa.concat_tables(part.tables)
        last = int(offsets[self.max_records - 1])
        rows = int(np.searchsorted(table["kafka_offset"].to_numpy(), last, side="right"))
        head, tail = table.slice(0, rows), table.slice(rows)
        rest = offsets[self.max_records :]
        part.tables = [tail] if rest.size else []
        part.offsets = [rest] if rest.size else []
        part.records = int(rest.size)
        # The remainder came with the batch that completed the range: its age starts now.
        part.oldest = now if rest.size else None
        files = self._write_range(key, part, head, last)
        self._cuts["size"] += 1
        return files

    def flush_due(self) -> list[LakeFile]:
        """Write every buffer whose oldest record has waited ``max_age_s``."""
        now = self._clock()
        written: list[LakeFile] = []
        for key, part in self._partitions.items():
            if part.oldest is not None and now - part.oldest >= self.max_age_s:
                written += self._cut_buffer(key, part, until=None)
                self._cuts["age"] += 1
        return written

    def flush(self, until: Mapping[tuple[str, int], int] | None = None) -> Offsets:
        """Write every buffer; returns the offsets below which everything is in the lake.

        ``until``: the readers' positions (the next offset each will read). The caller states
        that every decoded event before them was given to the sink, so a partition's range ends
        at ``until - 1`` and its durable offset is ``until``, trailing dead letters included;
        partitions without an entry end at the last offset given. The result names every partition
        the sink knows, in the form a checkpoint stores.
        """
        until = dict(until or {})
        for key, position in until.items():
            if key[0] not in self.tables:
                raise ValueError(
                    message("until", f"topics with a lake table {sorted(self.tables)}",
                            f"topic {key[0]!r}")
                )
            part = self._partitions.get(key)
            given = None if part is None else part.next_offset
            if given is not None and position < given:
                raise ValueError(
                    message("until", f"{key[0]}[{key[1]}] at or past {given} (the sink holds "
                            f"offsets up to {given - 1})", position,
                            "pass the readers' positions taken after the events were written")
                )
        for key, part in self._partitions.items():
            if part.records:
                self._cuts["flush"] += 1
            self._cut_buffer(key, part, until=until.get(key))
        for key, position in until.items():
            if key not in self._partitions:
                self._partitions[key] = _Partition(
                    self.tables[key[0]], start=position, durable=position, next_offset=position
                )
        return self.durable_offsets()

    def _cut_buffer(
        self, key: tuple[str, int], part: _Partition, until: int | None
    ) -> list[LakeFile]:
        """Write the whole buffer as one range ending at ``until - 1``, or at the last offset
        given to the sink (rejected records included: they are handed over, not lost)."""
        end = part.next_offset if until is None else until
        files: list[LakeFile] = []
        if part.records:
            files = self._write_range(key, part, pa.concat_tables(part.tables), end - 1)
        part.tables, part.offsets, part.records, part.oldest = [], [], 0, None
        if end is not None:
            part.start = part.durable = part.next_offset = end
        return files

    def _write_range(
        self, key: tuple[str, int], part: _Partition, table: pa.Table, last: int
    ) -> list[LakeFile]:
        """Write ``table`` (the range's rows, ending at offset ``last``) as one file per
        date/hour directory; the range starts at ``part.start``, else at its first record."""
        topic, partition = key
        first = int(table["kafka_offset"][0].as_py()) if part.start is None else part.start
        name = file_name(topic, partition, first, last)
        files = []
        for (event_date, event_hour), piece in _by_date_and_hour(table):
            directory = join(
                self._root,
                part.table,
                f"event_date={event_date.isoformat()}",
                f"event_hour={event_hour}",
            )
            path = join(directory, name)
            data = _parquet_bytes(piece, self.compression)
            write_bytes_atomic(self._fs, path, data)
            files.append(LakeFile(path, part.table, topic, partition, first, last, piece.num_rows))
            self._bytes_written += len(data)
        self._files_written += len(files)
        self._rows_written += table.num_rows
        self._ranges_written += 1
        part.start = last + 1
        part.durable = last + 1
        return files

    # -- offsets and recovery --------------------------------------------------------------------

    def durable_offsets(self) -> Offsets:
        """The next offset per (topic, partition) below which everything is in the lake, for
        every partition that has a range written or was restored."""
        return {
            key: part.durable for key, part in self._partitions.items() if part.durable is not None
        }

    def restore(self, offsets: Mapping[tuple[str, int], int]) -> RestoreReport:
        """Roll back to a checkpoint: drop every buffer, start each given partition's next range
        at its offset, and delete that partition's files that start at or after it."""
        for (topic, partition), offset in offsets.items():
            if topic not in self.tables:
                raise ValueError(
                    message("offsets", f"topics with a lake table {sorted(self.tables)}",
                            f"topic {topic!r}")
                )
            if int(offset) < 0 or int(partition) < 0:
                raise ValueError(
                    message("offsets", "partitions and offsets >= 0",
                            f"{topic}[{partition}] at {offset}")
                )
        self._partitions = {}
        removed: list[str] = []
        straddling: list[str] = []
        for (topic, partition), offset in offsets.items():
            table = self.tables[topic]
            for path in self._files_of(table, topic, int(partition)):
                parsed = parse_file_name(path)
                if parsed is None:
                    continue
                _, _, first, last = parsed
                if first >= offset:
                    self._fs.rm(path)
                    removed.append(path)
                elif last >= offset and path.endswith(".parquet"):
                    straddling.append(path)
            self._partitions[(topic, int(partition))] = _Partition(
                table, start=int(offset), durable=int(offset), next_offset=int(offset)
            )
        self._files_removed += len(removed)
        self._straddling += len(straddling)
        return RestoreReport(removed=sorted(removed), straddling=sorted(straddling))

    def _files_of(self, table: str, topic: str, partition: int) -> list[str]:
        """Every file (and leftover temporary file) of one (topic, partition) in ``table``."""
        pattern = join(self._root, table, "event_date=*", "event_hour=*", f"{topic}-p{partition}-*")
        return [
            path
            for path in self._fs.glob(pattern)
            if (parsed := parse_file_name(path)) is not None
            and parsed[:2] == (topic, partition)
        ]

    def take_rejected(self) -> list[RejectedRecord]:
        """The records rejected since the last call (for the dead-letter topic); clears them."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def counters(self) -> LakeSinkCounters:
        """Counts since the sink started (records given, rows, files and bytes written, cuts)."""
        return LakeSinkCounters(
            records=self._records,
            rows_written=self._rows_written,
            files_written=self._files_written,
            ranges_written=self._ranges_written,
            buffered_records=sum(p.records for p in self._partitions.values()),
            bytes_written=self._bytes_written,
            files_removed=self._files_removed,
            straddling_files=self._straddling,
            rejected=sum(self._rejected_reasons.values()),
            cuts=dict(self._cuts),
            rejected_reasons=dict(self._rejected_reasons),
        )


# Dictionary encoding only where values repeat: on ids, scores and embeddings it doubled the
# encoding time (measured with bench_lake) and gave larger files than zstd alone.
_DICTIONARY_COLUMNS = frozenset(
    {"policy_name", "policy_version", "event_type", "schema_version", "kafka_topic",
     "kafka_partition"}
)


def _to_table(
    table_name: str, key: tuple[str, int], events: list[Any], offsets: np.ndarray
) -> tuple[pa.Table, np.ndarray, list[RejectedRecord]]:
    """The events' Arrow table, the offsets of the records in it, and the records rejected.

    The whole group is converted at once; only if that fails are the events converted one by one
    to find the culprits (a rare path). Event times past ``MAX_EVENT_TIME_MS`` are rejected too:
    their date has no directory name.
    """
    to_arrow = _TO_ARROW[table_name]
    topic, partition = key
    rejected: list[RejectedRecord] = []
    try:
        table = to_arrow(events, kafka_topic=topic, kafka_partition=partition, kafka_offset=offsets)
    except _CONVERSION_ERRORS:
        good = np.ones(len(events), dtype=bool)
        for index, (event, offset) in enumerate(zip(events, offsets.tolist(), strict=True)):
            try:
                to_arrow([event])
            except _CONVERSION_ERRORS as exc:
                good[index] = False
                reason = f"lake {table_name}: a value does not fit the table ({exc})"
                rejected.append(RejectedRecord(topic, partition, offset, reason, event))
        events = [event for event, ok in zip(events, good.tolist(), strict=True) if ok]
        offsets = offsets[good]
        table = to_arrow(events, kafka_topic=topic, kafka_partition=partition, kafka_offset=offsets)
    late = table["event_time_ms"].to_numpy() >= MAX_EVENT_TIME_MS
    if late.any():
        row_offsets = table["kafka_offset"].to_numpy()
        bad = np.isin(offsets, row_offsets[late])
        for index in np.flatnonzero(bad).tolist():
            event = events[index]
            reason = (
                "lake event_time_ms: expected a time before the year 10000 (the date names a "
                f"directory), got {event.event_time_ms}"
            )
            rejected.append(RejectedRecord(topic, partition, int(offsets[index]), reason, event))
        table = table.filter(pa.array(~late))
        offsets = offsets[~bad]
    rejected.sort(key=lambda record: record.offset)
    return table, offsets, rejected


def _by_date_and_hour(table: pa.Table) -> list[tuple[tuple[Any, int], pa.Table]]:
    """``table``'s rows by UTC date and hour of ``event_time_ms``, in order of first appearance,
    each piece in the table's row order."""
    keys = pl.DataFrame({"event_time_ms": table["event_time_ms"].to_numpy()}).select(
        partition_expressions()
    )
    if keys.n_unique() == 1:
        return [(keys.row(0), table)]
    groups = (
        keys.with_row_index("row")
        .group_by(["event_date", "event_hour"], maintain_order=True)
        .agg(pl.col("row"))
    )
    rows = groups["row"]
    return [
        ((event_date, event_hour), table.take(pa.array(rows[i].to_numpy())))
        for i, (event_date, event_hour) in enumerate(
            groups.select("event_date", "event_hour").iter_rows()
        )
    ]


def _parquet_bytes(table: pa.Table, compression: str) -> bytes:
    """``table`` as one Parquet file in memory (deterministic: same rows, same bytes)."""
    sink = io.BytesIO()
    dictionary = [name for name in table.column_names if name in _DICTIONARY_COLUMNS]
    pq.write_table(table, sink, compression=compression, use_dictionary=dictionary)
    return sink.getvalue()
