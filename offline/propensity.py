"""Estimators of P(O_ui = 1), the probability that pair (user u, item i) is observed or shown.

Every estimator follows the scikit-learn API: hyperparameters in the constructor, ``fit(dataset)``
on an ``offline.dataset.Dataset`` (its ``train`` frame is the observed pairs) returns ``self``,
learned attributes end in ``_``. The base class checks the data set and the ids; an estimator
implements ``_fit`` and ``_predict`` on validated ids. All predict vectorised over id arrays:

- ``predict(user_id, item_id, label=None) -> np.ndarray`` per pair (``label`` only where the
  estimate depends on it: Naive Bayes);
- ``predict_frame(frame) -> np.ndarray`` per row of an interaction frame (its ``label`` column
  and, for the logged estimator, its ``propensity`` column);
- ``predict_matrix() -> np.ndarray`` the (n_users, n_items) matrix, where one exists (needed by
  DR-JL and kernel balancing).

``make_propensity(name, **params)`` builds one by its registered ``name``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Self

import numpy as np
import polars as pl
import scipy.sparse as sp
from numpy.typing import ArrayLike
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from offline.dataset import Dataset
from recsys.validation import check_scalar

__all__ = [
    "PROPENSITY_ESTIMATORS",
    "LoggedPropensity",
    "LogisticPropensity",
    "NaiveBayesPropensity",
    "PopularityPropensity",
    "PropensityEstimator",
    "ShippedPropensity",
    "make_propensity",
]


def _check_probabilities(p: np.ndarray, where: str) -> np.ndarray:
    """Return ``p`` as float64 after checking every value is finite and in (0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    bad = ~(np.isfinite(p) & (p > 0) & (p <= 1))
    if bad.any():
        raise ValueError(
            f"{where}: propensities must lie in (0, 1]; {int(bad.sum())} of {p.size} values do "
            f"not (e.g. {p[bad].ravel()[0]!r})"
        )
    return p


def _require_train(dataset: Dataset, who: str) -> pl.DataFrame:
    """The observed pairs of ``dataset``, refusing an empty train split."""
    if dataset.train.height == 0:
        raise ValueError(f"{who} needs observed pairs: {dataset.name}.train is empty")
    return dataset.train


class PropensityEstimator(BaseEstimator, ABC):
    """Common API of the propensity estimators: id validation, per-frame and matrix prediction."""

    name: ClassVar[str] = ""
    needs_label: ClassVar[bool] = False
    """Whether ``predict`` needs the label of each pair (Naive Bayes)."""

    def fit(self, dataset: Dataset) -> Self:
        """Learn from ``dataset.train`` (the observed pairs) and the side information needed;
        predictions then take ids in the data set's ranges."""
        if not isinstance(dataset, Dataset):
            raise TypeError(
                f"{type(self).__name__}.fit expects an offline.dataset.Dataset, got "
                f"{type(dataset)!r}"
            )
        self._fit(dataset)
        self.n_users_, self.n_items_ = dataset.n_users, dataset.n_items
        return self

    @abstractmethod
    def _fit(self, dataset: Dataset) -> None:
        """Learn the estimator's attributes from ``dataset``."""

    def predict(
        self, user_id: ArrayLike, item_id: ArrayLike, label: ArrayLike | None = None
    ) -> np.ndarray:
        """P(observed) of each (user, item[, label]) pair."""
        users, items = self._ids(user_id, item_id)
        return self._predict(users, items, label)

    @abstractmethod
    def _predict(
        self, users: np.ndarray, items: np.ndarray, label: ArrayLike | None
    ) -> np.ndarray:
        """P(observed) of each pair of validated int64 ids (and its label, where needed)."""

    def predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """P(observed) of every row of an interaction frame."""
        for column in ("user_id", "item_id") + (("label",) if self.needs_label else ()):
            if column not in frame.columns:
                raise ValueError(f"{self.name}: the frame has no {column!r} column")
        return self.predict(
            frame["user_id"].to_numpy(),
            frame["item_id"].to_numpy(),
            frame["label"].to_numpy() if self.needs_label else None,
        )

    def predict_matrix(self) -> np.ndarray:
        """The (n_users, n_items) matrix of P(observed) over every pair."""
        check_is_fitted(self)
        if self.needs_label:
            raise ValueError(f"{self.name} propensities depend on the label: no single matrix")
        users = np.repeat(np.arange(self.n_users_), self.n_items_)
        items = np.tile(np.arange(self.n_items_), self.n_users_)
        return self.predict(users, items).reshape(self.n_users_, self.n_items_)

    def _ids(self, user_id: ArrayLike, item_id: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Validated int64 id arrays of equal shape within the fitted id ranges."""
        check_is_fitted(self)
        users = np.asarray(user_id)
        items = np.asarray(item_id)
        if users.shape != items.shape:
            raise ValueError(f"user_id {users.shape} and item_id {items.shape} differ in shape")
        for name, ids, bound in (
            ("user_id", users, self.n_users_),
            ("item_id", items, self.n_items_),
        ):
            if ids.size and not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"{name} must hold integers, got dtype {ids.dtype}")
            if ids.size and (ids.min() < 0 or ids.max() >= bound):
                raise ValueError(
                    f"{name} must lie in [0, {bound}) as at fit, found [{ids.min()}, {ids.max()}]"
                )
        return users.astype(np.int64, copy=False), items.astype(np.int64, copy=False)


class LoggedPropensity(PropensityEstimator):
    """The propensity the logging policy recorded with each shown pair (bandit logs).

    ``predict_frame`` returns a frame's own ``propensity`` column (validated); ``predict`` looks
    up the logged value of each (user, item) pair in ``dataset.train``: pairs logged several times
    get the mean of their logged propensities, pairs never logged are refused.
    """

    name: ClassVar[str] = "logged"

    def _fit(self, dataset: Dataset) -> None:
        """Index the logged propensities of ``dataset.train`` by (user, item)."""
        train = _require_train(dataset, "LoggedPropensity")
        if "propensity" not in train.columns:
            raise ValueError(
                f"LoggedPropensity needs a 'propensity' column in {dataset.name}.train: the "
                "probability the logging policy recorded for each shown pair (a table maps it "
                "with [train.data] columns.propensity; or choose 'popularity')"
            )
        p = _check_probabilities(train["propensity"].to_numpy(), f"{dataset.name}.train")
        keys = train["user_id"].to_numpy() * dataset.n_items + train["item_id"].to_numpy()
        self.keys_, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        self.propensity_ = np.bincount(inverse, weights=p) / counts

    def _predict(
        self, users: np.ndarray, items: np.ndarray, label: ArrayLike | None
    ) -> np.ndarray:
        """The mean logged propensity of each (user, item) pair; unlogged pairs raise."""
        keys = users * self.n_items_ + items
        position = np.minimum(np.searchsorted(self.keys_, keys), len(self.keys_) - 1)
        missing = self.keys_[position] != keys
        if missing.any():
            raise ValueError(
                f"LoggedPropensity: {int(missing.sum())} pairs were never logged (e.g. user "
                f"{users[missing][0]}, item {items[missing][0]}); only logged pairs have a "
                "logged propensity"
            )
        return self.propensity_[position]

    def predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """The frame's own logged ``propensity`` column, checked to lie in (0, 1]."""
        check_is_fitted(self)
        if "propensity" not in frame.columns:
            raise ValueError(
                "LoggedPropensity.predict_frame needs a 'propensity' column: the probability the "
                "logging policy recorded for each row"
            )
        column = frame["propensity"]
        if column.null_count():
            raise ValueError(f"the 'propensity' column holds {column.null_count()} nulls")
        return _check_probabilities(column.to_numpy(), "frame")

    def predict_matrix(self) -> np.ndarray:
        """Not defined: logged propensities exist only for the pairs that were logged."""
        raise ValueError("logged propensities exist only for logged pairs: no full matrix")


class ShippedPropensity(PropensityEstimator):
    """The (n_users, n_items) propensity matrix shipped with the data (Coat's authors' model)."""

    name: ClassVar[str] = "shipped"

    def _fit(self, dataset: Dataset) -> None:
        """Take ``dataset.propensity_matrix`` after checking it lies in (0, 1]."""
        if dataset.propensity_matrix is None:
            raise ValueError(
                f"ShippedPropensity needs dataset.propensity_matrix: {dataset.name} ships no "
                "propensity matrix (choose 'logged' for logged per-row propensities, "
                "'popularity', 'logistic' or 'naive_bayes')"
            )
        self.matrix_ = _check_probabilities(
            dataset.propensity_matrix, f"{dataset.name}.propensity_matrix"
        ).copy()

    def _predict(
        self, users: np.ndarray, items: np.ndarray, label: ArrayLike | None
    ) -> np.ndarray:
        """The shipped P(observed) of each pair."""
        return self.matrix_[users, items]

    def predict_matrix(self) -> np.ndarray:
        """A copy of the shipped matrix."""
        check_is_fitted(self)
        return self.matrix_.copy()


class PopularityPropensity(PropensityEstimator):
    """p_i = (n_i / max_j n_j) ** power with n_i the train rows of item i; the same for all users.

    Items never observed in train are counted as observed once (n_i = 1), which gives them the
    smallest positive propensity any item can have, (1 / max_j n_j) ** power.
    """

    name: ClassVar[str] = "popularity"

    def __init__(self, power: float = 0.5) -> None:
        self.power = power

    def _fit(self, dataset: Dataset) -> None:
        """Count each item's observations in ``dataset.train``."""
        check_scalar(self.power, "power", 0.0, high_open=True)
        train = _require_train(dataset, "PopularityPropensity")
        counts = np.bincount(train["item_id"].to_numpy(), minlength=dataset.n_items)
        self.item_counts_ = counts
        self.item_propensity_ = (np.maximum(counts, 1) / counts.max()) ** float(self.power)

    def _predict(
        self, users: np.ndarray, items: np.ndarray, label: ArrayLike | None
    ) -> np.ndarray:
        """The item's popularity propensity, whatever the user."""
        return self.item_propensity_[items]


def _rowwise_kron(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """Row r of the result is kron(a[r], b[r]): every user feature times every item feature."""
    n, width = a.shape[0], b.shape[1]
    a_nnz, b_nnz = np.diff(a.indptr), np.diff(b.indptr)
    a_row = np.repeat(np.arange(n), a_nnz)  # row of each stored entry of a
    repeats = b_nnz[a_row]  # each entry of a pairs with every entry of b in its row
    a_entry = np.repeat(np.arange(a.nnz), repeats)
    group_start = np.repeat(np.cumsum(repeats) - repeats, repeats)
    b_entry = np.arange(repeats.sum()) - group_start + np.repeat(b.indptr[a_row], repeats)
    indptr = np.concatenate([[0], np.cumsum(a_nnz * b_nnz)])
    return sp.csr_matrix(
        (
            a.data[a_entry] * b.data[b_entry],
            a.indices[a_entry] * width + b.indices[b_entry],
            indptr,
        ),
        shape=(n, a.shape[1] * width),
    )


class LogisticPropensity(PropensityEstimator):
    """Logistic regression of "pair observed in train" on user and item features over all pairs.

    Features of pair (u, i): the user's feature vector, the item's, optionally their outer product
    (``interactions``: every user feature × every item feature, as Coat's authors' model has) and
    one-hot user and item ids (``include_ids``). Catalogues with more than ``max_pairs`` pairs are
    case-control subsampled: at most ``max_pairs // 2`` observed pairs and the rest of the budget
    in uniformly drawn unobserved pairs, kept at rates r1 and r0; the fitted intercept is then
    corrected by log(r0 / r1), which undoes the change in the odds that the sampling caused.
    """

    name: ClassVar[str] = "logistic"

    def __init__(
        self,
        C: float = 1.0,
        max_iter: int = 1000,
        include_ids: bool = False,
        interactions: bool = False,
        max_pairs: int = 2_000_000,
        random_state: int = 0,
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.include_ids = include_ids
        self.interactions = interactions
        self.max_pairs = max_pairs
        self.random_state = random_state

    def _fit(self, dataset: Dataset) -> None:
        """Fit P(observed | user, item features) on all pairs (or a corrected subsample)."""
        check_scalar(self.C, "C", 0.0, low_open=True, high_open=True)
        check_scalar(self.max_iter, "max_iter", 1.0)
        check_scalar(self.max_pairs, "max_pairs", 2.0)
        train = _require_train(dataset, "LogisticPropensity")
        if dataset.user_features is None or dataset.item_features is None:
            raise ValueError(
                "LogisticPropensity needs dataset.user_features and dataset.item_features: "
                f"{dataset.name} lacks them (a table sets [train.data] user_features_path and "
                "item_features_path; or choose 'popularity' or 'naive_bayes')"
            )
        user_x = np.asarray(dataset.user_features, dtype=np.float64)
        item_x = np.asarray(dataset.item_features, dtype=np.float64)
        if not (np.isfinite(user_x).all() and np.isfinite(item_x).all()):
            raise ValueError(f"{dataset.name}: user_features/item_features hold non-finite values")
        n_users, n_items = dataset.n_users, dataset.n_items
        positives = np.unique(train["user_id"].to_numpy() * n_items + train["item_id"].to_numpy())
        n_pairs = n_users * n_items
        if len(positives) == n_pairs:
            raise ValueError("LogisticPropensity: every pair is observed; nothing to contrast")
        keys, target, correction = self._sample_pairs(positives, n_pairs)
        users, items = np.divmod(keys, n_items)
        design = self._design(user_x, item_x, users, items, n_users, n_items)
        model = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter))
        model.fit(design, target)

        coef = model.coef_.ravel()
        du, di = user_x.shape[1], item_x.shape[1]
        self.user_coef_, self.item_coef_ = coef[:du], coef[du : du + di]
        offset = du + di
        if self.interactions:
            self.interaction_coef_ = coef[offset : offset + du * di].reshape(du, di)
            offset += du * di
        self.intercept_ = float(model.intercept_[0]) + correction
        self.user_logit_ = user_x @ self.user_coef_
        self.item_logit_ = item_x @ self.item_coef_
        if self.include_ids:
            self.user_logit_ = self.user_logit_ + coef[offset : offset + n_users]
            self.item_logit_ = self.item_logit_ + coef[offset + n_users :]
        if self.interactions:
            self.user_projection_ = user_x @ self.interaction_coef_
            self.item_features_ = item_x.copy()
        self.n_pairs_fit_ = len(keys)
        self.intercept_correction_ = correction

    def _sample_pairs(
        self, positives: np.ndarray, n_pairs: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Pair keys to fit on, their 0/1 targets and the intercept correction log(r0 / r1)."""
        max_pairs = int(self.max_pairs)
        if n_pairs <= max_pairs:
            target = np.zeros(n_pairs, dtype=np.int8)
            target[positives] = 1
            return np.arange(n_pairs), target, 0.0
        rng = np.random.default_rng(self.random_state)
        n_negatives = n_pairs - len(positives)
        keep_pos = min(len(positives), max_pairs // 2)
        keep_neg = min(n_negatives, max_pairs - keep_pos)
        kept_pos = np.sort(rng.choice(positives, size=keep_pos, replace=False))
        if keep_neg == n_negatives:
            kept_neg = np.setdiff1d(np.arange(n_pairs), positives, assume_unique=True)
        else:
            kept_neg = np.empty(0, dtype=np.int64)
            density = n_negatives / n_pairs
            while len(kept_neg) < keep_neg:  # rejection sampling: a few rounds at most
                draw = rng.integers(
                    0, n_pairs, size=int(1.2 * (keep_neg - len(kept_neg)) / density) + 64
                )
                fresh = np.setdiff1d(draw, positives)
                kept_neg = np.union1d(kept_neg, fresh)
            kept_neg = rng.choice(kept_neg, size=keep_neg, replace=False)
        keys = np.concatenate([kept_pos, kept_neg])
        target = np.concatenate([np.ones(keep_pos, np.int8), np.zeros(keep_neg, np.int8)])
        correction = np.log(keep_neg / n_negatives) - np.log(keep_pos / len(positives))
        return keys, target, float(correction)

    def _design(
        self,
        user_x: np.ndarray,
        item_x: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        n_users: int,
        n_items: int,
    ) -> sp.csr_matrix:
        """Sparse design matrix [user features, item features, (user ⊗ item), (one-hot ids)]."""
        user_part = sp.csr_matrix(user_x)[users]
        item_part = sp.csr_matrix(item_x)[items]
        blocks = [user_part, item_part]
        if self.interactions:
            blocks.append(_rowwise_kron(user_part, item_part))
        if self.include_ids:
            rows = np.arange(len(users))
            ones = np.ones(len(users))
            blocks.append(sp.csr_matrix((ones, (rows, users)), shape=(len(users), n_users)))
            blocks.append(sp.csr_matrix((ones, (rows, items)), shape=(len(users), n_items)))
        return sp.hstack(blocks, format="csr")

    def _predict(
        self, users: np.ndarray, items: np.ndarray, label: ArrayLike | None
    ) -> np.ndarray:
        """sigmoid(intercept + user part + item part (+ user ⊗ item part)) of each pair."""
        logit = self.intercept_ + self.user_logit_[users] + self.item_logit_[items]
        if self.interactions:
            logit = logit + np.einsum(
                "nd,nd->n", self.user_projection_[users], self.item_features_[items]
            )
        return expit(logit)


class NaiveBayesPropensity(PropensityEstimator):
    """P(O=1 | Y=r) = P(Y=r | O=1) P(O=1) / P(Y=r) for rating data (Schnabel et al., 2016).

    P(Y=r | O=1) from the train labels, P(Y=r) from ``dataset.mar_sample`` (a missing-at-random
    sample), both Laplace-smoothed with ``smoothing`` over the rating levels seen in either;
    P(O=1) = |train| / (n_users · n_items). Values above 1 (possible with small samples) are
    clipped to 1.
    """

    name: ClassVar[str] = "naive_bayes"
    needs_label: ClassVar[bool] = True

    def __init__(self, smoothing: float = 1.0) -> None:
        self.smoothing = smoothing

    def _fit(self, dataset: Dataset) -> None:
        """Estimate the rating distributions of observed and missing-at-random labels."""
        check_scalar(self.smoothing, "smoothing", 0.0, high_open=True)
        train = _require_train(dataset, "NaiveBayesPropensity")
        if dataset.mar_sample is None or dataset.mar_sample.height == 0:
            raise ValueError(
                "NaiveBayesPropensity needs dataset.mar_sample, a missing-at-random sample of "
                f"labels, and data set {dataset.name!r} was loaded without one: set [train.data] "
                "mar_sample_fraction > 0 (coat; a table also maps columns.mar to its "
                "missing-at-random flag)"
            )
        observed = train["label"].to_numpy()
        mar = dataset.mar_sample["label"].to_numpy()
        levels = np.unique(np.concatenate([observed, mar]))
        alpha, k = float(self.smoothing), len(levels)
        count_observed = np.bincount(np.searchsorted(levels, observed), minlength=k)
        count_mar = np.bincount(np.searchsorted(levels, mar), minlength=k)
        p_label_given_observed = (count_observed + alpha) / (len(observed) + alpha * k)
        p_label = (count_mar + alpha) / (len(mar) + alpha * k)
        if (p_label == 0).any():
            missing = levels[p_label == 0]
            raise ValueError(
                f"labels {missing.tolist()} never occur in mar_sample: P(Y=r) is 0; use "
                "smoothing > 0"
            )
        self.levels_ = levels
        self.p_observed_ = len(observed) / (dataset.n_users * dataset.n_items)
        self.p_label_given_observed_ = p_label_given_observed
        self.p_label_ = p_label
        self.level_propensity_ = np.minimum(
            p_label_given_observed * self.p_observed_ / p_label, 1.0
        )

    def _predict(
        self, users: np.ndarray, items: np.ndarray, label: ArrayLike | None
    ) -> np.ndarray:
        """P(O=1 | Y=label) of each pair; ``label`` is required and must be a level seen at fit."""
        if label is None:
            raise ValueError("NaiveBayesPropensity.predict needs the label of each pair")
        labels = np.asarray(label, dtype=np.float64)
        if labels.shape != users.shape:
            raise ValueError(f"label {labels.shape} and user_id {users.shape} differ in shape")
        position = np.minimum(np.searchsorted(self.levels_, labels), len(self.levels_) - 1)
        unknown = self.levels_[position] != labels
        if unknown.any():
            raise ValueError(
                f"labels {np.unique(labels[unknown])[:5].tolist()} were not seen at fit; known "
                f"levels: {self.levels_.tolist()}"
            )
        return self.level_propensity_[position]


PROPENSITY_ESTIMATORS: dict[str, type[PropensityEstimator]] = {
    cls.name: cls
    for cls in (
        LoggedPropensity,
        ShippedPropensity,
        PopularityPropensity,
        LogisticPropensity,
        NaiveBayesPropensity,
    )
}


def make_propensity(name: str, **params: object) -> PropensityEstimator:
    """A propensity estimator by name, e.g. ``make_propensity("popularity", power=1.0)``."""
    if name not in PROPENSITY_ESTIMATORS:
        raise ValueError(
            f"unknown propensity estimator {name!r}; choose one of "
            f"{', '.join(sorted(PROPENSITY_ESTIMATORS))}"
        )
    cls = PROPENSITY_ESTIMATORS[name]
    try:
        return cls(**params)
    except TypeError as error:
        raise ValueError(f"bad parameters for {name!r} propensities: {error}") from None
