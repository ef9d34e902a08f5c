"""Serving arms that follow a registered model (``models:/NAME@champion``).

Unit checks (no services): the URI forms ``serve.policies`` accepts, and the watcher on a real
mlflow store (sqlite in tmp_path): it loads the alias's version, notices a move, keeps the old
model through a failure and reports it. Integration (real Kafka, Ray Serve and mlflow): requests
get the champion's items and its impressions say NAME/1; the alias moves while a client keeps
requesting: within seconds responses and impressions say NAME/2, with no 5xx; a bandit model
serves its spec on the live statistics; an arm whose URI names nothing answers 503 with the
reason and ``/health`` shows it, while the other arms serve.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from prometheus_client import CollectorRegistry

from recsys.bandits import DiagLinUCB, policy_spec
from recsys.config import (
    ConfigError,
    MlflowSettings,
    ServeSettings,
    policy_names,
)
from recsys.events import Impression, decode
from recsys.policies import RequestBatch
from recsys.policies.linear import LinearScorePolicy
from recsys.registry.uris import parse_model_uri
from recsys.serving.models import ModelArm, ModelMetrics, ModelWatcher

N_ITEMS, DIM = 12, 4
MODEL = "test-champion"


# ---------------------------------------------------------------------------------- helpers
def greedy_on(best: int) -> LinearScorePolicy:
    """A context-free greedy policy that always shows ``best`` first."""
    bias = np.zeros(N_ITEMS)
    bias[best] = 1.0
    return LinearScorePolicy(exploration="greedy").fit(np.arange(N_ITEMS), item_bias=bias)


def register(store: str, artifacts: Path, name: str, models: list) -> None:
    """Register ``models`` (RegisteredPolicy) as versions 1, 2, ... of ``name``."""
    import mlflow

    from recsys.registry import log_policy_model

    mlflow.set_tracking_uri(store)
    experiment = mlflow.get_experiment_by_name("serving-tests") or None
    experiment_id = (experiment.experiment_id if experiment is not None else
                     mlflow.create_experiment("serving-tests",
                                              artifact_location=artifacts.as_uri()))
    for model in models:
        with mlflow.start_run(experiment_id=experiment_id):
            log_policy_model(model, registered_model_name=name)


def move_alias(store: str, name: str, version: int, alias: str = "champion") -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=store).set_registered_model_alias(name, alias, str(version))


def metric(text: str, family: str, labels: str) -> float | None:
    """The value of ``family{labels}`` in a Prometheus exposition (None when absent)."""
    for line in text.splitlines():
        if line.startswith(f"{family}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


# ---------------------------------------------------------------------------------- unit
@pytest.mark.parametrize(("uri", "name", "alias", "version"), [
    ("models:/recsys-bandit@champion", "recsys-bandit", "champion", None),
    ("models:/m/3", "m", None, "3"),
])
def test_model_uris_name_an_alias_or_a_version(uri, name, alias, version) -> None:
    ref = parse_model_uri(uri)
    assert (ref.name, ref.alias, ref.version) == (name, alias, version)


@pytest.mark.parametrize("uri", ["models:/m", "models:/m/0", "models:/m/latest", "models:/@a",
                                 "models:/m@", "runs:/abc/policy", "models:/a/b/1"])
def test_other_uris_are_refused_with_the_forms_accepted(uri) -> None:
    with pytest.raises(ValueError, match=r"^uri: expected 'models:/NAME@ALIAS' or "):
        parse_model_uri(uri)


def test_serve_policies_take_specs_and_model_uris() -> None:
    spec = policy_spec(DiagLinUCB(epsilon=0.1))
    serve = ServeSettings(policies=json.dumps({"ucb": spec, "champ": "models:/m@champion"}),
                          traffic="ucb=1,champ=1")
    assert policy_names(serve) == ("ucb", "champ")
    bad = ServeSettings(policies=json.dumps({"champ": "models:/m@"}))
    with pytest.raises(ConfigError, match=r"^serve.policies.champ: expected 'models:/NAME@"):
        policy_names(bad)
    with pytest.raises(ConfigError, match=r"^serve.policies: expected a JSON object \{name: "
                                          r"policy spec or 'models:/NAME@ALIAS'\}"):
        policy_names(ServeSettings(policies=json.dumps({"champ": "champion"})))


def test_the_watcher_thread_keeps_checking_after_an_unexpected_error() -> None:
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in a check")

    watcher = ModelWatcher(check, 0.01).start()
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    watcher.stop()
    assert len(calls) >= 3


def test_an_arm_follows_its_alias_and_keeps_its_model_through_failures(mlflow_store,
                                                                        tmp_path) -> None:
    from mlflow import MlflowClient

    from recsys.registry import scored_model

    register(mlflow_store, tmp_path / "artifacts", MODEL,
             [scored_model(greedy_on(3)), scored_model(greedy_on(7))])
    move_alias(mlflow_store, MODEL, 1)
    registry = CollectorRegistry()
    arm = ModelArm("champ", f"models:/{MODEL}@champion", tracking_uri=mlflow_store,
                   rng=np.random.default_rng(0), metrics=ModelMetrics(registry))
    assert arm.state()["ready"] is False and not arm.checked

    first = arm.poll()
    assert first is not None and (first.name, first.version, first.kind) == (MODEL, 1, "scores")
    arm.accept(first)
    slate = first.model.recommend(RequestBatch.of(user_ids=["u1"]), 2)
    assert slate.items[0, 0] == 3 and slate.propensities[0, 0] == 1.0
    assert arm.poll() is None and arm.error == ""  # unchanged: nothing loaded again

    move_alias(mlflow_store, MODEL, 2)
    second = arm.poll()
    assert second is not None and second.version == 2
    arm.accept(second)
    assert second.model.recommend(RequestBatch.of(user_ids=["u1"]), 1).items[0, 0] == 7

    MlflowClient(tracking_uri=mlflow_store).delete_registered_model_alias(MODEL, "champion")
    assert arm.poll() is None
    assert arm.current is second and "champion" in arm.error  # the old model keeps serving
    state = arm.state()
    assert state["ready"] is True and state["model_version"] == 2 and state["switches"] == 2

    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    assert metric(text, "recsys_serve_model_version", 'policy="champ"') == 2.0
    assert metric(text, "recsys_serve_model_switches_total", 'policy="champ"') == 2.0
    assert metric(text, "recsys_serve_model_checks_total", 'policy="champ",result="error"') == 1
    assert metric(text, "recsys_serve_model_checks_total", 'policy="champ",result="new"') == 2

    ghost = ModelArm("ghost", "models:/no-such-model/1", tracking_uri=mlflow_store,
                     rng=np.random.default_rng(0))
    assert ghost.poll() is None and ghost.checked
    assert ghost.state()["ready"] is False and "no-such-model" in ghost.error


# ---------------------------------------------------------------------------------- live
@pytest.fixture(scope="module")
def live_models(kafka_bootstrap, ray_session, tmp_path_factory):
    """The live stack serving a champion alias (v1 shows item 3, v2 item 7), a bandit model
    and an arm whose model does not exist, from a real mlflow store."""
    from recsys.registry import bandit_model, scored_model
    from tests.serving.live import serving_stack

    tmp = tmp_path_factory.mktemp("model-arms")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    ucb = DiagLinUCB(alpha=0.5, epsilon=0.2, centred=True)
    register(store, tmp / "artifacts", MODEL,
             [scored_model(greedy_on(3)), scored_model(greedy_on(7))])
    move_alias(store, MODEL, 1)
    register(store, tmp / "artifacts", f"{MODEL}-bandit",
             [bandit_model(DiagLinUCB(**ucb.get_params()).init(np.arange(N_ITEMS), DIM))])
    policies = {"champ": f"models:/{MODEL}@champion", "bandit": f"models:/{MODEL}-bandit/1",
                "ghost": "models:/no-such-model@champion", "ucb": policy_spec(ucb)}
    with serving_stack(kafka_bootstrap, tmp, "model-shard", n_items=N_ITEMS, dim=DIM,
                       policies=policies,
                       settings={"mlflow": MlflowSettings(tracking_uri=store)},
                       stream={"batch_size": 500, "window_ms": 500, "allowed_lateness_ms": 0},
                       serve={"model_refresh_s": 0.25}) as (stack, topics):
        yield stack, store, topics


def recommend(url: str, policy: str | None = "champ", k: int = 1,
              session: requests.Session | None = None) -> requests.Response:
    body = {"user_id": "u1", "context": {"dense": [0.5] * DIM}, "k": k}
    if policy is not None:
        body["policy"] = policy
    return (session or requests).post(f"{url}/recommend", json=body, timeout=30)


def logged(bootstrap: str, topic: str, request_ids: set[str]) -> dict[str, Impression]:
    """The impressions of ``request_ids`` read back from Kafka."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    found: dict[str, Impression] = {}
    deadline = time.monotonic() + 30
    try:
        while len(found) < len(request_ids) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = decode(record.value)
                    if isinstance(event, Impression) and event.request_id in request_ids:
                        found[event.request_id] = event
    finally:
        consumer.close()
    return found


