"""Gaussian Thompson sampling on the Diag-LinUCB statistics, in-slate TS, and full LinTS.

θ_j ~ N(θ̂_j, v²·Σ_j) with Σ_j = diag(1/d_j) (diagonal) or A_j⁻¹ (full). For one request the
score ``x·θ_j`` is then exactly N(x·θ̂_j, v²·xᵀΣ_j x), independently across items, so sampling
the n item scores directly is the same distribution as sampling n·d coefficients, at 1/d of the
cost. Propensities are exact at cold start (every item alike: 1/n) and otherwise computed by
quadrature over the shown item's score (top-k; conditional Monte Carlo where the quadrature's
error estimate is not below ``n_mc_draws`` plain replays' standard error) or estimated by plain
replays (in-slate), with an error (``recsys.bandits.slates.thompson_propensities``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.arrays import ArrayBackend
from recsys.bandits.base import BasePolicy, with_common_hyperparameters
from recsys.bandits.full import FullCovariancePolicy
from recsys.bandits.slates import (
    Slate,
    mix_with_uniform,
    thompson_action_dist,
)
from recsys.bandits.validation import check_positive
from recsys.validation import message


def check_count(value: Any, name: str) -> int:
    """A non-negative integer hyperparameter (a float with an integral value is accepted)."""
    expected = "a non-negative integer"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(message(name, expected, f"{value!r} of type {type(value).__name__}"))
    if not (math.isfinite(value) and value == int(value) and value >= 0):
        raise ValueError(message(name, expected, repr(value)))
    return int(value)


class DiagLinTS(BasePolicy):
    """Diagonal linear Thompson sampling: θ_jc ~ N(b_jc/d_jc, v²/d_jc).

    ``per_slot=False`` draws once per slate (ordinary TS); ``per_slot=True`` draws once per slot
    (in-slate TS, see :class:`InSlateTS`). ``n_mc_draws`` is the precision of the logged
    propensities: their standard error is at most what ``n_mc_draws`` plain replays of the sampler
    would report (≤ 0.5/sqrt(n_mc_draws)). In-slate TS spends exactly that many replays; top-k TS
    integrates (``recsys.bandits.slates.quadrature_propensities``: no replays, the logged
    ``propensity_se`` is the quadrature's error estimate, usually far below that target), falls
    back to conditional Monte Carlo where the estimate does not meet it, and logs exactly 1/n
    with standard error 0 when every item has the same posterior. 0 skips them (NaN), for
    callers that do not log.
    """

    per_slot_default = False

    @with_common_hyperparameters
    def __init__(self, v: float = 1.0, *, n_mc_draws: int = 100, per_slot: bool | None = None,
                 **common: Any) -> None:
        super().__init__(**common)
        self.v = v
        self.n_mc_draws = n_mc_draws
        self.per_slot = per_slot

    def _check_params(self) -> None:
        super()._check_params()
        self._v = check_positive(self.v, "v")
        self._n_mc_draws = check_count(self.n_mc_draws, "n_mc_draws")
        if self.per_slot is not None and not isinstance(self.per_slot, bool | np.bool_):
            raise TypeError(message("per_slot", "a bool or None", repr(self.per_slot)))
        self._per_slot = self.per_slot_default if self.per_slot is None else bool(self.per_slot)

    def posterior(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Per (item, feature) posterior mean and variance v²/d of θ."""
        theta, inv_d = self._stats().posterior()
        return theta, self._v**2 * inv_d

    def score(self, contexts: Any, *, exploit: bool = False) -> NDArray[np.float64]:
        """One posterior draw of every item's score; ``exploit=True`` gives the mean."""
        mean, sd = self._moments(contexts)
        if exploit:
            return mean
        return mean + self._v * sd * self._rng.standard_normal(mean.shape)

    def recommend_on(
        self, arrays: ArrayBackend, contexts: Any, k: int, rows: NDArray[np.intp] | None = None
    ) -> Slate:
        """Thompson-sampled slates with propensities and their standard errors (see the class
        docs; an explored slate logs the posterior mean of what it shows)."""
        mean, sd = self._moments(contexts, arrays, rows)
        scale = sd * self._v
        n_elig = arrays.eligible_counts(mean, k)
        gen = arrays.generator(self._rng)
        shown, sampled = arrays.thompson_select(mean, scale, k, gen, per_slot=self._per_slot)
        floor = self._uniform_mix
        if floor > 0.0:
            shown, explore = mix_with_uniform(shown, arrays.eligibility(mean), floor, self._rng)
            explored = np.flatnonzero(explore)
            if explored.size:
                sampled[explored] = arrays.take(mean, explored, shown[explored])
        if self._n_mc_draws:
            p_hat, se = arrays.thompson_propensities(mean, scale, shown, self._n_mc_draws, gen,
                                                     per_slot=self._per_slot)
            prop = (1.0 - floor) * p_hat + floor / n_elig[:, None]
            se = (1.0 - floor) * se
        else:
            prop = np.full(shown.shape, np.nan)
            se = np.full(shown.shape, np.nan)
        return self._slate(shown, prop, se, sampled, rows)

    def recommend_one(self, context: Any, k: int = 1) -> Slate:
        """One request (a batch of one: Thompson sampling has no cheaper single-slot path)."""
        return self.recommend(context, k)

    def action_dist(self, contexts: Any, k: int = 1) -> NDArray[np.float64]:
        """P(item at position | request) for every item, ``[n_rounds, n_items, k]``.

        A Monte Carlo estimate: the sampler is replayed ``n_mc_draws`` times per round, so each
        entry has standard error ``≤ 0.5·(1 − exploration_floor)/sqrt(n_mc_draws)``; the uniform
        part of the exploration floor is exact. Otherwise as :meth:`BasePolicy.action_dist`.
        """
        self._stats()
        if not self._n_mc_draws:
            raise ValueError(message(
                "n_mc_draws", "> 0 for action_dist", "0",
                "Thompson sampling's action distribution is estimated by replaying the sampler "
                "n_mc_draws times"))
        return super().action_dist(contexts, k)

    def _policy_dist(
        self, mean: NDArray[np.float64], sd: NDArray[np.float64], k: int
    ) -> NDArray[np.float64]:
        return thompson_action_dist(mean, self._v * sd, k, self._n_mc_draws, self._rng,
                                    per_slot=self._per_slot)


class InSlateTS(DiagLinTS):
    """In-slate Thompson sampling (Eide et al.): one posterior draw per slot; slot p gets the best
    item of draw p not already in the slate."""

    per_slot_default = True


class LinTS(FullCovariancePolicy, DiagLinTS):
    """Linear Thompson sampling with full covariance, θ_j ~ N(A_j⁻¹b_j, v²A_j⁻¹): the reference."""

    def posterior(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Per item posterior mean [n, d] and covariance v²A⁻¹ [n, d, d]."""
        theta, a_inv = self._stats().posterior()
        return theta, self._v**2 * a_inv
