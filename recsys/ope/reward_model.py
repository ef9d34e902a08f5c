"""A cross-fitted reward model q̂(x, a, k) for the Direct Method and Doubly Robust estimators.

Follows OBP's ``RegressionModel``: one clone of a scikit-learn estimator per position, features
``[context, action_context[action]]`` (one-hot actions by default), ``fitting_method`` "normal"
(unweighted), "iw" (importance-weighted by π_e/π_b) or "mrdr" (weighted by the variance-minimising
weights of Farajtabar et al. 2018). ``fit_predict`` with ``n_folds >= 2`` cross-fits: each round's
q̂ comes from a model that did not see that round, which keeps DR's correction term unbiased when
the model overfits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.model_selection import KFold

from recsys.ope.validation import as_array, check_action_dist, check_pscore
from recsys.validation import check_index, message

_FITTING_METHODS = ("normal", "iw", "mrdr")
_PREDICT_CELLS = 2**22


class RegressionModel(BaseEstimator):
    """q̂(x, a, k) from logged (context, action, position, reward).

    Parameters: ``base_model`` an unfitted scikit-learn regressor or binary classifier;
    ``n_actions``; ``len_list`` positions; ``action_context`` (n_actions, d_a) action features
    (identity when None); ``fitting_method``.
    Learned: ``base_models_`` (one per position), ``n_features_in_``.
    """

    def __init__(
        self,
        base_model: Any,
        n_actions: int,
        len_list: int = 1,
        action_context: np.ndarray | None = None,
        fitting_method: str = "normal",
    ) -> None:
        self.base_model = base_model
        self.n_actions = n_actions
        self.len_list = len_list
        self.action_context = action_context
        self.fitting_method = fitting_method

    # ------------------------------------------------------------------------------- checks
    def _check_params(self) -> np.ndarray:
        if not hasattr(self.base_model, "fit"):
            raise ValueError(
                message(
                    "base_model",
                    "a scikit-learn estimator with fit/predict",
                    type(self.base_model).__name__,
                )
            )
        for name in ("n_actions", "len_list"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(message(name, "a positive integer", repr(value)))
        if self.fitting_method not in _FITTING_METHODS:
            raise ValueError(
                message("fitting_method", f"one of {_FITTING_METHODS}", repr(self.fitting_method))
            )
        if self.action_context is None:
            return np.eye(self.n_actions)
        action_context = as_array(self.action_context, "action_context", 2)
        if action_context.shape[0] != self.n_actions:
            raise ValueError(
                message(
                    "action_context",
                    f"n_actions={self.n_actions} rows",
                    action_context.shape[0],
                )
            )
        return action_context.astype(float)

    def _check_data(self, context, action, reward, position, pscore, action_dist):
        context = as_array(context, "context", 2).astype(float, copy=False)
        n = context.shape[0]
        action = as_array(action, "action", 1)
        reward = as_array(reward, "reward", 1).astype(float, copy=False)
        for name, arr in (("action", action), ("reward", reward)):
            if arr.shape[0] != n:
                raise ValueError(message(name, f"{n} rounds like context", arr.shape[0]))
        check_index(action, "action", self.n_actions, "n_actions")
        if position is None:
            if self.len_list > 1:
                raise ValueError(
                    message("position", "an array of positions, since len_list > 1", "None")
                )
            position = np.zeros(n, dtype=np.intp)
        position = as_array(position, "position", 1)
        if position.shape[0] != n:
            raise ValueError(message("position", f"{n} rounds like context", position.shape[0]))
        check_index(position, "position", self.len_list, "len_list")
        if self.fitting_method != "normal":
            for name, value in (("pscore", pscore), ("action_dist", action_dist)):
                if value is None:
                    raise ValueError(
                        message(
                            name,
                            f"an array (required by fitting_method={self.fitting_method!r})",
                            "None",
                        )
                    )
            pscore = check_pscore(pscore, n)
            action_dist = check_action_dist(action_dist)
            if action_dist.shape != (n, self.n_actions, self.len_list):
                raise ValueError(
                    message(
                        "action_dist",
                        f"shape (n_rounds, n_actions, len_list) = "
                        f"{(n, self.n_actions, self.len_list)}",
                        f"shape {action_dist.shape}",
                    )
                )
        return context, action, reward, position, pscore, action_dist

    # ------------------------------------------------------------------------------ fitting
    def _features(self, context: np.ndarray, action: np.ndarray) -> np.ndarray:
        return np.concatenate([context, self._action_context[action]], axis=1)

    def _sample_weight(self, action, position, pscore, action_dist):
        rows = np.arange(action.shape[0])
        pi_e = action_dist[rows, action, position]
        if self.fitting_method == "iw":
            return pi_e / pscore
        # MRDR (Farajtabar et al. 2018) as OBP weights it: π_e(a|x) (1 − π_b) / π_b².
        return pi_e * (1.0 - pscore) / pscore**2

    def fit(
        self,
        context: Any,
        action: Any,
        reward: Any,
        pscore: Any = None,
        position: Any = None,
        action_dist: Any = None,
    ) -> RegressionModel:
        """Fit one model per position on the logged rounds at that position."""
        self._action_context = self._check_params()
        context, action, reward, position, pscore, action_dist = self._check_data(
            context, action, reward, position, pscore, action_dist
        )
        self.n_features_in_ = context.shape[1]
        self.base_models_ = []
        for k in range(self.len_list):
            at_k = position == k
            if not at_k.any():
                raise ValueError(f"no logged rounds at position {k}: cannot fit its model")
            model = clone(self.base_model)
            x = self._features(context[at_k], action[at_k])
            if self.fitting_method == "normal":
                model.fit(x, reward[at_k])
            else:
                weight = self._sample_weight(action, position, pscore, action_dist)[at_k]
                model.fit(x, reward[at_k], sample_weight=weight)
            self.base_models_.append(model)
        return self

    def predict(self, context: Any) -> np.ndarray:
        """(n, n_actions, len_list) predicted rewards for every action and position."""
        if not hasattr(self, "base_models_"):
            raise RuntimeError("RegressionModel is not fitted: call fit or fit_predict first")
        context = as_array(context, "context", 2).astype(float, copy=False)
        if context.shape[1] != self.n_features_in_:
            raise ValueError(
                message(
                    "context",
                    f"{self.n_features_in_} features, as in fit",
                    context.shape[1],
                )
            )
        n = context.shape[0]
        out = np.empty((n, self.n_actions, self.len_list))
        if context.shape[1] == 0:  # features are the action's only: predict each action once
            for k, model in enumerate(self.base_models_):
                x = self._action_context
                pred = model.predict_proba(x)[:, 1] if is_classifier(model) else model.predict(x)
                out[:, :, k] = pred
            return out
        # Every (round, action) pair is a row for the base model; blocks bound the memory.
        step = max(1, _PREDICT_CELLS // (self.n_actions * (context.shape[1] + 1)))
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            m = rows.stop - rows.start
            x = np.concatenate(
                [
                    np.repeat(context[rows], self.n_actions, axis=0),
                    np.tile(self._action_context, (m, 1)),
                ],
                axis=1,
            )
            for k, model in enumerate(self.base_models_):
                pred = model.predict_proba(x)[:, 1] if is_classifier(model) else model.predict(x)
                out[rows, :, k] = pred.reshape(m, self.n_actions)
        return out

    def fit_predict(
        self,
        context: Any,
        action: Any,
        reward: Any,
        pscore: Any = None,
        position: Any = None,
        action_dist: Any = None,
        n_folds: int = 1,
        random_state: int | None = None,
    ) -> np.ndarray:
        """Cross-fitted predictions: with ``n_folds`` ≥ 2 each fold is predicted by a model fitted
        on the other folds (KFold shuffled with ``random_state``); ``n_folds=1`` fits and predicts
        on all rounds, as OBP does."""
        if not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
            raise ValueError(message("n_folds", "a positive integer", repr(n_folds)))
        if n_folds == 1:
            return self.fit(context, action, reward, pscore, position, action_dist).predict(context)
        self._action_context = self._check_params()
        context, action, reward, position, pscore, action_dist = self._check_data(
            context, action, reward, position, pscore, action_dist
        )
        out = np.empty((context.shape[0], self.n_actions, self.len_list))
        folds = KFold(n_splits=n_folds, shuffle=True, random_state=random_state)
        for train, test in folds.split(context):
            self.fit(
                context[train],
                action[train],
                reward[train],
                None if pscore is None else pscore[train],
                position[train],
                None if action_dist is None else action_dist[train],
            )
            out[test] = self.predict(context[test])
        return out
