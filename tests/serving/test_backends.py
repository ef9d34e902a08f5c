"""Scoring backends give the slates, scores and propensities of ``policy.recommend``.

The torch backend is checked on the CPU in float64, where it must reproduce numpy's results:
deterministic slates item for item, exact propensities bit for bit, Thompson sampling's Monte
Carlo propensities within their standard errors. A CUDA test runs only where a GPU is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.bandits import (
    DenseStats,
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    Greedy,
    InSlateTS,
    LinUCB,
    SquareCB,
    UnknownItemError,
)
from recsys.serving.backends import (
    NumpyScorer,
    TorchScorer,
    UnknownCandidateError,
    make_scorer,
)

N_ITEMS, DIM, K = 40, 6, 4
ITEMS = np.arange(100, 100 + N_ITEMS)
HAS_CUDA = torch.cuda.is_available()


def trained_stats(centred: bool, *, seed: int = 0, dtype: type = np.float64) -> DenseStats:
    """Statistics where every item has data (so no two items share a score)."""
    rng = np.random.default_rng(seed)
    items = np.repeat(ITEMS, 8)
    x = rng.normal(size=(items.size, DIM)) + 0.4  # shown contexts with a shared mean
    stats = DenseStats.empty(ITEMS, DIM, centred=centred, dtype=dtype)
    stats.learn(x, items, rng.random(items.size), reward_range=(0.0, 1.0))
    return stats


def contexts(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, DIM)) + 0.2


def assert_same_slate(a, b, *, atol: float = 1e-9) -> None:
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0.0, atol=atol)
    np.testing.assert_array_equal(a.propensities, b.propensities)
    np.testing.assert_array_equal(a.propensity_se, b.propensity_se)


@pytest.fixture(scope="module")
def cpu() -> TorchScorer:
    return TorchScorer(device="cpu")


# ------------------------------------------------------------------ deterministic policies
@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("make", [lambda: DiagLinUCB(alpha=0.8), Greedy],
                         ids=["ucb", "greedy"])
def test_deterministic_slates_equal_numpy(cpu: TorchScorer, centred: bool, make) -> None:
    policy = make().set_params(centred=centred, random_state=0).use(trained_stats(centred))
    x = contexts(16)
    for k in (1, K, N_ITEMS):
        expected = policy.recommend(x, k)
        got = cpu.recommend(policy, x, k)
        assert_same_slate(got, expected)
        assert (got.propensities == 1.0).all()
        assert got.items.dtype == np.int64 and got.scores.dtype == np.float64


def test_torch_moments_equal_numpy_moments(cpu: TorchScorer) -> None:
    arrays = cpu.arrays
    for centred in (False, True):
        stats = trained_stats(centred)
        x = contexts(8)
        mean, var, _ = stats.moments(x)
        got_mean, got_sd, eligible = arrays.moments(stats, x, None)
        assert eligible is None
        np.testing.assert_allclose(arrays.host(got_mean), mean, rtol=0.0, atol=1e-12)
        np.testing.assert_allclose(arrays.host(got_sd), np.sqrt(var), rtol=0.0, atol=1e-12)
        rows = np.searchsorted(ITEMS, ITEMS[::3])
        got_mean, got_sd, _ = arrays.moments(stats, x, rows)
        np.testing.assert_allclose(arrays.host(got_mean), mean[:, rows], rtol=0.0, atol=1e-12)
        np.testing.assert_allclose(arrays.host(got_sd), np.sqrt(var[:, rows]), rtol=0.0,
                                   atol=1e-12)


def test_float32_statistics_score_in_float32(cpu: TorchScorer) -> None:
    stats = trained_stats(True, dtype=np.float32)
    policy = DiagLinUCB(alpha=0.5, centred=True).use(stats)
    x = contexts(8)
    expected = policy.recommend(x, K)
    got = cpu.recommend(policy, x, K)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-5, atol=1e-5)
    assert cpu.arrays._cache[stats].posterior.theta.dtype == torch.float32


# ------------------------------------------------------------------ uniform mix
@pytest.mark.parametrize("centred", [False, True])
def test_epsilon_mixed_propensities_are_exact(cpu: TorchScorer, centred: bool) -> None:
    stats = trained_stats(centred)
    eps, floor = 0.2, 0.1
    policy = DiagLinUCB(alpha=0.8, epsilon=eps, exploration_floor=floor, centred=centred,
                        random_state=3).use(stats)
    mix = 1.0 - (1.0 - eps) * (1.0 - floor)
    batch = 3000
    x = np.repeat(contexts(1), batch, axis=0)
    greedy = DiagLinUCB(alpha=0.8, centred=centred).use(stats).recommend(x[:1], K).items[0]
    slate = cpu.recommend(policy, x, K)
    is_greedy = slate.items == greedy
    expected = (1.0 - mix) * is_greedy + mix / N_ITEMS
    np.testing.assert_array_equal(slate.propensities, expected)
    assert (slate.propensity_se == 0.0).all()
    # the logged values are the policy's action distribution
    dist = policy.action_dist(x[:1], K)[0]
    cols = np.searchsorted(ITEMS, slate.items)
    np.testing.assert_allclose(slate.propensities, dist[cols, np.arange(K)], rtol=1e-12)
    # explored slates: about a fraction `mix` of requests, each a distinct set of items
    explored = ~(slate.items == greedy).all(axis=1)
    assert abs(explored.mean() - mix) < 5 * np.sqrt(mix * (1 - mix) / batch)
    assert all(len(set(row)) == K for row in slate.items.tolist())
    # scores of explored items are the UCB scores of those items
    ucb = policy.score(x[:1])[0]
    np.testing.assert_allclose(slate.scores, ucb[cols], rtol=0.0, atol=1e-9)


def test_uniform_policy(cpu: TorchScorer) -> None:
    stats = trained_stats(False)
    policy = EpsilonGreedy(epsilon=1.0, random_state=0).use(stats)
    batch = 4000
    x = np.repeat(contexts(1), batch, axis=0)
    slate = cpu.recommend(policy, x, K)
    assert (slate.propensities == 1.0 / N_ITEMS).all()
    mean = policy.score(x[:1], exploit=True)[0]
    np.testing.assert_allclose(slate.scores, mean[np.searchsorted(ITEMS, slate.items)],
                               atol=1e-9, rtol=0.0)
    counts = np.bincount(np.searchsorted(ITEMS, slate.items[:, 0]), minlength=N_ITEMS)
    chi2 = ((counts - batch / N_ITEMS) ** 2 / (batch / N_ITEMS)).sum()
    assert chi2 < N_ITEMS + 6 * np.sqrt(2 * N_ITEMS)  # ~6 sigma of chi²(N_ITEMS - 1)


def test_cold_start_ties_fall_back_to_numpy(cpu: TorchScorer) -> None:
    """Empty statistics give every item the same score: the numpy path breaks the ties at
    random and logs the shared propensity 1/n."""
    policy = Greedy(random_state=0).init(ITEMS, DIM)
    slate = cpu.recommend(policy, contexts(500), K)
    np.testing.assert_allclose(slate.propensities, 1.0 / N_ITEMS)
    assert len(np.unique(slate.items[:, 0])) > N_ITEMS // 2


# ------------------------------------------------------------------ Thompson sampling
@pytest.mark.parametrize("cls", [DiagLinTS, InSlateTS])
def test_thompson_propensities_match_action_dist(cpu: TorchScorer, cls) -> None:
    stats = trained_stats(True)
    n_draws = 400
    policy = cls(v=3.0, n_mc_draws=n_draws, exploration_floor=0.1, centred=True,
                 random_state=0).use(stats)
    x = contexts(6)
    slate = cpu.recommend(policy, x, 3)
    dist = policy.action_dist(x, 3)  # numpy's Monte Carlo estimate, independent draws
    cols = np.searchsorted(ITEMS, slate.items)
    reference = dist[np.arange(6)[:, None], cols, np.arange(3)]
    ref_se = np.sqrt(reference * (1 - reference) / n_draws)
    se = np.sqrt(slate.propensity_se**2 + ref_se**2) + 1e-12
    assert (np.abs(slate.propensities - reference) <= 5 * se).all()
    assert (slate.propensities >= 0.1 / N_ITEMS).all()
    assert (slate.propensity_se > 0).any()
    assert all(len(set(row)) == 3 for row in slate.items.tolist())


@pytest.mark.parametrize("per_slot", [False, True])
def test_thompson_propensities_match_frequency(cpu: TorchScorer, per_slot: bool) -> None:
    """Logged propensities agree with how often the torch sampler shows each item there."""
    stats = trained_stats(False)
    n_draws, repeats = 200, 1500
    policy = DiagLinTS(v=3.0, n_mc_draws=n_draws, per_slot=per_slot, random_state=2).use(stats)
    slate = cpu.recommend(policy, np.repeat(contexts(1), repeats, axis=0), 2)
    for p in range(2):
        ids, counts = np.unique(slate.items[:, p], return_counts=True)
        for item, count in zip(ids, counts, strict=True):
            rows = slate.items[:, p] == item
            est = slate.propensities[rows, p].mean()
            # an estimate of 0 has a zero binomial se: floor p at one MC hit for the error bars
            floor = max(est, 1.0 / n_draws)
            mc = np.sqrt(floor * (1 - floor) / n_draws / rows.sum())
            se = np.sqrt(floor * (1 - floor) / repeats) + mc
            assert abs(count / repeats - est) <= 5 * se, (item, p, count / repeats, est)


def test_thompson_logged_mean_path_equals_numpy(cpu: TorchScorer) -> None:
    """An explored Thompson slate logs the posterior mean of what it shows, exactly as numpy."""
    stats = trained_stats(True)
    policy = DiagLinTS(v=1.0, exploration_floor=1.0, centred=True, random_state=0).use(stats)
    x = contexts(32)
    slate = cpu.recommend(policy, x, K)
    mean, _, _ = stats.moments(x)
    cols = np.searchsorted(ITEMS, slate.items)
    np.testing.assert_allclose(slate.scores, mean[np.arange(32)[:, None], cols], atol=1e-12,
                               rtol=0.0)
    assert (slate.propensities == 1.0 / N_ITEMS).all()
    assert (slate.propensity_se == 0.0).all()


def test_thompson_with_tiny_variance_is_greedy_and_skips_mc(cpu: TorchScorer) -> None:
    stats = trained_stats(False)
    policy = DiagLinTS(v=1e-9, n_mc_draws=0, random_state=0).use(stats)
    x = contexts(16)
    slate = cpu.recommend(policy, x, K)
    np.testing.assert_array_equal(slate.items, Greedy().use(stats).recommend(x, K).items)
    assert np.isnan(slate.propensities).all() and np.isnan(slate.propensity_se).all()


def test_thompson_is_reproducible_from_the_policy_seed(cpu: TorchScorer) -> None:
    stats = trained_stats(False)
    x = contexts(8)
    a = cpu.recommend(InSlateTS(v=2.0, random_state=7).use(stats), x, K)
    b = cpu.recommend(InSlateTS(v=2.0, random_state=7).use(stats), x, K)
    assert_same_slate(a, b, atol=0.0)


# ------------------------------------------------------------------ candidates
@pytest.mark.parametrize("scorer", [NumpyScorer(), TorchScorer()], ids=["numpy", "torch"])
def test_candidates_restrict_the_slate(scorer) -> None:
    stats = trained_stats(True)
    policy = DiagLinUCB(alpha=0.8, epsilon=0.3, centred=True, random_state=0).use(stats)
    cand = np.array([139, 101, 120, 101, 125, 133, 110])  # a duplicate is dropped
    x = contexts(200)
    slate = scorer.recommend(policy, x, 3, candidates=cand)
    assert np.isin(slate.items, cand).all()
    assert set(slate.items.ravel().tolist()) == set(cand.tolist())  # ε explores all of them
    eps = policy._uniform_mix
    assert set(np.unique(slate.propensities).tolist()) <= {eps / 6, (1 - eps) + eps / 6}
    # the greedy part ranks the candidates by UCB score
    ucb = policy.score(x)[:, np.searchsorted(ITEMS, np.unique(cand))]
    best = np.unique(cand)[np.argsort(-ucb, axis=1)[:, :3]]
    greedy_rows = (slate.propensities > 0.5).all(axis=1)
    np.testing.assert_array_equal(slate.items[greedy_rows], best[greedy_rows])
    # the view shares the policy's generator: two calls do not replay the same draws
    state = policy._rng.bit_generator.state
    scorer.recommend(policy, x, 3, candidates=cand)
    assert policy._rng.bit_generator.state != state


def test_candidates_equal_numpy_on_torch(cpu: TorchScorer) -> None:
    stats = trained_stats(False)
    policy = DiagLinUCB(alpha=0.8).use(stats)
    cand = ITEMS[5:30:2]
    x = contexts(10)
    assert_same_slate(cpu.recommend(policy, x, K, cand), NumpyScorer().recommend(policy, x, K,
                                                                                  cand))
    # a thompson slate over candidates shows candidates only
    ts = DiagLinTS(v=2.0, random_state=0).use(stats)
    assert np.isin(cpu.recommend(ts, x, K, cand).items, cand).all()


@pytest.mark.parametrize("scorer", [NumpyScorer(), TorchScorer()], ids=["numpy", "torch"])
def test_bad_candidates_raise_clear_errors(scorer) -> None:
    policy = Greedy().use(trained_stats(False))
    x = contexts(1)
    with pytest.raises(UnknownCandidateError, match=r"candidates: .*2 unknown id\(s\) \(7, 9\)"):
        scorer.recommend(policy, x, 1, candidates=[101, 7, 9])
    with pytest.raises(UnknownItemError):
        scorer.recommend(policy, x, 1, candidates=[5])
    with pytest.raises(ValueError, match="unknown"):
        scorer.recommend(policy, x, 1, candidates=[5])
    with pytest.raises(ValueError, match=r"candidates: expected at least k=3 distinct item ids, "
                                         r"got 2; lower k"):
        scorer.recommend(policy, x, 3, candidates=[101, 102, 101])
    with pytest.raises(ValueError, match="candidates: expected integer item ids"):
        scorer.recommend(policy, x, 1, candidates=[101.5])
    with pytest.raises(ValueError, match="candidates: expected a 1-d array"):
        scorer.recommend(policy, x, 1, candidates=[[101]])


@pytest.mark.parametrize("scorer", [NumpyScorer(), TorchScorer()], ids=["numpy", "torch"])
def test_bad_k_and_missing_statistics(scorer) -> None:
    policy = Greedy().use(trained_stats(False))
    with pytest.raises(ValueError, match="k: expected a positive integer, got 0"):
        scorer.recommend(policy, contexts(1), 0)
    with pytest.raises(ValueError, match=f"k: expected at most the {N_ITEMS} items"):
        scorer.recommend(policy, contexts(1), N_ITEMS + 1)
    with pytest.raises(TypeError, match="k: expected a positive integer"):
        scorer.recommend(policy, contexts(1), 2.0)
    with pytest.raises(RuntimeError, match="policy: expected a policy with statistics"):
        scorer.recommend(Greedy(), contexts(1), 1)
    with pytest.raises(ValueError, match="contexts"):
        scorer.recommend(policy, np.ones((1, DIM + 1)), 1)


# ------------------------------------------------------------------ fallbacks and cache
def test_squarecb_draws_on_the_host_from_torch_moments(cpu: TorchScorer) -> None:
    x = contexts(12)
    stats = trained_stats(False)
    got = cpu.recommend(SquareCB(gamma=50.0, random_state=4).use(stats), x, K)
    expected = SquareCB(gamma=50.0, random_state=4).use(stats).recommend(x, K)
    np.testing.assert_array_equal(got.items, expected.items)
    np.testing.assert_allclose(got.scores, expected.scores, rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(got.propensities, expected.propensities, rtol=1e-9, atol=0.0)


def test_full_covariance_falls_back_to_numpy(cpu: TorchScorer) -> None:
    x = contexts(12)

    def make() -> LinUCB:
        return LinUCB(alpha=0.5, epsilon=0.1, random_state=4).init(ITEMS, DIM)

    assert_same_slate(cpu.recommend(make(), x, K), make().recommend(x, K), atol=0.0)


def test_snapshot_is_uploaded_once_and_refreshed_on_change(cpu: TorchScorer) -> None:
    stats = trained_stats(False)
    policy = DiagLinUCB(alpha=0.8).use(stats)
    cpu.prepare(stats)
    entry = cpu.arrays._cache[stats]
    x = contexts(4)
    cpu.recommend(policy, x, K)
    cpu.recommend(policy, x, K)
    assert cpu.arrays._cache[stats] is entry
    stats.learn(contexts(50, seed=9), np.full(50, ITEMS[3]), np.ones(50))  # a refresh
    assert_same_slate(cpu.recommend(policy, x, K), policy.recommend(x, K))
    assert cpu.arrays._cache[stats] is not entry
    assert cpu.arrays._cache[stats].snapshot_id == stats.snapshot_id


def test_numpy_prepare_builds_the_posterior_cache() -> None:
    stats = trained_stats(True)
    assert stats._cache is None
    NumpyScorer().prepare(stats)
    assert stats._cache is not None and stats._cache.version == stats.version


# ------------------------------------------------------------------ configuration
def test_make_scorer() -> None:
    assert isinstance(make_scorer(), NumpyScorer)
    scorer = make_scorer("torch", threads=1)
    assert isinstance(scorer, TorchScorer) and scorer.name == "torch"
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="backend: expected one of 'numpy', 'torch', got 'jax'"):
        make_scorer("jax")
    with pytest.raises(ValueError, match="device: expected 'cpu' for backend='numpy'"):
        make_scorer("numpy", device="cuda")
    with pytest.raises(ValueError, match="threads: expected None for backend='numpy'"):
        make_scorer("numpy", threads=4)
    with pytest.raises(ValueError, match="device: expected 'cpu', 'cuda'"):
        make_scorer("torch", device="tpu")
    with pytest.raises(ValueError, match="threads: expected None or a positive integer"):
        make_scorer("torch", threads=0)
    with pytest.raises(ValueError, match="dtype: expected None or one of"):
        TorchScorer(dtype="float16")


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"device: .*torch.cuda.is_available\(\) is False\); use "
                                         r"device='cpu' or backend='numpy'"):
        make_scorer("torch", device="cuda")


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_equals_numpy() -> None:
    gpu = TorchScorer(device="cuda")
    stats = trained_stats(True)
    x = contexts(16)
    policy = DiagLinUCB(alpha=0.8, centred=True).use(stats)
    assert_same_slate(gpu.recommend(policy, x, K), policy.recommend(x, K))
    assert gpu.arrays._cache[stats].posterior.theta.device.type == "cuda"
    ts = DiagLinTS(v=3.0, n_mc_draws=400, centred=True, random_state=0).use(stats)
    slate = gpu.recommend(ts, x, 3)
    dist = ts.action_dist(x, 3)
    ref = dist[np.arange(16)[:, None], np.searchsorted(ITEMS, slate.items), np.arange(3)]
    se = np.sqrt(slate.propensity_se**2 + ref * (1 - ref) / 400) + 1e-12
    assert (np.abs(slate.propensities - ref) <= 5 * se).all()
