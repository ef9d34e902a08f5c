"""The Kafka → Parquet lake sink: file names and offset ranges, date/hour partitioning, replays
that rewrite the same files, recovery after a crash between a write and a checkpoint, schema of
what is read back, fsspec roots; and one run on the real broker."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, date, datetime

import fsspec
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from recsys.events import Context, Feedback, Impression, Reward, SlateEntry
from recsys.lake import lake_files, scan_lake
from recsys.schema import (
    IMPRESSIONS,
    PARTITIONING,
    feedback_to_arrow,
    impressions_to_arrow,
    partition_expressions,
    rewards_to_arrow,
    validate_frame,
)
from streaming.consumer import ConsumedEvent
from streaming.lake import MAX_EVENT_TIME_MS, LakeSink, file_name, parse_file_name
from tests.waiting import wait_until

TOPIC = "recsys.impressions"
HOUR_MS = 3_600_000
# 2024-03-01 23:30 UTC: events a minute apart cross midnight after 30 of them.
NEAR_MIDNIGHT_MS = int(datetime(2024, 3, 1, 23, 30, tzinfo=UTC).timestamp() * 1000)


def impression(i: int, time_ms: int = NEAR_MIDNIGHT_MS) -> Impression:
    return Impression(
        request_id=f"req-{i}",
        event_time_ms=time_ms,
        user_id=f"u{i % 5}",
        context=Context(dense=(0.5 * i, -1.0), cluster_ids=(i % 3,), cluster_weights=(0.75,)),
        policy_name="diag-linucb",
        policy_version=2,
        slate=tuple(
            SlateEntry(item_id=10 * i + k, position=k, score=1.0 - k / 4, propensity=0.5 / (k + 1),
                       propensity_se=0.01 * k)  # Thompson sampling's Monte Carlo error, 0: exact
            for k in range(3)
        ),
    )


def feedback(i: int, time_ms: int = NEAR_MIDNIGHT_MS) -> Feedback:
    return Feedback(
        request_id=f"req-{i}",
        event_time_ms=time_ms,
        user_id=f"u{i % 5}",
        item_id=10 * i,
        position=0,
        event_type="click",
        value=1.0,
    )


def reward(i: int, time_ms: int = NEAR_MIDNIGHT_MS) -> Reward:
    return Reward(
        request_id=f"req-{i}",
        event_time_ms=time_ms,
        user_id=f"u{i % 5}",
        context=Context(dense=(0.25 * i,)),
        item_id=10 * i + 1,
        position=1,
        reward=float(i % 2),
        propensity=0.25,
        policy_name="diag-lints",
        policy_version=1,
        propensity_se=0.005 * (i % 3),
    )


def consumed(
    events: list, offsets: list[int] | range, topic: str = TOPIC, partition: int = 0
) -> list[ConsumedEvent]:
    return [
        ConsumedEvent(event, topic, partition, offset, event.event_time_ms)
        for event, offset in zip(events, offsets, strict=True)
    ]


def stream(n: int, start: int = 0, minutes_apart: int = 0) -> list[ConsumedEvent]:
    """Impressions at offsets start..start+n-1 of partition 0, ``minutes_apart`` minutes apart."""
    offsets = range(start, start + n)
    return consumed(
        [impression(o, NEAR_MIDNIGHT_MS + o * minutes_apart * 60_000) for o in offsets], offsets
    )


def write_in_batches(sink: LakeSink, events: list[ConsumedEvent], size: int) -> None:
    for begin in range(0, len(events), size):
        sink.write(events[begin : begin + size])


def ranges_on_disk(root, table: str = "impressions") -> list[tuple[int, int]]:
    """Distinct (first, last) ranges of the table's files, sorted."""
    return sorted({parse_file_name(p)[2:] for p in lake_files(root, table)})


def file_bytes(root) -> dict[str, bytes]:
    fs, base = fsspec.core.url_to_fs(str(root))
    return {p.removeprefix(base): fs.cat_file(p) for p in lake_files(root, "impressions")}


def lake_offsets(root, deduplicate: bool = True) -> list[int]:
    frame = scan_lake(root, "impressions", deduplicate=deduplicate).collect()
    return frame.filter(pl.col("position") == 0)["kafka_offset"].sort().to_list()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- files, names, cuts ------------------------------------------------------------------------


