"""Thompson sampling's logged propensities against a large plain Monte Carlo reference.

Served slates (``policy.recommend``) log quadrature estimates (top-k; conditional Monte Carlo
where the quadrature does not reach the precision) or exact 1/n (every item alike); each must
agree with 200k plain replays of the sampler within its reported error, and no shown item may
carry the exploration floor's value with standard error 0 unless the propensity is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import DiagLinTS
from recsys.bandits.slates import (
    conditional_propensities,
    monte_carlo_se,
    quadrature_propensities,
    thompson_action_dist,
    thompson_propensities,
    thompson_select,
)

DIM = 4
REF_DRAWS = 200_000


def reference(policy: DiagLinTS, x: np.ndarray, k: int) -> np.ndarray:
    """P(item at position) for one context from ``REF_DRAWS`` plain replays, [n_items, k]."""
    mean, sd = policy._moments(x[None, :])
    rng = np.random.default_rng(123)
    return thompson_action_dist(mean, policy.v * sd, k, REF_DRAWS, rng, per_slot=False)[0]


def served(policy: DiagLinTS, x: np.ndarray, k: int, repeats: int):
    slate = policy.recommend(np.repeat(x[None, :], repeats, axis=0), k)
    return slate, np.searchsorted(policy.item_ids_, slate.items)


def z_scores(slate, cols, ref, k) -> np.ndarray:
    """(logged − reference) / combined error, excluding the floor (exact in both)."""
    want = ref[cols, np.arange(k)]
    ref_se = np.sqrt(want * (1 - want) / REF_DRAWS)
    return (slate.propensities - want) / (np.hypot(slate.propensity_se, ref_se) + 1e-12)


def learned(n_items: int, seed: int, *, v: float, floor: float = 0.0) -> DiagLinTS:
    rng = np.random.default_rng(seed)
    policy = DiagLinTS(v=v, n_mc_draws=100, exploration_floor=floor, random_state=seed)
    policy.init(np.arange(n_items), DIM)
    x = rng.normal(size=(30 * n_items, DIM))
    items = rng.integers(0, n_items, x.shape[0])
    policy.learn(x, items, (rng.random(x.shape[0]) < 0.2 + 0.6 * (items % 3 == 0)).astype(float))
    return policy


@pytest.mark.parametrize(("n_items", "k", "v"), [(40, 3, 1.0), (12, 1, 0.5), (8, 8, 2.0)],
                         ids=["top3-of-40", "top1-of-12", "whole-catalogue"])
def test_logged_propensities_match_a_large_reference_in_a_learned_state(n_items, k, v) -> None:
    policy = learned(n_items, seed=n_items, v=v)
    x = np.random.default_rng(7).normal(size=DIM)
    slate, cols = served(policy, x, k, repeats=300)
    assert (slate.propensity_se > 0).all()  # estimates, marked as such
    z = np.abs(z_scores(slate, cols, reference(policy, x, k), k))
    assert np.mean(z > 4) <= 0.02 and z.max() < 8, (np.sort(z.ravel())[-5:], slate.propensity_se)
    # at least the precision of n_mc_draws plain replays at the same estimate
    assert (slate.propensity_se <= monte_carlo_se(slate.propensities, 100) + 1e-12).all()


def test_cold_start_logs_exactly_one_over_n_with_floor_and_matches_the_reference() -> None:
    n, k = 30, 4
    policy = DiagLinTS(v=1.0, n_mc_draws=100, exploration_floor=0.1, random_state=1)
    policy.init(np.arange(n), DIM)
    x = np.random.default_rng(2).normal(size=DIM)
    slate, _ = served(policy, x, k, repeats=200)
    np.testing.assert_allclose(slate.propensities, 1.0 / n, rtol=1e-12)
    assert (slate.propensity_se == 0).all()  # exact by symmetry, so 0 is honest
    ref = reference(policy, x, k)
    assert np.abs(ref - 1.0 / n).max() <= 5 * np.sqrt((1 / n) / REF_DRAWS)
    assert len(np.unique(slate.items[:, 0])) > n // 2  # the draw still spreads


def test_partly_learned_catalogue_is_estimated_not_called_exact() -> None:
    """Most items never learned (one shared posterior), a few learned: not exchangeable, so
    conditional Monte Carlo, checked against the reference."""
    n, k = 50, 3
    rng = np.random.default_rng(4)
    policy = DiagLinTS(v=1.0, n_mc_draws=100, random_state=4).init(np.arange(n), DIM)
    x = rng.normal(size=(400, DIM))
    policy.learn(x, rng.integers(0, 5, 400), (rng.random(400) < 0.7).astype(float))
    ctx = rng.normal(size=DIM)
    slate, cols = served(policy, ctx, k, repeats=300)
    assert (slate.propensity_se > 0).all()
    z = np.abs(z_scores(slate, cols, reference(policy, ctx, k), k))
    assert np.mean(z > 4) <= 0.02 and z.max() < 8


def test_no_shown_item_sits_at_the_floor_with_zero_error_unless_exact() -> None:
    """A sharp posterior: explored (uniform) slates show items whose Thompson part is ~0. Their
    propensity is at the floor's value f/n, and must say it is an estimate (se > 0)."""
    n, k, floor = 20, 2, 0.3
    policy = learned(n, seed=5, v=0.01, floor=floor)
    x = np.random.default_rng(6).normal(size=(400, DIM))
    slate = policy.recommend(x, k)
    at_floor = np.isclose(slate.propensities, floor / n, rtol=1e-6, atol=0)
    assert at_floor.any()
    assert (slate.propensity_se[at_floor] > 0).all()
    assert (slate.propensities >= floor / n - 1e-15).all()


