"""The one contract of everything that recommends: slates with propensities, and ``action_dist``.

Bandit policies (``recsys.bandits``), the simulator's logging policies, baselines and (later)
offline models with an exploration rule all satisfy :class:`Policy`, so serving, the ground truth
of the simulator, the off-policy estimators and the model registry take any of them.

The contract, for a batch of ``n`` requests (``contexts``, whatever the policy scores from) and
slates of ``k`` positions:

* ``item_ids_``: the policy's items; column ``j`` of ``action_dist`` is item ``item_ids_[j]``.
* ``recommend(contexts, k)`` returns a :class:`~recsys.bandits.slates.Slate` of ``k`` distinct
  items per request, drawn from the policy's distribution, with the propensity of every shown
  entry: P(the policy shows that item at that position | request), Open Bandit Pipeline's
  ``pscore``. It equals the ``action_dist`` entry of that (item, position), exactly or, where the
  policy can only estimate it (Thompson sampling), within the reported ``propensity_se``.
* ``action_dist(contexts, k)`` returns OBP's evaluation-policy array ``[n, n_items, k]``: the
  probability of every item at every position, each ``[i, :, p]`` summing to 1.

Random draws come from the policy's ``random_state`` the scikit-learn way (an int or a
``numpy.random.Generator`` given to the constructor), never from an argument of ``recommend``.
A policy may take extra keyword arguments (the simulator's policies take ``available``, a mask of
the items that may be shown); callers that use them say so.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.slates import Slate

__all__ = ["Policy", "Slate"]


@runtime_checkable
class Policy(Protocol):
    """Anything that recommends slates with propensities (see the module docstring)."""

    @property
    def item_ids_(self) -> NDArray[np.int64]:
        """The items, in the column order of ``action_dist``."""
        ...

    def recommend(self, contexts: Any, k: int = 1) -> Slate:
        """One slate of ``k`` distinct items per request, with per-entry propensities."""
        ...

    def action_dist(self, contexts: Any, k: int = 1) -> NDArray[np.float64]:
        """P(item at position | request) for every item, ``[n_requests, n_items, k]``."""
        ...
