"""A data set with the propensities its objective needs: what training and evaluation share.

``offline.sources`` builds it once per experiment; ``offline.training`` trains on it and
``offline.evaluation`` scores on it, so neither of those imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from offline.dataset import Dataset

__all__ = ["PreparedData"]


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A data set with the propensities its objective needs, computed once per experiment."""

    dataset: Dataset
    train_propensity: np.ndarray | None = None
    """P(observed) of each train row, clipped as the spec says."""
    propensity_matrix: np.ndarray | None = None
    """(n_users, n_items) P(observed), for objectives that sample unobserved pairs."""
    valid_propensity: np.ndarray | None = None
    """P(observed) of each validation row (self-normalised validation errors)."""
    propensity_summary: dict[str, float] = field(default_factory=dict)
