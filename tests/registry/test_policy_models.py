"""Every kind of policy survives the registry: identical slates, scores, propensities and
action distributions after log → register → load (by version, by alias, and as a pyfunc).

One real mlflow store (sqlite in a temporary folder) for the module; the on-disk bundle of every
exploration × context-mode combination is checked without mlflow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.bandits import DiagLinTS, DiagLinUCB, GraphStats, SoftContexts
from recsys.policies import LinearScorePolicy, RequestBatch, popularity_policy, uniform_policy
from recsys.registry import (
    RegisteredPolicy,
    bandit_model,
    baseline_model,
    load_policy_model,
    log_policy_model,
    resolve_version,
    scored_model,
)

DIM = 3
ITEM_IDS = np.array([70, 10, 50, 30, 0, 60, 20, 40])
RNG = np.random.default_rng(11)
ITEM_VECTORS = RNG.standard_normal((ITEM_IDS.size, DIM))
USERS = np.array(["u0", "u1", "u2", "u3"])
USER_VECTORS = RNG.standard_normal((USERS.size, DIM))
N = 6
BATCH = RequestBatch.of(
    user_ids=["u1", "stranger", "u3", "u0", "u2", "u1"],
    dense=RNG.standard_normal((N, DIM)),
    clusters=SoftContexts.of(RNG.integers(0, 3, (N, 2)), np.full((N, 2), 0.5)),
)
TRAIN_X = RNG.standard_normal((300, DIM))
TRAIN_ITEMS = RNG.choice(ITEM_IDS, 300)
TRAIN_R = (RNG.random(300) < 0.3).astype(float)


def _dense_bandit(cls: type, **params: object) -> RegisteredPolicy:
    policy = cls(**params, random_state=1).init(ITEM_IDS, DIM)
    policy.learn(TRAIN_X, TRAIN_ITEMS, TRAIN_R)
    return bandit_model(policy, {"checkpoint_id": "ck-1", "offsets": {"0": 12}})


def _graph_bandit() -> RegisteredPolicy:
    clusters = np.repeat(np.arange(3), 5)
    items = np.concatenate([ITEM_IDS[:5], ITEM_IDS[2:7], ITEM_IDS[3:]])
    stats = GraphStats.empty(ITEM_IDS, 3, clusters, items)
    policy = DiagLinUCB(alpha=0.3, epsilon=0.1, random_state=2).use(stats)
    contexts = SoftContexts.of(RNG.integers(0, 3, (200, 1)), np.ones((200, 1)))
    shown = policy.recommend(contexts, 1).items[:, 0]
    policy.learn(contexts, shown, (RNG.random(200) < 0.4).astype(float))
    return bandit_model(policy, {"space": "g1"})


def _scores(exploration: str, epsilon: float, mode: str) -> LinearScorePolicy:
    policy = LinearScorePolicy(exploration, epsilon, temperature=0.8, random_state=3)
    bias = RNG.standard_normal(ITEM_IDS.size)
    if mode == "user":
        return policy.fit(ITEM_IDS, ITEM_VECTORS, bias, user_ids=USERS, user_vectors=USER_VECTORS)
    return policy.fit(ITEM_IDS, ITEM_VECTORS if mode == "dense" else None, bias)


REGISTERED: dict[str, tuple[Callable[[], RegisteredPolicy], int]] = {
    "ucb-dense": (lambda: _dense_bandit(DiagLinUCB, alpha=0.5, epsilon=0.1), 3),
    "ts-dense": (lambda: _dense_bandit(DiagLinTS, v=0.7, n_mc_draws=300), 2),
    "ucb-graph": (_graph_bandit, 2),
    "scores-user-softmax": (lambda: scored_model(_scores("softmax", 0.1, "user"),
                                                 {"slate_size": 3, "dataset_hash": "abc"}), 3),
    "scores-dense-greedy": (lambda: scored_model(_scores("greedy", 0.0, "dense")), 2),
    "uniform": (lambda: baseline_model("uniform", uniform_policy(ITEM_IDS, 4)), 3),
    "popularity": (lambda: baseline_model(
        "popularity", popularity_policy(ITEM_IDS, RNG.integers(0, 50, ITEM_IDS.size), 0.1, 5)),
        2),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A real mlflow store holding version 1 of every case (alias ``champion``)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    root = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    experiment = mlflow.create_experiment("registry-round-trip",
                                          artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    models, infos = {}, {}
    with mlflow.start_run():
        for name, (make, _) in REGISTERED.items():
            models[name] = make()
            infos[name] = log_policy_model(models[name], registered_model_name=f"policy-{name}",
                                           artifact_name=name, tags={"dataset_hash": "abc"},
                                           description=f"the {name} policy")
            mlflow.MlflowClient().set_registered_model_alias(f"policy-{name}", "champion", "1")
    yield models, infos
    mlflow.set_tracking_uri(previous)


def _same_slates(a, b) -> None:
    for part in ("items", "scores", "propensities", "propensity_se"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part), err_msg=part)


@pytest.mark.parametrize("name", list(REGISTERED))
def test_round_trip_by_version_and_alias(store, name: str) -> None:
    models, _ = store
    original, k = models[name], REGISTERED[name][1]
    for uri in (f"models:/policy-{name}/1", f"models:/policy-{name}@champion"):
        loaded = load_policy_model(uri)
        assert (loaded.name, loaded.version) == (f"policy-{name}", "1")
        assert (loaded.kind, loaded.spec, loaded.meta) == (original.kind, original.spec,
                                                            original.meta)
        np.testing.assert_array_equal(loaded.item_ids_, original.item_ids_)
        for model in (original, loaded):
            model.reseed(5)
        _same_slates(loaded.recommend(BATCH, k), original.recommend(BATCH, k))
        for model in (original, loaded):
            model.reseed(6)
        np.testing.assert_array_equal(loaded.action_dist(BATCH, k), original.action_dist(BATCH, k))


@pytest.mark.parametrize("name", list(REGISTERED))
def test_pyfunc_predicts_the_same_slates_and_action_dist(store, name: str) -> None:
    import mlflow

    models, _ = store
    original, k = models[name], REGISTERED[name][1]
    pyfunc = mlflow.pyfunc.load_model(f"models:/policy-{name}@champion")
    frame = pyfunc.predict(BATCH.to_pandas(), params={"k": k, "seed": 8})
    original.reseed(8)
    slate = original.recommend(BATCH, k)
    assert list(frame.columns) == ["request", "position", "item_id", "score", "propensity",
                                   "propensity_se"]
    np.testing.assert_array_equal(frame["item_id"].to_numpy().reshape(N, k), slate.items)
    np.testing.assert_array_equal(frame["propensity"].to_numpy().reshape(N, k),
                                  slate.propensities)
    np.testing.assert_array_equal(frame["score"].to_numpy().reshape(N, k), slate.scores)
    dist = pyfunc.predict(BATCH.to_pandas(), params={"k": k, "output": "action_dist",
                                                     "seed": 9})
    original.reseed(9)
    np.testing.assert_array_equal(dist, original.action_dist(BATCH, k))


def test_a_frame_with_only_the_columns_a_policy_needs(store) -> None:
    import mlflow

    users = mlflow.pyfunc.load_model("models:/policy-scores-user-softmax/1")
    out = users.predict(pd.DataFrame({"user_id": ["u2", "nobody"]}))
    assert out["request"].tolist() == [0, 0, 0, 1, 1, 1]  # k from meta["slate_size"]
    dense = mlflow.pyfunc.load_model("models:/policy-ucb-dense/1")
    frame = pd.DataFrame({"context_dense": list(RNG.standard_normal((2, DIM)))})
    assert dense.predict(frame, params={"k": 2}).shape == (4, 6)
    with pytest.raises(ValueError, match="no dense context"):
        dense.predict(pd.DataFrame({"user_id": ["u2"]}))
    with pytest.raises(ValueError, match="did you mean slates"):
        dense.predict(frame, params={"output": "slate"})


def test_signature_example_tags_and_description(store) -> None:
    import mlflow
    from mlflow.models import Model

    _, infos = store
    info = infos["ts-dense"]
    assert info.signature.inputs.input_names() == ["user_id", "context_dense",
                                                   "context_cluster_ids",
                                                   "context_cluster_weights"]
    assert {p.name for p in info.signature.params.params} == {"k", "output", "seed"}
    assert Model.load(info.model_uri).saved_input_example_info is not None
    version = mlflow.MlflowClient().get_model_version("policy-ts-dense", "1")
    assert version.description == "the ts-dense policy"
    assert version.tags["recsys.policy_kind"] == "bandit"
    assert version.tags["recsys.policy_class"] == "DiagLinTS"
    assert version.tags["dataset_hash"] == "abc" and version.tags["recsys.code_version"]
    run = mlflow.get_run(info.run_id)
    assert run.data.tags["dataset_hash"] == "abc"
    assert mlflow.get_logged_model(info.model_id).tags["recsys.policy_kind"] == "bandit"


def test_unknown_uris_are_clear_errors(store) -> None:
    with pytest.raises(ValueError, match="models:/NAME/VERSION or models:/NAME@ALIAS"):
        resolve_version("runs:/abc/policy")
    with pytest.raises(ValueError, match="that the registry holds"):
        resolve_version("models:/policy-ucb-dense@nobody")
    with pytest.raises(ValueError, match="that the registry holds"):
        load_policy_model("models:/no-such-model/1")


# --- the on-disk bundle, without mlflow ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["user", "dense", "none"])
@pytest.mark.parametrize(("exploration", "epsilon"), [("greedy", 0.0), ("epsilon_greedy", 0.2),
                                                      ("softmax", 0.0), ("softmax", 0.3)])
def test_bundle_round_trip_of_every_scored_policy(tmp_path: Path, mode: str, exploration: str,
                                                  epsilon: float) -> None:
    model = scored_model(_scores(exploration, epsilon, mode))
    loaded = RegisteredPolicy.load(model.save(tmp_path / "p"))
    assert loaded.layout == mode
    for m in (model, loaded):
        m.reseed(1)
    _same_slates(loaded.recommend(BATCH, 3), model.recommend(BATCH, 3))
    np.testing.assert_array_equal(loaded.action_dist(BATCH, 3), model.action_dist(BATCH, 3))


def test_bundles_refuse_other_versions_kinds_and_pickles(tmp_path: Path) -> None:
    folder = baseline_model("uniform", uniform_policy(ITEM_IDS)).save(tmp_path / "p")
    document = json.loads((folder / "policy.json").read_text())
    (folder / "policy.json").write_text(json.dumps({**document, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version: expected 1, got 99"):
        RegisteredPolicy.load(folder)
    (folder / "policy.json").write_text(json.dumps({**document, "kind": "magic"}))
    with pytest.raises(ValueError, match="kind: expected one of"):
        RegisteredPolicy.load(folder)
    (folder / "policy.json").write_text(json.dumps(document))
    np.savez(folder / "arrays.npz", item_ids=np.array([{"evil": 1}], dtype=object),
             item_vectors=np.zeros((1, 0)), item_bias=np.zeros(1))
    with pytest.raises(ValueError, match="pickled objects"):
        RegisteredPolicy.load(folder)


def test_builders_check_their_policy() -> None:
    with pytest.raises(TypeError, match="LinearScorePolicy"):
        scored_model(DiagLinUCB())
    with pytest.raises(TypeError, match=r"recsys\.bandits policy"):
        bandit_model(uniform_policy(ITEM_IDS))
    with pytest.raises(TypeError, match="RequestBatch"):
        bandit_model(DiagLinUCB().init(ITEM_IDS, DIM)).recommend(np.zeros((1, DIM)), 1)
    with pytest.raises(ValueError, match="no cluster context"):
        _graph_bandit().recommend(RequestBatch.of(["a"], dense=np.zeros((1, DIM))), 1)
