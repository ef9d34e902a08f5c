"""One conformance test for everything that recommends (``recsys.policy.Policy``).

The same checks run on the bandit policies (trained on a small log, with item ids that are not
``0..n-1`` and not sorted, so the id → ``action_dist`` column mapping is exercised) and on the
simulator's logging policies: shapes, distinct items, propensities equal to the ``action_dist``
entry of the shown (item, position), ``action_dist`` summing to 1 per position, empirical
frequencies of ``recommend`` matching ``action_dist``, and seeded reproducibility.

Tolerances: exact propensities must match to 1e-12. Thompson sampling estimates both sides by
Monte Carlo, so there the gap must stay within 5 combined standard errors. Empirical frequencies
of ``N_DRAWS`` seeded slates must be within 5 binomial standard errors of ``action_dist`` (plus
the Monte Carlo error of a Thompson ``action_dist``), and exactly 0 where ``action_dist`` is 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from recsys.bandits import DiagLinTS, DiagLinUCB, EpsilonGreedy, InSlateTS, SquareCB
from recsys.policies import LinearScorePolicy
from recsys.policy import Policy
from simulators.policies import (
    EpsilonMixturePolicy,
    GreedyPolicy,
    SoftmaxPolicy,
    UniformPolicy,
)

DIM = 4
ITEM_IDS = np.array([70, 10, 50, 30, 0, 60, 20, 40])
N_ITEMS = ITEM_IDS.size
N_DRAWS = 20_000
MC_DRAWS = 4_000  # Thompson replays per request of the propensity check
DIST_MC_DRAWS = 40_000  # Thompson replays of the one-context action_dist of the frequency check

_data = np.random.default_rng(42)
TRAIN_X = _data.standard_normal((600, DIM))
_train_cols = _data.integers(N_ITEMS, size=600)
TRAIN_ITEMS = ITEM_IDS[_train_cols]
_logits = np.einsum("nd,nd->n", TRAIN_X, _data.standard_normal((N_ITEMS, DIM))[_train_cols])
TRAIN_R = (_data.random(600) < 1 / (1 + np.exp(-_logits))).astype(float)
ITEM_FEATURES = _data.standard_normal((N_ITEMS, DIM))
CONTEXTS = _data.standard_normal((6, DIM))


@dataclass(frozen=True)
class Case:
    make: Callable[[int], Policy]
    """A ready policy with the given ``random_state``."""
    slate_sizes: tuple[int, ...] = (1, 3)
    random: bool = True
    """False for a deterministic policy (its slates do not depend on the seed)."""


def bandit(cls: type, **params: object) -> Callable[[int], Policy]:
    def make(random_state: int) -> Policy:
        policy = cls(**params, random_state=random_state)
        policy.init(ITEM_IDS, DIM)
        return policy.learn(TRAIN_X, TRAIN_ITEMS, TRAIN_R)

    return make


CASES = {
    "bandit-diag-linucb-eps": Case(bandit(DiagLinUCB, alpha=0.5, epsilon=0.2)),
    "bandit-epsilon-greedy": Case(bandit(EpsilonGreedy, epsilon=0.3)),
    "bandit-squarecb": Case(bandit(SquareCB, gamma=5.0)),
    "bandit-diag-lints": Case(bandit(DiagLinTS, v=1.0, n_mc_draws=MC_DRAWS)),
    "bandit-inslate-ts": Case(bandit(InSlateTS, v=1.0, n_mc_draws=MC_DRAWS,
                                     exploration_floor=0.1)),
    "simulator-uniform": Case(lambda rs: UniformPolicy(N_ITEMS, random_state=rs)),
    "simulator-greedy": Case(lambda rs: GreedyPolicy(ITEM_FEATURES, random_state=rs),
                             random=False),
    "simulator-epsilon-greedy": Case(
        lambda rs: EpsilonMixturePolicy(GreedyPolicy(ITEM_FEATURES), 0.3, random_state=rs)),
    "simulator-softmax": Case(
        lambda rs: SoftmaxPolicy(ITEM_FEATURES, temperature=0.7, random_state=rs)),
    "simulator-epsilon-softmax": Case(lambda rs: EpsilonMixturePolicy(
        SoftmaxPolicy(ITEM_FEATURES, random_state=rs), 0.2, random_state=rs)),
    "linear-epsilon-softmax": Case(lambda rs: LinearScorePolicy(
        "softmax", 0.1, temperature=0.7, random_state=rs).fit(ITEM_IDS, ITEM_FEATURES)),
}
PARAMS = [pytest.param(case, k, id=f"{name}-k{k}")
          for name, case in CASES.items() for k in case.slate_sizes]


def columns(policy: Policy, items: np.ndarray) -> np.ndarray:
    """The ``action_dist`` column of every item id in ``items``."""
    ids = policy.item_ids_
    order = np.argsort(ids)
    found = order[np.searchsorted(ids, items, sorter=order)]
    assert (ids[found] == items).all(), "recommend showed an item outside item_ids_"
    return found


def mc_draws(policy: Policy) -> int | None:
    """The Monte Carlo replays behind a Thompson policy's ``action_dist`` (None: exact)."""
    return getattr(policy, "n_mc_draws", None)