def test_conditional_estimate_is_unbiased_and_honest_on_heterogeneous_scores() -> None:
    """The estimator alone, many independent requests of one posterior with 200 items:
    the average of the estimates is within its error of the reference, and per-request errors
    are calibrated (few beyond 4 standard errors)."""
    rng = np.random.default_rng(8)
    n, k, reps = 200, 5, 400
    mean = rng.normal(0.0, 0.4, (1, n))
    scale = rng.uniform(0.05, 0.6, (1, n))
    ref = thompson_action_dist(mean, scale, k, REF_DRAWS, rng, per_slot=False)[0]
    m, s = np.repeat(mean, reps, 0), np.repeat(scale, reps, 0)
    shown, _ = thompson_select(m, s, k, rng, per_slot=False)
    p_hat, se = conditional_propensities(m, s, shown, 100, rng)
    want = ref[shown, np.arange(k)]
    z = np.abs(p_hat - want) / (np.hypot(se, np.sqrt(want * (1 - want) / REF_DRAWS)) + 1e-12)
    assert np.mean(z > 4) <= 0.02 and np.median(z) < 1.0
    assert (se > 0).all()


def test_degenerate_posteriors_fall_back_to_plain_replays() -> None:
    """A zero scale (ties decide) is replayed, not integrated; every row still gets an estimate
    with an error."""
    mean = np.array([[1.0, 1.0, 0.0, -1.0], [0.5, 0.2, 0.1, 0.0]])
    scale = np.array([[0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.2, 0.1]])
    rng = np.random.default_rng(9)
    shown = np.array([[0, 1], [0, 1]])
    p, se = thompson_propensities(mean, scale, shown, 2000, rng, per_slot=False)
    assert abs(p[0, 0] - 0.5) < 0.06 and abs(p[0, 1] - 0.5) < 0.06  # the tie at 1.0 is shared
    assert (se > 0).all()


def test_quadrature_on_wide_posteriors_where_every_item_contends() -> None:
    """The serving regime: posterior sds as wide as the spread of means, so every item can reach
    the slate and each one's chance to beat the k-th is small (binned power sums do the work).
    Estimates agree with the reference within their error estimates, which are far below 100
    plain replays' standard error, and the served path uses them."""
    rng = np.random.default_rng(10)
    n, k, reps, ref_draws = 600, 10, 12, 100_000
    mean = rng.normal(0.0, 0.15, (1, n))
    scale = rng.uniform(0.45, 0.7, (1, n))
    ref = thompson_action_dist(mean, scale, k, ref_draws, rng, per_slot=False)[0]
    m, s = np.repeat(mean, reps, 0), np.repeat(scale, reps, 0)
    shown, _ = thompson_select(m, s, k, rng, per_slot=False)
    p_hat, err, covered = quadrature_propensities(m, s, shown)
    assert covered.all()
    want = ref[shown, np.arange(k)]
    ref_se = np.sqrt((want * ref_draws + 0.5) / (ref_draws + 1) * (1 - want) / ref_draws)
    z = np.abs(p_hat - want) / np.hypot(err, ref_se)
    assert np.mean(z > 4) <= 0.02 and z.max() < 6, np.sort(z.ravel())[-5:]
    assert (err < 0.1 * monte_carlo_se(p_hat, 100)).all()
    logged, logged_se = thompson_propensities(m, s, shown, 100, rng, per_slot=False)
    np.testing.assert_allclose(logged, p_hat, rtol=1e-9)
    assert (logged_se > 0).all()


@pytest.mark.parametrize("k", [1, 3])
def test_quadrature_is_accurate_on_sharp_learned_posteriors(k) -> None:
    """Sharp, well separated posteriors (the closed loop's regime): the count of others is exact
    and the error estimate far below 100 plain replays' standard error; the estimate matches
    conditional Monte Carlo at 2,000 draws and a rule on eight times as many nodes within it."""
    rng = np.random.default_rng(11)
    n, reps = 50, 40
    mean = rng.normal(0.0, 0.3, (1, n))
    scale = rng.uniform(0.02, 0.15, (1, n))
    m, s = np.repeat(mean, reps, 0), np.repeat(scale, reps, 0)
    shown, _ = thompson_select(m, s, k, rng, per_slot=False)
    p_hat, err, covered = quadrature_propensities(m, s, shown)
    assert covered.all() and (err <= 0.2 * monte_carlo_se(p_hat, 100)).all()
    if k == 1:
        from recsys.bandits.slates import _single_slot_propensities
        fine, _ = _single_slot_propensities(m, s, shown, nodes=129)
        assert (np.abs(p_hat - fine) <= err).all()
    ref, ref_se = conditional_propensities(m, s, shown, 2000, rng, min_replays=2000)
    assert (np.abs(p_hat - ref) <= 5 * ref_se + err + 1e-9).all()
