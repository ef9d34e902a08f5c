"""Array backends: where a policy's scoring and sampling arrays live.

A policy's slate logic (its scoring rule, the uniform mix, the propensity formulas, what an
explored slate logs) is written once, in ``recsys.bandits``, against :class:`ArrayBackend`: the
few operations that are not plain arithmetic operators (moments of the statistics, top-k,
Gaussian draws, Monte Carlo replays, gathers back to the host). :data:`NUMPY` runs them with the
functions of :mod:`recsys.bandits.slates` and is what ``policy.recommend`` uses; the serving
app's torch backend (``recsys.serving.backends``) runs the same operations on a CPU or CUDA
device. Results always come back to the host as numpy arrays.

A backend that cannot do something as numpy does raises :class:`Unsupported` before any random
draw (statistics it cannot score) or :class:`Tied` (a selection that depends on a tie: numpy
breaks ties uniformly at random and shares their propensity, ``torch.topk`` does neither); the
caller then runs the request on :data:`NUMPY`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.slates import (
    eligible_counts,
    greedy_marginals,
    thompson_propensities,
    thompson_select,
    top_k,
)


class Unsupported(Exception):
    """This backend does not score these statistics; use :data:`NUMPY`."""


class Tied(Exception):
    """A selection depends on tied scores, which this backend does not break at random."""


class ArrayBackend(Protocol):
    """The operations a policy's slate logic needs besides arithmetic (see the module docs).

    ``Array`` below is the backend's array type; item columns, slates and propensities are
    numpy arrays on the host.
    """

    def moments(self, stats: Any, contexts: Any, rows: NDArray[np.intp] | None
                ) -> tuple[Any, Any, NDArray[np.bool_] | None]:
        """Score mean, standard deviation [batch, items] and the candidate mask (None: all)."""
        ...

    def eligible_counts(self, scores: Any, k: int) -> NDArray[np.int64]:
        """Finite scores per request; raises when a request has fewer than ``k``."""
        ...

    def top_k(self, scores: Any, k: int, rng: np.random.Generator
              ) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        """Columns of the k best scores per request, best first, and those scores."""
        ...

    def greedy_marginals(self, scores: Any, shown: NDArray[np.intp],
                         greedy: NDArray[np.intp]) -> NDArray[np.float64]:
        """P(the greedy top-k puts ``shown[b, p]`` at position p)."""
        ...

    def eligibility(self, scores: Any) -> NDArray[np.float64]:
        """A host array whose finite entries mark the eligible items (for uniform slates)."""
        ...

    def take(self, values: Any, rows: NDArray[np.intp], cols: NDArray[np.intp]
             ) -> NDArray[np.float64]:
        """``values[rows[i], cols[i, p]]`` on the host."""
        ...

    def host(self, values: Any) -> NDArray[np.float64]:
        """An array of this backend on the host."""
        ...

    def generator(self, rng: np.random.Generator) -> Any:
        """The random source of the backend's draws, derived from the policy's generator."""
        ...

    def thompson_select(self, mean: Any, scale: Any, k: int, gen: Any, *, per_slot: bool
                        ) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        """As :func:`recsys.bandits.slates.thompson_select` (columns and sampled scores)."""
        ...

    def thompson_propensities(self, mean: Any, scale: Any, shown: NDArray[np.intp],
                              n_draws: int, gen: Any, *, per_slot: bool
                              ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """As :func:`recsys.bandits.slates.thompson_propensities` (estimate and its se)."""
        ...


class NumpyArrays:
    """The host backend: the statistics' own ``moments`` and :mod:`recsys.bandits.slates`."""

    name = "numpy"

    def moments(self, stats: Any, contexts: Any, rows: NDArray[np.intp] | None
                ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_] | None]:
        mean, var, eligible = stats.moments(contexts, rows)
        return mean, np.sqrt(var), eligible

    eligible_counts = staticmethod(eligible_counts)
    greedy_marginals = staticmethod(greedy_marginals)
    thompson_select = staticmethod(thompson_select)
    thompson_propensities = staticmethod(thompson_propensities)

    def top_k(self, scores: NDArray[np.float64], k: int, rng: np.random.Generator
              ) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        cols = top_k(scores, k, rng)
        return cols, self.take(scores, np.arange(scores.shape[0]), cols)

    def eligibility(self, scores: NDArray[np.float64]) -> NDArray[np.float64]:
        return scores

    def take(self, values: NDArray[np.float64], rows: NDArray[np.intp],
             cols: NDArray[np.intp]) -> NDArray[np.float64]:
        return values[rows[:, None], cols]

    def host(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        return values

    def generator(self, rng: np.random.Generator) -> np.random.Generator:
        return rng


NUMPY = NumpyArrays()
"""The default backend (``policy.recommend``)."""
