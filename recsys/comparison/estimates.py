"""Estimators of a comparison as sums per request, so that chunks can be reduced one at a time.

The policy value is the expected *sum* of slot rewards per request (clicks per slate; the usual
value when slates have one slot). Every estimator is a function of the means over requests of a
few per-request columns, which is what lets the bootstrap resample requests (not rows) and share
one resample stream across estimators and candidates (``recsys.ope.bootstrap_means`` on a 2-D
array), with ratio estimators computed as ratios of resampled sums:

* per request: ``dm`` = Σ over its rows of E_{π_e}[q̂ at the row's position]; ``dr`` and
  ``switch`` = Σ of ``recsys.ope``'s DR and Switch-DR round rewards; ``pi`` the pseudo-inverse's
  slate estimate;
* per request and position k: ``A_k`` = Σ w r, ``B_k`` = Σ w, ``D_k`` = Σ w (r − q̂), and (shared
  by every candidate) ``C_k`` = the number of rows at k (0 or 1);

with w = π_e(a | x, k) / π_b(a | x, k). Then ips = Σ_k Ā_k; snips = Σ_k Ā_k C̄_k / B̄_k (the mean
reward at each position self-normalised, as ``recsys.ope``'s SNIPW on that position's rows);
dm = mean(dm); dr = mean(dr); sndr = dm + Σ_k D̄_k C̄_k / B̄_k (SNDR per position); switch-dr =
mean(switch); pi = mean(pi). With one slot these are exactly ``recsys.ope``'s estimators on the
rows; with k slots, the sum over positions of each estimator on that position's rows.

The row-level quantities come from ``recsys.ope``'s own ``_round_rewards`` (IPW, DM, DR,
Switch-DR), which are row-wise; the self-normalised estimators are assembled here because their
``_round_rewards`` divide by the whole sample's mean weight, which a bootstrap over requests must
resample too. Slate IIPS (Σ_k r_k π_e(a_k at k) / π_b(a_k at k) per slate) is the same number as
ips on these logs (the propensities logged are the per-(item, position) marginals), so it is not
reported as a row of its own (``OMITTED_IIPS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.ope import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    SwitchDoublyRobust,
)

__all__ = ["DEFAULT_ESTIMATORS", "ESTIMATORS", "OMITTED_IIPS", "ColumnLayout", "row_terms"]

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr", "switch-dr", "iips", "pi")
"""Every estimator name a comparison knows."""

DEFAULT_ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr", "switch-dr", "pi")
"""What a comparison reports unless told otherwise (pi only where it applies)."""

OMITTED_IIPS = ("identical to ips on slot-level logs: both sum w·r over a slate's slots with the "
                "logged per-(item, position) propensities")


@dataclass(frozen=True)
class ColumnLayout:
    """Where one candidate's per-request columns sit in the comparison's sample matrix."""

    offset: int
    len_list: int
    with_pi: bool

    @property
    def width(self) -> int:
        return 4 + 3 * self.len_list

    @property
    def dm(self) -> int:
        return self.offset

    @property
    def dr(self) -> int:
        return self.offset + 1

    @property
    def switch(self) -> int:
        return self.offset + 2

    @property
    def pi(self) -> int:
        return self.offset + 3

    def weighted_reward(self) -> slice:
        """A_k columns."""
        return slice(self.offset + 4, self.offset + 4 + self.len_list)

    def weight(self) -> slice:
        """B_k columns."""
        start = self.offset + 4 + self.len_list
        return slice(start, start + self.len_list)

    def weighted_residual(self) -> slice:
        """D_k columns."""
        start = self.offset + 4 + 2 * self.len_list
        return slice(start, start + self.len_list)

    def values(self, means: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every estimator from column means ``(..., n_columns)`` (the sample's or each
        resample's) and the shared position counts' means ``(..., len_list)``."""
        a, b, d = (means[..., s] for s in (self.weighted_reward(), self.weight(),
                                            self.weighted_residual()))
        share = np.divide(counts, b, out=np.zeros(b.shape), where=b > 0)
        dm = means[..., self.dm]
        out = {
            "ips": a.sum(axis=-1),
            "snips": (a * share).sum(axis=-1),
            "dm": dm,
            "dr": means[..., self.dr],
            "sndr": dm + (d * share).sum(axis=-1),
            "switch-dr": means[..., self.switch],
        }
        if self.with_pi:
            out["pi"] = means[..., self.pi]
        return out


def row_terms(reward: np.ndarray, pscore: np.ndarray, pi_factual: np.ndarray,
              q_factual: np.ndarray, q_expected: np.ndarray, switch_tau: float
              ) -> dict[str, np.ndarray]:
    """Per-row terms from ``recsys.ope``'s round rewards: ips (w r), dm, dr, switch, and the
    weight w and weighted residual w (r − q̂) of the self-normalised estimators."""
    arrays = {"reward": reward, "pscore": pscore, "pi_factual": pi_factual,
              "q_factual": q_factual, "q_expected": q_expected}
    weight = InverseProbabilityWeighting().importance_weights(pi_factual, pscore)
    return {
        "ips": InverseProbabilityWeighting()._round_rewards(**arrays),
        "dm": DirectMethod()._round_rewards(**arrays),
        "dr": DoublyRobust()._round_rewards(**arrays),
        "switch": SwitchDoublyRobust(lambda_=switch_tau)._round_rewards(**arrays),
        "weight": weight,
        "residual": weight * (reward - q_factual),
    }
