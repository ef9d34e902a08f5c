"""The policy base class: statistics + a scoring rule + a slate sampler with propensities.

Conventions (scikit-learn / river): the constructor stores hyperparameters unchanged and checks
nothing, so ``get_params``/``set_params``/``sklearn.base.clone`` work as for any estimator;
``init`` (new statistics) or ``use`` (existing statistics, e.g. a parameter-shard snapshot)
validates them, builds the random generator from ``random_state`` and sets the learned state
``stats_``; ``learn`` takes a batch or a single event; ``score``, ``recommend`` and
``action_dist`` take a batch of requests. Scores are ``[batch, n_items]`` aligned with
``item_ids_``; items that are not candidates for a request (graph mode) score ``-inf``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from recsys.bandits.arrays import NUMPY, ArrayBackend
from recsys.bandits.dense import DenseStats
from recsys.bandits.protocol import Statistics
from recsys.bandits.slates import (
    Slate,
    eligible_counts,
    mix_with_uniform,
    rank_marginals,
    uniform_marginals,
)
from recsys.bandits.validation import check_positive, check_probability
from recsys.validation import check_scalar, message

_ACTION_DIST_CELLS = 1 << 22
"""Rounds × items × positions per block of ``action_dist`` (keeps temporaries bounded)."""


def check_reward_range(value: Any) -> tuple[float, float]:
    """``(low, high)`` with ``low < high`` (infinite bounds allowed), as floats."""
    expected = "(low, high) with low < high"
    try:
        low, high = value
    except (TypeError, ValueError):
        raise TypeError(message("reward_range", expected, repr(value))) from None
    low = check_scalar(low, "reward_range[0]")
    high = check_scalar(high, "reward_range[1]")
    if not low < high:
        raise ValueError(message("reward_range", expected, repr(value)))
    return low, high


def make_generator(random_state: Any) -> np.random.Generator:
    """The policy's generator: a fresh one from a seed (or entropy for None); a Generator is used
    as is, so the caller and the policy then advance one stream."""
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError) as err:
        expected = "None, a non-negative int or a numpy Generator"
        raise type(err)(message("random_state", expected, repr(random_state))) from None


def with_common_hyperparameters(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate a policy's ``__init__(self, <its own hyperparameters>, **common)``: its
    signature becomes its own hyperparameters followed by :class:`BasePolicy`'s (keyword-only),
    so scikit-learn's ``get_params``/``clone`` and ``policy_spec`` see every one of them while
    the shared ones are declared once, on ``BasePolicy.__init__``."""
    own = inspect.signature(init)
    shared = inspect.signature(BasePolicy.__init__).parameters
    params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [p for name, p in shared.items() if name != "self"]
    init.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    return init


