"""The comparison's reward model q̂(a, k): each (item, position)'s mean reward, shrunk toward the
position's mean by empirical Bayes, cross-fitted over folds of requests.

Why not ``recsys.ope.RegressionModel``: with one-hot actions it fits a scikit-learn model on
``n_rows × n_items`` features and predicts an ``n_rows × n_items × len_list`` array, which does not
scale to 10k items × 1M rows; a comparison must also stream over chunks of requests. This model is
three counts per (fold, item, position) (rows, Σ reward, Σ reward²), so fitting is one pass and
predicting is a table lookup.

Shrinkage: at position k, an item's mean reward r̄ over n rows is shrunk to
(n r̄ + m_k μ_k) / (n + m_k), with μ_k the position's mean, m_k = σ²_k / τ²_k, σ²_k the pooled
within-cell variance and τ²_k the between-item variance of the true means, estimated by
DerSimonian and Laird's method of moments (τ² = 0 shrinks every item to μ_k). Items or positions
the training folds never show get μ_k (or the overall mean).

Cross-fitting: request r belongs to fold ``fold_of(r)``, a hash of its block of ``FOLD_BLOCK``
consecutive requests (so folds do not depend on chunking, and a chunk is a few runs of one fold,
which lets the engine reduce each run with one matrix product); its q̂ comes from the other folds'
counts, which keeps the DR correction r − q̂ independent of the row's own reward. ``n_folds=1``
fits on all rows (in-sample).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from recsys.validation import message

__all__ = ["FOLD_BLOCK", "ShrunkRateModel", "fold_of"]

FOLD_BLOCK = 128
"""Consecutive requests that share a fold (fewer on logs too small for every fold to get at least
eight blocks)."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def fold_of(request_index: np.ndarray, n_folds: int, seed: int = 0, block: int = FOLD_BLOCK
            ) -> np.ndarray:
    """The fold of each request index: splitmix64(index // block + seed) mod ``n_folds``."""
    blocks = np.asarray(request_index).astype(np.uint64) // np.uint64(block)
    z = blocks + np.uint64(seed) * _GOLDEN + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z % np.uint64(n_folds)).astype(np.int64)


