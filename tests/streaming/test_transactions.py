"""Exactly once in Kafka on the real broker: the joiner's rewards are written in transactions that
its ``pause`` (the checkpoint's barrier) commits, so a ``read_committed`` reader sees each
(request_id, item_id) once whatever crashes: a joiner replaced mid-interval (its successor's
fencing aborts what it left open, and the zombie's later commit is refused), and a crash after the
commit but before the checkpoint's manifest (read-back suppresses the replay of what is committed).
Malformed records are dead-lettered once, by the role that owns their topic, also across a
replay. The actors run in-process: what is tested is their Kafka output, not Ray."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from recsys.events import Feedback, Impression, Reward, decode, decode_dead_letter
from recsys.kafka_clients import CLIENTS, is_fenced
from recsys.producer import EventProducer
from streaming.joiner import Joiner
from streaming.lake_writer import LakeWriter
from streaming.learner import Learner
from streaming.reading import abort_lingering_transactions
from streaming.shards import dense_statistics
from tests.streaming.event_log import LATENESS, MAPPING, WINDOW, generate_log
from tests.streaming.test_joiner import produce_log, read_all
from tests.streaming.test_learner import DIM, N_ITEMS, open_catalogue, shards_for
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SPEC = {"impressions": 2, "feedback": 2, "rewards": 2, "dead": 1}


def joiner(bootstrap: str, topics: dict[str, str], transactional_id: str | None,
           client: str = "kafka-python") -> Joiner:
    return Joiner(bootstrap, [0, 1], WINDOW, LATENESS, MAPPING,
                  impressions_topic=topics["impressions"], feedback_topic=topics["feedback"],
                  rewards_topic=topics["rewards"], dead_letter_topic=topics["dead"],
                  transactional_id=transactional_id, client_options={"client": client})


def beginning(actor) -> dict[tuple[str, int], int]:
    return dict.fromkeys(actor.assignment(), 0)


def drain(actor, until) -> None:
    wait_until(lambda: actor.drain(until).done, timeout_s=60, what=f"the {actor.role} to drain")


def fraction(ends, share: float) -> dict[tuple[str, int], int]:
    return {tp: int(end * share) for tp, end in ends.items()}


def rewards(bootstrap: str, topics: dict[str, str],
            isolation: str = "read_committed") -> list[Reward]:
    out = [decode(v) for v in read_all(bootstrap, topics["rewards"], SPEC["rewards"], isolation)]
    assert all(isinstance(r, Reward) for r in out)
    return out


def assert_each_key_once_and_true(found: list[Reward], truth: dict) -> None:
    keys = [(r.request_id, r.item_id) for r in found]
    assert len(keys) == len(set(keys)), f"{len(keys) - len(set(keys))} rewards repeated"
    assert {(r.request_id, r.item_id): r.reward for r in found} == truth


@pytest.mark.parametrize("client", CLIENTS)
def test_rewards_are_invisible_until_pause_and_a_replaced_joiner_leaves_each_key_once(
    kafka_bootstrap, unique_topics, client
):
    topics = unique_topics(SPEC)
    log = generate_log(31, n_requests=300, partitions=2, max_gap_ms=40)
    produce_log(kafka_bootstrap, topics, log)
    tid = f"test.{topics['impressions']}.joiner-0"
    first = joiner(kafka_bootstrap, topics, tid, client)
    first.restore(beginning(first))
    ends = first.end_offsets()
    drain(first, fraction(ends, 1 / 3))
    offsets, state = first.pause()  # the checkpoint: commits
    at_checkpoint = rewards(kafka_bootstrap, topics)
    assert at_checkpoint and len(at_checkpoint) == first.counters()["sent_rewards"]
    first.resume()
    drain(first, fraction(ends, 2 / 3))
    assert first.counters()["sent_rewards"] > len(at_checkpoint)
    first._producer.flush()  # on the broker, but in the open transaction:
    assert rewards(kafka_bootstrap, topics) == at_checkpoint
    assert len(rewards(kafka_bootstrap, topics, "read_uncommitted")) > len(at_checkpoint)

    second = joiner(kafka_bootstrap, topics, tid, client)  # fences the first, aborts its txn
    with pytest.raises(Exception) as fenced:  # which class depends on the client
        first.pause()  # the zombie's commit
    assert is_fenced(fenced.value), repr(fenced.value)
    second.restore(offsets, state)
    drain(second, ends)
    second.flush_windows()
    second.pause()
    second.close()
    with pytest.raises(Exception, match=r"(?i)fenced"):  # kafka-python: a plain KafkaError
        first.close()  # still fenced; its clients are closed all the same
    found = rewards(kafka_bootstrap, topics)
    assert_each_key_once_and_true(found, log.truth)
    # what the zombie produced after the checkpoint is on the broker, aborted
    assert len(rewards(kafka_bootstrap, topics, "read_uncommitted")) > len(found)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_crash_between_the_commit_and_the_manifest_is_not_replayed_twice(
    kafka_bootstrap, unique_topics, client
):
    topics = unique_topics(SPEC)
    log = generate_log(32, n_requests=300, partitions=2, max_gap_ms=40)
    produce_log(kafka_bootstrap, topics, log)
    tid = f"test.{topics['impressions']}.joiner-0"
    first = joiner(kafka_bootstrap, topics, tid, client)
    first.restore(beginning(first))
    ends = first.end_offsets()
    drain(first, fraction(ends, 1 / 3))
    previous = first.pause()  # checkpoint A, complete
    sent_by_a = first.counters()["sent_rewards"]
    first.resume()
    drain(first, fraction(ends, 2 / 3))
    first.pause()  # checkpoint B's commit; the process dies before B's manifest is written
    committed = rewards(kafka_bootstrap, topics)
    assert first.counters()["sent_rewards"] == len(committed)

    second = joiner(kafka_bootstrap, topics, tid, client)
    second.restore(*previous)  # the newest complete checkpoint is A
    drain(second, ends)
    second.flush_windows()
    second.pause()
    counters = second.counters()
    second.close()
    first.close()
    assert counters["suppressed_replays"] == len(committed) - sent_by_a > 0
    assert_each_key_once_and_true(rewards(kafka_bootstrap, topics), log.truth)


def test_without_a_transactional_id_a_replay_repeats_rewards(kafka_bootstrap, unique_topics):
    """The case the transactions exist for: the same crash as above, idempotent only."""
    topics = unique_topics(SPEC)
    log = generate_log(33, n_requests=200, partitions=2, max_gap_ms=40)
    produce_log(kafka_bootstrap, topics, log)
    first = joiner(kafka_bootstrap, topics, None)
    ends = first.end_offsets()
    drain(first, fraction(ends, 1 / 3))
    previous = first.pause()
    assert "rewards_offsets" not in previous[1]
    first.resume()
    drain(first, fraction(ends, 2 / 3))
    first.pause()
    first.close()
    second = joiner(kafka_bootstrap, topics, None)
    second.restore(*previous)
    drain(second, ends)
    second.flush_windows()
    second.pause()
    second.close()
    found = rewards(kafka_bootstrap, topics)
    assert len(found) > len({(r.request_id, r.item_id) for r in found})


def test_a_malformed_record_is_dead_lettered_once_by_its_owner_across_a_replay(
    kafka_bootstrap, unique_topics, tmp_path
):
    topics = unique_topics(SPEC)
    imps, fbs, rws = topics["impressions"], topics["feedback"], topics["rewards"]
    log = generate_log(34, n_requests=100, partitions=2, max_gap_ms=40)
    produce_log(kafka_bootstrap, topics, log)
    with EventProducer(kafka_bootstrap) as producer:
        producer.send_raw(imps, b"bad", b"not msgpack", partition=0)
    prefix = f"test.{imps}"

    def twice_then_pause(actor) -> None:
        """Read everything, roll back to the beginning (a recovery: the open transaction with
        the dead letters is aborted), read everything again, and checkpoint."""
        actor.restore(beginning(actor))
        ends = actor.end_offsets()
        drain(actor, ends)
        actor.restore(beginning(actor))
        drain(actor, ends)
        actor.pause()

    join = Joiner(kafka_bootstrap, [0, 1], WINDOW, LATENESS, MAPPING, impressions_topic=imps,
                  feedback_topic=fbs, rewards_topic=rws, dead_letter_topic=topics["dead"],
                  transactional_id=f"{prefix}.joiner-0")
    twice_then_pause(join)
    join.flush_windows()  # rewards for the lake writer to read
    join.pause()
    with EventProducer(kafka_bootstrap) as producer:  # and one malformed reward
        producer.send_raw(rws, b"bad", b"not msgpack either", partition=1)

    learner = Learner(kafka_bootstrap, [(t, p) for t in (imps, fbs) for p in (0, 1)],
                      shards_for(dense_statistics(np.arange(N_ITEMS), DIM)),
                      open_catalogue(), window_ms=WINDOW, allowed_lateness_ms=LATENESS,
                      reward_mapping=MAPPING, dead_letter_topic=topics["dead"],
                      expected_types={imps: Impression, fbs: Feedback},
                      transactional_id=f"{prefix}.learner-0", dead_letter_topics=())
    lake = LakeWriter(kafka_bootstrap, tmp_path / "lake", {"impressions": [0, 1],
                      "feedback": [0, 1], "rewards": [0, 1]}, impressions_topic=imps,
                      feedback_topic=fbs, rewards_topic=rws, dead_letter_topic=topics["dead"],
                      transactional_id=f"{prefix}.lake-0", dead_letter_topics=[rws])
    for actor in (learner, lake):
        twice_then_pause(actor)
    counted = (join.counters(), learner.counters(), lake.counters())
    for actor in (join, learner, lake):
        actor.close()

    letters = [decode_dead_letter(v)
               for v in read_all(kafka_bootstrap, topics["dead"], 1, "read_committed")]
    undecodable = sorted((d.source_topic, d.partition) for d in letters
                         if d.source_topic in (imps, rws) and d.value.startswith(b"not msgpack"))
    assert undecodable == [(imps, 0), (rws, 1)]  # once each, by the joiner and the lake writer
    # every role saw the bad impression on both passes; only its owner sent it
    assert counted[0]["undecodable"] == 2 and counted[0]["sent_undecodable"] == 2
    assert counted[1]["dead_lettered"] == 2 and counted[1]["dead_letters_sent"] == 0
    assert counted[2].undecodable == 4 and counted[2].dead_letters == 2
    # ... and the aborted first passes are on the broker, invisible to read_committed
    everything = read_all(kafka_bootstrap, topics["dead"], 1, "read_uncommitted")
    assert len(everything) > len(letters)


def test_dead_letter_topics_must_be_topics_the_actor_reads(kafka_bootstrap, unique_topics):
    topics = unique_topics(SPEC)
    with pytest.raises(ValueError, match="dead_letter_topics: expected topics this joiner"):
        Joiner(kafka_bootstrap, [0], WINDOW, impressions_topic=topics["impressions"],
               feedback_topic=topics["feedback"], rewards_topic=topics["rewards"],
               dead_letter_topics=[topics["rewards"]])


def test_a_rewards_topic_partitioned_unlike_impressions_is_refused(
    kafka_bootstrap, unique_topics
):
    topics = unique_topics({**SPEC, "rewards": 1})
    with pytest.raises(Exception, match="must have the same number of partitions"):
        joiner(kafka_bootstrap, topics, None)


def test_a_transaction_no_successor_takes_over_is_aborted_by_fencing_its_id(
    kafka_bootstrap, unique_topics
):
    """A pipeline restarted with fewer joiners starts no successor for the last one's id: its
    open transaction would hold read_committed readers back until the broker's timeout."""
    topics = unique_topics(SPEC)
    tid = f"test.{topics['impressions']}.joiner-1"
    gone = EventProducer(kafka_bootstrap, transactional_id=tid)
    gone.begin()
    gone.send_raw(topics["rewards"], b"k", b"never committed", partition=0)
    gone.flush()  # on the broker, in an open transaction; the process dies here

    def stable_end(isolation: str) -> int:
        raw = KafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level=isolation)
        try:
            tp = TopicPartition(topics["rewards"], 0)
            return raw.end_offsets([tp])[tp]
        finally:
            raw.close()

    assert stable_end("read_committed") == 0 < stable_end("read_uncommitted")
    abort_lingering_transactions(kafka_bootstrap, [tid], {})
    wait_until(lambda: stable_end("read_committed") == stable_end("read_uncommitted"),
               timeout_s=30, what="the abort marker")
    assert read_all(kafka_bootstrap, topics["rewards"], 2, "read_committed") == []
    with contextlib.suppress(KafkaError):
        gone.close()  # fenced
