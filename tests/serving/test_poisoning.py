"""Issue 17's poisoning attack, end to end on the live stack (real Kafka, real Ray Serve, the real
streaming pipeline): the hostile request is refused before it is scored or logged, hostile
impressions written straight to the topic (bypassing serving) are clipped by the learner or
dead-lettered, and Thompson-sampling slates served afterwards have finite scores and diverse top
items."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
import ray
import requests
from kafka import KafkaConsumer, TopicPartition

from recsys.bandits import DiagLinTS, EpsilonGreedy, policy_spec
from recsys.events import Context, Impression, SlateEntry, decode_dead_letter, encode
from recsys.producer import EventProducer
from tests.serving.live import serving_stack
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

N_ITEMS, DIM, CLIP = 20, 8, 1000.0
TS = DiagLinTS(v=0.5, n_mc_draws=100, exploration_floor=0.02, centred=True)
UNIFORM = EpsilonGreedy(epsilon=1.0, centred=True)


@pytest.fixture(scope="module")
def live(kafka_bootstrap, ray_session, tmp_path_factory):
    with serving_stack(kafka_bootstrap, tmp_path_factory.mktemp("poisoning"), "poison",
                       n_items=N_ITEMS, dim=DIM, partitions=2,
                       policies={"ts": policy_spec(TS), "uniform": policy_spec(UNIFORM)},
                       stream={"shards": 2, "batch_size": 2000, "window_ms": 1000,
                               "allowed_lateness_ms": 0, "context_clip_norm": CLIP},
                       serve={"traffic": "ts=0.5,uniform=0.5",
                              "max_context_norm": CLIP}) as (stack, topics):
        yield stack, topics


def post(url: str, body: object) -> requests.Response:
    return requests.post(f"{url}/recommend", data=json.dumps(body), timeout=30,
                         headers={"content-type": "application/json"})


def top_items(url: str, n_users: int = 30, seed: int = 0) -> tuple[list[int], list]:
    """Each ordinary user's Thompson-sampling top item, and every score served."""
    rng = np.random.default_rng(seed)
    tops, scores = [], []
    for u in range(n_users):
        answer = post(url, {"user_id": f"user{u}", "policy": "ts", "k": 3,
                            "context": {"dense": rng.normal(size=DIM).tolist()}})
        assert answer.status_code == 200, answer.text[:300]
        tops.append(answer.json()["items"][0])
        scores += answer.json()["scores"]
    return tops, scores


