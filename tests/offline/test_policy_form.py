"""The policy form of offline models: the model's own scores on raw ids, its greedy slates are the
model's top k, exploration gives propensities, and it round-trips through a real registry."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from offline.models import BiasedMF, TwoTower
from offline.policy_form import linear_parts, policy_form
from offline.registry import IdMaps
from offline.spec import PolicySpec
from recsys.policies import RequestBatch
from recsys.registry import load_policy_model, log_policy_model, scored_model

N_USERS, N_ITEMS = 7, 9
IDS = IdMaps(np.array([f"user-{u}" for u in range(N_USERS)], dtype=object),
             np.arange(N_ITEMS, dtype=np.int64) * 10 + 3)


def _models() -> dict[str, torch.nn.Module]:
    """Models with non-trivial biases (the parts a policy form could drop by mistake)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    mf = BiasedMF(N_USERS, N_ITEMS, dim=3, global_bias=2.5)
    two_tower = TwoTower(rng.normal(size=(N_USERS, 4)), rng.normal(size=(N_ITEMS, 2)), dim=3,
                         hidden=(5,))
    with torch.no_grad():
        mf.user_bias.weight.normal_()
        mf.item_bias.weight.normal_()
        two_tower.item_bias.normal_()
    return {"mf": mf, "two_tower": two_tower}


@pytest.mark.parametrize("name", ["mf", "two_tower"])
def test_the_policy_scores_as_the_model_and_its_greedy_slates_are_the_models_top_k(name):
    model = _models()[name]
    with torch.no_grad():
        expected = model.score_all(torch.arange(N_USERS)).double().numpy()
    users, items, bias = linear_parts(model)
    np.testing.assert_allclose(users @ items.T + bias, expected, rtol=1e-5, atol=1e-5)

    policy = policy_form(model, IDS, PolicySpec(exploration="greedy"), random_state=0)
    raw_users = IDS.user_ids.astype(str)
    np.testing.assert_allclose(policy.scores(raw_users), expected, rtol=1e-5, atol=1e-5)
    k = 4
    slate = policy.recommend(raw_users, k)
    top = np.argsort(-expected, axis=1, kind="stable")[:, :k]
    assert slate.items.tolist() == IDS.item_ids[top].tolist()  # raw item ids, the model's order
    assert np.all(slate.propensities == 1.0)


def test_exploration_comes_from_the_spec_and_unknown_users_get_the_mean_user():
    model = _models()["mf"]
    policy = policy_form(model, IDS, PolicySpec(temperature=0.5), random_state=0)
    assert policy.exploration == "softmax" and policy.temperature == 0.5
    dist = policy.action_dist(np.array(["user-0", "newcomer"]), 2)
    assert dist.shape == (2, N_ITEMS, 2)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    assert (dist > 0).all()  # softmax: every item can be shown
    users, _, _ = linear_parts(model)
    np.testing.assert_allclose(policy.context_vectors(np.array(["newcomer"]))[0],
                               users.mean(axis=0))
    eps = policy_form(model, IDS, PolicySpec(exploration="epsilon_greedy", epsilon=0.2))
    slate = eps.recommend(np.array(["user-1"]), 3)
    assert (slate.propensities >= 0.2 / N_ITEMS).all()


def test_a_model_that_is_not_an_offline_scorer_is_refused():
    with pytest.raises(TypeError, match="model: expected a BiasedMF or TwoTower model, got Linear"):
        linear_parts(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="id maps"):
        policy_form(_models()["mf"], IdMaps.identity(N_USERS, N_ITEMS + 1))


@pytest.fixture
def store(tmp_path, mlflow_store):
    """A real mlflow store for one test; the previous tracking URI restored after."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_store)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "policy-form", artifact_location=str(tmp_path / "art")))
    yield
    mlflow.set_tracking_uri(previous)


@pytest.mark.integration
@pytest.mark.usefixtures("store")
def test_the_policy_form_round_trips_through_the_registry():
    model = _models()["two_tower"]
    with torch.no_grad():
        expected = model.score_all(torch.arange(N_USERS)).double().numpy()
    policy = policy_form(model, IDS, PolicySpec(exploration="greedy"), random_state=0)
    with mlflow.start_run():
        log_policy_model(scored_model(policy, {"source": "offline"}),
                         registered_model_name="toy-policy")
    loaded = load_policy_model("models:/toy-policy/1")
    assert loaded.kind == "scores" and loaded.version == "1"
    batch = RequestBatch.of(user_ids=IDS.user_ids.astype(str))
    top = np.argsort(-expected, axis=1, kind="stable")[:, :3]
    assert loaded.recommend(batch, 3).items.tolist() == IDS.item_ids[top].tolist()
    pyfunc = mlflow.pyfunc.load_model("models:/toy-policy/1")
    slates = pyfunc.predict(pd.DataFrame({"user_id": IDS.user_ids.astype(str)}),
                            params={"k": 3})
    assert slates["item_id"].to_numpy().reshape(N_USERS, 3).tolist() == (
        IDS.item_ids[top].tolist())
