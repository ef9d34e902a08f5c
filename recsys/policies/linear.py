"""A policy from linear scores and an explicit exploration rule: offline models and baselines.

``score(u, i) = ⟨user vector, item_vectors[i]⟩ + item_bias[i]``. An offline model (matrix
factorisation, two-tower) gives the vectors; a baseline gives only biases (popularity) or nothing
(uniform). The exploration rule turns scores into a slate distribution with propensities, so the
policy can be logged, evaluated off-policy and registered like a bandit:

* ``"greedy"``: the k best items; tied items share their ranks uniformly at random (propensity
  1/number tied), as the bandits do.
* ``"epsilon_greedy"``: with probability ``epsilon`` a request gets a uniformly random slate.
* ``"softmax"``: Plackett–Luce over ``scores / temperature`` (a softmax draw per position among
  the items not yet shown), mixed with a uniform slate with probability ``epsilon``. Position
  marginals are exact for k ≤ 2, and for k = 3 up to
  :data:`~recsys.policies.plackett_luce.EXACT_THIRD_MAX_ITEMS` items; beyond, they are Monte Carlo
  estimates from ``n_mc_draws`` replays of the draw per request, reported with their standard
  error in ``Slate.propensity_se`` (as Thompson sampling does); ``n_mc_draws=0`` refuses those
  slates instead.

Context modes (set by ``fit``, ``context_mode_``):

* ``"user"``: ``user_ids``/``user_vectors`` given; contexts are raw user ids (strings; other
  values are compared as their ``str``). A user the model has not seen gets the mean user vector,
  i.e. the score an average known user would get (cold start, documented, never an error).
* ``"dense"``: item vectors with d > 0 and no user table; contexts are ``[n, d]`` vectors.
* ``"none"``: d = 0 (context-free, e.g. popularity); contexts only give the batch size (anything
  with ``len()``).

scikit-learn conventions: the constructor stores hyperparameters only; ``fit`` validates and
learns ``item_ids_``, ``item_vectors_``, ``item_bias_``, ``user_ids_``, ``user_vectors_``,
``context_mode_``; an unfitted policy raises ``NotFittedError``. ``random_state`` works as for the
bandits (an int gives a fresh generator at ``fit`` and at ``set_params(random_state=...)``).
"""

from __future__ import annotations

import numbers
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from recsys.bandits.base import make_generator
from recsys.bandits.slates import (
    Slate,
    eligible_counts,
    greedy_marginals,
    mix_with_uniform,
    rank_marginals,
    top_k,
)
from recsys.bandits.thompson import check_count
from recsys.bandits.validation import check_contexts, check_positive, check_probability
from recsys.policies.blocks import row_blocks
from recsys.policies.plackett_luce import (
    EXACT_MAX_SLATE,
    EXACT_THIRD_MAX_ITEMS,
    exact_possible,
    monte_carlo_marginals,
    monte_carlo_propensities,
    plackett_luce_marginals,
    sample_slates,
    softmax,
)
from recsys.validation import check_finite, did_you_mean, message

EXPLORATIONS = ("greedy", "epsilon_greedy", "softmax")
CONTEXT_MODES = ("user", "dense", "none")
FORMAT = "recsys.policies.LinearScorePolicy/1"
"""The ``format`` tag of :meth:`LinearScorePolicy.to_arrays` metadata."""


def _check_slate_size(k: Any, n_items: int) -> int:
    if isinstance(k, bool | np.bool_) or not isinstance(k, numbers.Integral):
        raise TypeError(message("k", "an integer >= 1", f"{k!r} of type {type(k).__name__}"))
    if not 1 <= k <= n_items:
        raise ValueError(message("k", f"an integer in [1, {n_items}] (the number of items)",
                                 repr(k)))
    return int(k)


def _float_matrix(value: ArrayLike, name: str, rows: int | None, cols: int | None
                  ) -> NDArray[np.float64]:
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise TypeError(message(name, "a numeric array", f"dtype {array.dtype}"))
    array = np.ascontiguousarray(array, dtype=np.float64)
    shape = f"({'n' if rows is None else rows}, {'d' if cols is None else cols})"
    if array.ndim != 2 or (rows is not None and array.shape[0] != rows) or (
            cols is not None and array.shape[1] != cols):
        raise ValueError(message(name, f"shape {shape}", f"shape {array.shape}"))
    check_finite(array, name)
    return array