def test_both_families_are_policies() -> None:
    for case in CASES.values():
        assert isinstance(case.make(0), Policy)
    assert not isinstance(object(), Policy)


@pytest.mark.parametrize(("case", "k"), PARAMS)
def test_slates_carry_the_action_dist_entries_as_propensities(case: Case, k: int) -> None:
    policy = case.make(0)
    slate = policy.recommend(CONTEXTS, k)
    n = CONTEXTS.shape[0]
    for part in (slate.items, slate.propensities, slate.propensity_se, slate.scores):
        assert part.shape == (n, k)
    assert (np.sort(slate.items, axis=1)[:, 1:] != np.sort(slate.items, axis=1)[:, :-1]).all()
    assert ((slate.propensities > 0) & (slate.propensities <= 1)).all()

    dist = policy.action_dist(CONTEXTS, k)
    assert dist.shape == (n, N_ITEMS, k)
    assert (dist >= 0).all()
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    shown = dist[np.arange(n)[:, None], columns(policy, slate.items), np.arange(k)]
    draws = mc_draws(policy)
    dist_var = 0.0 if draws is None else shown * (1 - shown) / draws
    tolerance = 5 * np.sqrt(slate.propensity_se**2 + dist_var) + 1e-12
    assert (np.abs(slate.propensities - shown) <= tolerance).all(), (slate.propensities, shown)


@pytest.mark.parametrize(("case", "k"), PARAMS)
def test_recommend_samples_from_action_dist(case: Case, k: int) -> None:
    sampler, reference = case.make(1), case.make(2)
    if mc_draws(sampler) is not None:  # no replays for the draws; many for the reference
        sampler.set_params(n_mc_draws=0)
        reference.set_params(n_mc_draws=DIST_MC_DRAWS)
    context = CONTEXTS[:1]
    items = sampler.recommend(np.repeat(context, N_DRAWS, axis=0), k).items
    cols = columns(sampler, items)
    freq = np.stack([np.bincount(cols[:, p], minlength=N_ITEMS) for p in range(k)], axis=1)
    freq = freq / N_DRAWS
    dist = reference.action_dist(context, k)[0]
    draws = mc_draws(reference)
    variance = dist * (1 - dist) * (1 / N_DRAWS + (0.0 if draws is None else 1 / draws))
    assert (np.abs(freq - dist) <= 5 * np.sqrt(variance) + 1e-12).all(), (freq, dist)


@pytest.mark.parametrize(("case", "k"), PARAMS)
def test_random_state_makes_slates_reproducible(case: Case, k: int) -> None:
    first, second = case.make(7).recommend(CONTEXTS, k), case.make(7).recommend(CONTEXTS, k)
    np.testing.assert_array_equal(first.items, second.items)
    np.testing.assert_array_equal(first.propensities, second.propensities)
    many = np.repeat(CONTEXTS, 50, axis=0)
    same = np.array_equal(case.make(7).recommend(many, k).items,
                          case.make(8).recommend(many, k).items)
    assert same != case.random