def test_files_carry_topic_partition_and_offset_range_and_hold_the_schema(tmp_path):
    sink = LakeSink(tmp_path, max_records=4)
    events = stream(10)
    written = sink.write(events)
    assert [(f.first_offset, f.last_offset) for f in written] == [(0, 3), (4, 7)]
    assert sink.counters().buffered_records == 2
    assert sink.flush() == {(TOPIC, 0): 10}
    directory = tmp_path / "impressions" / "event_date=2024-03-01" / "event_hour=23"
    assert sorted(p.name for p in directory.iterdir()) == [
        "recsys.impressions-p0-00000000000000000000-00000000000000000003.parquet",
        "recsys.impressions-p0-00000000000000000004-00000000000000000007.parquet",
        "recsys.impressions-p0-00000000000000000008-00000000000000000009.parquet",
    ]
    for first, last in [(0, 3), (4, 7), (8, 9)]:
        table = pq.read_table(directory / file_name(TOPIC, 0, first, last))
        # Parquet names list elements "element" (the format's standard layout): the same types.
        assert table.schema.equals(IMPRESSIONS)
        assert table.schema.metadata == IMPRESSIONS.metadata
        part = events[first : last + 1]
        expected = impressions_to_arrow(
            [c.event for c in part], TOPIC, 0, [c.offset for c in part]
        )
        assert table.cast(IMPRESSIONS).equals(expected)
    stats = sink.counters()
    assert (stats.records, stats.rows_written, stats.files_written) == (10, 30, 3)
    assert stats.cuts == {"size": 2, "age": 0, "flush": 1}


def test_file_names_parse_back_also_for_topics_with_dashes():
    name = file_name("recsys.dead-letter-x", 12, 5, 900)
    assert parse_file_name(f"some/dir/{name}") == ("recsys.dead-letter-x", 12, 5, 900)
    assert parse_file_name(f"{name}.tmp-0123abcd") == ("recsys.dead-letter-x", 12, 5, 900)
    assert parse_file_name("part-0.parquet") is None


def test_size_cuts_do_not_depend_on_how_records_were_batched(tmp_path):
    events = stream(100, minutes_apart=1)
    contents = []
    for size in (1, 7, 33, 100):
        root = tmp_path / f"batches-of-{size}"
        sink = LakeSink(root, max_records=30)
        write_in_batches(sink, events, size)
        sink.flush()
        contents.append(file_bytes(root))
    assert ranges_on_disk(tmp_path / "batches-of-1") == [(0, 29), (30, 59), (60, 89), (90, 99)]
    assert all(content == contents[0] for content in contents[1:])


def test_offsets_without_an_event_are_covered_by_the_range_and_flush_until(tmp_path):
    sink = LakeSink(tmp_path)
    # Offsets 2, 5, 6 and 8 were dead-lettered by the consumer; the reader stands at 9.
    offsets = [0, 1, 3, 4, 7]
    sink.write(consumed([impression(o) for o in offsets], offsets))
    assert sink.flush(until={(TOPIC, 0): 9}) == {(TOPIC, 0): 9}
    sink.write(consumed([impression(o) for o in (10, 11)], [10, 11]))
    assert sink.flush(until={(TOPIC, 0): 12}) == {(TOPIC, 0): 12}
    assert ranges_on_disk(tmp_path) == [(0, 8), (9, 11)]
    assert lake_offsets(tmp_path) == [*offsets, 10, 11]


def test_an_old_buffer_is_written_after_max_age(tmp_path):
    clock = FakeClock()
    sink = LakeSink(tmp_path, max_age_s=5.0, clock=clock)
    sink.write(stream(3))
    clock.now += 4.0
    assert sink.write(stream(2, start=3)) == []
    assert sink.flush_due() == []
    clock.now += 1.0
    written = sink.flush_due()
    assert [(f.first_offset, f.last_offset) for f in written] == [(0, 4)]
    assert sink.counters().cuts["age"] == 1 and sink.counters().buffered_records == 0
    assert sink.durable_offsets() == {(TOPIC, 0): 5}