class LinearScorePolicy(BaseEstimator):
    """Linear scores + an exploration rule: a :class:`recsys.policy.Policy` (see module doc)."""

    def __init__(self, exploration: str = "softmax", epsilon: float = 0.0,
                 temperature: float = 1.0, n_mc_draws: int = 1000,
                 random_state: int | np.random.Generator | None = None) -> None:
        self.exploration = exploration
        self.epsilon = epsilon
        self.temperature = temperature
        self.n_mc_draws = n_mc_draws
        self.random_state = random_state

    # ------------------------------------------------------------------ hyperparameters
    def _check_params(self) -> None:
        if self.exploration not in EXPLORATIONS:
            got = repr(self.exploration)
            fix = did_you_mean(self.exploration, EXPLORATIONS) if isinstance(
                self.exploration, str) else None
            raise ValueError(message("exploration", f"one of {list(EXPLORATIONS)}", got, fix))
        self._epsilon = check_probability(self.epsilon, "epsilon")
        if self.exploration == "greedy" and self._epsilon != 0.0:
            raise ValueError(message("epsilon", "0 with exploration='greedy'",
                                     repr(self.epsilon),
                                     "use exploration='epsilon_greedy' to mix in uniform slates"))
        self._temperature = check_positive(self.temperature, "temperature")
        self._n_mc_draws = check_count(self.n_mc_draws, "n_mc_draws")

    def check_params(self) -> Self:
        """Raise now if a hyperparameter is invalid (otherwise checked at ``fit``)."""
        self._check_params()
        return self

    def set_params(self, **params: Any) -> Self:
        """Set hyperparameters (scikit-learn); a fitted policy checks them at once and rebuilds
        its generator when ``random_state`` changes."""
        before = self.get_params(deep=False)
        super().set_params(**params)
        if not hasattr(self, "item_ids_"):
            return self
        try:
            self._check_params()
        except (TypeError, ValueError):
            super().set_params(**before)
            self._check_params()
            raise
        if "random_state" in params:
            self._rng = make_generator(self.random_state)
        return self

    # ------------------------------------------------------------------ fitting
    def fit(self, item_ids: ArrayLike, item_vectors: ArrayLike | None = None,
            item_bias: ArrayLike | None = None, *, user_ids: ArrayLike | None = None,
            user_vectors: ArrayLike | None = None) -> Self:
        """Take the item (and optionally user) vectors of a trained model; see the module doc
        for how the arguments choose ``context_mode_``."""
        self._check_params()
        ids = np.asarray(item_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(message("item_ids", "a non-empty 1-d array", f"shape {ids.shape}"))
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(message("item_ids", "integer ids", f"dtype {ids.dtype}"))
        ids = ids.astype(np.int64)
        if ids.min() < 0:
            raise ValueError(message("item_ids", "ids >= 0", f"min {ids.min()}"))
        n_dup = ids.size - np.unique(ids).size
        if n_dup:
            raise ValueError(message("item_ids", "unique ids", f"{n_dup} duplicate(s)"))
        m = ids.size
        vectors = (np.zeros((m, 0)) if item_vectors is None
                   else _float_matrix(item_vectors, "item_vectors", m, None))
        if item_bias is None:
            bias = np.zeros(m)
        else:
            bias = np.ascontiguousarray(item_bias, dtype=np.float64)
            if bias.shape != (m,):
                raise ValueError(message("item_bias", f"shape ({m},)", f"shape {bias.shape}"))
            check_finite(bias, "item_bias")
        if (user_ids is None) != (user_vectors is None):
            raise ValueError(message("user_ids, user_vectors", "both or neither",
                                     "only one of them",
                                     "a user table needs the ids and their vectors"))
        self.item_ids_ = ids
        self.item_vectors_ = vectors
        self.item_bias_ = bias
        self.user_ids_: NDArray[np.str_] | None = None
        self.user_vectors_: NDArray[np.float64] | None = None
        d = vectors.shape[1]
        if user_ids is not None:
            users = np.asarray(user_ids)
            if users.ndim != 1 or users.size == 0:
                raise ValueError(message("user_ids", "a non-empty 1-d array",
                                         f"shape {users.shape}"))
            users = users.astype(str)
            sorted_users, counts = np.unique(users, return_counts=True)
            if (counts > 1).any():
                raise ValueError(message("user_ids", "unique ids",
                                         f"{int((counts > 1).sum())} repeated id(s), e.g. "
                                         f"{sorted_users[np.argmax(counts > 1)]!r}"))
            if d == 0:
                raise ValueError(message("item_vectors", "d > 0 columns with a user table",
                                         "d = 0"))
            self.user_vectors_ = _float_matrix(user_vectors, "user_vectors", users.size, d)
            self.user_ids_ = users
            self._user_order = np.argsort(users, kind="stable")
            self._sorted_users = users[self._user_order]
            self._mean_user = self.user_vectors_.mean(axis=0)
            self.context_mode_ = "user"
        else:
            self.context_mode_ = "dense" if d > 0 else "none"
        self._rng = make_generator(self.random_state)
        return self

    def _fitted(self) -> None:
        if not hasattr(self, "item_ids_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(item_ids, "
                                 "item_vectors, item_bias, ...) first")

    # ------------------------------------------------------------------ scoring
    def _user_vectors(self, contexts: Any) -> NDArray[np.float64]:
        users = np.asarray(contexts)
        if users.ndim == 0:
            users = users[None]
        if users.ndim != 1:
            raise ValueError(message("contexts", "a 1-d array of user ids (context_mode_='user')",
                                     f"shape {users.shape}"))
        users = users.astype(str)
        pos = np.searchsorted(self._sorted_users, users)
        pos = np.minimum(pos, self._sorted_users.size - 1)
        known = self._sorted_users[pos] == users
        out = np.empty((users.size, self.item_vectors_.shape[1]))
        out[known] = self.user_vectors_[self._user_order[pos[known]]]  # type: ignore[index]
        out[~known] = self._mean_user  # unknown users: the mean user vector (cold start)
        return out

    def context_vectors(self, contexts: Any) -> NDArray[np.float64]:
        """The user vector of every request, ``[n, d]`` (``d = 0`` in mode ``"none"``)."""
        self._fitted()
        if self.context_mode_ == "user":
            return self._user_vectors(contexts)
        if self.context_mode_ == "dense":
            return check_contexts(contexts, self.item_vectors_.shape[1])
        try:
            n = len(contexts)
        except TypeError:
            raise TypeError(message("contexts", "anything with len() (context_mode_='none')",
                                    type(contexts).__name__)) from None
        return np.zeros((n, 0))

    def _block_scores(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        if x.shape[1] == 0:
            return np.repeat(self.item_bias_[None, :], x.shape[0], axis=0)
        with np.errstate(over="ignore", invalid="ignore"):
            scores = x @ self.item_vectors_.T
            scores += self.item_bias_
        if not np.isfinite(scores).all():  # finite but extreme features (1e300) overflow
            row = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
            raise ValueError(message(
                "contexts", "features whose scores stay finite",
                f"scores that overflow (a request's largest |feature| is "
                f"{np.abs(x[row]).max():.3g})", "scale or clip the features"))
        return scores

    def scores(self, contexts: Any) -> NDArray[np.float64]:
        """Scores ``[n, n_items]`` aligned with ``item_ids_``."""
        return self._block_scores(self.context_vectors(contexts))

    # ------------------------------------------------------------------ slates
    def _needs_mc(self, k: int) -> bool:
        return self.exploration == "softmax" and not exact_possible(self.item_ids_.size, k)

    def _check_k(self, k: Any) -> int:
        k = _check_slate_size(k, self.item_ids_.size)
        if self._needs_mc(k) and self._n_mc_draws == 0 and self._epsilon < 1.0:
            raise ValueError(message(
                "k", f"at most {EXACT_MAX_SLATE - 1} (or {EXACT_MAX_SLATE} with at most "
                f"{EXACT_THIRD_MAX_ITEMS} items) for exact softmax propensities with "
                "n_mc_draws=0", repr(k),
                "set n_mc_draws > 0 (Monte Carlo propensities) or use another exploration"))
        return k

    def recommend(self, contexts: Any, k: int = 1) -> Slate:
        """One slate of ``k`` distinct items per request with P(item at position) of each."""
        x = self.context_vectors(contexts)
        k = self._check_k(k)
        n, m = x.shape[0], self.item_ids_.size
        shown = np.empty((n, k), dtype=np.intp)
        prop, se, values = np.empty((n, k)), np.empty((n, k)), np.empty((n, k))
        for rows in row_blocks(n, m):  # loop over blocks of requests, vectorised inside
            s = self._block_scores(x[rows])
            cols, prop[rows], se[rows] = self._draw(s, k)
            if not (prop[rows] > 0).all():
                raise ValueError(message(
                    "slate", "a propensity > 0 for every shown item",
                    f"0 (the softmax at temperature {self.temperature} puts no representable "
                    f"mass on some shown item: scores spread over {np.ptp(s):.3g})",
                    "raise the temperature, set epsilon > 0, or scale the features"))
            shown[rows] = cols
            values[rows] = np.take_along_axis(s, cols, axis=1)
        return Slate(items=self.item_ids_[shown], propensities=prop, propensity_se=se,
                     scores=values)

    def _draw(self, s: NDArray[np.float64], k: int
              ) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
        """Slates of one block of scores, their propensities and standard errors."""
        eps, m, rng = self._epsilon, s.shape[1], self._rng
        softmax_rule = self.exploration == "softmax"
        if eps < 1.0:
            base = (sample_slates(s / self._temperature, k, rng) if softmax_rule
                    else top_k(s, k, rng))
        else:  # uniform: the base rule never shows
            base = np.full((s.shape[0], k), -1, dtype=np.intp)
        shown = base
        if eps > 0.0:
            shown, _ = mix_with_uniform(base, s, eps, rng)
        se = np.zeros(shown.shape)
        if eps >= 1.0:
            p_base = np.zeros(shown.shape)
        elif not softmax_rule:
            p_base = greedy_marginals(s, shown, base)
        elif self._needs_mc(k):
            p_base, se = monte_carlo_propensities(s / self._temperature, shown,
                                                  self._n_mc_draws, rng)
        else:
            marg = plackett_luce_marginals(softmax(s / self._temperature), k)
            p_base = marg[np.arange(s.shape[0])[:, None], shown, np.arange(k)]
        return shown, (1.0 - eps) * p_base + eps / m, (1.0 - eps) * se

    def action_dist(self, contexts: Any, k: int = 1) -> NDArray[np.float64]:
        """P(item at position | request) for every item, ``[n_rounds, n_items, k]``.

        Exact except for softmax slates beyond the closed forms (Monte Carlo, see module doc).
        """
        x = self.context_vectors(contexts)
        k = self._check_k(k)
        n, m = x.shape[0], self.item_ids_.size
        dist = np.empty((n, m, k))
        eps = self._epsilon
        for rows in row_blocks(n, m * k):  # loop over blocks of requests
            s = self._block_scores(x[rows])
            eligible_counts(s, k)
            if eps >= 1.0:
                dist[rows] = 1.0 / m
                continue
            block = self._base_dist(s, k)
            if eps > 0.0:
                block *= 1.0 - eps
                block += eps / m
            dist[rows] = block
        return dist

    def _base_dist(self, s: NDArray[np.float64], k: int) -> NDArray[np.float64]:
        if self.exploration != "softmax":
            return rank_marginals(s, k)
        logits = s / self._temperature
        if self._needs_mc(k):
            return monte_carlo_marginals(logits, k, self._n_mc_draws, self._rng)
        return plackett_luce_marginals(softmax(logits), k)

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Plain arrays (npz-safe: numbers and fixed-width strings) and JSON-safe metadata."""
        self._fitted()
        params = self.get_params(deep=False)
        if isinstance(params["random_state"], np.random.Generator):
            raise ValueError(message("random_state", "an int seed or None to save the policy",
                                     "a numpy Generator",
                                     "a generator's state is not a hyperparameter"))
        params = {key: (int(v) if isinstance(v, np.integer) else
                        float(v) if isinstance(v, np.floating) else v)
                  for key, v in params.items()}
        arrays: dict[str, NDArray[Any]] = {"item_ids": self.item_ids_,
                                           "item_vectors": self.item_vectors_,
                                           "item_bias": self.item_bias_}
        if self.user_ids_ is not None:
            arrays["user_ids"] = self.user_ids_
            arrays["user_vectors"] = self.user_vectors_  # type: ignore[assignment]
        meta = {"format": FORMAT, "class": type(self).__name__, "params": params,
                "context_mode": self.context_mode_}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]
                    ) -> LinearScorePolicy:
        """Rebuild a policy from :meth:`to_arrays` output."""
        if meta.get("format") != FORMAT:
            raise ValueError(message("meta.format", repr(FORMAT), repr(meta.get("format")),
                                     "these arrays were not written by LinearScorePolicy"))
        missing = [name for name in ("item_ids", "item_vectors", "item_bias") if name not in
                   arrays]
        if missing:
            raise ValueError(message("arrays", "item_ids, item_vectors and item_bias",
                                     f"{sorted(arrays)} (missing {missing})"))
        params = meta.get("params", {})
        known = set(cls().get_params(deep=False))
        if not isinstance(params, dict) or set(params) - known:
            raise ValueError(message("meta.params", f"hyperparameters among {sorted(known)}",
                                     repr(params)))
        policy = cls(**params).fit(arrays["item_ids"], arrays["item_vectors"],
                                   arrays["item_bias"], user_ids=arrays.get("user_ids"),
                                   user_vectors=arrays.get("user_vectors"))
        if meta.get("context_mode", policy.context_mode_) != policy.context_mode_:
            raise ValueError(message("meta.context_mode", repr(policy.context_mode_),
                                     repr(meta.get("context_mode"))))
        return policy

