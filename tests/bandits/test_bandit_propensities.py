"""Logged propensities agree with how often the policy actually shows each item at each position."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import (
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    Greedy,
    InSlateTS,
    LinUCB,
    SquareCB,
)

N_ITEMS, DIM, K = 6, 3, 3
REPEATS = 4000


def trained(policy):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, DIM))
    policy.init(np.arange(10, 10 + N_ITEMS), DIM)
    policy.learn(x, rng.integers(10, 10 + N_ITEMS, 60), rng.random(60))
    return policy


def empirical(slate) -> dict[tuple[int, int], float]:
    """Frequency of (item, position) over the repeated identical requests."""
    freq: dict[tuple[int, int], float] = {}
    for p in range(slate.items.shape[1]):
        ids, counts = np.unique(slate.items[:, p], return_counts=True)
        for i, c in zip(ids, counts, strict=True):
            freq[(int(i), p)] = c / slate.items.shape[0]
    return freq


def check_against_frequency(slate, n_sigma: float = 4.5) -> None:
    freq = empirical(slate)
    for (item, p), f in freq.items():
        rows = slate.items[:, p] == item
        logged = slate.propensities[rows, p]
        # exact propensities: identical on every row; MC: average the estimates
        est = logged.mean()
        mc_se = np.sqrt(np.mean(slate.propensity_se[rows, p] ** 2) / rows.sum())
        se = np.sqrt(est * (1 - est) / REPEATS) + mc_se + 1e-12
        assert abs(f - est) <= n_sigma * se, (item, p, f, est, se)


@pytest.mark.parametrize("per_slot", [False, True])
def test_thompson_mc_propensities_match_empirical_frequency(per_slot: bool) -> None:
    policy = trained(DiagLinTS(v=2.0, n_mc_draws=200, per_slot=per_slot, random_state=1))
    x = np.random.default_rng(5).normal(size=(1, DIM))
    slate = policy.recommend(np.repeat(x, REPEATS, axis=0), k=K)
    assert (slate.propensity_se > 0).any()
    check_against_frequency(slate)


@pytest.mark.parametrize(
    "policy",
    [
        EpsilonGreedy(0.3, random_state=2),
        DiagLinUCB(alpha=1.0, epsilon=0.2, random_state=3),
        SquareCB(gamma=10.0, random_state=4),
        SquareCB(gamma=10.0, exploration_floor=0.1, random_state=5),
        InSlateTS(v=1.0, n_mc_draws=200, exploration_floor=0.2, random_state=6),
    ],
    ids=["eps-greedy", "ucb-eps", "squarecb", "squarecb-floor", "inslate-ts-floor"],
)
def test_propensities_match_empirical_frequency(policy) -> None:
    trained(policy)
    x = np.random.default_rng(5).normal(size=(1, DIM))
    slate = policy.recommend(np.repeat(x, REPEATS, axis=0), k=K)
    check_against_frequency(slate)


def test_exact_propensities_are_exact_and_sum_to_one_per_position() -> None:
    """ε-greedy: every item's P(at p) is (1-ε)·greedy + ε/n; over all items it sums to one."""
    policy = trained(EpsilonGreedy(0.25, random_state=7))
    x = np.random.default_rng(8).normal(size=(1, DIM))
    slate = policy.recommend(np.repeat(x, 3000, axis=0), k=K)
    assert np.all(slate.propensity_se == 0)
    for p in range(K):
        seen = {int(i): float(slate.propensities[slate.items[:, p] == i, p][0])
                for i in np.unique(slate.items[:, p])}
        assert len(seen) == N_ITEMS  # with 3000 draws every item appears at every position
        assert sum(seen.values()) == pytest.approx(1.0)


def test_random_tie_breaking_spreads_a_cold_start_and_logs_1_over_n() -> None:
    policy = Greedy(random_state=9).init(np.arange(N_ITEMS), DIM)
    slate = policy.recommend(np.zeros((3000, DIM)), k=2)
    np.testing.assert_allclose(slate.propensities, 1.0 / N_ITEMS)
    counts = np.bincount(slate.items[:, 0], minlength=N_ITEMS)
    assert counts.min() > 3000 / N_ITEMS * 0.8


