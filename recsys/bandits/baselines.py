"""Baselines on the same statistics: greedy, ε-greedy and SquareCB-style inverse-gap weighting."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.arrays import ArrayBackend
from recsys.bandits.base import BasePolicy, with_common_hyperparameters
from recsys.bandits.slates import (
    Slate,
    eligible_counts,
    igw_action_dist,
    igw_marginals,
    igw_slate,
    mix_with_uniform,
)
from recsys.bandits.validation import check_positive


class EpsilonGreedy(BasePolicy):
    """Posterior-mean ranking; with probability ε the whole slate is uniformly random.

    Exact propensities: ``(1-ε)·P_greedy(item at p) + ε/n_eligible``.
    """

    @with_common_hyperparameters
    def __init__(self, epsilon: float = 0.1, **common: Any) -> None:
        super().__init__(**common)
        self.epsilon = epsilon

    def _check_params(self) -> None:
        super()._check_params()
        self._mix_epsilon(self.epsilon)


class Greedy(EpsilonGreedy):
    """Pure exploitation of the posterior mean (ε = 0; ties broken at random)."""

    epsilon = 0.0  # fixed: not a hyperparameter of Greedy

    @with_common_hyperparameters
    def __init__(self, **common: Any) -> None:
        BasePolicy.__init__(self, **common)


class SquareCB(BasePolicy):
    """Inverse-gap weighting over the posterior-mean predictions (Foster & Rakhlin's SquareCB).

    Lead slot: ``p_a = 1/(A + γ·(ŷ* − ŷ_a))`` for non-best items, the rest to the best; later
    slots in greedy order. Every propensity is exact (see ``slates.igw_marginals``).
    """

    @with_common_hyperparameters
    def __init__(self, gamma: float = 100.0, **common: Any) -> None:
        super().__init__(**common)
        self.gamma = gamma

    def _check_params(self) -> None:
        super()._check_params()
        self._gamma = check_positive(self.gamma, "gamma", allow_zero=True)

    def recommend_on(
        self, arrays: ArrayBackend, contexts: Any, k: int, rows: NDArray[np.intp] | None = None
    ) -> Slate:
        """IGW slates with exact propensities (mixed with the exploration floor if set); the
        moments come from ``arrays``, the draw is made on the host."""
        mean, _ = self._moments(contexts, arrays, rows)
        mean = arrays.host(mean)
        n_elig = eligible_counts(mean, k)
        shown, probs, greedy = igw_slate(mean, k, self._gamma, self._rng)
        floor = self._uniform_mix
        if floor > 0.0:
            shown, _ = mix_with_uniform(shown, mean, floor, self._rng)
        prop = (1.0 - floor) * igw_marginals(mean, probs, greedy, shown) + floor / n_elig[:, None]
        return self._slate(shown, prop, np.zeros_like(prop),
                           mean[np.arange(shown.shape[0])[:, None], shown], rows)

    def recommend_one(self, context: Any, k: int = 1) -> Slate:
        """One request (a batch of one: the IGW draw has no cheaper single-slot path)."""
        return self.recommend(context, k)

    def _policy_dist(
        self, mean: NDArray[np.float64], sd: NDArray[np.float64], k: int
    ) -> NDArray[np.float64]:
        return igw_action_dist(mean, k, self._gamma)
