"""The simulator's bandit adapter: its contexts, expected rewards and clicks are the simulator's."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.bandit_env import SimulatorBanditEnv
from simulators.ground_truth import item_click_probabilities, optimal_value
from simulators.model import SimulatorConfig, SlateSimulator

CONFIG = SimulatorConfig(n_users=200, n_items=12, dim=6, no_click_utility=1.0, seed=3)


def test_contexts_are_the_observable_features_with_an_intercept() -> None:
    env = SimulatorBanditEnv(CONFIG, seed=1)
    x = env.contexts(50)
    users = env.users(x)
    assert x.shape == (50, env.dim) == (50, env.sim.n_features + 1)
    np.testing.assert_array_equal(x[:, 0], 1.0)
    np.testing.assert_array_equal(x[:, 1:], env.sim.user_features(users))
    bare = SimulatorBanditEnv(CONFIG, intercept=False, seed=1)
    np.testing.assert_array_equal(bare.contexts(50), x[:, 1:])  # same seed, same users


def test_expected_rewards_are_the_exact_single_slot_click_probabilities() -> None:
    env = SimulatorBanditEnv(SimulatorConfig(**{**CONFIG.__dict__, "click_noise": 0.1}), seed=1)
    x = env.contexts(300)
    truth = item_click_probabilities(env.sim)[env.users(x)]
    np.testing.assert_allclose(env.expected_rewards(x), truth, rtol=1e-12, atol=0)
    whole = SimulatorBanditEnv(CONFIG, seed=0)
    best = optimal_value(whole.sim, slate_size=1).value
    assert whole.optimal_reward() == pytest.approx(best, rel=1e-12)


def test_clicks_follow_the_expected_rewards() -> None:
    env = SimulatorBanditEnv(CONFIG, seed=2)
    n = 200_000
    x = env.contexts(n)
    mu = env.expected_rewards(x)
    actions = np.arange(n) % env.n_actions
    p = mu[np.arange(n), actions]
    r = env.sample_rewards(x, actions)
    assert set(np.unique(r)) <= {0.0, 1.0}
    assert abs(r.mean() - p.mean()) < 4 * np.sqrt(p.mean() * (1 - p.mean()) / n)
    for a in (0, env.n_actions - 1):  # per action too, so a shifted item index would show
        rows = actions == a
        se = np.sqrt(p[rows].mean() * (1 - p[rows].mean()) / rows.sum())
        assert abs(r[rows].mean() - p[rows].mean()) < 4 * se


def test_the_state_moves_with_the_served_items() -> None:
    cfg = SimulatorConfig(**{**CONFIG.__dict__, "n_users": 1, "fatigue_strength": 1.0})
    env = SimulatorBanditEnv(cfg, seed=0)
    x = env.contexts(5)
    before = env.expected_rewards(x)[0]
    env.sample_rewards(x, np.full(5, 4))
    x = env.contexts(5)
    after = env.expected_rewards(x)[0]
    assert after[4] < before[4]  # the shown item tires the user
    np.testing.assert_allclose(np.delete(after, 4), np.delete(before, 4))


def test_the_same_seed_gives_the_same_requests_and_draws_whatever_is_served() -> None:
    a, b = SimulatorBanditEnv(CONFIG, seed=7), SimulatorBanditEnv(CONFIG, seed=7)
    for _ in range(3):
        xa, xb = a.contexts(100), b.contexts(100)
        np.testing.assert_array_equal(xa, xb)
        a.sample_rewards(xa, np.zeros(100, dtype=np.int64))
        b.sample_rewards(xb, np.ones(100, dtype=np.int64))


def test_linear_floor_is_small_and_zero_with_a_single_item() -> None:
    noisy = SimulatorBanditEnv(CONFIG)
    assert 0.0 < noisy.linear_floor() < 0.2 * noisy.optimal_reward()
    # One item: every policy is optimal, so the floor is exactly 0.
    single = SimulatorBanditEnv(SimulatorConfig(n_items=1, slate_size=1, dim=4))
    assert single.linear_floor() == 0.0


def test_bad_use_is_refused() -> None:
    env = SimulatorBanditEnv(CONFIG, seed=0)
    with pytest.raises(RuntimeError, match="contexts"):
        env.expected_rewards(np.zeros((3, env.dim)))
    x = env.contexts(4)
    with pytest.raises(ValueError, match="last contexts"):
        env.expected_rewards(x + 1.0)
    with pytest.raises(ValueError, match="actions"):
        env.sample_rewards(x, np.zeros(3, dtype=np.int64))
    env.sample_rewards(x, np.zeros(4, dtype=np.int64))
    with pytest.raises(RuntimeError, match="contexts"):
        env.sample_rewards(x, np.zeros(4, dtype=np.int64))  # a batch is served once
    with pytest.raises(ValueError, match="new_item_fraction"):
        SimulatorBanditEnv(SimulatorConfig(new_item_fraction=0.1))
    sim = SlateSimulator(CONFIG)
    assert SimulatorBanditEnv(sim).sim is sim
