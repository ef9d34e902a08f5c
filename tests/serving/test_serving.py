"""The serving app on the live system: real Kafka, real Ray Serve, the real streaming pipeline.

One stack per module (pipeline driven in a thread, app deployed on its named shards); the
simulator plays the users over HTTP. Checks: propensities in (0, 1] that match the policy's own
(exact for ε-mixes and the uniform control, within Monte Carlo error for Thompson sampling) and
reach Kafka with the impression; IPS on the logged rewards (read back from the Parquet lake)
covers the simulator's true value of the uniform policy; a click changes the served score
without a restart; malformed bodies (hypothesis) always get a 4xx and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import polars as pl
import pytest
import ray
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.bandits import DiagLinTS, DiagLinUCB, EpsilonGreedy, policy_spec
from recsys.client.freshness import measure_freshness, wait_until_served
from recsys.events import Impression, decode
from recsys.lake import scan_lake
from recsys.ope import InverseProbabilityWeighting, bandit_feedback_from_frame
from simulators.ground_truth import policy_value
from simulators.http_traffic import HttpUsers
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import UniformPolicy
from tests.serving.live import serving_stack

pytestmark = pytest.mark.integration

WORLD = SimulatorConfig(n_users=300, n_items=20, dim=8, slate_size=1, no_click_utility=1.0,
                        feature_noise=0.25, seed=3)
# 2,000 replays: with few, rarely shown items get noisy Monte Carlo propensities, and IPS is
# biased upward by E[1/p̂] > 1/p (one run in several failed the coverage check at 200)
TS = DiagLinTS(v=0.5, n_mc_draws=2000, exploration_floor=0.05, centred=True)
UCB = DiagLinUCB(alpha=0.5, epsilon=0.2, centred=True)
UNIFORM = EpsilonGreedy(epsilon=1.0, centred=True)




@pytest.fixture(scope="module")
def live(kafka_bootstrap, ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    sim = SlateSimulator(WORLD)
    policies = {"ts": policy_spec(TS), "ucb": policy_spec(UCB), "uniform": policy_spec(UNIFORM)}
    with serving_stack(kafka_bootstrap, tmp, "shard", n_items=WORLD.n_items,
                       dim=sim.n_features, partitions=2, policies=policies, lake=True,
                       stream={"shards": 2, "batch_size": 2000, "window_ms": 1000,
                               "allowed_lateness_ms": 0},
                       # nothing shed: a 503's Retry-After would delay a round's clicks past
                       # the 1 s attribution window and bias IPS low (shedding has its own
                       # tests, tests/serving/test_overload.py); fuzzing expects no 5xx either
                       serve={"traffic": "ts=0.5,uniform=0.5",
                              "max_queue_delay_ms": 30_000}) as (stack, topics):
        yield stack, sim, topics, tmp


def post(url: str, path: str, body: object) -> requests.Response:
    """POST ``body`` as JSON; NaN and infinity go out as the non-standard tokens Python's json
    writes, as a careless client would send them."""
    return requests.post(f"{url}{path}", data=json.dumps(body), timeout=30,
                         headers={"content-type": "application/json"})


def shard_snapshot_id(stack) -> str:
    shards = [ray.get_actor(n) for n in stack.pipeline.shard_names()]
    return "+".join(p.snapshot_id for p in ray.get([s.publication.remote(0) for s in shards]))


def served_snapshot_id(stack) -> str:
    return requests.get(f"{stack.url}/health", timeout=10).json()["snapshot_id"]


def quiet_snapshot(stack, timeout_s: float = 30.0) -> None:
    """Wait until the stream has read everything and the replica serves the shards' state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with stack.driver.paused() as pipeline:
            lag = pipeline.lag()
        if lag == 0 and served_snapshot_id(stack) == shard_snapshot_id(stack):
            return
        time.sleep(0.2)
    raise AssertionError("the replica did not catch up with the shards")


@contextlib.contextmanager
def frozen_snapshot(stack, timeout_s: float = 30.0):
    """Stop the stream (impressions served meanwhile wait in Kafka) once the replica serves the
    shards' state; yields those statistics and their snapshot id."""
    quiet_snapshot(stack, timeout_s)
    with stack.driver.paused() as pipeline:
        deadline = time.monotonic() + timeout_s
        while served_snapshot_id(stack) != shard_snapshot_id(stack):
            assert time.monotonic() < deadline, "the replica did not catch up with the shards"
            time.sleep(0.1)
        yield pipeline.statistics(), shard_snapshot_id(stack)


