"""The simulator's choice model, its optional effects and the gymnasium wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from simulators.env import SlateRecommendationEnv
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import UniformPolicy


def run_uniform(sim: SlateSimulator, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    requests = sim.sample_requests(n, rng)
    slates = UniformPolicy(sim.config.n_items, random_state=rng).recommend(
        requests.context, sim.config.slate_size, available=requests.available
    ).items
    return requests, slates, sim.respond(requests, slates, rng)


def test_choices_follow_the_listwise_probabilities_and_ctr_is_a_few_percent():
    sim = SlateSimulator(SimulatorConfig())
    requests, _, responses = run_uniform(sim, 200_000)
    probs = responses.click_probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    expected = probs.mean(axis=0)
    observed = np.bincount(
        np.where(responses.clicked_position >= 0, responses.clicked_position, 3), minlength=4
    ) / len(requests)
    se = np.sqrt(expected * (1 - expected) / len(requests))
    assert (np.abs(observed - expected) < 4 * se).all()
    ctr_per_shown_item = responses.clicks.mean()
    assert 0.005 < ctr_per_shown_item < 0.08
    # Position matters: the first slot is clicked more than the last for random slates.
    assert observed[0] > observed[2]


def test_mnl_numbers_are_pinned():
    """The MNL's clicks and ground truth as they were before the PBM was added (same seeds)."""
    from simulators.ground_truth import optimal_value, policy_value
    from simulators.policies import GreedyPolicy, SoftmaxPolicy

    sim = SlateSimulator(SimulatorConfig(n_items=8, slate_size=3, n_users=50, click_noise=0.1))
    assert optimal_value(sim).value == pytest.approx(0.18199346015566176, rel=1e-12)
    greedy = policy_value(sim, GreedyPolicy(sim.item_features)).value
    assert greedy == pytest.approx(0.164767545667025, rel=1e-12)
    softmax = policy_value(sim, SoftmaxPolicy(sim.item_features, random_state=0), 20).value
    assert softmax == pytest.approx(0.15422864058321278, rel=1e-12)
    rng = np.random.default_rng(0)
    requests = sim.sample_requests(1000, rng)
    slates = np.argsort(rng.random((1000, 8)), axis=1)[:, :3]
    expected = sim.expected_clicks(requests.user_id, slates)
    probs = sim.click_probabilities(requests.user_id, slates)
    np.testing.assert_array_equal(expected, 1.0 - probs[:, -1])
    responses = sim.respond(requests, slates, rng)
    assert (responses.clicks.sum(), responses.noise.sum()) == (127, 87)
    assert responses.clicked_position[:20].tolist() == [-1] * 8 + [0] + [-1] * 7 + [0, 2, -1, -1]


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"^slate_size: expected at most n_items"):
        SimulatorConfig(n_items=2, slate_size=3)
    with pytest.raises(ValueError, match=r"^click_noise: expected a real number in"):
        SimulatorConfig(click_noise=1.5)


def test_accidental_clicks_are_labelled():
    sim = SlateSimulator(SimulatorConfig(click_noise=0.05))
    _, _, responses = run_uniform(sim, 100_000)
    assert responses.noise.mean() == pytest.approx(0.05, abs=0.004)
    assert (responses.clicked_position[responses.noise] >= 0).all()
    baseline = SlateSimulator(SimulatorConfig())
    _, _, clean = run_uniform(baseline, 100_000)
    assert (responses.clicked_position >= 0).mean() > (clean.clicked_position >= 0).mean()


def test_fatigue_lowers_the_click_probability_of_repeated_items_and_decays():
    sim = SlateSimulator(SimulatorConfig(fatigue_strength=1.0, fatigue_decay=0.5))
    user = np.array([3])
    slate = np.array([[0, 1, 2]])
    fresh = sim.click_probabilities(user, slate)[0, 0]
    rng = np.random.default_rng(0)
    for _ in range(3):
        requests = sim.sample_requests(1, rng)
        requests = type(requests)(user, requests.context, requests.time, requests.available)
        sim.respond(requests, slate, rng)
    tired = sim.click_probabilities(user, slate)[0, 0]
    assert tired < 0.5 * fresh
    other = np.array([[5, 6, 7]])
    for _ in range(6):  # the user's clock moves on while seeing other items
        requests = sim.sample_requests(1, rng)
        requests = type(requests)(user, requests.context, requests.time, requests.available)
        sim.respond(requests, other, rng)
    assert tired < sim.click_probabilities(user, slate)[0, 0] <= fresh


def test_drift_moves_only_the_users_who_came():
    sim = SlateSimulator(SimulatorConfig(drift_std=0.1))
    before = sim.user_latent.copy()
    requests, _, _ = run_uniform(sim, 50)
    moved = np.flatnonzero((sim.user_latent != before).any(axis=1))
    np.testing.assert_array_equal(moved, np.unique(requests.user_id))


def test_new_items_arrive_over_time():
    sim = SlateSimulator(SimulatorConfig(new_item_fraction=0.3, new_item_horizon=1000))
    assert sim.available_items().sum() == 70
    requests, slates, _ = run_uniform(sim, 500)
    assert requests.available[slates].all()
    assert 70 < sim.available_items().sum() < 100
    hidden = np.flatnonzero(~sim.available_items())[:1]
    with pytest.raises(ValueError, match="not arrived"):
        sim.respond(sim.sample_requests(1), np.array([[hidden[0], 0, 1]]))


def test_popularity_bias_concentrates_requests():
    sim = SlateSimulator(SimulatorConfig(popularity_bias=1.5))
    users = sim.sample_requests(50_000, np.random.default_rng(0)).user_id
    counts = np.sort(np.bincount(users, minlength=sim.config.n_users))[::-1]
    assert counts[:100].sum() > 0.5 * counts.sum()


@pytest.mark.filterwarnings("ignore:.*Box observation space:UserWarning")
def test_gymnasium_env():
    env = SlateRecommendationEnv(episode_length=4)
    env.action_space.seed(0)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    total = 0
    for step in range(4):
        obs, reward, terminated, truncated, info = env.step(np.array([0, 1, 2]))
        assert reward == float(info["clicked_position"] >= 0)
        assert info["click_probabilities"].sum() == pytest.approx(1.0)
        assert truncated == (step == 3) and not terminated
        total += reward
    with pytest.raises(ValueError, match="distinct"):
        env.step(np.array([1, 1, 2]))
