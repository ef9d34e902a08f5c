"""The partition reader as a real Ray actor on the real broker: assignment, positions, replay from
checkpointed offsets, bounded drains and the checkpoint hooks."""

from __future__ import annotations

import re

import pytest

from recsys.events import Feedback, encode
from recsys.producer import EventProducer
from streaming.actors import PartitionReaderActor

pytestmark = pytest.mark.integration


def feedback(i: int) -> Feedback:
    return Feedback(
        request_id=f"req-{i}",
        event_time_ms=1_000 + i,
        user_id=f"u{i % 3}",
        item_id=i,
        position=0,
        event_type="click",
    )


def produce(bootstrap: str, topic: str, events: list[Feedback], partitions: int) -> None:
    """Write events round-robin over the partitions: event i lands on partition i % partitions."""
    with EventProducer(bootstrap) as producer:
        for i, event in enumerate(events):
            producer.send_raw(topic, event.key, encode(event), partition=i % partitions)


def reader(ray, bootstrap: str, assignment: list[tuple[str, int]], dead: str):
    return PartitionReaderActor.remote(
        bootstrap, assignment, dead_letter_topic=dead, expected_types={}
    )


def read_all(ray, actor, n: int) -> list:
    out: list = []
    for _ in range(200):
        if len(out) >= n:
            break
        out += ray.get(actor.read.remote(timeout_ms=200))
    return out


def test_a_reader_owns_its_partitions_and_reports_positions(
    kafka_bootstrap, ray_session, unique_topics
):
    ray = ray_session
    topics = unique_topics({"events": 3, "dead": 1})
    events = [feedback(i) for i in range(30)]
    produce(kafka_bootstrap, topics["events"], events, partitions=3)
    mine = [(topics["events"], 0), (topics["events"], 2)]
    actor = reader(ray, kafka_bootstrap, mine, topics["dead"])
    try:
        assert ray.get(actor.assignment.remote()) == mine
        assert ray.get(actor.positions.remote()) == {mine[0]: 0, mine[1]: 0}
        got = read_all(ray, actor, 20)
        # Only its own partitions: events 0, 3, 6, ... and 2, 5, 8, ..., never partition 1's.
        assert sorted(c.event.item_id for c in got) == [i for i in range(30) if i % 3 != 1]
        last = {(c.topic, c.partition): c.offset for c in got}
        assert ray.get(actor.positions.remote()) == {k: v + 1 for k, v in last.items()}
        assert ray.get(actor.stats.remote()).by_type == {"Feedback": 20}
    finally:
        ray.get(actor.close.remote())


def test_restoring_offsets_replays_exactly_the_records_after_them(
    kafka_bootstrap, ray_session, unique_topics
):
    ray = ray_session
    topics = unique_topics({"events": 2, "dead": 1})
    events = [feedback(i) for i in range(40)]
    produce(kafka_bootstrap, topics["events"], events, partitions=2)
    mine = [(topics["events"], 0), (topics["events"], 1)]
    actor = reader(ray, kafka_bootstrap, mine, topics["dead"])
    try:
        first = read_all(ray, actor, 40)
        checkpoint = {mine[0]: 7, mine[1]: 13}
        ray.get(actor.restore.remote(checkpoint))
        assert ray.get(actor.positions.remote()) == checkpoint
        replayed = read_all(ray, actor, (20 - 7) + (20 - 13))
        expected = [c for c in first if c.offset >= checkpoint[(c.topic, c.partition)]]
        key = lambda c: (c.partition, c.offset)  # noqa: E731
        assert sorted(replayed, key=key) == sorted(expected, key=key)
        assert len(replayed) == (20 - 7) + (20 - 13)
        assert ray.get(actor.read.remote(timeout_ms=300)) == [], "nothing after the end"

        with pytest.raises(
            ValueError, match=re.escape(f"missing [{mine[1]!r}], not assigned here []")
        ):
            ray.get(actor.restore.remote({mine[0]: 0}))
    finally:
        ray.get(actor.close.remote())


def test_drain_stops_at_the_given_offsets_even_when_more_arrive(
    kafka_bootstrap, ray_session, unique_topics
):
    ray = ray_session
    topics = unique_topics({"events": 2, "dead": 1})
    produce(kafka_bootstrap, topics["events"], [feedback(i) for i in range(20)], partitions=2)
    mine = [(topics["events"], 0), (topics["events"], 1)]
    actor = reader(ray, kafka_bootstrap, mine, topics["dead"])
    try:
        ends = ray.get(actor.end_offsets.remote())
        assert ends == {mine[0]: 10, mine[1]: 10}
        produce(kafka_bootstrap, topics["events"], [feedback(i) for i in range(20, 30)], 2)
        progress = ray.get(actor.drain.remote(ends, max_seconds=0.05))
        for _ in range(200):
            if progress.done:
                break
            progress = ray.get(actor.drain.remote(ends, max_seconds=0.5))
        assert progress.done and progress.consumed == 20
        assert ray.get(actor.positions.remote()) == ends
        assert ray.get(actor.stats.remote()).by_type == {"Feedback": 20}

        with pytest.raises(ValueError, match="are not assigned to this reader"):
            ray.get(actor.drain.remote({(topics["events"], 5): 1}))
    finally:
        ray.get(actor.close.remote())


def test_pause_returns_positions_and_stops_reading_until_resume(
    kafka_bootstrap, ray_session, unique_topics
):
    ray = ray_session
    topics = unique_topics({"events": 1, "dead": 1})
    produce(kafka_bootstrap, topics["events"], [feedback(i) for i in range(10)], partitions=1)
    mine = [(topics["events"], 0)]
    actor = reader(ray, kafka_bootstrap, mine, topics["dead"])
    try:
        assert ray.get(actor.pause.remote()) == {mine[0]: 0}
        assert ray.get(actor.read.remote(timeout_ms=500)) == []
        progress = ray.get(actor.drain.remote({mine[0]: 10}, max_seconds=0.2))
        assert (progress.consumed, progress.done) == (0, False)
        ray.get(actor.resume.remote())
        assert len(read_all(ray, actor, 10)) == 10
        assert ray.get(actor.pause.remote()) == {mine[0]: 10}
    finally:
        ray.get(actor.close.remote())


def test_an_assignment_may_not_list_a_partition_twice(kafka_bootstrap):
    from streaming.actors import PartitionReader

    with pytest.raises(ValueError, match="a partition is listed twice"):
        PartitionReader(kafka_bootstrap, [("t", 0), ("t", 0)])
