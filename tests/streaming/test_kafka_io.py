"""Kafka I/O against the real embedded broker: round trips over several partitions, replay from
an offset, and the dead-letter path for bad input, with each client library (``kafka.client``)."""

from __future__ import annotations

import re

import pytest
from kafka.partitioner.default import murmur2

from recsys.events import (
    Context,
    Feedback,
    Impression,
    Reward,
    SlateEntry,
    decode_dead_letter,
    encode,
)
from recsys.producer import EventProducer
from streaming.consumer import EventConsumer
from streaming.topics import TopicLayoutError, ensure_topics
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 3


@pytest.fixture(params=["kafka-python", "confluent"])
def client(request: pytest.FixtureRequest) -> str:
    """The Kafka client library under test: every test that reads or writes runs with both."""
    return request.param


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


def kafka_partition_of(key: bytes, partitions: int) -> int:
    """Kafka's keyed partitioning rule (the Java client's and kafka-python's default)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def consumer_for(
    bootstrap: str,
    topic: str,
    dead_letter: str,
    expected: type | None = None,
    partitions: int = PARTITIONS,
    client: str = "kafka-python",
) -> EventConsumer:
    return EventConsumer(
        bootstrap,
        [(topic, p) for p in range(partitions)],
        dead_letter_topic=dead_letter,
        expected_types={topic: expected} if expected else {},
        client=client,
    )


@pytest.mark.parametrize(
    "make", [impression, feedback, reward], ids=["impression", "feedback", "reward"]
)
def test_each_event_type_round_trips_across_partitions(
    kafka_bootstrap, unique_topics, make, client
):
    topics = unique_topics({"events": PARTITIONS, "dead": 1})
    sent = [make(i) for i in range(300)]
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for event in sent:
            producer.send(event, topic=topics["events"])
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], type(sent[0]),
                      client=client) as consumer:
        received = consumer.read_until_end(timeout_s=30)
        assert consumer.dead_lettered == 0
    used = {c.partition for c in received}
    assert used == set(range(PARTITIONS)), f"events should spread over partitions, used {used}"
    # Everything produced is consumed once and in order: per partition, the records in offset order
    # are exactly the events whose key Kafka's partitioner maps there, in the order they were sent.
    for partition in range(PARTITIONS):
        consumed_here = [
            c.event for c in sorted(received, key=lambda c: c.offset) if c.partition == partition
        ]
        sent_here = [e for e in sent if kafka_partition_of(e.key, PARTITIONS) == partition]
        assert consumed_here == sent_here, f"partition {partition}"


def test_seek_to_an_offset_replays_exactly_from_there(kafka_bootstrap, unique_topics, client):
    topics = unique_topics({"events": PARTITIONS, "dead": 1})
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for i in range(200):
            producer.send(feedback(i), topic=topics["events"])
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], client=client) as consumer:
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


def test_positions_track_what_was_consumed(kafka_bootstrap, unique_topics, client):
    topics = unique_topics({"events": 2, "dead": 1})
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for i in range(50):
            producer.send(feedback(i), topic=topics["events"])
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], partitions=2,
                      client=client) as consumer:
        consumer.read_until_end()
        assert consumer.positions() == consumer.end_offsets()
        assert sum(consumer.positions().values()) == 50
        assert consumer.lag() == 0
        with pytest.raises(ValueError, match="not assigned here"):
            consumer.seek({("some.other.topic", 0): 0})


def test_bad_records_go_to_the_dead_letter_topic_and_good_ones_keep_flowing(
    kafka_bootstrap, unique_topics, client
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
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for i, event in enumerate(good):
            producer.send(event, topic=topics["events"])
            if i % 16 == 10:  # bad records interleaved with good ones
                key, value, _ = bad[i // 16]
                producer.send_raw(topics["events"], key, value)
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], Impression,
                      client=client) as consumer:
        received = consumer.read_until_end()
        consumer.flush()
        assert consumer.dead_lettered == len(bad)
        assert consumer.consumed == len(good) + len(bad)
        assert sum(consumer.dead_letter_reasons.values()) == len(bad)
    assert {c.event for c in received} == set(good)

    dlq = EventConsumer(
        kafka_bootstrap, [(topics["dead"], 0)], expected_types={}, dead_letter_topic=topics["dead"],
        client=client,
    )
    with dlq:
        dlq.seek_to_beginning()
        raw = []

        def all_dead_letters_read() -> bool:
            batches = dlq._consumer.poll(timeout_ms=1000, max_records=1000)
            raw.extend(value for batch in batches for value in batch.values)
            return len(raw) >= len(bad)

        wait_until(all_dead_letters_read, timeout_s=60, what=f"{len(bad)} dead letters")
    letters = {decode_dead_letter(value).key: decode_dead_letter(value) for value in raw}
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


def active_producers(bootstrap: str, topic: str, partition: int) -> list:
    """The producer ids and epochs the broker tracks for one partition (DescribeProducers)."""
    from kafka import TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        state = admin.describe_producers([TopicPartition(topic, partition)])
    finally:
        admin.close()
    return state[TopicPartition(topic, partition)].active_producers


def test_the_broker_sees_an_idempotent_producer(kafka_bootstrap, unique_topics, client):
    topics = unique_topics({"events": 2})
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for i in range(40):
            producer.send_raw(topics["events"], f"k{i}".encode(), b"x", partition=0)
    # The broker only tracks producers that write with a producer id, epoch and sequence numbers:
    # one idempotent session wrote 40 records, so its last sequence number is 39.
    (writer,) = active_producers(kafka_bootstrap, topics["events"], 0)
    assert writer.producer_id >= 0 and writer.producer_epoch >= 0
    assert writer.last_sequence == 39

    # The same observation on a producer with idempotence off finds nothing: the check can fail.
    from kafka import KafkaProducer

    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False, acks=1)
    plain.send(topics["events"], key=b"k", value=b"x", partition=1).get(timeout=30)
    plain.close()
    assert active_producers(kafka_bootstrap, topics["events"], 1) == []


def test_the_producer_refuses_to_be_made_non_idempotent(kafka_bootstrap):
    with pytest.raises(ValueError, match=r"always idempotent; remove acks, enable_idempotence"):
        EventProducer(kafka_bootstrap, acks=1, enable_idempotence=False)


def test_a_bug_raises_instead_of_being_dead_lettered(
    kafka_bootstrap, unique_topics, monkeypatch, client
):
    import streaming.consumer

    topics = unique_topics({"events": 1, "dead": 1})
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for i in range(10):
            producer.send(feedback(i), topic=topics["events"])
        producer.send_raw(topics["events"], b"garbage", b"\x00 not msgpack")
    real_decode = streaming.consumer.decode_batch

    def decode_with_a_bug(values):
        events, errors = real_decode(values)
        if any(e is not None and e.request_id == "req-5" for e in events):
            raise ZeroDivisionError("a bug in our own code")
        return events, errors

    monkeypatch.setattr(streaming.consumer, "decode_batch", decode_with_a_bug)
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], partitions=1,
                      client=client) as consumer:
        with pytest.raises(ZeroDivisionError, match="a bug in our own code"):
            consumer.read_until_end(timeout_s=30)
        consumer.flush()
        # Nothing was dead-lettered or counted, and the position did not move past what the
        # caller received (nothing): a restarted worker reads the batch again.
        assert consumer.dead_lettered == 0 and consumer.decoded == 0
        assert consumer.positions() == {(topics["events"], 0): 0}

        # With the bug fixed, the same consumer reads everything; only the garbage is bad input.
        monkeypatch.setattr(streaming.consumer, "decode_batch", real_decode)
        received = consumer.read_until_end(timeout_s=30)
        consumer.flush()
        assert [c.event for c in received] == [feedback(i) for i in range(10)]
        assert consumer.dead_lettered == 1
    assert dead_letter_count(kafka_bootstrap, topics["dead"], client) == 1


def dead_letter_count(bootstrap: str, topic: str, client: str) -> int:
    with EventConsumer(bootstrap, [(topic, 0)], expected_types={}, client=client) as consumer:
        return consumer.end_offsets()[(topic, 0)]


def test_expected_types_must_be_event_classes(kafka_bootstrap):
    with pytest.raises(TypeError, match="map each topic to an event class"):
        EventConsumer(kafka_bootstrap, [("t", 0)], expected_types={"t": "Impression"})


def test_reading_until_offsets_stops_exactly_there(kafka_bootstrap, unique_topics, client):
    topics = unique_topics({"events": 2, "dead": 1})
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for i in range(30):
            producer.send_raw(topics["events"], b"k", encode(feedback(i)), partition=i % 2)
    until = {(topics["events"], 0): 4, (topics["events"], 1): 11}
    with consumer_for(kafka_bootstrap, topics["events"], topics["dead"], partitions=2,
                      client=client) as consumer:
        first = consumer.read_until(until, timeout_s=30)
        assert consumer.positions() == until
        rest = consumer.read_until_end(timeout_s=30)
        with pytest.raises(ValueError, match="not assigned here"):
            consumer.read_until({("some.other.topic", 0): 1})
    assert sorted((c.partition, c.offset) for c in first) == [(0, o) for o in range(4)] + [
        (1, o) for o in range(11)
    ]
    assert len(rest) == 30 - len(first)
    assert {c.event for c in first + rest} == {feedback(i) for i in range(30)}


def test_mismatched_impression_and_feedback_partitions_are_refused(kafka_bootstrap, unique_topics):
    topics = unique_topics({"impressions": 3, "feedback": 4})
    pair = (topics["impressions"], topics["feedback"])
    with pytest.raises(
        TopicLayoutError,
        match=re.escape(
            f"{pair[0]} has 3, {pair[1]} has 4. Recreate them with one partition count"
        ),
    ):
        ensure_topics(kafka_bootstrap, {pair[0]: 3, pair[1]: 3}, co_partitioned=[pair])
    # Matching counts pass, and groups not fully present are not checked.
    same = unique_topics({"impressions": 2, "feedback": 2})
    pair_ok = (same["impressions"], same["feedback"])
    assert ensure_topics(kafka_bootstrap, dict.fromkeys(pair_ok, 2), co_partitioned=[pair_ok]) == (
        dict.fromkeys(pair_ok, 2)
    )
    assert ensure_topics(kafka_bootstrap, {pair[0]: 3}, co_partitioned=[pair]) == {pair[0]: 3}


def test_the_standard_topics_are_checked_by_default():
    from recsys.topics import FEEDBACK, IMPRESSIONS
    from streaming.topics import check_co_partitioned

    check_co_partitioned({IMPRESSIONS: 4, FEEDBACK: 4})
    with pytest.raises(
        TopicLayoutError, match=r"recsys\.impressions has 4, recsys\.feedback has 2"
    ):
        check_co_partitioned({IMPRESSIONS: 4, FEEDBACK: 2})


def test_the_cluster_layout_names_the_cluster_and_counts_partitions(kafka_bootstrap, unique_topics):
    from streaming.topics import cluster_layout

    topics = unique_topics({"a": 3, "b": 1})
    layout = cluster_layout(kafka_bootstrap, [topics["a"], topics["b"]])
    assert layout.partitions == {topics["a"]: 3, topics["b"]: 1}
    assert isinstance(layout.cluster_id, str) and len(layout.cluster_id) == 22  # KRaft's base64 id
    assert cluster_layout(kafka_bootstrap, [topics["b"]]).cluster_id == layout.cluster_id
    with pytest.raises(TopicLayoutError, match=r"topic test\.missing\.x does not exist"):
        cluster_layout(kafka_bootstrap, ["test.missing.x"])