def test_health_docs_and_metrics(live) -> None:
    stack, *_ = live
    health = requests.get(f"{stack.url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["ready"] is True
    assert set(health.json()["policies"]) == {"ts", "ucb", "uniform"}
    assert requests.get(f"{stack.url}/docs", timeout=10).status_code == 200
    raw = requests.get(f"{stack.url}/openapi.json", timeout=10)
    assert raw.status_code == 200, (raw.status_code, raw.text[:500])
    schema = raw.json()
    assert {"/recommend", "/feedback", "/health", "/metrics"} <= set(schema["paths"])
    metrics = requests.get(f"{stack.url}/metrics", timeout=10).text
    for family in ("recsys_serve_requests_total", "recsys_serve_request_seconds_bucket",
                   "recsys_serve_snapshot_version", "recsys_serve_snapshot_age_seconds",
                   "recsys_serve_impressions_buffered"):
        assert family in metrics, family


def test_closed_loop_logs_propensities_and_ips_covers_the_truth(live) -> None:
    stack, sim, topics, tmp = live
    users = HttpUsers(stack.url, sim, k=1, send_context=True, concurrency=16, seed=1)
    users.run(n_rounds=30, round_size=100)
    assert not users.errors.by_status, users.errors.messages[:3]
    totals = users.totals()
    assert set(totals) == {"ts", "uniform"}
    assert sum(a.requests for a in totals.values()) == 3000
    assert not users.errors.by_status, users.errors.messages[:3]

    # every served slate reached Kafka with the propensities the client saw
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=stack.pipeline.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topics.impressions, p) for p in range(2)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    logged: dict[str, Impression] = {}
    deadline = time.monotonic() + 30
    while len(logged) < 3000 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                event = decode(record.value)
                assert isinstance(event, Impression)
                logged[event.request_id] = event
    consumer.close()
    assert len(logged) >= 3000
    props = np.array([e.slate[0].propensity for e in logged.values()])
    assert ((props > 0) & (props <= 1)).all()
    uniform = [e for e in logged.values() if e.policy_name == "uniform"]
    np.testing.assert_allclose([e.slate[0].propensity for e in uniform], 1 / WORLD.n_items,
                               rtol=1e-12)

    # IPS of the uniform policy over *all* logged rows (the TS rows weigh 1/n ÷ their logged
    # propensity) covers the simulator's true value: wrong propensities would bias it
    with stack.driver.paused() as pipeline:
        pipeline.checkpoint()  # the lake's files are cut at checkpoints
    frame = scan_lake(tmp / "lake", "rewards").collect()
    assert frame.height > 2000, frame.height
    feedback = bandit_feedback_from_frame(frame, n_actions=WORLD.n_items)
    dist = np.full((feedback.n_rounds, WORLD.n_items, 1), 1.0 / WORLD.n_items)
    interval = InverseProbabilityWeighting().estimate_interval(
        **feedback.estimator_kwargs(dist), alpha=0.01, n_bootstrap_samples=1000, random_state=0)
    truth = policy_value(sim, UniformPolicy(WORLD.n_items)).value
    assert interval["99.0% CI (lower)"] <= truth <= interval["99.0% CI (upper)"], (interval,
                                                                                    truth)
    ts_share = frame.filter(pl.col("policy_name") == "ts").height / frame.height
    assert 0.3 < ts_share < 0.7  # both arms are in the estimate


def test_served_propensities_match_the_policies(live) -> None:
    stack, sim, *_ = live
    with frozen_snapshot(stack) as (stats, snapshot_id):
        check_propensities(stack, sim, stats, snapshot_id)


def check_propensities(stack, sim, stats, snapshot_id) -> None:
    context = sim.user_features(np.array([7]))[0].astype(np.float32).astype(float)
    body = {"user_id": "u7", "context": {"dense": context.tolist()}, "k": 1}
    for name, policy in (("ucb", UCB), ("uniform", UNIFORM)):  # exact propensities
        reference = policy.__class__(**policy.get_params()).use(stats).action_dist(context[None],
                                                                                     1)[0, :, 0]
        for _ in range(20):
            served = post(stack.url, "/recommend", {**body, "policy": name}).json()
            assert served["snapshot_id"] == snapshot_id
            item = served["items"][0]
            column = int(np.searchsorted(stats.item_ids, item))
            assert served["propensities"][0] == pytest.approx(reference[column], abs=1e-12)
            assert served["propensity_se"] == [0.0]
    reference_ts = DiagLinTS(**{**TS.get_params(), "n_mc_draws": 20_000, "random_state": 0}
                             ).use(stats).action_dist(context[None], 1)[0, :, 0]
    for _ in range(20):
        served = post(stack.url, "/recommend", {**body, "policy": "ts"}).json()
        assert served["snapshot_id"] == snapshot_id
        column = int(np.searchsorted(stats.item_ids, served["items"][0]))
        p, se = served["propensities"][0], served["propensity_se"][0]
        assert 0 < p <= 1 and se >= 0
        ref_se = np.sqrt(reference_ts[column] * (1 - reference_ts[column]) / 20_000)
        assert abs(p - reference_ts[column]) <= 4.5 * np.hypot(se, ref_se) + 1e-9, (
            p, se, reference_ts[column])


