"""Slate policies that know their own propensities: uniform, ε-greedy and softmax/Plackett–Luce.

Every policy gives, for a batch of contexts, both a sample of slates with the propensity of each
shown item at its position, and the full position-wise distribution ``action_dist`` of shape
(n, n_items, slate_size) that off-policy estimators take as the evaluation policy. A propensity
here is P(the policy shows item a at position k | context), the marginal the event contract logs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

_CHUNK_CELLS = 2**22  # contexts × items per block: bounds memory on large catalogues
_MAX_ITEMS_THIRD_POSITION = 2000


def _chunks(n: int, width: int) -> list[slice]:
    step = max(1, _CHUNK_CELLS // max(width, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class SlatePolicy(ABC):
    """A stochastic (or deterministic) slate policy over ``n_items`` items."""

    n_items: int
    slate_size: int
    name: str = "policy"

    @abstractmethod
    def action_dist(self, context: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
        """(n, n_items, slate_size): P(item a at position k | context)."""

    @abstractmethod
    def sample(
        self,
        context: np.ndarray,
        rng: np.random.Generator,
        available: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slates (n, slate_size) of distinct items and their propensities (n, slate_size)."""

    def shown_scores(self, context: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """(n, slate_size) the policy's score of each shown item (0 for score-free policies)."""
        return np.zeros(slates.shape)

    def _items(self, available: np.ndarray | None) -> np.ndarray:
        items = np.arange(self.n_items) if available is None else np.flatnonzero(available)
        if items.size < self.slate_size:
            raise ValueError(
                f"only {items.size} items are available for slates of {self.slate_size}"
            )
        return items


def _uniform_slates(n: int, pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """n ordered draws of k distinct items from ``pool`` (resampling rows with repeats)."""
    idx = rng.integers(pool.size, size=(n, k))
    while True:
        s = np.sort(idx, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1)) if k > 1 else []
        if len(bad) == 0:
            return pool[idx]
        idx[bad] = rng.integers(pool.size, size=(len(bad), k))


class UniformPolicy(SlatePolicy):
    """Uniformly random ordered slates of distinct items: every propensity is 1 / n_available."""

    name = "uniform"

    def __init__(self, n_items: int, slate_size: int) -> None:
        self.n_items = n_items
        self.slate_size = slate_size

    def action_dist(self, context: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
        items = self._items(available)
        dist = np.zeros((len(context), self.n_items, self.slate_size))
        dist[:, items, :] = 1.0 / items.size
        return dist

    def sample(self, context, rng, available=None):  # type: ignore[override]
        items = self._items(available)
        slates = _uniform_slates(len(context), items, self.slate_size, rng)
        return slates, np.full(slates.shape, 1.0 / items.size)


class ScoringPolicy(SlatePolicy):
    """A policy driven by linear scores ⟨context, item_features⟩ / √f + item_bias."""

    def __init__(
        self,
        item_features: np.ndarray,
        slate_size: int,
        item_bias: np.ndarray | None = None,
    ) -> None:
        self.item_features = np.asarray(item_features, dtype=float)
        self.n_items = self.item_features.shape[0]
        self.slate_size = slate_size
        self.item_bias = np.zeros(self.n_items) if item_bias is None else np.asarray(item_bias)
        if slate_size > self.n_items:
            raise ValueError(f"`slate_size` ({slate_size}) exceeds the {self.n_items} items")

    def scores(self, context: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
        """(n, n_items) scores; unavailable items score -inf."""
        context = np.asarray(context, dtype=float)
        if context.ndim != 2 or context.shape[1] != self.item_features.shape[1]:
            raise ValueError(
                f"`context` must be (n, {self.item_features.shape[1]}), got {context.shape}"
            )
        s = context @ self.item_features.T / np.sqrt(context.shape[1]) + self.item_bias
        if available is not None:
            s[:, ~available] = -np.inf
        return s

    def shown_scores(self, context: np.ndarray, slates: np.ndarray) -> np.ndarray:
        context = np.asarray(context, dtype=float)
        dot = np.einsum("nf,nkf->nk", context, self.item_features[slates])
        return dot / np.sqrt(context.shape[1]) + self.item_bias[slates]


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores per row, best first."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


class EpsilonGreedyPolicy(ScoringPolicy):
    """Top-k by score with probability 1 − ε, a uniform slate otherwise. ε = 0 is greedy."""

    name = "epsilon_greedy"

    def __init__(
        self,
        item_features: np.ndarray,
        slate_size: int,
        epsilon: float = 0.1,
        item_bias: np.ndarray | None = None,
    ) -> None:
        super().__init__(item_features, slate_size, item_bias)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"`epsilon` must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def action_dist(self, context, available=None):  # type: ignore[override]
        items = self._items(available)
        n, k = len(context), self.slate_size
        dist = np.zeros((n, self.n_items, k))
        dist[:, items, :] = self.epsilon / items.size
        for rows in _chunks(n, self.n_items):
            top = _top_k(self.scores(context[rows], available), k)
            r = np.arange(rows.start, rows.stop)[:, None]
            dist[r, top, np.arange(k)] += 1.0 - self.epsilon
        return dist

    def sample(self, context, rng, available=None):  # type: ignore[override]
        items = self._items(available)
        n, k = len(context), self.slate_size
        slates = np.empty((n, k), dtype=np.int64)
        for rows in _chunks(n, self.n_items):
            slates[rows] = _top_k(self.scores(context[rows], available), k)
        greedy = slates.copy()
        explore = rng.random(n) < self.epsilon
        slates[explore] = _uniform_slates(int(explore.sum()), items, k, rng)
        pscore = self.epsilon / items.size + (1 - self.epsilon) * (slates == greedy)
        return slates, pscore


def plackett_luce_marginals(probs: np.ndarray, slate_size: int) -> np.ndarray:
    """Exact P(item at position k) for a Plackett–Luce draw without replacement, k < 3.

    probs: (n, m) first-pick probabilities. Position 1: p_i Σ_{j≠i} p_j / (1 − p_j); position 2:
    p_i Σ_{j≠l, both ≠ i} p_j p_l / ((1 − p_j)(1 − p_j − p_l)), computed as a total minus the
    row and column that involve i. Returns (n, m, slate_size).
    """
    if slate_size > 3:
        raise ValueError("exact Plackett–Luce marginals are implemented for slate_size <= 3")
    n, m = probs.shape
    out = np.empty((n, m, slate_size))
    out[:, :, 0] = probs
    if slate_size >= 2:
        rest = np.maximum(1.0 - probs, 1e-300)
        ratio = probs / rest
        out[:, :, 1] = probs * (ratio.sum(axis=1, keepdims=True) - ratio)
    if slate_size >= 3:
        for rows in _chunks(n, m * m):
            p = probs[rows]
            pj = p[:, :, None]
            pl = p[:, None, :]
            second = np.maximum(1.0 - pj - pl, 1e-300)
            pair = pj * pl / (np.maximum(1.0 - pj, 1e-300) * second)
            idx = np.arange(m)
            pair[:, idx, idx] = 0.0
            total = pair.sum(axis=(1, 2))[:, None]
            out[rows, :, 2] = p * (total - pair.sum(axis=2) - pair.sum(axis=1))
    return out


class SoftmaxPolicy(ScoringPolicy):
    """Plackett–Luce over softmax(scores / temperature): position 0 is a softmax draw, each next
    position a softmax draw among the items not yet shown. Exact propensities for slate_size ≤ 3."""

    name = "softmax"

    def __init__(
        self,
        item_features: np.ndarray,
        slate_size: int,
        temperature: float = 1.0,
        item_bias: np.ndarray | None = None,
    ) -> None:
        super().__init__(item_features, slate_size, item_bias)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if slate_size > 3:
            raise ValueError("SoftmaxPolicy computes exact propensities for slate_size <= 3")
        if slate_size == 3 and self.n_items > _MAX_ITEMS_THIRD_POSITION:
            raise ValueError(
                f"exact third-position propensities cost O(n_items²) per context; with "
                f"{self.n_items} items use slate_size <= 2 (or at most "
                f"{_MAX_ITEMS_THIRD_POSITION} items)"
            )
        self.temperature = temperature

    def first_pick(self, context: np.ndarray, available: np.ndarray | None = None) -> np.ndarray:
        """(n, n_items) softmax probabilities of the first position."""
        z = self.scores(context, available) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def action_dist(self, context, available=None):  # type: ignore[override]
        context = np.asarray(context)
        if self.slate_size < 3:
            return plackett_luce_marginals(self.first_pick(context, available), self.slate_size)
        unique, inverse = np.unique(context, axis=0, return_inverse=True)
        marginals = plackett_luce_marginals(self.first_pick(unique, available), self.slate_size)
        return marginals[inverse.ravel()]

    def sample(self, context, rng, available=None):  # type: ignore[override]
        self._items(available)
        context = np.asarray(context)
        n, k = len(context), self.slate_size
        if k < 3:  # marginals cost O(n_items) per context: compute them row by row
            rows_of, first = np.arange(n), None
        else:
            # Contexts repeat (one per user) and position-2 marginals cost O(n_items²) per
            # context, so they are computed once per distinct context.
            unique, rows_of = np.unique(context, axis=0, return_inverse=True)
            rows_of = rows_of.ravel()
            first = self.first_pick(unique, available)
            marginals = plackett_luce_marginals(first, k)
        slates = np.empty((n, k), dtype=np.int64)
        pscore = np.empty((n, k))
        for rows in _chunks(n, self.n_items):
            p = self.first_pick(context[rows], available) if first is None else first[rows_of[rows]]
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
