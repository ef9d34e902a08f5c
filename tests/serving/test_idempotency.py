"""Retries change nothing, on the live system (real Kafka, Ray Serve, the streaming pipeline).

A retried feedback batch queues no new record; 100 identical concurrent posts reach Kafka once;
a batch that cannot be buffered whole gets a 503 and queues nothing; a repeated ``request_id``
gets its original slate (409 with another body) and logs one impression; and a batch retried on
the same and on another replica (which does not share the first one's memory) changes neither
the learned statistics nor the rewards: the join de-duplicates what reaches Kafka twice.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import ray
import requests
from kafka import KafkaConsumer, TopicPartition

from recsys.events import Reward, decode
from recsys.serving.schemas import FeedbackIn
from recsys.serving.service import RecommenderService, RequestError, Unavailable
from tests.serving.live import serving_stack

pytestmark = pytest.mark.integration

# a long window and lateness: on a loaded machine seconds pass between a slate and its retries,
# and an event stamped on arrival must not make an earlier-timed copy late
N_ITEMS, DIM, WINDOW_MS, LATENESS_MS = 20, 4, 60_000, 60_000
CONTEXT = {"dense": [0.1, -0.2, 0.3, 0.0]}


@pytest.fixture(scope="module")
def live(kafka_bootstrap, ray_session, tmp_path_factory):
    with serving_stack(kafka_bootstrap, tmp_path_factory.mktemp("idempotency"), "idem",
                       n_items=N_ITEMS, dim=DIM, partitions=2,
                       stream={"batch_size": 2000, "window_ms": WINDOW_MS,
                               "allowed_lateness_ms": LATENESS_MS}) as (stack, topics):
        yield stack, topics


def post(url: str, path: str, body: object) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, timeout=30)


def post_until_taken(url: str, path: str, body: object) -> requests.Response:
    """POST, honouring 503 + Retry-After as a client should (the replica may shed load)."""
    for _ in range(60):
        response = post(url, path, body)
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))
    raise AssertionError(f"{path} kept answering 503: {response.text}")


def records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` now, as (key, value)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + 20
        while any(consumer.position(p) < ends[p] for p in parts):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend((r.key, r.value) for r in batch)
        return out
    finally:
        consumer.close()


def count(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def settled_count(stack, topic: str) -> int:
    """The topic's record count once the replica has nothing left to send: a record it had
    queued would be counted by then."""
    deadline = time.monotonic() + 20
    while True:
        text = requests.get(f"{stack.url}/metrics", timeout=10).text
        line = next(x for x in text.splitlines()
                    if x.startswith("recsys_serve_impressions_buffered "))
        if float(line.split()[1]) == 0:
            return count(stack.pipeline.bootstrap, topic)
        assert time.monotonic() < deadline, line
        time.sleep(0.05)


def slate(stack, request_id: str, k: int = 3) -> dict:
    response = post_until_taken(stack.url, "/recommend", {
        "user_id": "u1", "context": CONTEXT, "k": k, "request_id": request_id})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_retried_feedback_batch_queues_nothing_new(live) -> None:
    stack, topics = live
    served = slate(stack, "retry-1")
    batch = [{"request_id": "retry-1", "user_id": "u1", "item_id": item, "position": p,
              "event_type": "click"} for p, item in enumerate(served["items"])]
    batch[0]["event_time_ms"] = int(time.time() * 1000)  # timed and untimed events alike
    before = settled_count(stack, topics.feedback)
    first = post_until_taken(stack.url, "/feedback", batch)
    assert first.status_code == 202 and first.json() == {"accepted": 3, "duplicates": 0}
    assert settled_count(stack, topics.feedback) == before + 3
    again = post_until_taken(stack.url, "/feedback", batch)
    assert again.status_code == 202 and again.json() == {"accepted": 3, "duplicates": 3}
    twice = post_until_taken(stack.url, "/feedback", batch + batch[:1])  # + a repeat within
    assert twice.json() == {"accepted": 4, "duplicates": 4}
    assert settled_count(stack, topics.feedback) == before + 3


def test_identical_concurrent_posts_reach_kafka_once(live) -> None:
    stack, topics = live
    event = {"request_id": "concurrent-1", "user_id": "u1", "item_id": 1, "position": 0,
             "event_type": "click", "event_time_ms": int(time.time() * 1000)}
    before = settled_count(stack, topics.feedback)
    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(lambda _: post_until_taken(stack.url, "/feedback", event),
                                range(100)))
    assert {a.status_code for a in answers} == {202}
    bodies = [a.json() for a in answers]
    assert all(b["accepted"] == 1 for b in bodies)
    assert sum(b["duplicates"] for b in bodies) == 99
    assert settled_count(stack, topics.feedback) == before + 1


def test_a_batch_that_cannot_be_buffered_whole_queues_nothing(live, unique_topics) -> None:
    """A replica whose producer holds records (long linger) and may buffer 5 events: 4 queued,
    then a batch of 3 new ones gets a 503 and queues none; after Kafka took the 4, the retry of
    the batch is accepted whole. A batch larger than the buffer could never fit: 413."""
    stack, _ = live
    topic = unique_topics({"feedback": 2})["feedback"]
    config = stack.service_config
    config = replace(config, feedback_topic=topic,
                     serve=replace(config.serve, max_buffered_events=5, linger_ms=60_000))
    service = RecommenderService(config, start=False)

    def events(request_id: str, n: int) -> list[FeedbackIn]:
        return [FeedbackIn(request_id=request_id, user_id="u1", item_id=i, position=i)
                for i in range(n)]

    try:
        assert service.feedback(events("whole-1", 4)).accepted == 4
        assert service.producer.pending == 4  # held by the linger
        with pytest.raises(Unavailable, match="none was queued"):
            service.feedback(events("whole-2", 3))
        assert service.producer.sent == 4
        with pytest.raises(RequestError, match="expected at most 5 events per call") as caught:
            service.feedback(events("whole-3", 6))
        assert caught.value.status == 413 and service.producer.sent == 4
        service.flush()
        answer = service.feedback(events("whole-2", 3))
        assert (answer.accepted, answer.duplicates) == (3, 0)
        service.flush()
        metrics = service.metrics.render().decode()
        assert 'recsys_serve_feedback_total{outcome="rejected"} 3.0' in metrics
        assert 'recsys_serve_feedback_total{outcome="queued"} 7.0' in metrics
    finally:
        service.close()
    keys = sorted(key for key, _ in records(stack.pipeline.bootstrap, topic))
    assert keys == [b"whole-1"] * 4 + [b"whole-2"] * 3


def test_a_repeated_request_id_gets_the_original_slate(live) -> None:
    stack, topics = live
    body = {"user_id": "u1", "context": CONTEXT, "k": 3, "request_id": "repeat-1"}
    first = post_until_taken(stack.url, "/recommend", body)
    again = post_until_taken(stack.url, "/recommend", body)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()  # the same slate, age and all: a replay
    other = post(stack.url, "/recommend", {**body, "k": 2})
    assert other.status_code == 409, other.text
    detail = other.json()["detail"][0]
    assert detail["loc"] == ["body", "request_id"] and "another body" in detail["msg"]
    # a request that was not served does not use its id up
    refused = post(stack.url, "/recommend", {**body, "request_id": "repeat-2", "k": 500})
    assert refused.status_code == 422, refused.text
    taken = post_until_taken(stack.url, "/recommend", {**body, "request_id": "repeat-2"})
    assert taken.status_code == 200, taken.text
    settled_count(stack, topics.impressions)
    keys = [key for key, _ in records(stack.pipeline.bootstrap, topics.impressions)]
    assert keys.count(b"repeat-1") == 1 and keys.count(b"repeat-2") == 1


def learned(stack) -> dict[str, np.ndarray]:
    """The shards' statistics once the learners have read and merged everything."""
    deadline = time.monotonic() + 30
    while True:
        with stack.driver.paused() as pipeline:
            if pipeline.lag() == 0:
                ray.get([a.flush.remote() for a in pipeline.actors.learners])
                return pipeline.statistics().to_arrays()[0]
        assert time.monotonic() < deadline, "the learners did not catch up"
        time.sleep(0.1)


