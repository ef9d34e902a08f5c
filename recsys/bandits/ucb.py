"""Upper-confidence-bound policies: Diag-LinUCB on additive statistics, full LinUCB reference."""

from __future__ import annotations

from typing import Any

from recsys.bandits.base import BasePolicy, with_common_hyperparameters
from recsys.bandits.full import FullCovariancePolicy
from recsys.bandits.validation import check_positive


class DiagLinUCB(BasePolicy):
    """Diag-LinUCB (Online Matching): ``x·θ̂_j + α·sqrt(Σ_c x_c²/d_jc)``.

    UCB alone is deterministic, which herds users and leaves no propensity for off-policy
    evaluation; ``epsilon`` mixes in uniformly random slates with exact propensities.
    ``score(..., exploit=True)`` is the mean-only score for a candidate generator.
    """

    @with_common_hyperparameters
    def __init__(self, alpha: float = 1.0, *, epsilon: float = 0.0, **common: Any) -> None:
        super().__init__(**common)
        self.alpha = alpha
        self.epsilon = epsilon

    def _check_params(self) -> None:
        super()._check_params()
        self._alpha = check_positive(self.alpha, "alpha", allow_zero=True)
        self._mix_epsilon(self.epsilon)

    def _rule(self, mean: Any, sd: Any) -> Any:
        score = self._alpha * sd  # one new array, on any backend; mean + α·sd bit for bit
        score += mean
        return score


class LinUCB(FullCovariancePolicy, DiagLinUCB):
    """LinUCB with full per-item covariance (Sherman–Morrison): the accuracy reference.

    Memory and time grow as d² per item; meant for small d and for checking Diag-LinUCB.
    """