class BasePolicy(BaseEstimator):
    """Shared plumbing: statistics lifecycle, validation, exploration floor, slates.

    Common hyperparameters: ``lam`` (prior precision λ), ``reward_range`` (rewards outside it are
    rejected), ``exploration_floor`` (probability of a uniformly random slate, so that no eligible
    item ever has propensity 0: set it for OPE-grade logs), ``centred`` (dense statistics with a
    per-feature intercept, see :mod:`recsys.bandits.dense`) and ``random_state``.

    ``random_state`` follows scikit-learn: an int gives a fresh generator at every ``init`` /
    ``use``, so two clones (``sklearn.base.clone``) draw identical but independent streams; None
    seeds from the OS; a ``numpy.random.Generator`` is used as is (it is advanced by the policy,
    and ``clone`` deep-copies it, so a clone replays the stream from the point of cloning).
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
        self.lam = lam
        self.reward_range = reward_range
        self.exploration_floor = exploration_floor
        self.centred = centred
        self.random_state = random_state

    # ------------------------------------------------------------------ hyperparameters
    def _check_params(self) -> None:
        """Validate the hyperparameters and keep the checked values the hot paths read.

        Subclasses extend it. ``_uniform_mix`` is the probability that a request's slate is
        replaced by a uniformly random one (the exploration floor, and ε for ε-policies).
        """
        self._lam = check_positive(self.lam, "lam")
        self._reward_range = check_reward_range(self.reward_range)
        self._floor = check_probability(self.exploration_floor, "exploration_floor")
        if not isinstance(self.centred, bool | np.bool_):
            raise TypeError(message("centred", "a bool", repr(self.centred)))
        self._uniform_mix = self._floor

    def _mix_epsilon(self, epsilon: Any) -> None:
        """Add an ε-mix (checked ``epsilon``) to the exploration floor: a request explores when
        either draw says so."""
        stay = (1.0 - check_probability(epsilon, "epsilon")) * (1.0 - self._floor)
        self._uniform_mix = 1.0 - stay

    def check_params(self) -> Self:
        """Raise now if a hyperparameter is invalid (otherwise checked at ``init`` / ``use``)."""
        self._check_params()
        return self

    def _set_up(self) -> None:
        """Check the hyperparameters and build the generator (at ``init`` / ``use``)."""
        self._check_params()
        self._rng = make_generator(self.random_state)

    def set_params(self, **params: Any) -> Self:
        """Set hyperparameters (scikit-learn); unknown names raise ``ValueError``.

        A policy that already has statistics checks the new values at once (and keeps the old
        ones if they are invalid) and rebuilds its generator when ``random_state`` changes;
        ``lam`` must keep matching the statistics.
        """
        before = self.get_params(deep=False)
        unknown = sorted(set(params) - set(before))
        if unknown:
            expected = f"a hyperparameter of {type(self).__name__} (one of {sorted(before)})"
            raise ValueError(message(unknown[0], expected, "an unknown name"))
        super().set_params(**params)
        if getattr(self, "stats_", None) is None:
            return self
        try:
            self._check_params()
            self._check_lam(self.stats_)
        except (TypeError, ValueError):
            super().set_params(**before)
            self._check_params()
            raise
        if "random_state" in params:
            self._rng = make_generator(self.random_state)
        return self

    # ------------------------------------------------------------------ state
    def _new_stats(
        self, items: ArrayLike, dim: int, prior_mean: ArrayLike | None, space: str,
        dtype: type[np.floating],
    ) -> Statistics:
        return DenseStats.empty(items, dim, lam=self._lam, centred=bool(self.centred),
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
        self._set_up()
        self.stats_ = self._new_stats(items, dim, prior_mean, space, dtype)
        return self

    def use(self, stats: Statistics) -> Self:
        """Score and learn with existing statistics (they are shared, not copied)."""
        self._set_up()
        self._check_lam(stats)
        self.stats_ = stats
        return self

    def _check_lam(self, stats: Statistics) -> None:
        if stats.lam != self._lam:
            raise ValueError(message("lam", f"the statistics' λ={stats.lam}", f"lam={self.lam}",
                                     "build the policy with the λ of the statistics it uses"))

    def _stats(self) -> Statistics:
        stats = getattr(self, "stats_", None)
        if stats is None:
            # NotFittedError, as scikit-learn's estimators raise; being an AttributeError, it
            # makes isinstance(policy, recsys.policy.Policy) False rather than an error
            raise NotFittedError(
                f"{type(self).__name__} has no statistics yet: call init(items, dim) or use(stats)"
            )
        return stats

    @property
    def item_ids_(self) -> NDArray[np.int64]:
        """Item ids in the column order of ``score`` (and the action order of ``action_dist``)."""
        return self._stats().item_ids

    # ------------------------------------------------------------------ learning
    def learn(self, contexts: Any, items: ArrayLike, rewards: ArrayLike) -> Self:
        """Update on a batch (or one event) of (context actually served, item, reward)."""
        self._stats().learn(contexts, items, rewards, reward_range=self._reward_range)
        return self

    def learn_one(self, context: Any, item: int, reward: float) -> Self:
        """Update on a single event (river's ``learn_one``); same result as a batch of one."""
        self._stats().learn_one(context, item, reward, reward_range=self._reward_range)
        return self

    # ------------------------------------------------------------------ scoring
    def _moments(
        self, contexts: Any, arrays: ArrayBackend = NUMPY, rows: NDArray[np.intp] | None = None
    ) -> tuple[Any, Any]:
        """Score mean and standard deviation on ``arrays`` (over the item ``rows``, default
        all), -inf mean / 0 sd for non-candidates."""
        mean, sd, eligible = arrays.moments(self._stats(), contexts, rows)
        if eligible is not None:
            mean = np.where(eligible, mean, -np.inf)
            sd = np.where(eligible, sd, 0.0)
        return mean, sd

    def _rule(self, mean: Any, sd: Any) -> Any:
        """The deterministic score of the policy (overridden by UCB); arithmetic only, so it
        runs on any array backend."""
        return mean

    def score(self, contexts: Any, *, exploit: bool = False) -> NDArray[np.float64]:
        """Scores [batch, n_items]; ``exploit=True`` gives the posterior mean (no bonus)."""
        mean, sd = self._moments(contexts)
        return mean if exploit else self._rule(mean, sd)

    # ------------------------------------------------------------------ slates
    def recommend(self, contexts: Any, k: int = 1) -> Slate:
        """Top-k slates for a batch of requests with P(item at position) for every entry."""
        return self.recommend_on(NUMPY, contexts, k)

    def recommend_on(
        self, arrays: ArrayBackend, contexts: Any, k: int, rows: NDArray[np.intp] | None = None
    ) -> Slate:
        """:meth:`recommend` with the arrays on ``arrays`` and, when ``rows`` is given, only
        those item rows as candidates (see ``recsys.bandits.arrays``)."""
        mean, sd = self._moments(contexts, arrays, rows)
        scores = self._rule(mean, sd)
        n_elig = arrays.eligible_counts(scores, k)
        eps = self._uniform_mix
        batch = n_elig.size
        if eps < 1.0:
            greedy, shown_scores = arrays.top_k(scores, k, self._rng)
        else:  # uniform: the greedy slate never shows
            greedy, shown_scores = np.full((batch, k), -1, dtype=np.intp), np.empty((batch, k))
        shown = greedy
        if eps > 0.0:
            shown, explore = mix_with_uniform(greedy, arrays.eligibility(scores), eps, self._rng)
            explored = np.flatnonzero(explore)
            if explored.size:
                shown_scores[explored] = arrays.take(scores, explored, shown[explored])
        p_greedy = (arrays.greedy_marginals(scores, shown, greedy) if eps < 1.0
                    else np.zeros(shown.shape))
        prop = (1.0 - eps) * p_greedy + eps / n_elig[:, None]
        return self._slate(shown, prop, np.zeros_like(prop), shown_scores, rows)

    def recommend_one(self, context: Any, k: int = 1) -> Slate:
        """One request: the same slate distribution and propensities as ``recommend`` on a batch
        of one, with a lower fixed cost for the single-slot case (per-event serving). Policies
        whose slates are not a greedy rule mixed with uniform ones override it."""
        stats = self._stats()
        if k != 1:
            return self.recommend(context, k)
        mean, var, eligible = stats.moments_one(context)
        scores = self._rule(mean, np.sqrt(var))
        if eligible is None:
            n = scores.size
        else:
            scores = np.where(eligible, scores, -np.inf)
            n = int(eligible_counts(scores[None, :], 1)[0])
        best = scores.max()
        at_max = scores == best
        n_max = int(at_max.sum())
        col = int(np.argmax(scores)) if n_max == 1 else int(
            self._rng.choice(np.flatnonzero(at_max)))
        eps = self._uniform_mix
        if eps > 0.0 and self._rng.random() < eps:
            col = (int(self._rng.integers(n)) if eligible is None
                   else int(self._rng.choice(np.flatnonzero(eligible))))
        prop = (1.0 - eps) * (1.0 / n_max if scores[col] == best else 0.0) + eps / n
        return Slate(items=stats.item_ids[[[col]]], propensities=np.array([[prop]]),
                     propensity_se=np.zeros((1, 1)), scores=scores[[[col]]])

    def _slate(
        self,
        shown: NDArray[np.intp],
        prop: NDArray[np.float64],
        se: NDArray[np.float64],
        scores: NDArray[np.float64],
        rows: NDArray[np.intp] | None = None,
    ) -> Slate:
        """The slate of the shown columns (of the item ``rows`` when given) and their scores."""
        ids = self.item_ids_ if rows is None else self.item_ids_[rows]
        return Slate(items=ids[shown], propensities=prop, propensity_se=se, scores=scores)

    # ------------------------------------------------------------------ evaluation
    def action_dist(self, contexts: Any, k: int = 1) -> NDArray[np.float64]:
        """P(item at position | request) for every item, ``[n_rounds, n_items, k]``.

        Open Bandit Pipeline's ``action_dist`` of this policy as it stands (frozen statistics),
        for ``recsys.ope`` estimators: actions are the columns of ``item_ids_``, and
        ``action_dist[i, :, p]`` sums to 1 for every round and position. It is the distribution
        ``recommend`` samples from, so its entries equal the propensities ``recommend`` logs
        (within Monte Carlo error for Thompson sampling). Non-candidate items get 0. Per-round
        moments are computed once; the rest works on blocks of rounds.
        """
        mean, sd = self._moments(contexts)
        eligible_counts(mean, k)  # raises when a request has fewer than k candidates
        batch, n = mean.shape
        dist = np.empty((batch, n, k))
        step = max(1, _ACTION_DIST_CELLS // (n * k))
        eps = self._uniform_mix
        for start in range(0, batch, step):  # loop over blocks of rounds, vectorised inside
            rows = slice(start, start + step)
            block = self._policy_dist(mean[rows], sd[rows], k)
            if eps > 0.0:
                block *= 1.0 - eps
                block += eps * uniform_marginals(mean[rows], k)
            dist[rows] = block
        return dist

    def _policy_dist(
        self, mean: NDArray[np.float64], sd: NDArray[np.float64], k: int
    ) -> NDArray[np.float64]:
        """The policy's own slate distribution (before the uniform mix) for a block of rounds."""
        return rank_marginals(self._rule(mean, sd), k)
