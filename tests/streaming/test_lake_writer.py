"""The lake writer on the real broker and real Ray: what was produced lands in the lake once per
offset, bad records land on the dead-letter topic with their reasons, a writer killed after a
checkpoint and restored from it leaves the same files as an undisturbed run, a drain stops at its
target while more records arrive, and a restore with partitions it does not own is refused. Also
the rewards rule of ``scan_lake``: one row per (request_id, item_id), the first sent."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from recsys.events import Context, Impression, Reward, decode, decode_dead_letter, encode
from recsys.lake import lake_files, scan_lake
from recsys.producer import EventProducer
from recsys.schema import (
    PARTITIONING,
    feedback_to_arrow,
    impressions_to_arrow,
    rewards_to_arrow,
)
from streaming.lake import LakeSink
from streaming.lake_writer import LakeWriter, LakeWriterActor
from tests.streaming.test_joiner import read_all
from tests.streaming.test_lake import (
    HOUR_MS,
    NEAR_MIDNIGHT_MS,
    consumed,
    feedback,
    impression,
    reward,
)

TABLES = ("impressions", "feedback", "rewards")
COUNTS = {"impressions": 2, "feedback": 2, "rewards": 1, "dead": 1}
TO_ARROW = {"impressions": impressions_to_arrow, "feedback": feedback_to_arrow,
            "rewards": rewards_to_arrow}
MAKE = {"impressions": impression, "feedback": feedback, "rewards": reward}
# Provenance and the slate position identify one row of any table.
ROW = ["kafka_topic", "kafka_partition", "kafka_offset", "position"]


class Produced:
    """What a test produced: every event by (topic, partition, offset), and the bad records."""

    def __init__(self) -> None:
        self.events: dict[str, dict[tuple[int, int], object]] = {t: {} for t in TABLES}
        self.undecodable: list[tuple[str, int, int]] = []
        self.unfit: list[tuple[str, int, int]] = []


def produce(bootstrap: str, topics: dict[str, str], n: int, seed: int) -> Produced:
    """``n`` events of each table spread over two hours across midnight, to explicit
    partitions (so each record's offset is known), with one undecodable record on feedback[1]
    and one impression the lake cannot hold (a feature beyond float32) on impressions[0]."""
    rng = np.random.default_rng(seed)
    times = NEAR_MIDNIGHT_MS + rng.integers(0, 2 * HOUR_MS, size=n)
    out = Produced()
    next_offset = {(t, p): 0 for t in TABLES for p in range(COUNTS[t])}
    with EventProducer(bootstrap) as producer:
        for i in range(n):
            for table in TABLES:
                p = i % COUNTS[table]
                event = MAKE[table](i, int(times[i]))
                if table == "impressions" and i == n // 3:
                    event = Impression(**{**{f: getattr(event, f) for f in
                                             Impression.__struct_fields__},
                                          "context": Context(dense=(1e39, 0.0))})
                    out.unfit.append((topics[table], p, next_offset[(table, p)]))
                else:
                    out.events[table][(p, next_offset[(table, p)])] = event
                producer.send_raw(topics[table], event.key, encode(event), partition=p)
                next_offset[(table, p)] += 1
            if i == 2 * n // 3:
                producer.send_raw(topics["feedback"], b"bad", b"not msgpack", partition=1)
                out.undecodable.append((topics["feedback"], 1, next_offset[("feedback", 1)]))
                next_offset[("feedback", 1)] += 1
    return out


def expected_frame(table: str, topic: str, events: dict[tuple[int, int], object]) -> pl.DataFrame:
    parts = []
    for p in sorted({p for p, _ in events}):
        offsets = sorted(o for q, o in events if q == p)
        parts.append(pl.from_arrow(
            TO_ARROW[table]([events[(p, o)] for o in offsets], topic, p, offsets)))
    return pl.concat(parts)


def assert_lake_holds_exactly(root, topics: dict[str, str], produced: Produced) -> None:
    """Every produced event's rows are in the lake once, even without de-duplication, with the
    values produced; nothing else is there."""
    for table in TABLES:
        raw = scan_lake(root, table, deduplicate=False).collect()
        key = [c for c in ROW if c in raw.columns]
        assert raw.select(key).n_unique() == raw.height, f"{table}: an offset is there twice"
        expected = expected_frame(table, topics[table], produced.events[table])
        assert raw.drop(PARTITIONING.names).sort(key).equals(expected.sort(key)), table


def start(ray, bootstrap: str, topics: dict[str, str], root, max_records: int = 7,
          transactional_id: str | None = None):
    return LakeWriterActor.remote(
        bootstrap, root, {t: range(COUNTS[t]) for t in TABLES},
        impressions_topic=topics["impressions"], feedback_topic=topics["feedback"],
        rewards_topic=topics["rewards"], dead_letter_topic=topics["dead"],
        max_records=max_records, max_age_s=3600.0, transactional_id=transactional_id,
    )


def drain(ray, actor, until) -> None:
    for _ in range(600):
        if ray.get(actor.drain.remote(until, max_seconds=0.5)):
            return
    raise AssertionError(f"the lake writer did not reach {until}")


def names_and_bytes(root) -> dict[str, bytes]:
    out = {}
    for table in TABLES:
        for path in lake_files(root, table):
            with open(path, "rb") as file:
                out[path.removeprefix(str(root))] = file.read()
    return out


@pytest.mark.integration
def test_the_lake_writer_actor_writes_each_offset_once_and_dead_letters_bad_records(
    kafka_bootstrap, ray_session, unique_topics, tmp_path
):
    ray = ray_session
    topics = unique_topics(COUNTS)
    produced = produce(kafka_bootstrap, topics, n=90, seed=3)
    actor = start(ray, kafka_bootstrap, topics, tmp_path)
    try:
        ends = ray.get(actor.end_offsets.remote())
        assert sorted(ends) == sorted(ray.get(actor.assignment.remote()))
        drain(ray, actor, ends)
        assert ray.get(actor.positions.remote()) == ends  # up to the end offsets, not past
        assert ray.get(actor.pause.remote()) == ends
        assert ray.get(actor.step.remote()) == 0  # paused: reads nothing
        stats = ray.get(actor.counters.remote())
    finally:
        ray.get(actor.close.remote())
    assert_lake_holds_exactly(tmp_path, topics, produced)
    assert stats.consumed == sum(ends.values())
    assert stats.records_written == sum(len(e) for e in produced.events.values())
    assert stats.buffered_records == 0 and stats.files_written == len(lake_files(tmp_path,
        "impressions")) + len(lake_files(tmp_path, "feedback")) + len(lake_files(tmp_path,
        "rewards"))
    assert stats.undecodable == 1 and stats.rejected == 1 and stats.dead_letters == 2
    assert stats.rejected_reasons == {"lake impressions": 1}
    dead = [decode_dead_letter(v) for v in read_all(kafka_bootstrap, topics["dead"], 1)]
    where = {(d.source_topic, d.partition, d.offset): d for d in dead}
    assert len(dead) == 2 and set(where) == {*produced.undecodable, *produced.unfit}
    undecodable = where[produced.undecodable[0]]
    assert undecodable.value == b"not msgpack" and undecodable.key == b"bad"
    unfit = where[produced.unfit[0]]
    assert re.match(r"lake impressions: a value does not fit the table \(context_dense",
                    unfit.reason)
    assert decode(unfit.value).context.dense[0] == pytest.approx(1e39)


@pytest.mark.integration
def test_a_writer_restored_after_a_crash_leaves_the_files_of_an_undisturbed_run(
    kafka_bootstrap, ray_session, unique_topics, tmp_path
):
    ray = ray_session
    topics = unique_topics(COUNTS)
    produced = produce(kafka_bootstrap, topics, n=80, seed=4)

    # The undisturbed run: a checkpoint at half, then to the end.
    reference = LakeWriter(
        kafka_bootstrap, tmp_path / "reference", {t: range(COUNTS[t]) for t in TABLES},
        impressions_topic=topics["impressions"], feedback_topic=topics["feedback"],
        rewards_topic=topics["rewards"], dead_letter_topic=topics["dead"],
        max_records=7, max_age_s=3600.0,
    )
    try:
        ends = reference.end_offsets()
        half = {tp: end // 2 for tp, end in ends.items()}
        for until in (half, ends):
            assert any(reference.drain(until) for _ in range(600))
            assert reference.pause() == until
            reference.resume()
    finally:
        reference.close()

    root = tmp_path / "crashed"
    first = start(ray, kafka_bootstrap, topics, root)
    ray.get(first.restore.remote(ray.get(first.positions.remote())))  # every start restores
    drain(ray, first, half)
    checkpoint = ray.get(first.pause.remote())
    assert checkpoint == half
    ray.get(first.resume.remote())
    # A checkpoint that never completed cuts ranges where the replay will not.
    drain(ray, first, {tp: 3 * end // 4 for tp, end in ends.items()})
    ray.get(first.pause.remote())
    ray.get(first.resume.remote())
    drain(ray, first, ends)
    ray.kill(first)
    assert set(names_and_bytes(root)) - set(names_and_bytes(tmp_path / "reference"))

    second = start(ray, kafka_bootstrap, topics, root)
    try:
        report = ray.get(second.restore.remote(checkpoint))
        assert report.removed and report.straddling == []
        assert ray.get(second.positions.remote()) == checkpoint
        drain(ray, second, ends)
        assert ray.get(second.pause.remote()) == ends
        stats = ray.get(second.counters.remote())
    finally:
        ray.get(second.close.remote())
    assert stats.straddling_files == 0 and stats.files_removed == len(report.removed)
    assert_lake_holds_exactly(root, topics, produced)
    assert names_and_bytes(root) == names_and_bytes(tmp_path / "reference")


@pytest.mark.integration
def test_a_transactional_writer_dead_letters_each_bad_record_once_across_a_crash(
    kafka_bootstrap, ray_session, unique_topics, tmp_path
):
    ray = ray_session
    topics = unique_topics(COUNTS)
    produced = produce(kafka_bootstrap, topics, n=80, seed=5)
    tid = f"test.{topics['impressions']}.lake-0"
    first = start(ray, kafka_bootstrap, topics, tmp_path, transactional_id=tid)
    ray.get(first.restore.remote(ray.get(first.positions.remote())))
    ends = ray.get(first.end_offsets.remote())
    half = {tp: end // 2 for tp, end in ends.items()}
    (topic, p, offset), = produced.undecodable
    assert offset >= half[(topic, p)]  # read after the checkpoint, so read twice
    drain(ray, first, half)
    checkpoint = ray.get(first.pause.remote())
    ray.get(first.resume.remote())
    drain(ray, first, ends)  # its dead letter goes out in the open transaction ...
    ray.kill(first)  # ... which the successor's fencing aborts

    second = start(ray, kafka_bootstrap, topics, tmp_path, transactional_id=tid)
    try:
        ray.get(second.restore.remote(checkpoint))
        drain(ray, second, ends)
        ray.get(second.pause.remote())
    finally:
        ray.get(second.close.remote())
    assert_lake_holds_exactly(tmp_path, topics, produced)
    dead = [decode_dead_letter(v)
            for v in read_all(kafka_bootstrap, topics["dead"], 1, "read_committed")]
    assert sorted((d.source_topic, d.partition, d.offset) for d in dead) == sorted(
        [*produced.undecodable, *produced.unfit])


@pytest.mark.integration
def test_drain_stops_at_the_given_offsets_even_when_more_arrive(
    kafka_bootstrap, unique_topics, tmp_path
):
    """What every Kafka-reading actor shares (``streaming.reading.ConsumingActor``), on the lake
    writer in-process: a drain reads up to its target and never past it, records produced since
    wait for the next target, and a paused writer reads nothing."""
    topics = unique_topics(COUNTS)
    produce(kafka_bootstrap, topics, n=20, seed=1)
    writer = LakeWriter(
        kafka_bootstrap, tmp_path, {t: range(COUNTS[t]) for t in TABLES},
        impressions_topic=topics["impressions"], feedback_topic=topics["feedback"],
        rewards_topic=topics["rewards"], dead_letter_topic=topics["dead"],
        max_records=7, max_age_s=3600.0,
    )
    try:
        ends = writer.end_offsets()
        produce(kafka_bootstrap, topics, n=10, seed=2)  # arrives after the target was taken
        assert any(writer.drain(ends, max_seconds=0.5) for _ in range(600))
        assert writer.positions() == ends
        assert writer.pause() == ends
        later = writer.end_offsets()
        assert all(later[tp] > ends[tp] for tp in ends)
        assert writer.step() == 0 and not writer.drain(later, max_seconds=0.2)
        assert writer.positions() == ends
        writer.resume()
        assert any(writer.drain(later, max_seconds=0.5) for _ in range(600))
        assert writer.pause() == later
    finally:
        writer.close()


@pytest.mark.integration
def test_restoring_partitions_the_writer_does_not_own_is_refused(
    kafka_bootstrap, ray_session, unique_topics, tmp_path
):
    ray = ray_session
    topics = unique_topics(COUNTS)
    actor = LakeWriterActor.remote(
        kafka_bootstrap, tmp_path, {"impressions": [1], "rewards": [0]},
        impressions_topic=topics["impressions"], feedback_topic=topics["feedback"],
        rewards_topic=topics["rewards"], dead_letter_topic=topics["dead"],
    )
    try:
        mine = [(topics["impressions"], 1), (topics["rewards"], 0)]
        assert ray.get(actor.assignment.remote()) == mine
        offsets = ray.get(actor.pause.remote())
        assert set(offsets) == set(mine)
        foreign = {**offsets, (topics["impressions"], 0): 0}
        with pytest.raises(ray.exceptions.RayTaskError,
                           match=re.escape(f"not assigned here: [('{topics['impressions']}', 0)]")):
            ray.get(actor.restore.remote(foreign))
        with pytest.raises(ray.exceptions.RayTaskError,
                           match=re.escape(f"missing: [('{topics['rewards']}', 0)]")):
            ray.get(actor.restore.remote({(topics["impressions"], 1): 0}))
        with pytest.raises(ray.exceptions.RayTaskError, match="not assigned to this lake writer"):
            ray.get(actor.drain.remote({(topics["feedback"], 0): 0}))
        assert ray.get(actor.positions.remote()) == offsets
    finally:
        ray.get(actor.close.remote())


def test_partitions_name_tables_and_indices_or_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"expected tables among .* got \['clicks'\]"):
        LakeWriter("localhost:1", tmp_path, {"clicks": [0]})
    with pytest.raises(ValueError, match=r"^partitions\['impressions'\]: expected indices >= 0"):
        LakeWriter("localhost:1", tmp_path, [-1])
    with pytest.raises(ValueError, match="at least one partition"):
        LakeWriter("localhost:1", tmp_path, {"feedback": []})
    with pytest.raises(ValueError, match="three different topic names"):
        LakeWriter("localhost:1", tmp_path, [0], rewards_topic="recsys.feedback")


# -- scan_lake: rewards once per (request_id, item_id) ---------------------------------------------


def resent(event: Reward, **changes: object) -> Reward:
    return Reward(**{**{f: getattr(event, f) for f in Reward.__struct_fields__}, **changes})


def test_scan_lake_keeps_the_first_reward_of_each_request_and_item(tmp_path):
    """A recovered joiner re-sends rewards at new offsets: the row with the smallest
    (kafka_partition, kafka_offset) is kept, after provenance de-duplication."""
    topic = "recsys.rewards"
    first = reward(1)
    # Distinct values only to see which row is kept; a real re-send is identical.
    later_same_partition = resent(first, reward=5.0)
    other_partition = resent(first, reward=7.0)
    other_item = reward(2)
    sink = LakeSink(tmp_path)
    sink.write(consumed([other_partition], [0], topic, partition=1))
    sink.write(consumed([first, other_item, later_same_partition], [3, 4, 9], topic))
    sink.flush()
    # A second sink that was never restored writes offset 9 again (a straddling copy).
    again = LakeSink(tmp_path)
    again.write(consumed([later_same_partition], [9], topic))
    again.flush()
    # Impressions and feedback keep every record: two clicks on one item are two events.
    sink.write(consumed([feedback(1), feedback(1)], [0, 1], "recsys.feedback"))
    sink.flush()

    raw = scan_lake(tmp_path, "rewards", deduplicate=False).collect()
    assert raw.height == 5
    rewards = scan_lake(tmp_path, "rewards").collect().sort("item_id")
    assert rewards.select("item_id", "kafka_partition", "kafka_offset", "reward").rows() == [
        (first.item_id, 0, 3, first.reward), (other_item.item_id, 0, 4, other_item.reward)]
    assert scan_lake(tmp_path, "feedback").collect().height == 2


def test_scan_lake_prefers_the_smaller_partition_before_the_smaller_offset(tmp_path):
    topic = "recsys.rewards"
    early_offset = resent(reward(1), reward=3.0)
    sink = LakeSink(tmp_path)
    sink.write(consumed([early_offset], [0], topic, partition=2))
    sink.write(consumed([reward(1)], [8], topic, partition=1))
    sink.flush()
    kept = scan_lake(tmp_path, "rewards").collect()
    assert kept.select("kafka_partition", "kafka_offset", "reward").rows() == [
        (1, 8, reward(1).reward)]
