"""The joiner actor on the real broker and real Ray: a generated log with known truth goes in,
``recsys.rewards``-style records come out, rejected events land on the dead-letter topic with their
reasons, and a joiner killed after a checkpoint and restored from it ends with the same rewards
(re-sent records are identical, so de-duplication on (request_id, item_id) recovers the truth;
with a transactional id a read_committed reader sees each once, no de-duplication needed)."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, TopicPartition

from recsys.events import Reward, decode, decode_dead_letter, encode
from recsys.producer import EventProducer
from streaming.join import Reason
from streaming.joiner import JoinerActor
from tests.streaming.event_log import LATENESS, MAPPING, WINDOW, generate_log
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def produce_log(bootstrap: str, topics: dict[str, str], log) -> None:
    """Each stream to its co-partition, in arrival order."""
    with EventProducer(bootstrap) as producer:
        for role, streams in (("impressions", log.impressions), ("feedback", log.feedback)):
            for p, stream in streams.items():
                for _, event in stream:
                    producer.send_raw(topics[role], event.key, encode(event), partition=p)


def start(ray, bootstrap: str, topics: dict[str, str], transactional_id: str | None = None):
    return JoinerActor.remote(
        bootstrap, [0, 1], WINDOW, LATENESS, MAPPING,
        impressions_topic=topics["impressions"], feedback_topic=topics["feedback"],
        rewards_topic=topics["rewards"], dead_letter_topic=topics["dead"],
        transactional_id=transactional_id,
    )


def drain(ray, actor, until) -> None:
    for _ in range(600):
        if ray.get(actor.drain.remote(until, max_seconds=0.5)):
            return
    raise AssertionError(f"the joiner did not reach {until}")


def read_all(bootstrap: str, topic: str, partitions: int,
             isolation: str = "read_uncommitted") -> list[bytes]:
    """Every record's value on the topic, up to its end offsets now (with read_committed: the
    committed ones, up to the last stable offset)."""
    raw = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                        enable_auto_commit=False, isolation_level=isolation)
    out: list[bytes] = []
    try:
        assignment = [TopicPartition(topic, p) for p in range(partitions)]
        raw.assign(assignment)
        ends = raw.end_offsets(assignment)

        def read_to_the_end() -> bool:
            for records in raw.poll(timeout_ms=500).values():
                out.extend(r.value for r in records)
            return all(raw.position(tp) >= ends[tp] for tp in assignment)

        wait_until(read_to_the_end, timeout_s=120, what=f"the end offsets of {topic}")
    finally:
        raw.close()
    return out


def rewards_in(bootstrap: str, topic: str, isolation: str = "read_uncommitted") -> list[Reward]:
    rewards = [decode(value) for value in read_all(bootstrap, topic, 2, isolation)]
    assert all(isinstance(r, Reward) for r in rewards)
    return rewards


def test_the_joiner_actor_turns_a_generated_log_into_its_true_rewards(
    kafka_bootstrap, ray_session, unique_topics
):
    ray = ray_session
    topics = unique_topics({"impressions": 2, "feedback": 2, "rewards": 2, "dead": 1})
    log = generate_log(11, n_requests=400, partitions=2, messy=True, max_gap_ms=40)
    produce_log(kafka_bootstrap, topics, log)
    actor = start(ray, kafka_bootstrap, topics)
    try:
        drain(ray, actor, ray.get(actor.end_offsets.remote()))
        ray.get(actor.flush_windows.remote())
        ray.get(actor.pause.remote())
        stats = ray.get(actor.counters.remote())
    finally:
        ray.get(actor.close.remote())
    rewards = rewards_in(kafka_bootstrap, topics["rewards"])
    keyed = {(r.request_id, r.item_id): r.reward for r in rewards}
    assert len(keyed) == len(rewards)  # one run, no restarts: no repeats at all
    assert keyed == log.truth
    dead = [decode_dead_letter(v) for v in read_all(kafka_bootstrap, topics["dead"], 1)]
    assert len(dead) == log.bad == stats["sent_dead_letters"]
    assert {d.reason.split(":", 1)[0] for d in dead} == {
        Reason.UNMAPPED_TYPE, Reason.NOT_IN_SLATE, Reason.NO_IMPRESSION, Reason.LATE_FEEDBACK,
        Reason.LATE_IMPRESSION}
    for letter in dead:  # the raw event, where it came from, and its key
        event = decode(letter.value)
        assert letter.key == event.key
        source = topics["impressions" if letter.source_topic == topics["impressions"]
                        else "feedback"]
        assert letter.source_topic == source and letter.offset >= 0
    assert stats["rewards"] == len(log.truth) and stats["open_impressions"] == 0


@pytest.mark.parametrize("transactional", [False, True])
def test_a_joiner_restored_from_its_checkpoint_after_a_crash_ends_with_the_same_rewards(
    kafka_bootstrap, ray_session, unique_topics, transactional
):
    ray = ray_session
    topics = unique_topics({"impressions": 2, "feedback": 2, "rewards": 2, "dead": 1})
    log = generate_log(12, n_requests=400, partitions=2, max_gap_ms=40)
    produce_log(kafka_bootstrap, topics, log)
    tid = f"test.{topics['impressions']}.joiner-0" if transactional else None
    first = start(ray, kafka_bootstrap, topics, tid)
    if transactional:
        ray.get(first.restore.remote({(topics[t], p): 0 for t in ("impressions", "feedback")
                                      for p in (0, 1)}))
    ends = ray.get(first.end_offsets.remote())
    drain(ray, first, {k: v // 3 for k, v in ends.items()})
    offsets, state = ray.get(first.pause.remote())  # the checkpoint
    ray.get(first.resume.remote())
    drain(ray, first, {k: 2 * v // 3 for k, v in ends.items()})  # work lost in the crash
    if not transactional:
        ray.get(first.pause.remote())  # sent and acknowledged (a transaction stays open)
    ray.kill(first)

    second = start(ray, kafka_bootstrap, topics, tid)
    try:
        ray.get(second.restore.remote(offsets, state))
        assert ray.get(second.positions.remote()) == offsets
        drain(ray, second, ends)
        ray.get(second.flush_windows.remote())
        ray.get(second.pause.remote())
    finally:
        ray.get(second.close.remote())
    if transactional:  # what the killed joiner sent after the checkpoint is aborted
        committed = rewards_in(kafka_bootstrap, topics["rewards"], "read_committed")
        assert len(committed) == len({(r.request_id, r.item_id) for r in committed})
        assert {(r.request_id, r.item_id): r.reward for r in committed} == log.truth
        return
    rewards = rewards_in(kafka_bootstrap, topics["rewards"])
    keyed: dict[tuple[str, int], Reward] = {}
    for reward in rewards:
        earlier = keyed.setdefault((reward.request_id, reward.item_id), reward)
        assert earlier == reward  # a re-sent record is the same record
    assert len(rewards) > len(keyed)  # the replay did re-send some
    assert {k: r.reward for k, r in keyed.items()} == log.truth


def test_restoring_another_assignment_is_refused(kafka_bootstrap, ray_session, unique_topics):
    ray = ray_session
    topics = unique_topics({"impressions": 2, "feedback": 2, "rewards": 2, "dead": 1})
    actor = start(ray, kafka_bootstrap, topics)
    try:
        offsets, state = ray.get(actor.pause.remote())
        del offsets[(topics["feedback"], 1)]
        with pytest.raises(ray.exceptions.RayTaskError, match="do not match this joiner's"):
            ray.get(actor.restore.remote(offsets, state))
    finally:
        ray.get(actor.close.remote())