def test_a_click_changes_the_served_score(live) -> None:
    """New probe items have no reward, so they score exactly 0 whatever their exposures; after a
    click on one, the served score rises (no restart, no reload)."""
    stack, sim, *_ = live
    probes = [WORLD.n_items + i for i in range(4)]
    with stack.driver.paused() as pipeline:
        assert pipeline.add_items(probes) == len(probes)
    context = sim.user_features(np.array([11]))[0].astype(float).tolist()
    wait_until_served(stack.url, probes[-1], context, policy="uniform")
    result = measure_freshness(stack.url, probes, context, policy="uniform", timeout_s=10)
    assert result.skipped == [] and result.timeouts == 0, result
    assert len(result.latencies_s) == len(probes)
    again = measure_freshness(stack.url, probes[:1], context, policy="uniform")
    assert again.skipped and "already scores" in again.skipped[0]  # the click stayed


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
RECOMMEND_FIELDS = st.fixed_dictionaries({}, optional={
    "user_id": JSON | st.text(max_size=300), "k": JSON | st.integers(-5, 2000),
    "context": JSON | st.fixed_dictionaries({}, optional={
        "dense": st.lists(st.floats(), max_size=12) | JSON,
        "cluster_ids": JSON, "cluster_weights": JSON}),
    "candidates": st.lists(st.integers(-3, 2**64), max_size=25) | JSON,
    "policy": JSON, "request_id": JSON, "extra": JSON})
FEEDBACK_FIELDS = st.fixed_dictionaries({}, optional={
    "request_id": JSON, "user_id": JSON, "item_id": JSON | st.integers(-3, 2**64),
    "position": JSON | st.integers(-3, 2000), "event_type": JSON | st.sampled_from(
        ["click", "purchase", "view", ""]), "value": JSON | st.floats(), "event_time_ms": JSON})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=RECOMMEND_FIELDS | JSON, raw=st.booleans() | st.binary(max_size=40))
def test_fuzzed_recommend_bodies_never_get_a_5xx(live, body, raw) -> None:
    stack, *_ = live
    if isinstance(raw, bytes):
        response = requests.post(f"{stack.url}/recommend", data=raw, timeout=30,
                                 headers={"content-type": "application/json"})
    else:
        response = post(stack.url, "/recommend", body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert response.json()["detail"], response.text


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=FEEDBACK_FIELDS | st.lists(FEEDBACK_FIELDS, max_size=3) | JSON)
def test_fuzzed_feedback_bodies_never_get_a_5xx(live, body) -> None:
    stack, *_ = live
    response = post(stack.url, "/feedback", body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert response.json()["detail"], response.text


def test_bad_requests_name_the_field_and_the_server_keeps_serving(live) -> None:
    stack, sim, *_ = live
    dense = [0.0] * sim.n_features
    cases = [
        ({"user_id": "u1", "context": {"dense": [1.0, 2.0]}}, ["body", "context", "dense"]),
        ({"user_id": "u1", "context": {"dense": dense}, "k": 0}, ["body", "k"]),
        ({"user_id": "u1", "context": {"dense": dense}, "k": 50}, ["body", "k"]),
        ({"user_id": "u1", "context": {"dense": dense}, "policy": "nope"}, ["body", "policy"]),
        ({"user_id": "u1", "context": {"dense": dense}, "candidates": [999]},
         ["body", "candidates"]),
        ({"user_id": "u1"}, ["body", "context"]),
        ({"context": {"dense": dense}}, ["body", "user_id"]),
    ]
    for body, loc in cases:
        response = post(stack.url, "/recommend", body)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert response.json()["detail"][0]["loc"] == loc, (body, response.text)
    ok = post(stack.url, "/recommend", {"user_id": "u1", "context": {"dense": dense}, "k": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3


def test_no_snapshot_and_a_full_kafka_buffer_get_a_503_not_a_blind_slate(live) -> None:
    """In-process replicas on the live stack: one whose shards do not exist is not ready and
    refuses to serve; one that may not buffer anything for Kafka refuses too, and counts it."""
    from dataclasses import replace

    from recsys.serving.schemas import RecommendRequest
    from recsys.serving.service import RecommenderService, Unavailable

    stack, sim, *_ = live
    request = RecommendRequest(user_id="u1", context={"dense": [0.0] * sim.n_features}, k=2)
    orphan = RecommenderService(replace(stack.service_config, shard_names=["no-such-shard-0"]),
                                start=False)
    try:
        assert orphan.refresh() is False
        health = orphan.health()
        assert not health.ready and "not found" in health.detail
        with pytest.raises(Unavailable, match="no snapshot loaded yet"):
            orphan.recommend(request)
    finally:
        orphan.close()
    config = stack.service_config
    no_buffer = replace(config, serve=replace(config.serve, max_buffered_events=0))
    blocked = RecommenderService(no_buffer, start=False)
    try:
        blocked.wait_ready(30)
        with pytest.raises(Unavailable, match="waiting for Kafka"):
            blocked.recommend(request)
        metrics = blocked.metrics.render().decode()
        assert 'recsys_serve_impressions_total{outcome="rejected"} 1.0' in metrics
        assert 'outcome="queued"' not in metrics
    finally:
        blocked.close()
