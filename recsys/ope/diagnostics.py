"""Support and overlap diagnostics: can these logs evaluate this policy at all?

Importance-weighted estimates are only as good as the overlap between logging and evaluation
policies. These numbers say how much: the effective sample size of the weights (Kish), the largest
weight, and the share of the evaluation policy's probability mass on (action, position) pairs the
logs never show, which no importance weighting can recover.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recsys.ope.validation import check_action_dist, check_ope_inputs


@dataclass(frozen=True)
class OverlapDiagnostics:
    """Summary of importance weights w = π_e / π_b on the logged rounds."""

    n_rounds: int
    effective_sample_size: float
    """(Σw)² / Σw²: how many uniformly weighted rounds the estimate is worth."""
    effective_sample_ratio: float
    max_weight: float
    mean_weight: float
    """Should be near 1 when the propensities are right and the overlap is full."""
    unlogged_target_mass: float
    """Mean over rounds of π_e mass on (action, position) pairs with no logged round."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def overlap_diagnostics(
    action: Any, position: Any, pscore: Any, action_dist: Any
) -> OverlapDiagnostics:
    """Diagnostics for evaluating ``action_dist`` on logs (``action``, ``position``, ``pscore``)."""
    arrays = check_ope_inputs(
        action_dist=check_action_dist(action_dist),
        position=position,
        action=action,
        reward=np.zeros(np.shape(action)[0]) if action is not None else None,
        pscore=pscore,
    )
    dist, act, pos, ps = (arrays[k] for k in ("action_dist", "action", "position", "pscore"))
    n, n_actions, len_list = dist.shape
    rows = np.arange(n)
    w = dist[rows, act, pos] / ps
    logged = np.zeros((n_actions, len_list), dtype=bool)
    logged[act, pos] = True
    unlogged_mass = (dist[rows, :, pos] * ~logged[:, pos].T).sum(axis=1)
    sum_w = float(w.sum())
    sum_w2 = float((w**2).sum())
    ess = sum_w**2 / sum_w2 if sum_w2 > 0 else 0.0
    return OverlapDiagnostics(
        n_rounds=n,
        effective_sample_size=ess,
        effective_sample_ratio=ess / n if n else 0.0,
        max_weight=float(w.max()) if n else 0.0,
        mean_weight=float(w.mean()) if n else 0.0,
        unlogged_target_mass=float(unlogged_mass.mean()) if n else 0.0,
    )
