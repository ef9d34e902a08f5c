"""HttpUsers against a stub serving app (FastAPI + uvicorn on 127.0.0.1 in a thread).

The stub follows the HTTP contract (``recsys.serving.schemas`` validates every body it gets):
uniformly random slates with propensity 1/n, arms "learning"/"uniform" alternating by request,
503 from /recommend for the first calls when asked, and it records all feedback.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from recsys.serving.schemas import (
    MAX_FEEDBACK_BATCH,
    FeedbackIn,
    FeedbackResponse,
    RecommendRequest,
    RecommendResponse,
)
from simulators import http_traffic
from simulators.ground_truth import optimal_slates, optimal_value, policy_value
from simulators.http_traffic import (
    FEEDBACK_BATCH,
    HttpUsers,
    true_value_of_slates,
    write_user_features,
)
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import UniformPolicy
from tests.client.stub_server import closed_port, serve_app

CONFIG = SimulatorConfig(n_users=200, n_items=30, slate_size=3, no_click_utility=1.5, seed=3)
ARMS = ("learning", "uniform")


@dataclass
class Stub:
    """What the stub server saw and how it misbehaves."""

    n_items: int
    recommend_503: int = 0
    reject_every: int = 0  # every n-th /recommend call gets a 422 (0: never)
    short_every: int = 0  # every n-th /recommend call serves one item too few (0: never)
    recommend_calls: int = 0
    served: dict[str, RecommendRequest | RecommendResponse] = field(default_factory=dict)
    requests: list[RecommendRequest] = field(default_factory=list)
    feedback: list[FeedbackIn] = field(default_factory=list)
    feedback_posts: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/recommend", response_model=RecommendResponse)
        def recommend(body: RecommendRequest):  # type: ignore[no-untyped-def]
            self.recommend_calls += 1
            call = self.recommend_calls
            if call <= self.recommend_503:
                return JSONResponse({"detail": "no snapshot yet"}, status_code=503)
            if self.reject_every and call % self.reject_every == 0:
                return JSONResponse({"detail": "rejected by the stub"}, status_code=422)
            self.requests.append(body)
            pool = np.asarray(body.candidates or range(self.n_items))
            items = self.rng.choice(pool, size=body.k, replace=False)
            if self.short_every and call % self.short_every == 0:
                items = items[1:]
            response = RecommendResponse(
                request_id=uuid.uuid4().hex, user_id=body.user_id,
                policy=body.policy or ARMS[call % 2], policy_version=1, snapshot_id="s",
                snapshot_age_ms=0.0, items=items.tolist(), scores=[0.0] * body.k,
                propensities=[1.0 / pool.size] * body.k, propensity_se=[0.0] * body.k,
            )
            self.served[response.request_id] = response
            return response

        @app.post("/feedback", response_model=FeedbackResponse)
        def feedback(body: FeedbackIn | list[FeedbackIn]):  # type: ignore[no-untyped-def]
            events = body if isinstance(body, list) else [body]
            self.feedback_posts += 1
            self.feedback.extend(events)
            return FeedbackResponse(accepted=len(events))

        return app


def test_rounds_post_every_click_for_a_served_slate_and_counts_add_up():
    sim = SlateSimulator(CONFIG)
    stub = Stub(CONFIG.n_items)
    with serve_app(stub.app()) as url:
        users = HttpUsers(url, sim, concurrency=8, seed=1)
        seen: list[int] = []
        results = users.run(n_rounds=4, round_size=60, on_round=lambda r: seen.append(r.clicks))
    assert len(results) == 4 and seen == [r.clicks for r in results]
    history = users.history()
    assert set(history["arm"]) == set(ARMS)
    # clicks posted == clicks in the history, one feedback list per round
    assert len(stub.feedback) == history["clicks"].sum() == sum(r.feedback_posted for r in results)
    assert sum(r.feedback_accepted for r in results) == len(stub.feedback) > 0
    assert stub.feedback_posts == sum(r.clicks > 0 for r in results)
    for event in stub.feedback:  # each click names a slate the stub served, at its position
        served = stub.served[event.request_id]
        assert served.items[event.position] == event.item_id
        assert served.user_id == event.user_id and event.event_type == "click"
    # per-arm counts add up: per round, over rounds, and against what the stub served
    assert all(sum(c.requests for c in r.arms.values()) == r.served == r.sent == 60
               for r in results)
    assert history["requests"].sum() == len(stub.served) == 240
    totals = users.totals()
    by_arm = history.group_by("arm").agg(pl.col("requests", "clicks").sum())
    for arm, requests, clicks in by_arm.iter_rows():
        assert (totals[arm].requests, totals[arm].clicks) == (requests, clicks)
        assert sum(stub.served[e.request_id].policy == arm for e in stub.feedback) == clicks
    last = history.filter(pl.col("round") == 3).sort("arm")
    assert last["cum_requests"].sum() == 240
    assert np.allclose(last["cum_ctr"], [totals[a].ctr for a in sorted(totals)])
    assert (history["expected_ctr"] > 0).all() and (history["expected_ctr"] < 1).all()
    assert users.errors.total == 0 and all(r.errors == {} for r in results)
    # the client sent the observable features, float32-rounded, under "u{index}" ids
    body = stub.requests[0]
    index = int(body.user_id.removeprefix("u"))
    want = sim.user_features(np.array([index]))[0].astype(np.float32)
    assert np.array_equal(np.asarray(body.context.dense, dtype=np.float32), want)
    assert body.k == CONFIG.slate_size and body.policy is None
    user_ids, slates = users.served("learning")
    assert user_ids.size == totals["learning"].requests and slates.shape[1] == CONFIG.slate_size


def test_feedback_is_chunked_at_the_batch_limit(monkeypatch):
    monkeypatch.setattr(http_traffic, "FEEDBACK_BATCH", 3)
    sim = SlateSimulator(CONFIG)
    stub = Stub(CONFIG.n_items)
    with serve_app(stub.app()) as url:
        result = HttpUsers(url, sim, seed=4).run(n_rounds=1, round_size=80)[0]
    assert result.clicks > 3 and stub.feedback_posts == -(-result.clicks // 3)
    assert len(stub.feedback) == result.feedback_posted == result.feedback_accepted == result.clicks


def test_user_ids_only_and_a_forced_arm():
    sim = SlateSimulator(CONFIG)
    stub = Stub(CONFIG.n_items)
    with serve_app(stub.app()) as url:
        users = HttpUsers(url, sim, k=2, send_context=False, policy="uniform", seed=2)
        result = users.run(n_rounds=1, round_size=30)[0]
    assert all(r.context is None and r.policy == "uniform" and r.k == 2 for r in stub.requests)
    assert all(r.user_id.startswith("u") for r in stub.requests)
    assert list(result.arms) == ["uniform"] and result.arms["uniform"].requests == 30


def test_503_is_retried_with_backoff_and_counted():
    sim = SlateSimulator(CONFIG)
    stub = Stub(CONFIG.n_items, recommend_503=5)
    with serve_app(stub.app()) as url:
        users = HttpUsers(url, sim, concurrency=4, backoff_s=0.01, max_retries_503=5)
        result = users.run(n_rounds=1, round_size=20)[0]
    assert result.served == 20 and result.retries_503 == 5 == users.errors.retries_503
    assert result.errors == {} and users.errors.total == 0


def test_errors_are_counted_by_status_never_dropped():
    sim = SlateSimulator(CONFIG)
    stub = Stub(CONFIG.n_items, recommend_503=10_000)
    with serve_app(stub.app()) as url:
        users = HttpUsers(url, sim, backoff_s=0.0, max_retries_503=2)
        result = asyncio.run(users.run_async(n_rounds=1, round_size=10))[0]
    assert result.served == 0 and result.arms == {} and result.errors == {"503": 10}
    assert users.errors.by_class() == {"5xx": 10} and result.retries_503 == 20
    assert "POST /recommend -> 503" in users.errors.messages[0] and users.history().is_empty()

    stub = Stub(CONFIG.n_items, reject_every=4)
    with serve_app(stub.app()) as url:
        users = HttpUsers(url, sim)
        result = users.run(n_rounds=1, round_size=20)[0]
    assert result.errors == {"422": 5} and result.served == 15
    assert sum(c.requests for c in result.arms.values()) == 15
    assert "rejected by the stub" in users.errors.messages[0]

    stub = Stub(CONFIG.n_items, short_every=5)
    with serve_app(stub.app()) as url:
        users = HttpUsers(url, sim)
        result = users.run(n_rounds=1, round_size=20)[0]
    assert result.errors == {"invalid_response": 4} and result.served == 16
    assert "unusable" in users.errors.messages[0]

    users = HttpUsers(f"http://127.0.0.1:{closed_port()}", sim, request_timeout_s=2)
    result = users.run(n_rounds=1, round_size=5)[0]
    assert result.errors == {"transport": 5} and users.errors.by_class() == {"transport": 5}


def test_non_loopback_servers_are_refused():
    # the guard itself is tested in tests/client/test_guard.py
    with pytest.raises(ValueError, match=r"^url: expected a loopback host"):
        HttpUsers("http://10.1.2.3:8000", SlateSimulator(CONFIG))


def test_user_feature_table_round_trips(tmp_path):
    sim = SlateSimulator(CONFIG)
    path = write_user_features(sim, tmp_path / "features" / "users.parquet")
    table = pl.read_parquet(path)
    assert table.schema == {"user_id": pl.String, "context_dense": pl.List(pl.Float32)}
    assert table["user_id"].to_list() == [f"u{i}" for i in range(CONFIG.n_users)]
    dense = np.array(table["context_dense"].to_list(), dtype=np.float32)
    assert np.array_equal(dense, sim.user_features().astype(np.float32))


def test_true_value_of_uniform_slates_matches_ground_truth():
    sim = SlateSimulator(CONFIG)
    truth = policy_value(sim, UniformPolicy(CONFIG.n_items, random_state=0), n_monte_carlo=200)
    rng = np.random.default_rng(5)
    policy = UniformPolicy(CONFIG.n_items, random_state=rng)  # the traffic's stream
    every_user = np.tile(np.arange(CONFIG.n_users), 100)  # all users, 100 slates each
    sampled = sim.sample_requests(20_000, rng=rng).user_id  # traffic-like users
    for users in (every_user, sampled):
        slates = policy.recommend(sim.user_features(users), CONFIG.slate_size).items
        got = true_value_of_slates(sim, users, slates)
        assert got.n_slates == users.size and got.user_coverage > 0.99
        assert abs(got.value - truth.value) < 4 * np.hypot(got.standard_error,
                                                            truth.standard_error)
    exact = true_value_of_slates(sim, np.arange(CONFIG.n_users), optimal_slates(sim))
    assert exact.user_coverage == pytest.approx(1.0)
    assert exact.value == pytest.approx(optimal_value(sim).value, rel=1e-12)


def test_arguments_are_checked():
    sim = SlateSimulator(CONFIG)
    with pytest.raises(ValueError, match="k must be in"):
        HttpUsers("http://127.0.0.1:1", sim, k=CONFIG.slate_size + 1)
    with pytest.raises(ValueError, match="duration_s or n_rounds"):
        HttpUsers("http://127.0.0.1:1", sim).run()
    with pytest.raises(ValueError, match="user indices"):
        true_value_of_slates(sim, [CONFIG.n_users], np.zeros((1, 3), dtype=int))
    assert FEEDBACK_BATCH == MAX_FEEDBACK_BATCH
