"""The simulator's logging policies: uniform, greedy, softmax/Plackett–Luce and ε-mixtures.

They satisfy ``recsys.policy.Policy``, like the bandits: ``recommend(contexts, k)`` draws slates
with the exact propensity of every shown item at its position (P(the policy shows item a at
position p | context), the marginal the event contract logs), and ``action_dist(contexts, k)`` is
the full position-wise distribution ``(n, n_items, k)`` that off-policy estimators take as the
evaluation policy. Both take ``available``, a mask of the items that may be shown (items that have
not arrived yet get probability 0). Nothing is learned: the constructor holds the parameters
(scikit-learn estimators, so ``get_params``/``clone`` work) and checks nothing; they are checked
when the policy is used. Items are the integers ``0 .. n_items-1``.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator

from recsys.bandits.base import make_generator
from recsys.bandits.slates import Slate
from recsys.policies.blocks import row_blocks
from recsys.policies.plackett_luce import plackett_luce_marginals
from recsys.validation import check_scalar, message

_MAX_ITEMS_THIRD_POSITION = 2000


def _check_count(value: Any, name: str) -> int:
    """A positive integer (TypeError for a non-integer, ValueError below 1)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        got = f"{value!r} of type {type(value).__name__}"
        raise TypeError(message(name, "an integer >= 1", got))
    if value < 1:
        raise ValueError(message(name, "an integer >= 1", repr(value)))
    return int(value)


