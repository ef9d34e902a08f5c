"""Gaussian Thompson sampling on the Diag-LinUCB statistics, in-slate TS, and full LinTS.

θ_j ~ N(θ̂_j, v²·Σ_j) with Σ_j = diag(1/d_j) (diagonal) or A_j⁻¹ (full). For one request the
score ``x·θ_j`` is then exactly N(x·θ̂_j, v²·xᵀΣ_j x), independently across items, so sampling
the n item scores directly is the same distribution as sampling n·d coefficients, at 1/d of the
cost. Propensities are estimated by replaying the sampler (Monte Carlo) and carry a standard error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.base import BasePolicy
from recsys.bandits.full import FullCovariancePolicy
from recsys.bandits.slates import (
    Slate,
    eligible_counts,
    mix_with_uniform,
    thompson_propensities,
    thompson_select,
)
from recsys.bandits.validation import check_positive


class DiagLinTS(BasePolicy):
    """Diagonal linear Thompson sampling: θ_jc ~ N(b_jc/d_jc, v²/d_jc).

    ``per_slot=False`` draws once per slate (ordinary TS); ``per_slot=True`` draws once per slot
    (in-slate TS, see :class:`InSlateTS`). ``n_mc_draws`` replays per request set the precision of
    the logged propensities (standard error ≤ 0.5/sqrt(n_mc_draws)); 0 skips them (NaN), for
    callers that do not log.
    """

    per_slot_default = False

    def __init__(
        self,
        v: float = 1.0,
        *,
        n_mc_draws: int = 100,
        per_slot: bool | None = None,
        lam: float = 1.0,
        reward_range: tuple[float, float] = (0.0, 1.0),
        exploration_floor: float = 0.0,
        centred: bool = False,
        random_state: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(lam=lam, reward_range=reward_range,
                         exploration_floor=exploration_floor, centred=centred,
                         random_state=random_state)
        self.v = check_positive(v, "v")
        if int(n_mc_draws) != n_mc_draws or n_mc_draws < 0:
            raise ValueError(f"n_mc_draws must be a non-negative integer, got {n_mc_draws!r}")
        self.n_mc_draws = int(n_mc_draws)
        self.per_slot = self.per_slot_default if per_slot is None else bool(per_slot)

    def posterior(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Per (item, feature) posterior mean and variance v²/d of θ."""
        theta, inv_d = self._stats().posterior()  # type: ignore[attr-defined]
        return theta, self.v**2 * inv_d

    def score(self, contexts: Any, *, exploit: bool = False) -> NDArray[np.float64]:
        """One posterior draw of every item's score; ``exploit=True`` gives the mean."""
        mean, sd = self._moments(contexts)
        if exploit:
            return mean
        return mean + self.v * sd * self._rng.standard_normal(mean.shape)

    def recommend(self, contexts: Any, k: int = 1) -> Slate:
        """Thompson-sampled slates with Monte Carlo propensities and their standard errors."""
        mean, sd = self._moments(contexts)
        scale = self.v * sd
        n_elig = eligible_counts(mean, k)
        shown, sampled = thompson_select(mean, scale, k, self._rng, per_slot=self.per_slot)
        floor = self.exploration_floor
        if floor > 0.0:
            shown, explore = mix_with_uniform(shown, mean, floor, self._rng)
            sampled = np.where(explore[:, None], np.take_along_axis(mean, shown, axis=1),
                               sampled)
        if self.n_mc_draws:
            p_hat, se = thompson_propensities(mean, scale, shown, self.n_mc_draws, self._rng,
                                              per_slot=self.per_slot)
            prop = (1.0 - floor) * p_hat + floor / n_elig[:, None]
            se = (1.0 - floor) * se
        else:
            prop = np.full(shown.shape, np.nan)
            se = np.full(shown.shape, np.nan)
        return Slate(items=self.item_ids_[shown], propensities=prop, propensity_se=se,
                     scores=sampled)


class InSlateTS(DiagLinTS):
    """In-slate Thompson sampling (Eide et al.): one posterior draw per slot; slot p gets the best
    item of draw p not already in the slate."""

    per_slot_default = True


class LinTS(FullCovariancePolicy, DiagLinTS):
    """Linear Thompson sampling with full covariance, θ_j ~ N(A_j⁻¹b_j, v²A_j⁻¹): the reference."""

    def posterior(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Per item posterior mean [n, d] and covariance v²A⁻¹ [n, d, d]."""
        theta, a_inv = self._stats().posterior()  # type: ignore[attr-defined]
        return theta, self.v**2 * a_inv