# -- partitioning ------------------------------------------------------------------------------


def test_a_range_across_midnight_is_one_file_per_date_and_hour(tmp_path):
    sink = LakeSink(tmp_path)
    sink.write(stream(90, minutes_apart=1))  # 23:30 on March 1st to 00:59 on March 2nd
    files = sink.flush() and lake_files(tmp_path, "impressions")
    name = file_name(TOPIC, 0, 0, 89)
    base = str(tmp_path / "impressions")
    assert files == [
        f"{base}/event_date=2024-03-01/event_hour=23/{name}",
        f"{base}/event_date=2024-03-02/event_hour=0/{name}",
    ]
    frame = scan_lake(tmp_path, "impressions").collect()
    validate_frame(frame, "impressions")
    assert frame.schema["event_date"] == pl.Date and frame.schema["event_hour"] == pl.Int8
    derived = frame.drop("event_date", "event_hour").with_columns(partition_expressions())
    assert frame.select("event_date", "event_hour").equals(
        derived.select("event_date", "event_hour")
    )
    per_day = dict(frame.group_by("event_date").len().iter_rows())
    assert per_day == {date(2024, 3, 1): 30 * 3, date(2024, 3, 2): 60 * 3}


def test_read_back_validates_and_equals_what_was_written_for_every_table(tmp_path):
    events = {
        "impressions": consumed([impression(i) for i in range(20)], range(20)),
        "feedback": consumed([feedback(i) for i in range(15)], range(100, 115), "recsys.feedback"),
        "rewards": consumed([reward(i) for i in range(12)], range(12), "recsys.rewards", 3),
    }
    to_arrow = {
        "impressions": impressions_to_arrow,
        "feedback": feedback_to_arrow,
        "rewards": rewards_to_arrow,
    }
    sink = LakeSink(tmp_path, max_records=8)
    mixed = [c for group in zip(*events.values(), strict=False) for c in group]
    mixed += events["impressions"][12:] + events["feedback"][12:]
    sink.write(mixed)
    assert sink.flush() == {
        ("recsys.impressions", 0): 20,
        ("recsys.feedback", 0): 115,
        ("recsys.rewards", 3): 12,
    }
    for table, group in events.items():
        read = validate_frame(scan_lake(tmp_path, table).collect(), table)
        topic, partition = group[0].topic, group[0].partition
        expected = pl.from_arrow(
            to_arrow[table]([c.event for c in group], topic, partition, [c.offset for c in group])
        )
        keys = ["kafka_offset", "position"]
        assert read.drop(PARTITIONING.names).sort(keys).equals(expected.sort(keys)), table
    # Thompson sampling's propensity errors reach the lake with each shown item and reward.
    shown = scan_lake(tmp_path, "impressions").collect()
    assert shown.group_by("position").agg(pl.col("propensity_se").unique()).sort(
        "position")["propensity_se"].to_list() == [[0.0], [0.01], [0.02]]
    rewards = scan_lake(tmp_path, "rewards").collect().sort("kafka_offset")
    assert rewards["propensity_se"].to_list() == [0.005 * (i % 3) for i in range(12)]


# -- replays and recovery ----------------------------------------------------------------------


def test_a_replay_from_a_checkpoint_rewrites_the_same_files_byte_for_byte(tmp_path):
    events = stream(100, minutes_apart=1)
    first = LakeSink(tmp_path, max_records=30)
    write_in_batches(first, events[:60], 16)
    checkpoint = first.flush(until={(TOPIC, 0): 60})
    write_in_batches(first, events[60:], 16)
    first.flush()
    before = file_bytes(tmp_path)
    # Crash; a new sink restores the checkpoint and the reader replays from its offsets,
    # delivered in other batches.
    replay = LakeSink(tmp_path, max_records=30)
    report = replay.restore(checkpoint)
    assert [parse_file_name(p)[2:] for p in report.removed] == [(60, 89), (90, 99)]
    assert report.straddling == []
    write_in_batches(replay, events[60:], 9)
    assert replay.flush() == {(TOPIC, 0): 100}
    assert file_bytes(tmp_path) == before
    assert lake_offsets(tmp_path, deduplicate=False) == list(range(100))


