"""Logging policies' propensities and the simulator's ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from simulators.ground_truth import optimal_slates, optimal_value, policy_value
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import (
    EpsilonMixturePolicy,
    GreedyPolicy,
    SoftmaxPolicy,
    UniformPolicy,
    plackett_luce_marginals,
)

SIM = SlateSimulator(SimulatorConfig(n_items=8, slate_size=3, n_users=50))
PBM = SlateSimulator(SimulatorConfig(n_items=8, slate_size=3, n_users=50, choice_model="pbm"))
POLICIES = {
    "uniform": UniformPolicy(8, random_state=0),
    "epsilon_greedy": EpsilonMixturePolicy(GreedyPolicy(SIM.item_features), 0.3,
                                           random_state=0),
    "softmax": SoftmaxPolicy(SIM.item_features, temperature=0.7, random_state=0),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_propensities_are_the_empirical_position_marginals(name):
    policy = clone(POLICIES[name])
    context = np.repeat(SIM.user_features(np.array([4])), 100_000, axis=0)
    slate = policy.recommend(context, 3)
    slates, pscore = slate.items, slate.propensities
    dist = policy.action_dist(context[:1], 3)[0]
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)
    assert (np.sort(slates, axis=1)[:, 1:] != np.sort(slates, axis=1)[:, :-1]).all()
    np.testing.assert_allclose(pscore, dist[slates, np.arange(3)])
    freq = np.stack([np.bincount(slates[:, k], minlength=8) for k in range(3)], axis=1) / 1e5
    se = np.sqrt(dist * (1 - dist) / 1e5) + 1e-9
    assert (np.abs(freq - dist) < 5 * se).all()


def test_plackett_luce_marginals_of_a_two_item_catalogue():
    p = np.array([[0.8, 0.2]])
    marg = plackett_luce_marginals(p, 2)[0]
    np.testing.assert_allclose(marg, [[0.8, 0.2], [0.2, 0.8]])


def test_policy_values_match_simulated_clicks():
    sim = SlateSimulator(SimulatorConfig(n_items=20, slate_size=1, n_users=300, seed=3))
    rng = np.random.default_rng(1)  # one stream for the requests, the slates and the clicks
    policy = SoftmaxPolicy(sim.item_features, random_state=rng)
    truth = policy_value(sim, policy)
    assert truth.exact and truth.standard_error == 0
    logs = collect_logs(sim, policy, 300_000, rng)
    se = np.sqrt(truth.value * (1 - truth.value) / logs.height)
    assert abs(logs["reward"].mean() - truth.value) < 4 * se


@pytest.mark.parametrize("choice_model", ["mnl", "pbm"])
def test_slate_policy_value_by_monte_carlo_has_a_standard_error(choice_model):
    sim = SlateSimulator(SimulatorConfig(n_items=20, slate_size=3, n_users=300, seed=4,
                                         choice_model=choice_model))
    truth = policy_value(sim, SoftmaxPolicy(sim.item_features, random_state=0), n_monte_carlo=100)
    assert not truth.exact and truth.standard_error > 0
    rng = np.random.default_rng(2)
    logs = collect_logs(sim, SoftmaxPolicy(sim.item_features, random_state=rng), 200_000, rng)
    clicks_per_request = logs["reward"].sum() / 200_000
    se = np.sqrt(truth.value / 200_000) + truth.standard_error
    assert abs(clicks_per_request - truth.value) < 4 * se


@pytest.mark.parametrize("sim", [SIM, PBM], ids=["mnl", "pbm"])
def test_optimal_policy_beats_every_other_policy_and_ordering_matters(sim):
    best = optimal_value(sim).value
    for policy in POLICIES.values():
        assert policy_value(sim, clone(policy)).value < best
    greedy = policy_value(sim, GreedyPolicy(sim.item_features))
    assert greedy.exact
    slates = optimal_slates(sim)
    users = np.arange(sim.config.n_users)
    assert sim.user_weights @ sim.expected_clicks(users, slates[:, ::-1]) < best


def test_regret_is_zero_for_the_optimum_and_positive_otherwise():
    from simulators.ground_truth import regret

    # Noise-free features: greedy on the true utilities is the optimal policy.
    sim = SlateSimulator(SimulatorConfig(n_items=8, slate_size=3, n_users=50, feature_noise=0.0))
    oracle = GreedyPolicy(sim.item_latent, item_bias=sim.item_bias)
    assert regret(sim, oracle).value == pytest.approx(0.0, abs=1e-12)
    assert regret(sim, clone(POLICIES["uniform"]), n_monte_carlo=30).value > 0.01


def test_parameters_are_checked_when_the_policy_is_used():
    features = SIM.item_features
    context = SIM.user_features(np.arange(3))
    lazy = SoftmaxPolicy(features, temperature=-1.0)  # the constructor only stores
    with pytest.raises(ValueError, match=r"^temperature: expected a real number > 0, got -1"):
        lazy.recommend(context, 2)
    with pytest.raises(ValueError, match=r"^k: expected at most 3 \(exact Plackett"):
        SoftmaxPolicy(features).action_dist(context, 4)
    with pytest.raises(ValueError, match=r"^k: expected at most 5 \(the available items\)"):
        UniformPolicy(8).recommend(context, 6, available=np.arange(8) < 5)
    with pytest.raises(ValueError, match=r"^available: expected a bool mask of shape \(8,\)"):
        UniformPolicy(8).recommend(context, 2, available=np.ones(7, dtype=bool))
    with pytest.raises(TypeError, match=r"^k: expected an integer >= 1, got 2.0"):
        GreedyPolicy(features).recommend(context, 2.0)
    with pytest.raises(ValueError, match=r"^epsilon: expected a real number in \[0, 1\]"):
        EpsilonMixturePolicy(GreedyPolicy(features), 1.5).action_dist(context)
    with pytest.raises(TypeError, match=r"^base: expected a policy of simulators.policies"):
        EpsilonMixturePolicy(object(), 0.1).recommend(context)
    with pytest.raises(ValueError, match=r"^contexts: expected shape \(n, 16\)"):
        GreedyPolicy(features).recommend(context[:, :3], 2)


def test_random_state_follows_scikit_learn():
    context = np.repeat(SIM.user_features(np.array([1])), 200, axis=0)
    policy = SoftmaxPolicy(SIM.item_features, random_state=3)
    first = policy.recommend(context, 3).items
    assert not np.array_equal(policy.recommend(context, 3).items, first)  # the stream advances
    np.testing.assert_array_equal(clone(policy).recommend(context, 3).items, first)
    policy.set_params(random_state=3)  # a new random_state starts over
    np.testing.assert_array_equal(policy.recommend(context, 3).items, first)