def read_topic(bootstrap: str, topic: str, partitions: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out = []
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                out += records
        return out
    finally:
        consumer.close()


def test_the_hostile_request_is_refused_before_it_is_scored_or_logged(live) -> None:
    stack, topics = live
    attacks = [
        ("uniform", {"dense": [1e200] * DIM}, "dense"),
        ("ts", {"dense": [1e308, -1e308] + [1.0] * (DIM - 2)}, "dense"),
        ("ts", {"dense": [1e160] * DIM}, "dense"),
        ("ts", {"dense": [1.0] * DIM, "cluster_ids": [0], "cluster_weights": [1e200]},
         "cluster_weights"),
    ]
    for policy, context, field in attacks:
        answer = post(stack.url, {"user_id": "attacker", "policy": policy, "context": context})
        assert answer.status_code == 422, answer.text[:300]
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["body", "context", field]
        assert "at most 1000 (serve.max_context_norm)" in error["msg"], error["msg"]
    # a context at the bound is served
    edge = post(stack.url, {"user_id": "edge", "policy": "ts",
                            "context": {"dense": [CLIP / np.sqrt(DIM)] * DIM}})
    assert edge.status_code == 200 and None not in edge.json()["scores"]
    metrics = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert 'recsys_serve_contexts_refused_total{reason="norm"} 4.0' in metrics
    logged = [r for r in read_topic(stack.pipeline.bootstrap, topics.impressions, 2)
              if b"attacker" in r.value]
    assert logged == []


def test_hostile_impressions_are_clipped_or_dead_lettered_and_ts_stays_healthy(live) -> None:
    stack, topics = live
    before, _ = top_items(stack.url, seed=1)
    with stack.driver.paused() as pipeline:
        sxx_before = pipeline.statistics().sxx.sum(axis=1)
    # written straight to the impressions topic, bypassing serving: finite but extreme (the
    # learner clips it) and not finite at all (it cannot decode: dead-lettered)
    hostile = Impression(
        request_id="hostile-1", event_time_ms=int(time.time() * 1000), user_id="intruder",
        context=Context(dense=(1e200,) * DIM), policy_name="uniform", policy_version=1,
        slate=tuple(SlateEntry(item_id=i, position=p, score=0.0, propensity=0.05)
                    for p, i in enumerate((3, 4, 5))))
    broken = encode(Impression(
        request_id="hostile-2", event_time_ms=int(time.time() * 1000), user_id="intruder",
        context=Context(dense=(7.0,) * DIM), policy_name="uniform", policy_version=1,
        slate=(SlateEntry(item_id=6, position=0, score=0.0, propensity=0.05),)))
    # the first 7.0 of the context becomes infinity on the wire (msgpack float64): refused
    broken = broken.replace(struct.pack(">d", 7.0), struct.pack(">d", np.inf), 1)
    with EventProducer(stack.pipeline.bootstrap) as producer:
        producer.send(hostile, topics.impressions)
        producer.send_raw(topics.impressions, b"hostile-2", broken)
        producer.flush()

    def learned() -> bool:
        with stack.driver.paused() as pipeline:
            grown = pipeline.statistics().sxx.sum(axis=1) - sxx_before
        return bool(grown[[3, 4, 5]].min() >= 0.999 * CLIP * CLIP)

    wait_until(learned, timeout_s=30, what="the hostile impression to be learned",
               interval_s=0.2)
    with stack.driver.paused() as pipeline:
        stats = pipeline.statistics()
        counters = pipeline.actors.learners[0].counters.remote()
    assert all(np.isfinite(v).all() for v in stats._sums().values())
    grown = stats.sxx.sum(axis=1) - sxx_before
    # clipped to norm C: exactly C² of Σx² per shown item (plus whatever real traffic added)
    assert grown[[3, 4, 5]] == pytest.approx([CLIP * CLIP] * 3, rel=1e-6, abs=100.0)

    def dead_lettered() -> list:
        return [letter for r in read_topic(stack.pipeline.bootstrap, topics.dead_letter, 1)
                if (letter := decode_dead_letter(r.value)).key == b"hostile-2"]

    wait_until(dead_lettered, timeout_s=30, what="a dead letter for the broken impression",
               interval_s=0.3)
    letters = dead_lettered()
    assert {letter.source_topic for letter in letters} == {topics.impressions}
    assert all("context.dense" in letter.reason for letter in letters), letters[0].reason
    assert ray.get(counters)["dead_lettered"] >= 1
    # Thompson sampling afterwards: finite scores (no null in JSON) and diverse top items
    time.sleep(0.5)  # past serve.max_staleness_ms: the replica serves the new statistics
    after, scores = top_items(stack.url, seed=2)
    assert None not in scores and np.isfinite(np.asarray(scores, dtype=float)).all()
    assert len(set(after)) >= max(5, len(set(before)) // 2), (sorted(before), sorted(after))


def test_the_guard_blames_the_table_and_refuses_non_finite_scores() -> None:
    """Without HTTP: a user-feature table row beyond the bound names the table, cluster weights
    are bounded too, and a slate with a non-finite score is refused and counted."""
    from prometheus_client import CollectorRegistry, generate_latest

    from recsys.serving.contexts import ContextGuard, ContextRefused, StatisticsNotFinite

    registry = CollectorRegistry()
    guard = ContextGuard(CLIP, registry)
    ok = Context(dense=(CLIP / np.sqrt(DIM),) * DIM, cluster_ids=(0, 1),
                 cluster_weights=(0.5, 0.5))
    assert guard.check(ok) is ok
    with pytest.raises(ContextRefused) as table:
        guard.check(Context(dense=(1e200,) * DIM), table_user="u7")
    assert table.value.loc == ("context",)
    assert "the row of user 'u7' in the user-feature table (serve.user_features_uri)" \
        in table.value.msg
    with pytest.raises(ContextRefused) as weights:
        guard.check(Context(cluster_ids=(3,), cluster_weights=(2 * CLIP,)))
    assert weights.value.loc == ("context", "cluster_weights")
    guard.check_scores("ts", np.array([0.1, -3.0]))
    with pytest.raises(StatisticsNotFinite, match="statistics not finite: policy 'ts'"):
        guard.check_scores("ts", np.array([0.1, np.nan]))
    text = generate_latest(registry).decode()
    assert 'recsys_serve_non_finite_scores_total{policy="ts"} 1.0' in text
    assert 'recsys_serve_contexts_refused_total{reason="table_norm"} 1.0' in text
    assert 'recsys_serve_contexts_refused_total{reason="norm"} 1.0' in text