def shrunk_means(count: np.ndarray, total: np.ndarray, square: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical-Bayes means of ``[n_items, len_list]`` cells from their row counts, reward sums
    and sums of squares: ``(means, position_means, prior_strength)``."""
    n_cells = count.sum(axis=0)
    overall = total.sum() / count.sum() if count.sum() > 0 else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(n_cells > 0, total.sum(axis=0) / n_cells, overall)
        seen = count > 0
        mean = np.where(seen, total / np.where(seen, count, 1.0), mu)
        n_seen = seen.sum(axis=0)
        within = (square - np.where(seen, total**2 / np.where(seen, count, 1.0), 0.0)).sum(axis=0)
        dof = n_cells - n_seen
        sigma2 = np.where(dof > 0, within / np.maximum(dof, 1), np.nan)
        fallback = np.clip(mu * (1.0 - mu), 1e-12, None)
        sigma2 = np.where(np.isfinite(sigma2) & (sigma2 > 0), sigma2, fallback)
        # DerSimonian–Laird: w = n / σ², Q = Σ w (r̄ − μ)², τ² = (Q − (C − 1)) / (Σw − Σw²/Σw).
        w = count / sigma2
        q_stat = (w * (mean - mu) ** 2).sum(axis=0)
        sum_w = w.sum(axis=0)
        denom = sum_w - (w**2).sum(axis=0) / np.where(sum_w > 0, sum_w, 1.0)
        tau2 = np.where(denom > 0, (q_stat - (n_seen - 1)) / np.where(denom > 0, denom, 1.0), 0.0)
        tau2 = np.maximum(tau2, 0.0)
        strength = np.where(tau2 > 0, sigma2 / np.where(tau2 > 0, tau2, 1.0), np.inf)
        finite = np.isfinite(strength)
        m = np.where(finite, strength, 0.0)
        shrunk = np.where(finite, (total + m * mu) / np.where(seen, count + m, 1.0), mu)
    return np.where(seen, shrunk, mu), mu, strength


class ShrunkRateModel(BaseEstimator):
    """Cross-fitted, shrunk mean reward per (item, position).

    Parameters: ``n_folds`` (K ≥ 1 folds of requests), ``random_state`` (the fold hash's seed).
    Learned: ``items_`` (sorted item ids), ``len_list_``, ``block_`` (requests per fold block),
    ``table_`` ``[n_folds, n_items, len_list]`` (fold f's q̂, fitted without fold f), ``prior_``
    ``[n_folds, len_list]`` (the position means, q̂ of items the fold's training rows never
    show), ``strength_`` (m_k).
    """

    def __init__(self, n_folds: int = 5, random_state: int = 0) -> None:
        self.n_folds = n_folds
        self.random_state = random_state

    def fit(self, items: np.ndarray, action: np.ndarray, position: np.ndarray,
            reward: np.ndarray, request_index: np.ndarray, len_list: int | None = None
            ) -> ShrunkRateModel:
        """Count rows, reward sums and squares per (fold, item, position); shrink per fold.

        ``items`` are the sorted distinct item ids; ``action`` the rows' item ids."""
        if (isinstance(self.n_folds, bool) or not isinstance(self.n_folds, (int, np.integer))
                or self.n_folds < 1):
            raise ValueError(message("n_folds", "an integer >= 1", repr(self.n_folds)))
        items = np.asarray(items)
        code = np.searchsorted(items, action)
        if code.size and (code.max() >= items.size or not np.array_equal(items[code], action)):
            raise ValueError(message("action", "item ids among items", "unknown ids"))
        k = int(position.max()) + 1 if len_list is None else int(len_list)
        folds = self.n_folds
        n_requests = int(request_index.max()) + 1 if request_index.size else 0
        self.block_ = int(np.clip(n_requests // (8 * folds), 1, FOLD_BLOCK))
        fold = self.fold_of(request_index)
        cell = (fold * items.size + code) * k + position
        size = folds * items.size * k
        shape = (folds, items.size, k)
        count = np.bincount(cell, minlength=size).reshape(shape).astype(float)
        total = np.bincount(cell, weights=reward, minlength=size).reshape(shape)
        square = np.bincount(cell, weights=reward * reward, minlength=size).reshape(shape)
        table = np.empty(shape)
        prior = np.empty((folds, k))
        strength = np.empty((folds, k))
        for f in range(folds):  # a loop over folds; each one vectorised over cells
            if folds == 1:
                train = (count[0], total[0], square[0])
            else:
                train = tuple(a.sum(axis=0) - a[f] for a in (count, total, square))
            table[f], prior[f], strength[f] = shrunk_means(*train)
        self.items_ = items
        self.len_list_ = k
        self.table_ = table
        self.prior_ = prior
        self.strength_ = strength
        return self

    def fold_of(self, request_index: np.ndarray) -> np.ndarray:
        """Each request's fold."""
        return fold_of(request_index, int(self.n_folds), int(self.random_state), self.block_)

    def predict(self, action: np.ndarray, position: np.ndarray, request_index: np.ndarray
                ) -> np.ndarray:
        """q̂ of rows (item id, position, request index), from the model not fitted on them;
        items the model never saw get the position mean."""
        code = np.searchsorted(self.items_, action).clip(0, max(self.items_.size - 1, 0))
        fold = self.fold_of(request_index)
        known = self.items_.size > 0
        known = (self.items_[code] == action) if known else np.zeros(action.shape, bool)
        return np.where(known, self.table_[fold, code, position], self.prior_[fold, position])

    def tables_for(self, item_ids: np.ndarray) -> np.ndarray:
        """``[n_folds, len(item_ids), len_list]`` q̂ over another item list (a candidate's
        columns): the fitted table where the item is known, the position mean elsewhere."""
        item_ids = np.asarray(item_ids)
        code = np.searchsorted(self.items_, item_ids).clip(0, max(self.items_.size - 1, 0))
        known = self.items_[code] == item_ids
        out = np.repeat(self.prior_[:, None, :], item_ids.size, axis=1)
        out[:, known, :] = self.table_[:, code[known], :]
        return out
