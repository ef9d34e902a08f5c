"""LinearScorePolicy and the baselines: propensities, marginals, context modes, validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from recsys.policies import LinearScorePolicy, popularity_policy, uniform_policy
from recsys.policies.plackett_luce import (
    monte_carlo_marginals,
    plackett_luce_marginals,
    softmax,
)
from recsys.policy import Policy

RNG = np.random.default_rng(3)
ITEM_IDS = np.array([70, 10, 50, 30, 0, 60, 20, 40])
DIM = 3
ITEM_VECTORS = RNG.standard_normal((ITEM_IDS.size, DIM))
ITEM_BIAS = RNG.standard_normal(ITEM_IDS.size)
USER_IDS = np.array(["alice", "bob", "carol"])
USER_VECTORS = RNG.standard_normal((3, DIM))
CONTEXTS = RNG.standard_normal((5, DIM))

RULES = [("greedy", 0.0), ("epsilon_greedy", 0.25), ("softmax", 0.0), ("softmax", 0.2)]


def dense_policy(exploration: str, epsilon: float, **params: object) -> LinearScorePolicy:
    return LinearScorePolicy(exploration, epsilon, temperature=0.6, random_state=0,
                             **params).fit(ITEM_IDS, ITEM_VECTORS, ITEM_BIAS)


def shown_entries(policy: LinearScorePolicy, dist: np.ndarray, items: np.ndarray) -> np.ndarray:
    cols = np.argsort(policy.item_ids_)[np.searchsorted(np.sort(policy.item_ids_), items)]
    return dist[np.arange(items.shape[0])[:, None], cols, np.arange(items.shape[1])]


@pytest.mark.parametrize(("exploration", "epsilon"), RULES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_propensities_are_the_action_dist_entries(exploration: str, epsilon: float,
                                                  k: int) -> None:
    policy = dense_policy(exploration, epsilon)
    assert isinstance(policy, Policy)
    slate = policy.recommend(CONTEXTS, k)
    dist = policy.action_dist(CONTEXTS, k)
    assert dist.shape == (len(CONTEXTS), ITEM_IDS.size, k)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(slate.propensities, shown_entries(policy, dist, slate.items),
                               rtol=0, atol=1e-12)
    assert (slate.propensity_se == 0).all()
    expected = (CONTEXTS @ ITEM_VECTORS.T + ITEM_BIAS)
    cols = np.argsort(ITEM_IDS)[np.searchsorted(np.sort(ITEM_IDS), slate.items)]
    np.testing.assert_allclose(slate.scores, np.take_along_axis(expected, cols, axis=1))


def test_greedy_shows_the_best_items_with_propensity_one() -> None:
    policy = dense_policy("greedy", 0.0)
    slate = policy.recommend(CONTEXTS, 3)
    best = ITEM_IDS[np.argsort(-(CONTEXTS @ ITEM_VECTORS.T + ITEM_BIAS), axis=1)[:, :3]]
    np.testing.assert_array_equal(slate.items, best)
    np.testing.assert_array_equal(slate.propensities, 1.0)


def test_greedy_ties_are_shared_uniformly() -> None:
    policy = LinearScorePolicy("greedy", random_state=0).fit([1, 2, 3], item_bias=[1.0, 1.0, 0.0])
    slate = policy.recommend(np.zeros(4000), 1)
    np.testing.assert_array_equal(slate.propensities, 0.5)
    assert 1800 < (slate.items == 1).sum() < 2200


def test_softmax_marginals_match_the_frequency_of_slates() -> None:
    policy = dense_policy("softmax", 0.1)
    n = 40_000
    items = policy.recommend(np.repeat(CONTEXTS[:1], n, axis=0), 3).items
    cols = np.argsort(ITEM_IDS)[np.searchsorted(np.sort(ITEM_IDS), items)]
    freq = np.stack([np.bincount(cols[:, p], minlength=ITEM_IDS.size) for p in range(3)], 1) / n
    dist = policy.action_dist(CONTEXTS[:1], 3)[0]
    assert (np.abs(freq - dist) <= 5 * np.sqrt(dist * (1 - dist) / n) + 1e-12).all()


def test_exact_marginals_agree_with_monte_carlo_and_stay_stable() -> None:
    logits = RNG.standard_normal((2, 6)) * 2
    exact = plackett_luce_marginals(softmax(logits), 3)
    mc = monte_carlo_marginals(logits, 3, 20_000, np.random.default_rng(0))
    assert np.abs(exact - mc).max() < 5 * np.sqrt(0.25 / 20_000)
    # one item takes almost all the mass: 1 - p would lose every digit
    peaked = plackett_luce_marginals(softmax(np.array([[40.0, 0.0, -1.0, -2.0]])), 3)
    np.testing.assert_allclose(peaked.sum(axis=1), 1.0, atol=1e-12)
    assert peaked[0, 0, 0] > 1 - 1e-12 and peaked[0, 0, 1:].max() < 1e-12


def test_long_softmax_slates_use_monte_carlo_with_standard_errors() -> None:
    policy = dense_policy("softmax", 0.0, n_mc_draws=4000)
    slate = policy.recommend(CONTEXTS[:2], 5)
    assert (slate.propensity_se > 0).all()
    exact_first = softmax((CONTEXTS[:2] @ ITEM_VECTORS.T + ITEM_BIAS) / 0.6)
    cols = np.argsort(ITEM_IDS)[np.searchsorted(np.sort(ITEM_IDS), slate.items[:, 0])]
    first = exact_first[np.arange(2), cols]
    assert (np.abs(slate.propensities[:, 0] - first) <= 5 * slate.propensity_se[:, 0]).all()
    dist = policy.action_dist(CONTEXTS[:2], 5)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="n_mc_draws"):
        dense_policy("softmax", 0.0, n_mc_draws=0).recommend(CONTEXTS, 4)


def test_user_mode_scores_known_users_and_gives_unknown_ones_the_mean_vector() -> None:
    policy = LinearScorePolicy("greedy").fit(ITEM_IDS, ITEM_VECTORS, ITEM_BIAS,
                                             user_ids=USER_IDS, user_vectors=USER_VECTORS)
    assert policy.context_mode_ == "user"
    scores = policy.scores(np.array(["bob", "zoe", "alice"], dtype=object))
    np.testing.assert_allclose(scores[0], USER_VECTORS[1] @ ITEM_VECTORS.T + ITEM_BIAS)
    np.testing.assert_allclose(scores[1], USER_VECTORS.mean(0) @ ITEM_VECTORS.T + ITEM_BIAS)
    np.testing.assert_allclose(scores[2], USER_VECTORS[0] @ ITEM_VECTORS.T + ITEM_BIAS)


def test_context_free_mode_needs_only_a_batch_size() -> None:
    policy = LinearScorePolicy("softmax", random_state=1).fit(ITEM_IDS, item_bias=ITEM_BIAS)
    assert policy.context_mode_ == "none"
    dist = policy.action_dist(range(3), 2)
    np.testing.assert_allclose(dist[0], dist[2])
    np.testing.assert_allclose(dist[0, :, 0], softmax(ITEM_BIAS[None])[0])


def test_baselines() -> None:
    uniform = uniform_policy(ITEM_IDS, random_state=0)
    slate = uniform.recommend(range(4), 3)
    np.testing.assert_allclose(slate.propensities, 1 / ITEM_IDS.size)
    np.testing.assert_allclose(uniform.action_dist(range(2), 3), 1 / ITEM_IDS.size)
    counts = np.arange(ITEM_IDS.size, dtype=float)
    popular = popularity_policy(ITEM_IDS, counts, epsilon=0.1, random_state=0)
    dist = popular.action_dist(range(1), 2)[0]
    assert dist.min() >= 0.1 / ITEM_IDS.size - 1e-15
    assert dist[-1, 0] == pytest.approx(0.9 + 0.1 / ITEM_IDS.size)
    assert dist[-2, 1] == pytest.approx(0.9 + 0.1 / ITEM_IDS.size)
    with pytest.raises(ValueError, match="counts"):
        popularity_policy(ITEM_IDS, counts[:3])


def test_random_state_and_reseeding_reproduce_slates() -> None:
    a, b = dense_policy("softmax", 0.2), dense_policy("softmax", 0.2)
    many = np.repeat(CONTEXTS, 40, axis=0)
    np.testing.assert_array_equal(a.recommend(many, 2).items, b.recommend(many, 2).items)
    a.set_params(random_state=9)
    b.set_params(random_state=9)
    np.testing.assert_array_equal(a.recommend(many, 2).items, b.recommend(many, 2).items)
    assert clone(a).get_params() == a.get_params()


def test_arrays_round_trip() -> None:
    policy = LinearScorePolicy("softmax", 0.1, random_state=4).fit(
        ITEM_IDS, ITEM_VECTORS, ITEM_BIAS, user_ids=USER_IDS, user_vectors=USER_VECTORS)
    arrays, meta = policy.to_arrays()
    assert all(a.dtype != object for a in arrays.values())
    back = LinearScorePolicy.from_arrays(arrays, meta)
    users = np.array(["carol", "nobody"])
    np.testing.assert_array_equal(back.action_dist(users, 2), policy.action_dist(users, 2))
    with pytest.raises(ValueError, match="format"):
        LinearScorePolicy.from_arrays(arrays, {**meta, "format": "other"})


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: LinearScorePolicy("softmx").fit(ITEM_IDS), ValueError, "did you mean softmax"),
    (lambda: LinearScorePolicy("greedy", 0.1).fit(ITEM_IDS), ValueError, "epsilon_greedy"),
    (lambda: LinearScorePolicy(temperature=0).fit(ITEM_IDS), ValueError, "temperature"),
    (lambda: LinearScorePolicy().fit([1, 1, 2]), ValueError, "item_ids: expected unique"),
    (lambda: LinearScorePolicy().fit([1, 2], np.ones((3, 2))), ValueError, "item_vectors"),
    (lambda: LinearScorePolicy().fit([1, 2], [[0.0], [np.nan]]), ValueError, "finite"),
    (lambda: LinearScorePolicy().fit([1, 2], np.ones((2, 2)), user_ids=["a"]), ValueError,
     "user_ids, user_vectors"),
    (lambda: LinearScorePolicy().fit([1, 2], np.ones((2, 2)), user_ids=["a", "a"],
                                     user_vectors=np.ones((2, 2))), ValueError, "repeated"),
    (lambda: dense_policy("greedy", 0).recommend(CONTEXTS, 9), ValueError, "k: expected"),
    (lambda: dense_policy("greedy", 0).recommend(CONTEXTS[:, :2], 1), ValueError, "contexts"),
    (lambda: LinearScorePolicy().recommend(CONTEXTS, 1), NotFittedError, "fit"),
    # finite but extreme: the scores overflow, and a softmax slate would log propensity 0
    (lambda: dense_policy("softmax", 0).recommend(CONTEXTS * 1e300, 2), ValueError,
     "a propensity > 0 for every shown item"),
    (lambda: dense_policy("greedy", 0).action_dist(np.full_like(CONTEXTS, 1e308), 1),
     ValueError, "scores that overflow"),
])
def test_bad_input_gets_a_clear_error(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
