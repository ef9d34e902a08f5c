"""Built-in baseline policies every comparison includes: uniform and popularity.

Both are :class:`~recsys.policies.linear.LinearScorePolicy` objects in context mode ``"none"``,
so they are registered, loaded and evaluated like any offline model.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from recsys.policies.linear import LinearScorePolicy
from recsys.validation import check_finite, message


def uniform_policy(item_ids: ArrayLike, random_state: int | np.random.Generator | None = None
                   ) -> LinearScorePolicy:
    """Uniformly random slates (ε = 1): every item at every position has propensity 1/n."""
    ids = np.asarray(item_ids)
    return LinearScorePolicy(exploration="epsilon_greedy", epsilon=1.0,
                             random_state=random_state).fit(ids)


def popularity_policy(item_ids: ArrayLike, counts: ArrayLike, epsilon: float = 0.05,
                      random_state: int | np.random.Generator | None = None
                      ) -> LinearScorePolicy:
    """The most shown/clicked items first (greedy by ``counts``), ε-mixed with uniform slates so
    that every item keeps a propensity of at least ε/n (set ``epsilon > 0`` for OPE)."""
    ids = np.asarray(item_ids)
    scores = np.asarray(counts, dtype=np.float64)
    if scores.shape != ids.shape:
        raise ValueError(message("counts", f"one count per item, shape {ids.shape}",
                                 f"shape {scores.shape}"))
    check_finite(scores, "counts")
    return LinearScorePolicy(exploration="epsilon_greedy", epsilon=epsilon,
                             random_state=random_state).fit(ids, item_bias=scores)
