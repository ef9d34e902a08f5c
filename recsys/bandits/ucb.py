"""Upper-confidence-bound policies: Diag-LinUCB on additive statistics, full LinUCB reference."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.base import BasePolicy
from recsys.bandits.full import FullCovariancePolicy
from recsys.bandits.validation import check_positive, check_probability


class DiagLinUCB(BasePolicy):
    """Diag-LinUCB (Online Matching): ``x·θ̂_j + α·sqrt(Σ_c x_c²/d_jc)``.

    UCB alone is deterministic, which herds users and leaves no propensity for off-policy
    evaluation; ``epsilon`` mixes in uniformly random slates with exact propensities.
    ``score(..., exploit=True)`` is the mean-only score for a candidate generator.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        epsilon: float = 0.0,
        lam: float = 1.0,
        reward_range: tuple[float, float] = (0.0, 1.0),
        exploration_floor: float = 0.0,
        centred: bool = False,
        random_state: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(lam=lam, reward_range=reward_range,
                         exploration_floor=exploration_floor, centred=centred,
                         random_state=random_state)
        self.alpha = alpha
        self.epsilon = epsilon

    def _check_params(self) -> None:
        super()._check_params()
        self._alpha = check_positive(self.alpha, "alpha", allow_zero=True)
        epsilon = check_probability(self.epsilon, "epsilon")
        self._uniform_mix = 1.0 - (1.0 - epsilon) * (1.0 - self._floor)

    def _rule(self, mean: NDArray[np.float64], sd: NDArray[np.float64]) -> NDArray[np.float64]:
        return mean + self._alpha * sd


class LinUCB(FullCovariancePolicy, DiagLinUCB):
    """LinUCB with full per-item covariance (Sherman–Morrison): the accuracy reference.

    Memory and time grow as d² per item; meant for small d and for checking Diag-LinUCB.
    """