def test_exploration_floor_leaves_no_zero_propensity() -> None:
    rng = np.random.default_rng(10)
    for policy in (Greedy(exploration_floor=0.05, random_state=11),
                   DiagLinTS(v=0.01, n_mc_draws=20, exploration_floor=0.05, random_state=12),
                   SquareCB(gamma=1e6, exploration_floor=0.05, random_state=13)):
        trained(policy)
        slate = policy.recommend(rng.normal(size=(500, DIM)), k=K)
        assert slate.propensities.min() >= 0.05 / N_ITEMS - 1e-12
        assert slate.propensities.max() <= 1.0


def test_slates_never_repeat_an_item() -> None:
    policy = trained(InSlateTS(v=1.0, n_mc_draws=0, random_state=14))
    slate = policy.recommend(np.random.default_rng(15).normal(size=(300, DIM)), k=N_ITEMS)
    assert all(len(set(row)) == N_ITEMS for row in slate.items.tolist())
    assert np.isnan(slate.propensities).all()  # n_mc_draws=0: explicitly not estimated


def test_recommend_one_matches_recommend_in_distribution_and_propensity() -> None:
    policy = trained(DiagLinUCB(alpha=0.5, epsilon=0.3, random_state=16))
    x = np.random.default_rng(17).normal(size=DIM)
    batch = policy.recommend(np.repeat(x[None, :], REPEATS, axis=0), k=1)
    singles = [policy.recommend_one(x) for _ in range(REPEATS)]
    one_items = np.array([s.items[0, 0] for s in singles])
    one_props = {int(s.items[0, 0]): float(s.propensities[0, 0]) for s in singles}
    for item, prop in one_props.items():
        logged = batch.propensities[batch.items[:, 0] == item, 0]
        if logged.size:
            assert prop == pytest.approx(float(logged[0]), rel=1e-12)
        freq = np.mean(one_items == item)
        assert abs(freq - prop) <= 4.5 * np.sqrt(prop * (1 - prop) / REPEATS)


