"""Diag-LinUCB / diagonal TS against the full-covariance references."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import DenseStats, DiagLinTS, DiagLinUCB, FullStats, LinTS, LinUCB
from recsys.bandits.graph import GraphStats, SoftContexts

N_ITEMS, DIM = 7, 6


def one_hot_batches(seed: int, n_batches: int = 4, batch: int = 300):
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        x = np.eye(DIM)[rng.integers(0, DIM, batch)] * rng.uniform(0.5, 2.0, (batch, 1))
        yield x, rng.integers(0, N_ITEMS, batch), rng.random(batch)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_hot_diag_ucb_scores_equal_linucb(seed: int) -> None:
    diag = DiagLinUCB(alpha=1.3, lam=0.7).init(np.arange(N_ITEMS), DIM)
    full = LinUCB(alpha=1.3, lam=0.7).init(np.arange(N_ITEMS), DIM)
    for x, items, r in one_hot_batches(seed):
        diag.learn(x, items, r)
        full.learn(x, items, r)
    queries = np.eye(DIM)[np.random.default_rng(seed + 10).integers(0, DIM, 50)]
    np.testing.assert_allclose(diag.score(queries), full.score(queries), rtol=0, atol=1e-9)
    np.testing.assert_allclose(diag.score(queries, exploit=True),
                               full.score(queries, exploit=True), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_hot_diag_ts_posterior_equals_lints(seed: int) -> None:
    diag = DiagLinTS(v=0.8, lam=2.0).init(np.arange(N_ITEMS), DIM)
    full = LinTS(v=0.8, lam=2.0).init(np.arange(N_ITEMS), DIM)
    for x, items, r in one_hot_batches(seed):
        diag.learn(x, items, r)
        full.learn(x, items, r)
    mean_d, var_d = diag.posterior()
    mean_f, cov_f = full.posterior()
    np.testing.assert_allclose(mean_d, mean_f, rtol=0, atol=1e-9)
    np.testing.assert_allclose(var_d, np.diagonal(cov_f, axis1=1, axis2=2), rtol=0, atol=1e-9)
    off_diagonal = cov_f * (1 - np.eye(DIM))
    np.testing.assert_allclose(off_diagonal, 0.0, atol=1e-9)


def test_sherman_morrison_inverse_matches_direct_inverse() -> None:
    rng = np.random.default_rng(3)
    stats = FullStats.empty(np.arange(4), 5, lam=1.0)
    for _ in range(5):
        stats.learn(rng.normal(size=(400, 5)), rng.integers(0, 4, 400), rng.random(400))
    direct = np.linalg.inv(np.eye(5) + stats.gram)
    np.testing.assert_allclose(stats.a_inv, direct, rtol=1e-9, atol=1e-12)


def test_correlated_dense_contexts_diag_differs_from_full_and_the_gap_is_measured() -> None:
    """Not an equivalence: the diagonal drops cross terms. The gap must be visible and finite."""
    rng = np.random.default_rng(4)
    cov = 0.6 * np.ones((DIM, DIM)) + 0.4 * np.eye(DIM)
    x = rng.multivariate_normal(np.zeros(DIM), cov, size=3000)
    theta = rng.normal(size=(N_ITEMS, DIM))
    items = rng.integers(0, N_ITEMS, 3000)
    r = (x * theta[items]).sum(1) + 0.1 * rng.normal(size=3000)
    diag = DiagLinUCB(reward_range=(-100, 100)).init(np.arange(N_ITEMS), DIM).learn(x, items, r)
    full = LinUCB(reward_range=(-100, 100)).init(np.arange(N_ITEMS), DIM).learn(x, items, r)
    q = rng.multivariate_normal(np.zeros(DIM), cov, size=200)
    truth = q @ theta.T
    err_diag = np.abs(diag.score(q, exploit=True) - truth).mean()
    err_full = np.abs(full.score(q, exploit=True) - truth).mean()
    assert err_full < 0.05
    assert err_diag > 5 * err_full


def test_graph_k1_equals_dense_one_hot() -> None:
    """Graph layout on a complete bipartite graph with K = 1 contexts = dense one-hot Diag."""
    n_clusters = DIM
    edges_c = np.repeat(np.arange(n_clusters), N_ITEMS)
    edges_i = np.tile(np.arange(N_ITEMS), n_clusters)
    graph = GraphStats.empty(np.arange(N_ITEMS), n_clusters, edges_c, edges_i, lam=1.5)
    dense = DenseStats.empty(np.arange(N_ITEMS), DIM, lam=1.5)
    rng = np.random.default_rng(5)
    cl = rng.integers(0, n_clusters, 500)
    items, r = rng.integers(0, N_ITEMS, 500), rng.random(500)
    graph.learn(SoftContexts.of(cl[:, None], np.ones((500, 1))), items, r)
    dense.learn(np.eye(DIM)[cl], items, r)
    ug = DiagLinUCB(alpha=0.9, lam=1.5).use(graph)
    ud = DiagLinUCB(alpha=0.9, lam=1.5).use(dense)
    q = np.arange(n_clusters)
    np.testing.assert_allclose(
        ug.score(SoftContexts.of(q[:, None], np.ones((n_clusters, 1)))),
        ud.score(np.eye(DIM)[q]), rtol=0, atol=1e-12,
    )


def test_warm_start_moves_the_mean_not_the_bonus() -> None:
    rng = np.random.default_rng(6)
    prior = rng.normal(size=(N_ITEMS, DIM))
    cold = DiagLinUCB(alpha=2.0).init(np.arange(N_ITEMS), DIM)
    warm = DiagLinUCB(alpha=2.0).init(np.arange(N_ITEMS), DIM, prior_mean=prior)
    x, items, r = rng.normal(size=(200, DIM)), rng.integers(0, N_ITEMS, 200), rng.random(200)
    cold.learn(x, items, r)
    warm.learn(x, items, r)
    q = rng.normal(size=(20, DIM))
    bonus_cold = cold.score(q) - cold.score(q, exploit=True)
    bonus_warm = warm.score(q) - warm.score(q, exploit=True)
    np.testing.assert_allclose(bonus_warm, bonus_cold, atol=1e-12)
    assert not np.allclose(warm.score(q, exploit=True), cold.score(q, exploit=True))
    # with no data, the mean score is exactly the prior's prediction
    fresh = DiagLinUCB().init(np.arange(N_ITEMS), DIM, prior_mean=prior)
    np.testing.assert_allclose(fresh.score(q, exploit=True), q @ prior.T, atol=1e-12)


def test_centred_statistics_are_per_feature_regressions_with_intercept() -> None:
    """The centred layout equals, feature by feature, a ridge regression of r on (1, x_c)."""
    rng = np.random.default_rng(7)
    lam = 0.8
    x = rng.normal(loc=1.5, size=(400, DIM))
    items = rng.integers(0, N_ITEMS, 400)
    r = rng.random(400)
    policy = DiagLinUCB(alpha=1.0, lam=lam, centred=True).init(np.arange(N_ITEMS), DIM)
    policy.learn(x, items, r)
    q = rng.normal(size=(5, DIM))
    mean = policy.score(q, exploit=True)
    bonus = policy.score(q) - mean
    for j in range(N_ITEMS):
        xj, rj = x[items == j], r[items == j]
        n = lam + xj.shape[0]
        xbar, rbar = xj.sum(0) / n, rj.sum() / n
        d = lam + (xj**2).sum(0) - xbar * xj.sum(0)
        slope = ((xj * rj[:, None]).sum(0) - xbar * rj.sum()) / d
        expected_mean = rbar + (q - xbar) @ slope
        expected_var = 1.0 / n + ((q - xbar) ** 2 / d).sum(1)
        np.testing.assert_allclose(mean[:, j], expected_mean, atol=1e-10)
        np.testing.assert_allclose(bonus[:, j], np.sqrt(expected_var), atol=1e-10)