def duplicate_feedback(stack) -> int:
    """How many feedback records the learners' join recognised as repeats (``learned`` waits
    until they have read everything)."""
    with stack.driver.paused() as pipeline:
        counters = pipeline.counters()
    return sum(c.get("counts", {}).get("duplicate_feedback", 0) for c in counters.values()
               if isinstance(c, dict))


def test_a_retried_batch_changes_nothing_downstream_across_replicas(live) -> None:
    """The batch again on the same replica (not queued) and on another one (queued again, as
    replicas share no memory): the statistics and the rewards are those of one batch."""
    stack, topics = live
    served = slate(stack, "downstream-1")
    items = served["items"]
    batch = [{"request_id": "downstream-1", "user_id": "u1", "item_id": items[0],
              "position": 0, "event_type": "click", "event_time_ms": int(time.time() * 1000)},
             {"request_id": "downstream-1", "user_id": "u1", "item_id": items[2],
              "position": 2, "event_type": "purchase"}]  # untimed: stamped on arrival
    assert post_until_taken(stack.url, "/feedback", batch).json()["duplicates"] == 0
    settled_count(stack, topics.feedback)
    once = learned(stack)
    repeats = duplicate_feedback(stack)

    assert post_until_taken(stack.url, "/feedback", batch).json()["duplicates"] == 2
    other = RecommenderService(stack.service_config, start=False)  # another replica
    try:
        answer = other.feedback([FeedbackIn(**e) for e in batch])
        assert (answer.accepted, answer.duplicates) == (2, 0)  # its memory is its own
        other.flush()
    finally:
        other.close()
    retried = learned(stack)
    assert duplicate_feedback(stack) > repeats  # the other replica's copies reached the join
    assert once.keys() == retried.keys()
    for name in once:
        np.testing.assert_array_equal(once[name], retried[name], err_msg=name)

    # a later event of that request closes its window (it is itself outside the window)
    tick = {**batch[0], "event_time_ms": int(time.time() * 1000) + WINDOW_MS + LATENESS_MS
            + 1000}
    assert post_until_taken(stack.url, "/feedback", tick).status_code == 202
    deadline = time.monotonic() + 30
    while True:
        rewards = [decode(value) for key, value in records(stack.pipeline.bootstrap,
                                                           topics.rewards)
                   if key == b"downstream-1"]
        if rewards or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(isinstance(r, Reward) for r in rewards)
    assert sorted((r.item_id, r.reward) for r in rewards) == sorted(
        [(items[0], 1.0), (items[1], 0.0), (items[2], 1.0)])