class FixedPolicy(BaseEstimator, ABC):
    """Base of the simulator's policies: fixed parameters, exact propensities.

    ``random_state`` follows scikit-learn: the generator is built from it at the first draw and
    advanced by every ``recommend`` after that, so an int makes the sequence of draws
    reproducible; a ``numpy.random.Generator`` is used as is (the caller and the policy then
    advance one stream, which is how a seeded study draws requests, slates and clicks from one
    generator). ``set_params(random_state=...)`` starts the new generator.
    """

    name: str = "policy"
    """What logs record as ``policy_name``."""

    def __init__(self, *, random_state: int | np.random.Generator | None = None) -> None:
        self.random_state = random_state

    # ------------------------------------------------------------------ the contract
    @property
    def item_ids_(self) -> NDArray[np.int64]:
        """The items, ``0 .. n_items-1``, in the column order of ``action_dist``."""
        return np.arange(self._n_items())

    def recommend(
        self, contexts: Any, k: int = 1, *, available: NDArray[np.bool_] | None = None
    ) -> Slate:
        """One slate of ``k`` distinct items per context with their exact propensities and the
        policy's score of each shown item (0 for score-free policies)."""
        contexts = np.asarray(contexts)
        pool = self._pool(k, available)
        shown, propensities = self._draw(contexts, k, pool, available, self._generator())
        return Slate(
            items=shown,
            propensities=propensities,
            propensity_se=np.zeros(propensities.shape),
            scores=self._shown_scores(contexts, shown),
        )

    def action_dist(
        self, contexts: Any, k: int = 1, *, available: NDArray[np.bool_] | None = None
    ) -> NDArray[np.float64]:
        """(n, n_items, k): P(item a at position p | context)."""
        contexts = np.asarray(contexts)
        return self._dist(contexts, k, self._pool(k, available), available)

    def set_params(self, **params: Any) -> Self:
        """Set parameters (scikit-learn); a new ``random_state`` starts a new generator."""
        super().set_params(**params)
        if "random_state" in params:
            self.__dict__.pop("_rng", None)
        return self

    # ------------------------------------------------------------------ what subclasses give
    @abstractmethod
    def _n_items(self) -> int:
        """The catalogue size (checked)."""

    @abstractmethod
    def _dist(
        self, contexts: np.ndarray, k: int, pool: np.ndarray, available: np.ndarray | None
    ) -> NDArray[np.float64]:
        """``action_dist`` over the items of ``pool`` (the available ones)."""

    @abstractmethod
    def _draw(
        self,
        contexts: np.ndarray,
        k: int,
        pool: np.ndarray,
        available: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Slates (n, k) of distinct items of ``pool`` and their propensities (n, k)."""

    def _check_params(self, k: int) -> None:
        """Raise if a parameter is invalid for slates of ``k`` (extended by subclasses)."""

    def _shown_scores(self, contexts: np.ndarray, slates: np.ndarray) -> NDArray[np.float64]:
        """(n, k) the policy's score of each shown item (0 for score-free policies)."""
        return np.zeros(slates.shape)

    # ------------------------------------------------------------------ shared plumbing
    def _generator(self) -> np.random.Generator:
        rng = self.__dict__.get("_rng")
        if rng is None:
            rng = self._rng = make_generator(self.random_state)
        return rng

    def _pool(self, k: int, available: np.ndarray | None) -> NDArray[np.int64]:
        """The items that may be shown, after checking ``k``, ``available`` and the parameters."""
        k = _check_count(k, "k")
        self._check_params(k)
        n_items = self._n_items()
        if available is None:
            pool = np.arange(n_items)
        else:
            mask = np.asarray(available)
            if mask.dtype != np.bool_ or mask.shape != (n_items,):
                got = f"dtype {mask.dtype}, shape {mask.shape}"
                raise ValueError(message("available", f"a bool mask of shape ({n_items},)", got))
            pool = np.flatnonzero(mask)
        if pool.size < k:
            raise ValueError(message("k", f"at most {pool.size} (the available items)", k,
                                     "lower k or make more items available"))
        return pool


def _uniform_slates(n: int, pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """n ordered draws of k distinct items from ``pool`` (resampling rows with repeats)."""
    idx = rng.integers(pool.size, size=(n, k))
    while True:
        s = np.sort(idx, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)) if k > 1 else []
        if len(bad) == 0:
            return pool[idx]
        idx[bad] = rng.integers(pool.size, size=(len(bad), k))


class UniformPolicy(FixedPolicy):
    """Uniformly random ordered slates of distinct items: every propensity is 1 / n_available."""

    name = "uniform"

    def __init__(self, n_items: int, *, random_state: int | np.random.Generator | None = None
                 ) -> None:
        super().__init__(random_state=random_state)
        self.n_items = n_items

    def _n_items(self) -> int:
        return _check_count(self.n_items, "n_items")

    def _dist(self, contexts, k, pool, available):
        dist = np.zeros((len(contexts), self._n_items(), k))
        dist[:, pool, :] = 1.0 / pool.size
        return dist

    def _draw(self, contexts, k, pool, available, rng):
        slates = _uniform_slates(len(contexts), pool, k, rng)
        return slates, np.full(slates.shape, 1.0 / pool.size)


class ScoringPolicy(FixedPolicy):
    """A policy driven by linear scores ⟨context, item_features⟩ / √f + item_bias."""

    def __init__(
        self,
        item_features: np.ndarray,
        *,
        item_bias: np.ndarray | None = None,
        random_state: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(random_state=random_state)
        self.item_features = item_features
        self.item_bias = item_bias

    def _features(self) -> NDArray[np.float64]:
        features = np.asarray(self.item_features, dtype=float)
        if features.ndim != 2 or features.shape[0] < 1:
            got = f"shape {features.shape}"
            raise ValueError(message("item_features", "a 2-d array (n_items, n_features)", got))
        return features

    def _n_items(self) -> int:
        return int(np.shape(self.item_features)[0])

    def _bias(self) -> NDArray[np.float64]:
        n_items = self._n_items()
        if self.item_bias is None:
            return np.zeros(n_items)
        bias = np.asarray(self.item_bias, dtype=float)
        if bias.shape != (n_items,):
            raise ValueError(message("item_bias", f"shape ({n_items},)", f"shape {bias.shape}"))
        return bias

    def _check_params(self, k: int) -> None:
        self._features()
        self._bias()

    def scores(self, contexts: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
        """(n, n_items) scores; unavailable items score -inf."""
        features = self._features()
        contexts = np.asarray(contexts, dtype=float)
        if contexts.ndim != 2 or contexts.shape[1] != features.shape[1]:
            expected = f"shape (n, {features.shape[1]})"
            raise ValueError(message("contexts", expected, f"shape {contexts.shape}"))
        s = contexts @ features.T / np.sqrt(contexts.shape[1]) + self._bias()
        if available is not None:
            s[:, ~available] = -np.inf
        return s

    def _shown_scores(self, contexts, slates):
        contexts = np.asarray(contexts, dtype=float)
        dot = np.einsum("nf,nkf->nk", contexts, self._features()[slates])
        return dot / np.sqrt(contexts.shape[1]) + self._bias()[slates]


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


class GreedyPolicy(ScoringPolicy):
    """The k best items by score, best first: deterministic (every propensity is 1). Mix it with
    uniform slates (:class:`EpsilonMixturePolicy`) for ε-greedy."""

    name = "greedy"

    def _greedy(self, contexts: np.ndarray, k: int, available: np.ndarray | None) -> np.ndarray:
        slates = np.empty((len(contexts), k), dtype=np.int64)
        for rows in row_blocks(len(contexts), self._n_items()):
            slates[rows] = _top_k(self.scores(contexts[rows], available), k)
        return slates

    def _dist(self, contexts, k, pool, available):
        dist = np.zeros((len(contexts), self._n_items(), k))
        greedy = self._greedy(contexts, k, available)
        dist[np.arange(len(contexts))[:, None], greedy, np.arange(k)] = 1.0
        return dist

    def _draw(self, contexts, k, pool, available, rng):
        slates = self._greedy(contexts, k, available)
        return slates, np.ones(slates.shape)


class SoftmaxPolicy(ScoringPolicy):
    """Plackett–Luce over softmax(scores / temperature): position 0 is a softmax draw, each next
    position a softmax draw among the items not yet shown. Exact propensities for k ≤ 3."""

    name = "softmax"

    def __init__(
        self,
        item_features: np.ndarray,
        *,
        temperature: float = 1.0,
        item_bias: np.ndarray | None = None,
        random_state: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(item_features, item_bias=item_bias, random_state=random_state)
        self.temperature = temperature

    def _check_params(self, k: int) -> None:
        super()._check_params(k)
        check_scalar(self.temperature, "temperature", 0.0, low_open=True)
        if k > 3:
            raise ValueError(message("k", "at most 3 (exact Plackett–Luce propensities)", k))
        if k == 3 and self._n_items() > _MAX_ITEMS_THIRD_POSITION:
            raise ValueError(message(
                "k", f"at most 2 with {self._n_items()} items", k,
                "exact third-position propensities cost O(n_items²) per context; use k <= 2 "
                f"or at most {_MAX_ITEMS_THIRD_POSITION} items"))

    def _first_pick(self, contexts: np.ndarray, available: np.ndarray | None) -> np.ndarray:
        """(n, n_items) softmax probabilities of the first position."""
        z = self.scores(contexts, available) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def _dist(self, contexts, k, pool, available):
        if k < 3:
            return plackett_luce_marginals(self._first_pick(contexts, available), k)
        unique, inverse = np.unique(contexts, axis=0, return_inverse=True)
        marginals = plackett_luce_marginals(self._first_pick(unique, available), k)
        return marginals[inverse.ravel()]

    def _draw(self, contexts, k, pool, available, rng):
        n = len(contexts)
        if k < 3:  # marginals cost O(n_items) per context: compute them row by row
            rows_of, first = np.arange(n), None
        else:
            # Contexts repeat (one per user) and position-2 marginals cost O(n_items²) per
            # context, so they are computed once per distinct context.
            unique, rows_of = np.unique(contexts, axis=0, return_inverse=True)
            rows_of = rows_of.ravel()
            first = self._first_pick(unique, available)
            marginals = plackett_luce_marginals(first, k)
        slates = np.empty((n, k), dtype=np.int64)
        pscore = np.empty((n, k))
        for rows in row_blocks(n, self._n_items()):
            p = self._first_pick(contexts[rows], available) if first is None \
                else first[rows_of[rows]]
            gumbel = -np.log(-np.log(rng.random(p.shape)))
            with np.errstate(divide="ignore"):
                chosen = _top_k(np.log(p) + gumbel, k)
            slates[rows] = chosen
            if first is None:
                marg = plackett_luce_marginals(p, k)
                pscore[rows] = marg[np.arange(len(chosen))[:, None], chosen, np.arange(k)]
        if first is not None:
            pscore = marginals[rows_of[:, None], slates, np.arange(k)]
        return slates, pscore


class EpsilonMixturePolicy(FixedPolicy):
    """``(1 − ε) · base + ε · uniform``: every available item keeps a propensity of at least
    ε / n_available at every position, and the logged propensity is the exact mixture's.

    ``EpsilonMixturePolicy(GreedyPolicy(item_features), epsilon)`` is ε-greedy. One-item slates
    are drawn from the mixed distribution directly (one uniform number per request); longer
    slates are uniformly random with probability ε and the base policy's otherwise (the base
    draws from its own ``random_state``).
    """

    def __init__(
        self,
        base: FixedPolicy,
        epsilon: float,
        *,
        random_state: int | np.random.Generator | None = None,
    ) -> None:
        super().__init__(random_state=random_state)
        self.base = base
        self.epsilon = epsilon

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.base.name}_eps{self.epsilon:g}"

    def _n_items(self) -> int:
        return self.base._n_items()

    def _check_params(self, k: int) -> None:
        if not isinstance(self.base, FixedPolicy):
            got = type(self.base).__name__
            raise TypeError(message("base", "a policy of simulators.policies", got))
        self.base._check_params(k)
        check_scalar(self.epsilon, "epsilon", 0.0, 1.0)

    def _dist(self, contexts, k, pool, available):
        dist = (1.0 - self.epsilon) * self.base.action_dist(contexts, k, available=available)
        dist[:, pool, :] += self.epsilon / pool.size
        return dist

    def _draw(self, contexts, k, pool, available, rng):
        if k == 1:
            return self._draw_one(contexts, pool, available, rng)
        n = len(contexts)
        explore = rng.random(n) < self.epsilon
        slates = np.empty((n, k), dtype=np.int64)
        base_prop = np.empty((n, k))
        if not explore.all():
            slate = self.base.recommend(contexts[~explore], k, available=available)
            slates[~explore], base_prop[~explore] = slate.items, slate.propensities
        slates[explore] = _uniform_slates(int(explore.sum()), pool, k, rng)
        if explore.any():  # the base policy's probability of the uniformly drawn entries
            dist = self.base.action_dist(contexts[explore], k, available=available)
            rows = np.arange(dist.shape[0])[:, None]
            base_prop[explore] = dist[rows, slates[explore], np.arange(k)]
        return slates, self.epsilon / pool.size + (1 - self.epsilon) * base_prop

    def _draw_one(
        self,
        contexts: np.ndarray,
        pool: np.ndarray,
        available: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """One-item slates by inverting the mixed distribution's CDF."""
        n, n_items = len(contexts), self._n_items()
        slates = np.empty((n, 1), dtype=np.int64)
        pscore = np.empty((n, 1))
        for rows in row_blocks(n, n_items):
            p = self._dist(contexts[rows], 1, pool, available)[:, :, 0]
            cdf = p.cumsum(axis=1)
            draw = rng.random(len(p))[:, None] * cdf[:, -1:]
            chosen = np.minimum((cdf <= draw).sum(axis=1), n_items - 1)
            slates[rows, 0] = chosen
            pscore[rows, 0] = p[np.arange(len(p)), chosen]
        return slates, pscore

    def _shown_scores(self, contexts, slates):
        return self.base._shown_scores(contexts, slates)