@pytest.mark.parametrize("n", [50, 5000, 100_003])
def test_top_k_returns_the_k_best_in_order_with_ties_and_ineligible_items(n: int) -> None:
    rng = np.random.default_rng(n)
    from recsys.bandits.slates import top_k

    scores = np.round(rng.normal(size=(6, n)), 1 if n > 50 else 0)  # many exact ties
    scores[0, : n // 2] = -np.inf  # half the items not eligible
    scores[1] = 0.0  # everything tied
    for k in (1, 2, 10):
        chosen = top_k(scores, k, rng)
        values = np.take_along_axis(scores, chosen, axis=1)
        expected = -np.sort(-scores, axis=1)[:, :k]
        np.testing.assert_array_equal(values, expected)
        assert all(len(set(row)) == k for row in chosen.tolist())
    # all-tied row: every item is equally likely to lead
    firsts = np.array([top_k(scores[1:2], 2, rng)[0, 0] for _ in range(400)])
    assert len(np.unique(firsts)) > min(300, int(0.9 * n))


@pytest.mark.parametrize("n", [8, 2000])
def test_uniform_slate_is_uniform_over_items_and_positions(n: int) -> None:
    from recsys.bandits.slates import uniform_slate

    rng = np.random.default_rng(n)
    k = 3
    slates = uniform_slate(np.zeros((30_000, n)), k, rng)
    assert all(len(set(row)) == k for row in slates[:2000].tolist())
    expected = 30_000 / n
    for p in range(k):
        counts = np.bincount(slates[:, p], minlength=n)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < n + 6 * np.sqrt(2 * n)  # χ²(n-1): mean n-1, sd sqrt(2(n-1))


def _graph_policy():
    from recsys.bandits.graph import GraphStats, SoftContexts

    # cluster 0 → items 10, 11, 12; cluster 1 → items 12 .. 15
    stats = GraphStats.empty(np.arange(10, 16), 2, [0, 0, 0, 1, 1, 1, 1],
                             [10, 11, 12, 12, 13, 14, 15])
    ctx = SoftContexts.of([[0], [1]] * 20, np.ones((40, 1)))
    stats.learn(ctx, [10, 13] * 20, np.random.default_rng(18).random(40))
    return DiagLinUCB(alpha=0.5, epsilon=0.3, random_state=19).use(stats), SoftContexts


@pytest.mark.parametrize("layout", ["graph", "full"])
def test_recommend_one_on_every_layout_matches_the_batch_distribution(layout: str) -> None:
    """The single-request path reads ``moments_one`` of any layout (graph: candidates only)."""
    if layout == "graph":
        policy, soft = _graph_policy()
        one, batch = (np.array([1]), np.array([1.0])), soft.of([[1]], [[1.0]])
        candidates = {12, 13, 14, 15}
    else:
        policy = trained(LinUCB(alpha=0.5, epsilon=0.3, random_state=20))
        one = np.random.default_rng(21).normal(size=DIM)
        batch, candidates = one[None, :], set(range(10, 10 + N_ITEMS))
    dist = policy.action_dist(batch, 1)[0, :, 0]
    singles = [policy.recommend_one(one) for _ in range(2000)]
    items = np.array([s.items[0, 0] for s in singles])
    assert set(items.tolist()) == candidates  # ε explores over the candidates only
    cols = np.searchsorted(policy.item_ids_, items)
    props = np.array([s.propensities[0, 0] for s in singles])
    np.testing.assert_allclose(props, dist[cols], rtol=1e-12)
    freq = np.bincount(cols, minlength=dist.size) / items.size
    assert np.all(np.abs(freq - dist) <= 4.5 * np.sqrt(dist * (1 - dist) / items.size) + 1e-12)


@pytest.mark.parametrize("per_slot", [False, True])
def test_thompson_replays_leave_out_only_items_that_cannot_reach_the_slate(per_slot) -> None:
    """Items 6σ below the k-th best are left out of the Monte Carlo replays; the propensities
    are those of replays over the whole catalogue (within Monte Carlo error)."""
    from recsys.bandits.slates import contenders, thompson_propensities, thompson_select

    rng = np.random.default_rng(3)
    n, k = 400, 3
    mean = np.concatenate([rng.normal(1.0, 0.05, 10), rng.normal(-2.0, 0.1, n - 10)])[None, :]
    scale = np.full((1, n), 0.05)
    shown, _ = thompson_select(mean, scale, k, rng, per_slot=per_slot)
    kept = contenders(mean, scale, k, shown)
    assert set(shown[0]) <= set(kept) and set(range(10)) <= set(kept) and kept.size < 20
    p_pruned, se = thompson_propensities(mean, scale, shown, 4000, rng, per_slot=per_slot)
    full = np.zeros((1, k))
    for _ in range(8):  # the unpruned reference: replay over every column by hand
        replay, _ = thompson_select(np.repeat(mean, 500, axis=0), np.repeat(scale, 500, axis=0),
                                    k, rng, per_slot=per_slot)
        full += (replay == shown).sum(axis=0)
    full /= 4000
    ref_se = np.sqrt(full * (1 - full) / 4000)
    assert (np.abs(p_pruned - full) <= 5 * np.hypot(se, ref_se) + 1e-12).all(), (p_pruned, full)
    tight = contenders(mean, np.full((1, n), 1e-6), k, shown)
    wide = contenders(mean, np.full((1, n), 5.0), k, shown)
    assert tight.size <= kept.size <= wide.size == n


def test_every_monte_carlo_propensity_is_marked_as_an_estimate() -> None:
    """An item no replay showed (p̂ = 0) or every replay showed (p̂ = 1) still has an estimated
    propensity: its standard error is > 0, so OPE can leave Monte Carlo rows out
    (``recsys.comparison.logs``), and stays within the documented bound."""
    from recsys.bandits.slates import monte_carlo_se

    se = monte_carlo_se(np.array([0.0, 0.01, 0.5, 1.0]), 100)
    assert (se > 0).all() and (se <= 0.5 / np.sqrt(100)).all()
    policy = trained(DiagLinTS(v=0.1, n_mc_draws=20, exploration_floor=0.3, random_state=2))
    x = np.random.default_rng(5).normal(size=(1, DIM))
    slate = policy.recommend(np.repeat(x, 500, axis=0), k=K)
    assert (slate.propensity_se > 0).all()