def test_a_crash_between_writing_and_checkpointing_leaves_no_duplicates(tmp_path):
    clock = FakeClock()
    events = stream(150, minutes_apart=1)
    crashed = LakeSink(tmp_path, max_records=30, max_age_s=10.0, clock=clock)
    write_in_batches(crashed, events[:50], 10)
    checkpoint = crashed.flush()  # the coordinator records these offsets
    assert checkpoint == {(TOPIC, 0): 50}
    # Written after the checkpoint, with an age cut the replay will not repeat; then the crash
    # comes before the next checkpoint is recorded.
    crashed.write(events[50:65])
    clock.now += 10.0
    crashed.write(events[65:70])
    write_in_batches(crashed, events[70:120], 20)
    crashed.flush()
    assert ranges_on_disk(tmp_path) == [(0, 29), (30, 49), (50, 69), (70, 99), (100, 119)]

    restored = LakeSink(tmp_path, max_records=30)
    report = restored.restore(checkpoint)
    assert sorted({parse_file_name(p)[2:] for p in report.removed}) == [
        (50, 69), (70, 99), (100, 119)
    ]
    write_in_batches(restored, events[50:], 25)  # the replay, and records produced since
    assert restored.flush() == {(TOPIC, 0): 150}
    ranges = ranges_on_disk(tmp_path)
    assert ranges == [(0, 29), (30, 49), (50, 79), (80, 109), (110, 139), (140, 149)]
    # Ranges tile the offsets: no gap, no overlap, so even an undeduplicated read has each once.
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    assert lake_offsets(tmp_path, deduplicate=False) == list(range(150))
    validate_frame(scan_lake(tmp_path, "impressions").collect(), "impressions")


def test_restore_removes_leftover_temporary_files_of_its_partitions_only(tmp_path):
    sink = LakeSink(tmp_path)
    sink.write(stream(10) + consumed([impression(i) for i in range(5)], range(5), TOPIC, 1))
    sink.flush()
    directory = tmp_path / "impressions" / "event_date=2024-03-01" / "event_hour=23"
    leftover = directory / f"{file_name(TOPIC, 0, 10, 19)}.tmp-{uuid.uuid4().hex}"
    leftover.write_bytes(b"half a file")
    report = LakeSink(tmp_path).restore({(TOPIC, 0): 5})
    assert report.removed == [str(directory / file_name(TOPIC, 0, 10, 19)) + leftover.suffix]
    assert report.straddling == [str(directory / file_name(TOPIC, 0, 0, 9))]
    assert ranges_on_disk(tmp_path) == [(0, 4), (0, 9)]  # partition 1's file is untouched


def test_scan_lake_reads_each_record_once_when_files_overlap(tmp_path):
    events = stream(60, minutes_apart=2)
    # Two sinks that were never restored write the same offsets with different cuts.
    for max_records in (25, 40):
        sink = LakeSink(tmp_path, max_records=max_records)
        write_in_batches(sink, events, 11)
        sink.flush()
    assert ranges_on_disk(tmp_path) == [(0, 24), (0, 39), (25, 49), (40, 59), (50, 59)]
    assert len(lake_offsets(tmp_path, deduplicate=False)) == 120
    frame = scan_lake(tmp_path, "impressions").collect()
    assert frame.height == 60 * 3
    assert frame.select("kafka_offset", "position").n_unique() == frame.height
    expected = pl.from_arrow(
        impressions_to_arrow([c.event for c in events], TOPIC, 0, [c.offset for c in events])
    )
    keys = ["kafka_offset", "position"]
    assert frame.drop(PARTITIONING.names).sort(keys).equals(expected)


def test_an_empty_table_scans_as_an_empty_frame_with_the_schema(tmp_path):
    frame = scan_lake(tmp_path, "rewards").collect()
    assert frame.height == 0
    validate_frame(frame, "rewards")
    assert frame.columns[-2:] == ["event_date", "event_hour"]
    with pytest.raises(ValueError, match=r"^name: expected one of"):
        scan_lake(tmp_path, "clicks")


# -- fsspec roots ------------------------------------------------------------------------------


