"""Bad input fails loudly with a message that says what is wrong; nothing yields NaN scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from recsys.bandits import (
    DenseStats,
    DiagLinTS,
    DiagLinUCB,
    EpsilonGreedy,
    Greedy,
    LinUCB,
    SquareCB,
    UnknownItemError,
)
from recsys.bandits.graph import GraphStats, SoftContexts
from recsys.policy import Policy

DIM = 4


@pytest.fixture
def policy() -> DiagLinUCB:
    return DiagLinUCB(random_state=0).init([10, 20, 30], DIM)


def good(n: int = 3):
    return np.ones((n, DIM)), np.array([10, 20, 30])[:n], np.zeros(n)


def test_unknown_item_names_the_id(policy) -> None:
    x, _, r = good()
    with pytest.raises(UnknownItemError, match=r"unknown item id\(s\) \(99\).*add_items"):
        policy.learn(x, [10, 99, 20], r)
    with pytest.raises(UnknownItemError, match="unknown"):
        policy.stats_.delta_from_batch(x, [10, 20, 31], r)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_contexts_are_rejected(policy, bad) -> None:
    x, items, r = good()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"NaN or infinity \(first at row 1, feature 2\)"):
        policy.learn(x, items, r)
    with pytest.raises(ValueError, match="NaN or infinity"):
        policy.recommend(x, k=1)


def test_wrong_dimensions(policy) -> None:
    _, items, r = good()
    with pytest.raises(ValueError, match=f"expected {DIM} features per context, got 5"):
        policy.learn(np.ones((3, 5)), items, r)
    with pytest.raises(ValueError, match="expected shape"):
        policy.score(np.ones((2, 2, DIM)))
    with pytest.raises(ValueError, match="got 2 item ids for a batch of 3"):
        policy.learn(np.ones((3, DIM)), [10, 20], r)
    with pytest.raises(ValueError, match=r"rewards: expected shape \[3\]"):
        policy.learn(np.ones((3, DIM)), items, [0.0, 1.0])


@pytest.mark.parametrize("reward", [-0.5, 1.5, np.nan, np.inf])
def test_out_of_range_or_non_finite_rewards(policy, reward) -> None:
    x, items, r = good()
    r[2] = reward
    with pytest.raises(ValueError, match="reward at index 2"):
        policy.learn(x, items, r)


def test_reward_range_is_configurable() -> None:
    x, items, _ = good()
    wide = DiagLinUCB(reward_range=(-1.0, 5.0)).init([10, 20, 30], DIM)
    wide.learn(x, items, [-1.0, 2.5, 5.0])
    assert np.isfinite(wide.score(x)).all()


def test_non_integer_item_ids(policy) -> None:
    x, _, r = good()
    with pytest.raises(ValueError, match="integers"):
        policy.learn(x, [10.5, 20, 30], r)


def test_no_statistics_yet() -> None:
    with pytest.raises(NotFittedError, match=r"call init\(items, dim\)"):
        DiagLinUCB().score(np.ones((1, DIM)))
    with pytest.raises(NotFittedError, match=r"call init\(items, dim\)"):
        DiagLinTS().action_dist(np.ones((1, DIM)))
    # a policy without statistics does not (yet) satisfy the contract, and asking is no error
    assert not isinstance(DiagLinUCB(), Policy)
    assert isinstance(DiagLinUCB().init(np.arange(3), DIM), Policy)


BAD_HYPERPARAMETERS = [
    (lambda: DiagLinUCB(alpha=-1), ValueError, r"alpha.*-1"),
    (lambda: DiagLinTS(v=0), ValueError, r"\bv\b.*0"),
    (lambda: SquareCB(gamma=-1), ValueError, r"gamma.*-1"),
    (lambda: DiagLinUCB(epsilon=1.5), ValueError, r"epsilon.*\[0, 1\].*1\.5"),
    (lambda: EpsilonGreedy(epsilon=-0.1), ValueError, r"epsilon.*\[0, 1\].*-0\.1"),
    (lambda: DiagLinUCB(lam=0), ValueError, r"lam.*0"),
    (lambda: Greedy(exploration_floor=2), ValueError, r"exploration_floor.*\[0, 1\].*2"),
    (lambda: DiagLinTS(n_mc_draws=-3), ValueError,
     r"n_mc_draws: expected a non-negative integer, got -3"),
    (lambda: DiagLinTS(n_mc_draws=2.5), ValueError,
     r"n_mc_draws: expected a non-negative integer, got 2\.5"),
    (lambda: DiagLinTS(n_mc_draws="3"), TypeError,
     r"n_mc_draws: expected a non-negative integer, got '3' of type str"),
    (lambda: DiagLinUCB(reward_range=(1, 0)), ValueError,
     r"reward_range: expected \(low, high\) with low < high, got \(1, 0\)"),
    (lambda: DiagLinUCB(reward_range=3.0), TypeError, r"reward_range: expected \(low, high\)"),
    (lambda: DiagLinUCB(reward_range=(0, "1")), TypeError, r"reward_range\[1\]: expected a real"),
    (lambda: DiagLinUCB(random_state="seed"), TypeError,
     r"random_state: expected None, a non-negative int or a numpy Generator, got 'seed'"),
    (lambda: DiagLinUCB(random_state=-1), ValueError, r"random_state: expected None.*got -1"),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_stored_then_rejected_at_first_use(make, error, message) -> None:
    policy = make()  # scikit-learn: the constructor stores, the first use checks
    with pytest.raises(error, match=message):
        policy.init([1, 2, 3], DIM)
    with pytest.raises(error, match=message):
        policy.use(DenseStats.empty([1, 2, 3], DIM))
    assert not hasattr(policy, "stats_")


def test_type_errors_for_flags() -> None:
    with pytest.raises(TypeError, match="centred: expected a bool, got 'yes'"):
        DiagLinUCB(centred="yes").init([1], DIM)
    with pytest.raises(TypeError, match="per_slot: expected a bool or None, got 1"):
        DiagLinTS(per_slot=1).init([1], DIM)


def test_statistics_that_do_not_fit_the_policy() -> None:
    with pytest.raises(ValueError, match="decay factor"):
        DenseStats.empty([1], DIM).decay(0.0)
    with pytest.raises(ValueError, match=r"lam: expected the statistics' λ=1\.0, got lam=2\.0"):
        DiagLinUCB(lam=2.0).use(DenseStats.empty([1], DIM, lam=1.0))
    with pytest.raises(TypeError, match=r"expected FullStats \(layout 'full'\) for LinUCB, got "
                                        r"DenseStats \(layout 'dense'\)"):
        LinUCB().use(DenseStats.empty([1], DIM))
    with pytest.raises(ValueError, match="centred: expected False for full covariance"):
        LinUCB(centred=True).init([1], DIM)


def test_k_larger_than_the_candidates(policy) -> None:
    with pytest.raises(ValueError, match="only 3 eligible item"):
        policy.recommend(np.ones((2, DIM)), k=4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        policy.recommend(np.ones((2, DIM)), k=0)


def test_extreme_but_finite_inputs_never_produce_nan_scores(policy) -> None:
    x = np.full((3, DIM), 1e150)
    policy.learn(np.full((3, DIM), 1e-150), [10, 20, 30], [1.0, 0.0, 1.0])
    for p in (policy, DiagLinTS(random_state=0).use(policy.stats_)):
        assert not np.isnan(p.score(x)).any()
    slate = policy.recommend(np.zeros((2, DIM)), k=3)
    assert np.isfinite(slate.propensities).all()


def test_bad_prior_means() -> None:
    with pytest.raises(ValueError, match="does not broadcast"):
        DenseStats.empty([1, 2], DIM, prior_mean=np.zeros((3, DIM)))
    with pytest.raises(ValueError, match="NaN"):
        DenseStats.empty([1, 2], DIM, prior_mean=np.nan)


def test_graph_context_errors() -> None:
    stats = GraphStats.empty([1, 2], 3, [0, 1, 2], [1, 2, 2])
    policy = DiagLinUCB().use(stats)
    with pytest.raises(ValueError, match="out of range"):
        policy.score(SoftContexts.of([[5]], [[1.0]]))
    with pytest.raises(ValueError, match=">= 0"):
        SoftContexts.of([[0]], [[-0.1]])
    with pytest.raises(ValueError, match="NaN"):
        SoftContexts.of([[0]], [[np.nan]])
    with pytest.raises(ValueError, match="padding"):
        SoftContexts.of([[-1]], [[0.5]])
    with pytest.raises(TypeError, match="SoftContexts"):
        policy.score(np.ones((1, 3)))
    with pytest.raises(UnknownItemError):
        policy.learn(SoftContexts.of([[0]], [[1.0]]), [7], [1.0])


def test_single_event_paths_validate_too(policy) -> None:
    with pytest.raises(UnknownItemError, match="99"):
        policy.learn_one(np.ones(DIM), 99, 0.0)
    with pytest.raises(ValueError, match="NaN or infinity"):
        policy.learn_one(np.array([0.0, np.nan, 0.0, 0.0]), 10, 0.0)
    with pytest.raises(ValueError, match="expected shape"):
        policy.recommend_one(np.ones(DIM + 1))
    with pytest.raises(ValueError, match="outside the allowed range"):
        policy.learn_one(np.ones(DIM), 10, 2.0)
    with pytest.raises(ValueError, match="must be finite"):
        policy.learn_one(np.ones(DIM), 10, float("nan"))
    with pytest.raises(ValueError, match="integers"):
        policy.learn_one(np.ones(DIM), 10.5, 0.0)
