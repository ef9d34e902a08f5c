"""``action_dist``: OBP's shape, sums to one, and the distribution ``recommend`` really samples."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import (
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    Greedy,
    InSlateTS,
    LinTS,
    LinUCB,
    SquareCB,
)
from recsys.bandits import base as policy_base
from recsys.bandits.graph import GraphStats, SoftContexts

N_ITEMS, DIM, K = 6, 3, 3
ITEMS = np.arange(10, 10 + N_ITEMS)
REPEATS = 4000

EXACT = {
    "greedy": lambda: Greedy(random_state=1),
    "greedy-floor": lambda: Greedy(exploration_floor=0.1, random_state=2),
    "eps-greedy": lambda: EpsilonGreedy(0.3, random_state=3),
    "ucb-eps": lambda: DiagLinUCB(alpha=1.0, epsilon=0.2, random_state=4),
    "linucb-eps": lambda: LinUCB(alpha=0.5, epsilon=0.1, exploration_floor=0.05, random_state=5),
    "squarecb": lambda: SquareCB(gamma=10.0, random_state=6),
    "squarecb-floor": lambda: SquareCB(gamma=10.0, exploration_floor=0.1, random_state=7),
}
MONTE_CARLO = {
    "ts": lambda: DiagLinTS(v=2.0, n_mc_draws=400, random_state=8),
    "inslate-ts-floor": lambda: InSlateTS(v=1.0, n_mc_draws=400, exploration_floor=0.2,
                                          random_state=9),
    "lints": lambda: LinTS(v=1.0, n_mc_draws=400, random_state=10),
}
ALL = {**EXACT, **MONTE_CARLO}


def trained(policy, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, DIM))
    policy.init(ITEMS, DIM)
    policy.learn(x, rng.choice(ITEMS, 60), rng.random(60))
    return policy


def columns(policy, items: np.ndarray) -> np.ndarray:
    """Column of each item id in ``item_ids_`` (the action index of ``action_dist``)."""
    return np.searchsorted(policy.item_ids_, items)


@pytest.mark.parametrize("make", ALL.values(), ids=ALL.keys())
@pytest.mark.parametrize("k", [1, K])
def test_shape_and_every_position_sums_to_one(make, k: int) -> None:
    policy = trained(make())
    contexts = np.random.default_rng(1).normal(size=(40, DIM))
    dist = policy.action_dist(contexts, k)
    assert dist.shape == (40, N_ITEMS, k)
    assert dist.min() >= 0.0 and dist.max() <= 1.0
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    if k > 1:  # a slate holds distinct items: an item's positions together are at most 1
        assert dist.sum(axis=2).max() <= 1.0 + 1e-12


@pytest.mark.parametrize("make", EXACT.values(), ids=EXACT.keys())
def test_exact_policies_log_exactly_their_action_dist(make) -> None:
    policy = trained(make())
    contexts = np.random.default_rng(2).normal(size=(300, DIM))
    dist = policy.action_dist(contexts, K)
    slate = policy.recommend(contexts, K)
    logged = dist[np.arange(300)[:, None], columns(policy, slate.items), np.arange(K)]
    np.testing.assert_allclose(slate.propensities, logged, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make", MONTE_CARLO.values(), ids=MONTE_CARLO.keys())
def test_thompson_action_dist_agrees_with_logged_propensities_within_mc_error(make) -> None:
    policy = trained(make())
    contexts = np.random.default_rng(3).normal(size=(200, DIM))
    dist = policy.action_dist(contexts, K)
    slate = policy.recommend(contexts, K)
    logged = dist[np.arange(200)[:, None], columns(policy, slate.items), np.arange(K)]
    # two independent estimates of one probability: their difference has both variances
    se = np.sqrt(slate.propensity_se**2 + logged * (1 - logged) / policy.n_mc_draws) + 1e-9
    z = (slate.propensities - logged) / se
    assert np.abs(z).max() < 5.0
    assert np.abs(z).mean() < 1.2  # about 0.8 for standard normal z


@pytest.mark.parametrize("make", ALL.values(), ids=ALL.keys())
def test_action_dist_is_how_often_recommend_shows_each_item(make) -> None:
    """Empirical frequencies of ``recommend`` on one repeated request match ``action_dist``."""
    policy = trained(make())
    x = np.random.default_rng(5).normal(size=(1, DIM))
    dist = policy.action_dist(x, K)[0]
    shown = columns(policy, policy.recommend(np.repeat(x, REPEATS, axis=0), K).items)
    mc_var = dist * (1 - dist) / getattr(policy, "n_mc_draws", np.inf)
    for p in range(K):
        freq = np.bincount(shown[:, p], minlength=N_ITEMS) / REPEATS
        se = np.sqrt(dist[:, p] * (1 - dist[:, p]) / REPEATS + mc_var[:, p]) + 1e-12
        assert np.all(np.abs(freq - dist[:, p]) <= 4.5 * se), (p, freq, dist[:, p])


@pytest.mark.parametrize("make", [EXACT["greedy"], EXACT["squarecb"], EXACT["eps-greedy"]],
                         ids=["greedy", "squarecb", "eps-greedy"])
def test_ties_are_shared_and_still_match_recommend(make) -> None:
    """Cold start: every score is tied. Ties are broken at random, so the exact distribution
    spreads evenly, and the logged propensities (IGW included) are the same numbers."""
    policy = make().init(ITEMS, DIM)
    x = np.zeros((REPEATS, DIM))
    dist = policy.action_dist(x[:1], K)[0]
    np.testing.assert_allclose(dist, 1.0 / N_ITEMS)
    slate = policy.recommend(x, K)
    np.testing.assert_allclose(slate.propensities, 1.0 / N_ITEMS, rtol=1e-12)
    counts = np.bincount(columns(policy, slate.items[:, 1]), minlength=N_ITEMS)
    assert counts.min() > REPEATS / N_ITEMS * 0.8


def test_partial_ties_split_ranks_exactly() -> None:
    """Two items tied at the top share ranks 0 and 1; the next item is rank 2 for sure."""
    prior = np.array([[3.0], [3.0], [2.0], [1.0], [1.0], [0.0]])
    policy = Greedy(random_state=0).init(ITEMS, 1, prior_mean=prior)
    dist = policy.action_dist(np.ones((1, 1)), K)[0]
    expected = np.zeros((N_ITEMS, K))
    expected[0, :2] = expected[1, :2] = 0.5
    expected[2, 2] = 1.0
    np.testing.assert_allclose(dist, expected)


@pytest.mark.parametrize("make", [EXACT["ucb-eps"], EXACT["squarecb-floor"]],
                         ids=["ucb-eps", "squarecb-floor"])
def test_blocks_of_rounds_give_the_same_answer(make, monkeypatch) -> None:
    policy = trained(make())
    contexts = np.random.default_rng(6).normal(size=(50, DIM))
    whole = policy.action_dist(contexts, K)
    monkeypatch.setattr(policy_base, "_ACTION_DIST_CELLS", 2 * N_ITEMS * K)  # 2 rounds a block
    np.testing.assert_array_equal(policy.action_dist(contexts, K), whole)


def graph_stats() -> GraphStats:
    # cluster 0 → items 10, 11, 12; cluster 1 → items 12, 13, 14, 15
    clusters = [0, 0, 0, 1, 1, 1, 1]
    items = [10, 11, 12, 12, 13, 14, 15]
    stats = GraphStats.empty(ITEMS, 2, clusters, items)
    rng = np.random.default_rng(7)
    ctx = SoftContexts.of(rng.integers(0, 2, (80, 1)), np.ones((80, 1)))
    eligible = {0: [10, 11, 12], 1: [12, 13, 14, 15]}
    shown = [rng.choice(eligible[int(c)]) for c in ctx.clusters[:, 0]]
    stats.learn(ctx, shown, rng.random(80))
    return stats


@pytest.mark.parametrize("make", [EXACT["ucb-eps"], EXACT["squarecb-floor"],
                                  MONTE_CARLO["ts"]], ids=["ucb-eps", "squarecb-floor", "ts"])
def test_graph_non_candidates_get_zero(make) -> None:
    policy = make().use(graph_stats())
    ctx = SoftContexts.of([[0], [1]], [[1.0], [1.0]])
    dist = policy.action_dist(ctx, 2)
    assert dist.shape == (2, N_ITEMS, 2)
    np.testing.assert_array_equal(dist[0, 3:], 0.0)  # items 13.. are not cluster 0's
    np.testing.assert_array_equal(dist[1, :2], 0.0)  # items 10, 11 are not cluster 1's
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-12)
    if getattr(policy, "exploration_floor", 0) or getattr(policy, "epsilon", 0):
        assert dist[0, :3].min() > 0 and dist[1, 2:].min() > 0
    with pytest.raises(ValueError, match=r"only 3 eligible item\(s\) but k=4"):
        policy.action_dist(ctx, 4)


def test_thompson_without_draws_refuses_to_guess() -> None:
    policy = trained(DiagLinTS(n_mc_draws=0))
    with pytest.raises(ValueError, match="n_mc_draws: expected > 0 for action_dist, got 0"):
        policy.action_dist(np.ones((2, DIM)))


def test_k_must_fit_the_candidates() -> None:
    policy = trained(Greedy())
    with pytest.raises(ValueError, match=r"only 6 eligible item\(s\) but k=7"):
        policy.action_dist(np.ones((2, DIM)), 7)
