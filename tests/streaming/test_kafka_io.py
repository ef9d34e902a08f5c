"""Kafka I/O against the real embedded broker: round trips over several partitions, replay from
an offset, and the dead-letter path for bad input."""

from __future__ import annotations

import pytest

from recsys.events import (
    Context,
    Feedback,
    Impression,
    Reward,
    SlateEntry,
    decode_dead_letter,
    encode,
)
from streaming.consumer import EventConsumer
from streaming.producer import EventProducer
from streaming.topics import ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 3


def impression(i: int) -> Impression:
    return Impression(
        request_id=f"req-{i}",
        event_time_ms=1_000 + i,
        user_id=f"u{i % 7}",
        context=Context(dense=(0.1 * i, -0.5), cluster_ids=(i % 5,), cluster_weights=(1.0,)),
        policy_name="diag-linucb",
        policy_version=3,
        slate=(
            SlateEntry(item_id=i, position=0, score=1.5, propensity=0.25),
            SlateEntry(item_id=i + 1, position=1, score=0.5, propensity=0.125),
        ),
    )


def feedback(i: int) -> Feedback:
    return Feedback(
        request_id=f"req-{i}",
        event_time_ms=2_000 + i,
        user_id=f"u{i % 7}",
        item_id=i,
        position=0,
        event_type="click",
        value=1.0,
    )


def reward(i: int) -> Reward:
    return Reward(
        request_id=f"req-{i}",
        event_time_ms=3_000 + i,
        user_id=f"u{i % 7}",
        context=Context(dense=(0.3,)),
        item_id=i,
        position=1,
        reward=float(i % 2),
        propensity=0.5,
        policy_name="diag-lints",
        policy_version=1,
    )


def consumer_for(
    bootstrap: str,
    topic: str,
    dead_letter: str,
    expected: type | None = None,
    partitions: int = PARTITIONS,
) -> EventConsumer:
    return EventConsumer(
        bootstrap,
        [(topic, p) for p in range(partitions)],
        dead_letter_topic=dead_letter,
        expected_types={topic: expected} if expected else {},
    )


@pytest.mark.parametrize(
    "make", [impression, feedback, reward], ids=["impression", "feedback", "reward"]
)
def test_each_event_type_round_trips_across_partitions(kafka_bootstrap, unique_topics, make):
    topics = unique_topics({"events": PARTITIONS, "dead": 1})
    sent = [make(i) for i in range(300)]
    with EventProducer(kafka_bootstrap) as producer:
        for event in sent:
            producer.send(event, topic=topics["events"])
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], type(sent[0])) as consumer:
        received = consumer.read_until_end(timeout_s=30)
        assert consumer.dead_lettered == 0
    assert sorted(received, key=lambda c: c.event.request_id) == sorted(
        received, key=lambda c: c.event.request_id
    )
    assert {c.event for c in received} == set(sent)
    assert len(received) == len(sent)
    used = {c.partition for c in received}
    assert used == set(range(PARTITIONS)), f"events should spread over partitions, used {used}"
    # Same key, same partition: every request's events stay together and in order.
    by_key = {}
    for c in received:
        by_key.setdefault(c.event.request_id, set()).add(c.partition)
    assert all(len(parts) == 1 for parts in by_key.values())


def test_seek_to_an_offset_replays_exactly_from_there(kafka_bootstrap, unique_topics):
    topics = unique_topics({"events": PARTITIONS, "dead": 1})
    with EventProducer(kafka_bootstrap) as producer:
        for i in range(200):
            producer.send(feedback(i), topic=topics["events"])
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"]) as consumer:
        first = consumer.read_until_end()
        by_partition: dict[int, list] = {}
        for c in first:
            by_partition.setdefault(c.partition, []).append(c)
        # Choose a cut inside every partition: replay must return exactly the records after it.
        cut = {
            (topics["events"], p): records[len(records) // 3].offset
            for p, records in by_partition.items()
        }
        expected = [c for c in first if c.offset >= cut[(c.topic, c.partition)]]
        consumer.seek(cut)
        replayed = consumer.read_until_end()
    key = lambda c: (c.partition, c.offset)  # noqa: E731
    assert sorted(replayed, key=key) == sorted(expected, key=key)
    assert 0 < len(replayed) < len(first)


def test_positions_track_what_was_consumed(kafka_bootstrap, unique_topics):
    topics = unique_topics({"events": 2, "dead": 1})
    with EventProducer(kafka_bootstrap) as producer:
        for i in range(50):
            producer.send(feedback(i), topic=topics["events"])
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], partitions=2) as consumer:
        consumer.read_until_end()
        assert consumer.positions() == consumer.end_offsets()
        assert sum(consumer.positions().values()) == 50
        assert consumer.lag() == 0
        with pytest.raises(ValueError, match="not assigned here"):
            consumer.seek({("some.other.topic", 0): 0})


def test_bad_records_go_to_the_dead_letter_topic_and_good_ones_keep_flowing(
    kafka_bootstrap, unique_topics
):
    topics = unique_topics({"events": PARTITIONS, "dead": 1})
    bad_propensity = impression(0)
    bad_propensity = Impression(
        **{
            **{f: getattr(bad_propensity, f) for f in bad_propensity.__struct_fields__},
            "slate": (SlateEntry(item_id=1, position=0, score=0, propensity=1.5),),
        }
    )
    bad = [
        (b"garbage", b"\x00\x01\x02 definitely not msgpack", "not a msgpack-encoded event"),
        (b"json", b'{"type": "impression"}', "not a msgpack-encoded event"),
        (b"no-type", encode(feedback(2))[:1] + b"\xa1x", "not a msgpack-encoded event"),
        (b"range", encode(bad_propensity), "$.slate[0].propensity"),
        (b"wrong-topic", encode(feedback(1)), "does not belong on topic"),
        (b"empty", b"", "not a msgpack-encoded event"),
    ]
    good = [impression(i) for i in range(100)]
    with EventProducer(kafka_bootstrap) as producer:
        for i, event in enumerate(good):
            producer.send(event, topic=topics["events"])
            if i % 16 == 10:  # bad records interleaved with good ones
                key, value, _ = bad[i // 16]
                producer.send_raw(topics["events"], key, value)
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], Impression) as consumer:
        received = consumer.read_until_end()
        consumer.flush()
        assert consumer.dead_lettered == len(bad)
        assert consumer.consumed == len(good) + len(bad)
        assert sum(consumer.dead_letter_reasons.values()) == len(bad)
    assert {c.event for c in received} == set(good)

    dlq = EventConsumer(
        kafka_bootstrap, [(topics["dead"], 0)], expected_types={}, dead_letter_topic=topics["dead"]
    )
    with dlq:
        dlq.seek_to_beginning()
        raw = []
        while len(raw) < len(bad):
            batches = dlq._consumer.poll(timeout_ms=1000)
            raw += [r for records in batches.values() for r in records]
    letters = {decode_dead_letter(r.value).key: decode_dead_letter(r.value) for r in raw}
    assert set(letters) == {key for key, _, _ in bad}
    for key, value, reason in bad:
        letter = letters[key]
        assert letter.value == value, "the raw bytes must be kept"
        assert reason in letter.reason
        assert letter.source_topic == topics["events"]
        assert 0 <= letter.partition < PARTITIONS and letter.offset >= 0


def test_topic_creation_is_idempotent(kafka_bootstrap, unique_topics):
    topics = unique_topics({"a": 2})
    for _ in range(3):
        assert ensure_topics(kafka_bootstrap, {topics["a"]: 5}) == {topics["a"]: 2}
