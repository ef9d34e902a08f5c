"""The policy base class: statistics + a scoring rule + a slate sampler with propensities.

Conventions (scikit-learn / river): the constructor holds hyperparameters only; ``init`` (new
statistics) or ``use`` (existing statistics, e.g. a parameter-shard snapshot) sets the learned
state ``stats_``; ``learn`` takes a batch or a single event; ``score`` and ``recommend`` take a
batch of requests. Scores are ``[batch, n_items]`` aligned with ``item_ids_``; items that are not
candidates for a request (graph mode) score ``-inf``.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.dense import DenseStats
from recsys.bandits.protocol import Statistics
from recsys.bandits.slates import (
    Slate,
    eligible_counts,
    greedy_marginals,
    mix_with_uniform,
    top_k,
)
from recsys.bandits.validation import check_positive, check_probability


class BasePolicy:
    """Shared plumbing: statistics lifecycle, validation, exploration floor, slates.

    Common hyperparameters: ``lam`` (prior precision λ), ``reward_range`` (rewards outside it are
    rejected), ``exploration_floor`` (probability of a uniformly random slate, so that no eligible
    item ever has propensity 0: set it for OPE-grade logs), ``centred`` (dense statistics with a
    per-feature intercept, see :mod:`recsys.bandits.dense`) and ``random_state``.
    """

    def __init__(
        self,
        *,
        lam: float = 1.0,
        reward_range: tuple[float, float] = (0.0, 1.0),
        exploration_floor: float = 0.0,
        centred: bool = False,
        random_state: int | np.random.Generator | None = None,
    ) -> None:
        self.lam = check_positive(lam, "lam")
        self.centred = bool(centred)
        low, high = (float(v) for v in reward_range)
        if not low < high:
            raise ValueError(f"reward_range must be (low, high), low < high; got {reward_range}")
        self.reward_range = (low, high)
        self.exploration_floor = check_probability(exploration_floor, "exploration_floor")
        self.random_state = random_state
        self._rng = np.random.default_rng(random_state)

    # ------------------------------------------------------------------ state
    def _new_stats(
        self, items: ArrayLike, dim: int, prior_mean: ArrayLike | None, space: str,
        dtype: type[np.floating],
    ) -> Statistics:
        return DenseStats.empty(items, dim, lam=self.lam, centred=self.centred,
                                prior_mean=prior_mean, space=space, dtype=dtype)

    def init(
        self,
        items: ArrayLike,
        dim: int,
        *,
        prior_mean: ArrayLike | None = None,
        space: str = "",
        dtype: type[np.floating] = np.float64,
    ) -> Self:
        """Start from empty statistics over ``items``; ``prior_mean`` warm-starts the means."""
        self.stats_ = self._new_stats(items, dim, prior_mean, space, dtype)
        return self

    def use(self, stats: Statistics) -> Self:
        """Score and learn with existing statistics (they are shared, not copied)."""
        if stats.lam != self.lam:
            raise ValueError(
                f"the statistics were built with λ={stats.lam} but this policy has lam={self.lam}"
            )
        self.stats_ = stats
        return self

    def _stats(self) -> Statistics:
        stats = getattr(self, "stats_", None)
        if stats is None:
            raise RuntimeError(
                f"{type(self).__name__} has no statistics yet: call init(items, dim) or use(stats)"
            )
        return stats

    @property
    def item_ids_(self) -> NDArray[np.int64]:
        """Item ids in the column order of ``score``."""
        return self._stats().item_ids

    # ------------------------------------------------------------------ learning
    def learn(self, contexts: Any, items: ArrayLike, rewards: ArrayLike) -> Self:
        """Update on a batch (or one event) of (context actually served, item, reward)."""
        self._stats().learn(contexts, items, rewards, reward_range=self.reward_range)
        return self

    def learn_one(self, context: Any, item: int, reward: float) -> Self:
        """Update on a single event (river's ``learn_one``); same result as a batch of one."""
        stats = self._stats()
        if isinstance(stats, DenseStats):
            stats.learn_one(context, item, reward, reward_range=self.reward_range)
        else:
            stats.learn(context, [item], [reward], reward_range=self.reward_range)
        return self

    # ------------------------------------------------------------------ scoring
    def _moments(self, contexts: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Score mean and standard deviation, -inf mean / 0 sd for non-candidates."""
        mean, var, eligible = self._stats().moments(contexts)
        sd = np.sqrt(var)
        if eligible is not None:
            mean = np.where(eligible, mean, -np.inf)
            sd = np.where(eligible, sd, 0.0)
        return mean, sd

    def _rule(
        self, mean: NDArray[np.float64], sd: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """The deterministic score of the policy (overridden by UCB)."""
        return mean

    def score(self, contexts: Any, *, exploit: bool = False) -> NDArray[np.float64]:
        """Scores [batch, n_items]; ``exploit=True`` gives the posterior mean (no bonus)."""
        mean, sd = self._moments(contexts)
        return mean if exploit else self._rule(mean, sd)

    # ------------------------------------------------------------------ slates
    def _epsilon(self) -> float:
        """Probability of replacing the slate by a uniformly random one (policy ε and floor)."""
        return self.exploration_floor

    def recommend(self, contexts: Any, k: int = 1) -> Slate:
        """Top-k slates for a batch of requests with P(item at position) for every entry."""
        mean, sd = self._moments(contexts)
        scores = self._rule(mean, sd)
        n_elig = eligible_counts(scores, k)
        eps = self._epsilon()
        greedy = top_k(scores, k, self._rng)
        shown = mix_with_uniform(greedy, scores, eps, self._rng)[0] if eps > 0.0 else greedy
        prop = (1.0 - eps) * greedy_marginals(scores, shown, greedy) + eps / n_elig[:, None]
        return self._slate(shown, prop, np.zeros_like(prop), scores)

    def recommend_one(self, context: Any, k: int = 1) -> Slate:
        """One request: the same slate distribution and propensities as ``recommend`` on a batch
        of one, with a lower fixed cost for the single-slot, dense case (per-event serving)."""
        stats = self._stats()
        if k != 1 or not isinstance(stats, DenseStats) or (
                type(self).recommend is not BasePolicy.recommend):
            return self.recommend(context, k)
        mean, var, _ = stats.moments_one(context)
        scores = self._rule(mean, np.sqrt(var))
        best = scores.max()
        at_max = scores == best
        n_max = int(at_max.sum())
        col = int(np.argmax(scores)) if n_max == 1 else int(
            self._rng.choice(np.flatnonzero(at_max)))
        eps = self._epsilon()
        n = scores.size
        if eps > 0.0 and self._rng.random() < eps:
            col = int(self._rng.integers(n))
        prop = (1.0 - eps) * (1.0 / n_max if scores[col] == best else 0.0) + eps / n
        return Slate(items=stats.items.ids[[[col]]], propensities=np.array([[prop]]),
                     propensity_se=np.zeros((1, 1)), scores=scores[[[col]]])

    def _slate(
        self,
        shown: NDArray[np.intp],
        prop: NDArray[np.float64],
        se: NDArray[np.float64],
        scores: NDArray[np.float64],
    ) -> Slate:
        return Slate(
            items=self.item_ids_[shown],
            propensities=prop,
            propensity_se=se,
            scores=scores[np.arange(shown.shape[0])[:, None], shown],
        )

    def get_params(self) -> dict[str, Any]:
        """Constructor hyperparameters (scikit-learn style)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and
                not k.endswith("_")}