def test_a_memory_root_writes_restores_and_scans():
    root = f"memory://lake-{uuid.uuid4().hex}"
    fs, base = fsspec.core.url_to_fs(root)
    try:
        events = stream(40, minutes_apart=3)
        sink = LakeSink(root, max_records=15)
        write_in_batches(sink, events[:30], 10)
        checkpoint = sink.flush()
        write_in_batches(sink, events[30:], 4)
        sink.flush()
        restored = LakeSink(root, max_records=15)
        assert len(restored.restore(checkpoint).removed) == 1
        assert ranges_on_disk(root) == [(0, 14), (15, 29)]
        restored.write(events[30:])
        restored.flush()
        frame = validate_frame(scan_lake(root, "impressions").collect(), "impressions")
        assert frame.filter(pl.col("position") == 0)["kafka_offset"].sort().to_list() == list(
            range(40)
        )
        assert all(path.startswith(f"{base}/impressions/event_date=") for path in fs.find(base))
    finally:
        fs.rm(base, recursive=True)


# -- bad input ---------------------------------------------------------------------------------


def test_bugs_in_the_input_raise_and_leave_the_sink_unchanged(tmp_path):
    sink = LakeSink(tmp_path)
    sink.write(stream(5))
    with pytest.raises(ValueError, match=r"^batch: expected topics with a lake .* 'recsys.clicks'"):
        sink.write(stream(2, start=5) + consumed([feedback(1)], [0], "recsys.clicks"))
    with pytest.raises(
        TypeError,
        match=r"^batch recsys.impressions\[0\] offset 6: expected a recsys.events.Impression for "
        r"the impressions table, got Feedback",
    ):
        sink.write(stream(1, start=5) + consumed([feedback(6)], [6]))
    with pytest.raises(ValueError, match=r"^batch recsys.impressions\[0\]: expected offsets that"):
        sink.write(consumed([impression(7), impression(6)], [7, 6]))
    with pytest.raises(
        ValueError, match=r"^batch .*: expected offsets >= 5 .* got offset 3; .* restore\(offsets\)"
    ):
        sink.write(stream(3, start=3))
    with pytest.raises(ValueError, match=r"^until: expected recsys.impressions\[0\] at or past 5"):
        sink.flush(until={(TOPIC, 0): 4})
    assert sink.counters().records == 5 and sink.counters().buffered_records == 5
    assert sink.flush() == {(TOPIC, 0): 5}
    with pytest.raises(ValueError, match=r"^max_records: expected a positive integer, got 0"):
        LakeSink(tmp_path, max_records=0)
    with pytest.raises(ValueError, match=r"^tables: expected table names among"):
        LakeSink(tmp_path, tables={"x": "clicks"})
    with pytest.raises(ValueError, match=r"^offsets: expected topics with a .* 'recsys.clicks'"):
        sink.restore({("recsys.clicks", 0): 0})