@pytest.mark.integration
def test_the_champion_serves_and_its_impressions_name_the_version(live_models) -> None:
    stack, _, topics = live_models
    health = requests.get(f"{stack.url}/health", timeout=10).json()
    assert health["ready"] is True
    assert health["models"]["champ"]["model_version"] == 1
    answers = [recommend(stack.url, policy=None, k=2).json() for _ in range(5)]
    assert all(a["items"][0] == 3 and a["propensities"][0] == 1.0 for a in answers)
    assert {(a["policy"], a["model_name"], a["model_version"], a["policy_version"])
            for a in answers} == {("champ", MODEL, 1, 1)}
    events = logged(stack.pipeline.bootstrap, topics.impressions,
                    {a["request_id"] for a in answers})
    assert len(events) == 5
    assert {(e.policy_name, e.policy_version) for e in events.values()} == {(MODEL, 1)}
    assert events[answers[0]["request_id"]].context.dense == (0.5,) * DIM


@pytest.mark.integration
def test_the_alias_moves_while_serving_without_a_5xx(live_models) -> None:
    stack, store, topics = live_models
    seen: list[tuple[int, str, int | None, int | None]] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                r = recommend(stack.url, session=session)
                body = r.json() if r.status_code == 200 else {}
                seen.append((r.status_code, body.get("request_id", r.text[:200]),
                             body.get("model_version"), (body.get("items") or [None])[0]))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        while not seen:
            time.sleep(0.01)
        # at a seeded random moment of the replicas' look-up cycle (model_refresh_s = 0.25),
        # not right after a look-up
        time.sleep(np.random.default_rng(16).uniform(0.0, 0.75))
        move_alias(store, MODEL, 2)
        deadline = time.monotonic() + 30
        while not any(v == 2 for _, _, v, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        switched = len(seen)
        while len(seen) < switched + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [s for s in seen if s[0] != 200] == []
    versions = [v for _, _, v, _ in seen]
    assert 2 in versions, "the replica did not switch to version 2"
    first = versions.index(2)
    assert set(versions[:first]) == {1} and set(versions[first:]) == {2}  # one switch, no flap
    assert {(v, item) for _, _, v, item in seen} == {(1, 3), (2, 7)}
    events = logged(stack.pipeline.bootstrap, topics.impressions, {s[1] for s in seen})
    assert len(events) == len(seen)
    assert {(e.policy_name, e.policy_version, e.slate[0].item_id) for e in events.values()} == {
        (MODEL, 1, 3), (MODEL, 2, 7)}
    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert metric(text, "recsys_serve_model_version", 'policy="champ"') == 2.0
    assert metric(text, "recsys_serve_model_switches_total", 'policy="champ"') == 2.0


@pytest.mark.integration
def test_a_bandit_model_serves_its_spec_on_the_live_statistics(live_models) -> None:
    from tests.serving.test_serving import frozen_snapshot

    stack, *_ = live_models
    context = np.full(DIM, 0.5)
    with frozen_snapshot(stack) as (stats, snapshot_id):
        reference = DiagLinUCB(alpha=0.5, epsilon=0.2, centred=True).use(stats).action_dist(
            context[None], 1)[0, :, 0]
        for _ in range(10):
            served = recommend(stack.url, policy="bandit").json()
            assert served["snapshot_id"] == snapshot_id
            assert (served["model_name"], served["model_version"]) == (f"{MODEL}-bandit", 1)
            column = int(np.searchsorted(stats.item_ids, served["items"][0]))
            assert served["propensities"][0] == pytest.approx(reference[column], abs=1e-12)


@pytest.mark.integration
def test_an_arm_whose_model_is_missing_answers_503_and_the_others_serve(live_models) -> None:
    stack, *_ = live_models
    health = requests.get(f"{stack.url}/health", timeout=10)
    assert health.status_code == 200
    ghost = health.json()["models"]["ghost"]
    assert ghost["ready"] is False and "no-such-model" in ghost["error"]
    assert "not ready: ghost (models:/no-such-model@champion" in health.json()["detail"]
    refused = recommend(stack.url, policy="ghost")
    assert refused.status_code == 503
    assert "no-such-model" in refused.json()["detail"]
    assert recommend(stack.url, policy="ucb").status_code == 200

    from streaming.serve_cli import _model_lines  # what `recsys serve` prints at start

    lines = _model_lines(stack.url)
    assert any(line.startswith("  policy bandit follows models:/test-champion-bandit/1: "
                               "version 1 (bandit)") for line in lines), lines
    assert any("policy ghost follows models:/no-such-model@champion: not loaded (" in line
               for line in lines), lines
    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert metric(text, "recsys_serve_model_version", 'policy="ghost"') is None
    assert (metric(text, "recsys_serve_model_checks_total", 'policy="ghost",result="error"')
            or 0) >= 1