# -- real broker ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_events_from_the_broker_land_in_the_lake_once(kafka_bootstrap, unique_topics, tmp_path):
    from recsys.producer import EventProducer
    from streaming.consumer import EventConsumer

    topics = unique_topics({"impressions": 2, "feedback": 2, "rewards": 1, "dead": 1})
    kinds = {"impressions": Impression, "feedback": Feedback, "rewards": Reward}
    rng = np.random.default_rng(7)
    times = NEAR_MIDNIGHT_MS + rng.integers(0, 2 * HOUR_MS, size=80)
    sent = {
        "impressions": [impression(i, int(times[i])) for i in range(80)],
        "feedback": [feedback(i, int(times[i])) for i in range(0, 80, 2)],
        "rewards": [reward(i, int(times[i])) for i in range(0, 80, 3)],
    }
    with EventProducer(kafka_bootstrap) as producer:
        for table, events in sent.items():
            for i, event in enumerate(events):
                producer.send(event, topic=topics[table])
                if i == 10:
                    producer.send_raw(topics[table], b"bad", b"not msgpack")
    assignment = [(topics[t], p) for t, n in (("impressions", 2), ("feedback", 2), ("rewards", 1))
                  for p in range(n)]
    with EventConsumer(
        kafka_bootstrap,
        assignment,
        dead_letter_topic=topics["dead"],
        expected_types={topics[t]: kinds[t] for t in kinds},
    ) as consumer:
        sink = LakeSink(tmp_path, tables={topics[t]: t for t in kinds}, max_records=17)
        ends = consumer.end_offsets()
        received = []

        def read_to_the_end() -> bool:
            batch = consumer.poll(timeout_ms=200, max_records=50, until=ends)
            received.extend(batch)
            sink.write(batch)
            return consumer.reached(ends)

        wait_until(read_to_the_end, timeout_s=120, what="the consumer to reach the end offsets")
        assert consumer.dead_lettered == 3
        durable = sink.flush(until=consumer.positions())
    assert durable == ends
    for table, events in sent.items():
        read = validate_frame(scan_lake(tmp_path, table).collect(), table)
        mine = [c for c in received if c.topic == topics[table]]
        assert len(mine) == len(events)
        expected = pl.from_arrow(
            {"impressions": impressions_to_arrow, "feedback": feedback_to_arrow,
             "rewards": rewards_to_arrow}[table]([c.event for c in mine])
        )
        keys = ["request_id", "position"]
        got = read.drop(PARTITIONING.names).sort(keys)
        assert got.drop("kafka_topic", "kafka_partition", "kafka_offset").equals(
            expected.drop("kafka_topic", "kafka_partition", "kafka_offset").sort(keys)
        ), table
        provenance = {(c.event.request_id, c.partition, c.offset) for c in mine}
        assert set(got.select("request_id", "kafka_partition", "kafka_offset").iter_rows()) == (
            provenance
        )
        assert sorted(got["request_id"].unique()) == sorted(e.request_id for e in events)


def test_values_the_lake_cannot_hold_are_rejected_with_a_reason_not_a_crash(tmp_path):
    """Valid events can still overflow a column (float32 features, int64 ids, a date past year
    9999): those records are set aside for the dead-letter topic and counted; the rest land."""
    too_big = impression(2)
    too_big = Impression(**{**{f: getattr(too_big, f) for f in too_big.__struct_fields__},
                            "context": Context(dense=(1e39, 0.0))})
    far_future = impression(4, time_ms=MAX_EVENT_TIME_MS)
    events = [impression(0), impression(1), too_big, impression(3), far_future, impression(5)]
    sink = LakeSink(tmp_path)
    sink.write(consumed(events, range(6)))
    sink.write(consumed([feedback(6)], [0], "recsys.feedback"))
    huge_id = Feedback(request_id="r", event_time_ms=1, user_id="u", item_id=2**63,
                       position=0, event_type="click")
    sink.write(consumed([huge_id], [1], "recsys.feedback"))
    only_bad = Reward(**{**{f: getattr(reward(8), f) for f in Reward.__struct_fields__},
                         "item_id": 2**64 - 1})
    sink.write(consumed([only_bad], [7], "recsys.rewards"))
    assert sink.flush() == {(TOPIC, 0): 6, ("recsys.feedback", 0): 2, ("recsys.rewards", 0): 8}
    rejected = sink.take_rejected()
    assert [(r.topic, r.offset) for r in rejected] == [
        (TOPIC, 2), (TOPIC, 4), ("recsys.feedback", 1), ("recsys.rewards", 7)
    ]
    assert rejected[0].event is too_big and rejected[1].event is far_future
    assert re.match(r"lake impressions: a value does not fit the table \(context_dense: "
                    r"expected values that fit float32", rejected[0].reason)
    assert re.match(r"lake event_time_ms: expected a time before the year 10000 .* got "
                    f"{MAX_EVENT_TIME_MS}", rejected[1].reason)
    assert re.match(r"lake feedback: a value does not fit the table \(", rejected[2].reason)
    assert sink.take_rejected() == []
    stats = sink.counters()
    assert stats.rejected == 4 and stats.records == 5
    assert stats.rejected_reasons == {"lake impressions": 1, "lake event_time_ms": 1,
                                      "lake feedback": 1, "lake rewards": 1}
    assert lake_offsets(tmp_path) == [0, 1, 3, 5]
    assert ranges_on_disk(tmp_path) == [(0, 5)]
    assert ranges_on_disk(tmp_path, "feedback") == [(0, 1)]  # the range covers rejected offsets
    assert lake_files(tmp_path, "rewards") == []
