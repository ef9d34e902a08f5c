"""Rating, AUC and full-ranking metrics, vectorised over users (numpy; torch tensors accepted).

Per-user item sets (test truth, train mask) are :class:`UserItems`: CSR rows ``indptr`` /
``indices`` over ``n_items`` columns, built from (user_id, item_id) arrays by :func:`user_items`.
A dense (U, I) boolean array is accepted wherever a ``UserItems`` is.

Top-K protocol: each user's training items are masked (never recommended, never counted); the
relevant set is test minus train; users with no relevant item are excluded and counted.
``ndcg@K`` is the standard NDCG (ideal DCG over min(|test_u|, K) items); ``ndcg_uncapped@K`` is the
variant of the PLD authors' released code (ideal DCG over all |test_u| items). Recall@K divides by
|test_u|; precision@K by the list length min(K, n_items).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


def _numpy(values: Any) -> np.ndarray:
    """A numpy view of an array, list or (CPU/GPU, grad or not) torch tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


@dataclass(frozen=True)
class UserItems:
    """Sets of items per user in CSR form: user u holds ``indices[indptr[u]:indptr[u+1]]``."""

    indptr: np.ndarray
    indices: np.ndarray
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        """Items per user."""
        return np.diff(self.indptr)

    def dense(self, users: np.ndarray | None = None) -> np.ndarray:
        """Boolean (len(users), n_items) membership rows (all users when None)."""
        users = np.arange(self.n_users) if users is None else np.asarray(users, dtype=np.int64)
        starts, stops = self.indptr[users], self.indptr[users + 1]
        lengths = stops - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        # Position of every selected entry in ``indices``: start of its row + offset within it.
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out = np.zeros((len(users), self.n_items), dtype=bool)
        out[rows, self.indices[np.repeat(starts, lengths) + offsets]] = True
        return out


def user_items(user_id: Any, item_id: Any, n_users: int, n_items: int) -> UserItems:
    """Per-user item sets from (user_id, item_id) pairs (duplicates collapse)."""
    users, items = _numpy(user_id).astype(np.int64), _numpy(item_id).astype(np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"user_id and item_id must be 1-D of equal length, got {users.shape} "
                         f"and {items.shape}")
    for name, ids, bound in (("user_id", users, n_users), ("item_id", items, n_items)):
        if ids.size and (ids.min() < 0 or ids.max() >= bound):
            raise ValueError(f"{name} must lie in [0, {bound}), found [{ids.min()}, {ids.max()}]")
    keys = np.unique(users * n_items + items)
    users, items = keys // n_items, keys % n_items
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return UserItems(indptr, items, int(n_items))


def _rows(sets: UserItems | Any, users: np.ndarray, n_items: int, name: str) -> np.ndarray:
    """Boolean membership rows of ``users`` from a UserItems or a dense (U, I) array."""
    if isinstance(sets, UserItems):
        if sets.n_items != n_items:
            raise ValueError(f"{name} has {sets.n_items} items but scores have {n_items} columns")
        if users.size and users.max() >= sets.n_users:
            raise ValueError(f"{name} has {sets.n_users} users; scores need rows up to "
                             f"{users.max()}")
        return sets.dense(users)
    dense = _numpy(sets)
    if dense.ndim != 2 or dense.shape[1] != n_items:
        raise ValueError(f"{name} must be a UserItems or a (users, {n_items}) array, got shape "
                         f"{dense.shape}")
    return dense[users].astype(bool)


def _scores(scores: Any) -> np.ndarray:
    matrix = _numpy(scores).astype(np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 1:
        raise ValueError(f"scores must be a (users, items) matrix, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError("scores hold NaN; a model that emits NaN cannot be ranked")
    return matrix


def _users(users: Any, n_rows: int) -> np.ndarray:
    if users is None:
        return np.arange(n_rows)
    users = _numpy(users).astype(np.int64)
    if users.shape != (n_rows,):
        raise ValueError(f"users must name one user per score row ({n_rows}), got {users.shape}")
    if users.size and users.min() < 0:
        raise ValueError("users must be >= 0")
    return users


def top_k(scores: np.ndarray, k: int, masked: np.ndarray | None = None) -> np.ndarray:
    """Column indices of each row's k best scores, best first (masked entries last)."""
    k = min(int(k), scores.shape[1])
    if masked is not None:
        scores = np.where(masked, -np.inf, scores)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))


def rank_metrics_per_user(
    scores: Any,
    test: UserItems | Any,
    train: UserItems | Any | None = None,
    ks: Iterable[int] = (20, 50),
    users: Any = None,
) -> dict[str, np.ndarray]:
    """Per-user ``recall@K``, ``precision@K``, ``ndcg@K``, ``ndcg_uncapped@K`` (NaN for users with
    no test item) for score rows of ``users`` (row r is user r when None), train items masked."""
    matrix = _scores(scores)
    n_rows, n_items = matrix.shape
    rows = _users(users, n_rows)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    masked = (_rows(train, rows, n_items, "train") if train is not None
              else np.zeros(matrix.shape, dtype=bool))
    truth = _rows(test, rows, n_items, "test") & ~masked
    n_true = truth.sum(axis=1)
    top = top_k(matrix, ks[-1], masked)
    hits = np.take_along_axis(truth, top, axis=1)  # masked items are never in truth
    discounts = _discounts(n_items)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])  # ideal[n] = DCG of n hits on top
    valid = n_true > 0
    safe_true = np.where(valid, n_true, 1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        length = min(k, n_items)
        hit_k = hits[:, :length]
        n_hits = hit_k.sum(axis=1)
        dcg = hit_k @ discounts[:length]
        values = {
            f"recall@{k}": n_hits / safe_true,
            f"precision@{k}": n_hits / length,
            f"ndcg@{k}": dcg / ideal[np.minimum(safe_true, length)],
            f"ndcg_uncapped@{k}": dcg / ideal[safe_true],
        }
        for name, value in values.items():
            out[name] = np.where(valid, value, np.nan)
    return out


def rank_metrics(
    scores: Any,
    test: UserItems | Any,
    train: UserItems | Any | None = None,
    ks: Iterable[int] = (20, 50),
    users: Any = None,
) -> dict[str, float]:
    """Full-ranking Recall/Precision/NDCG@K averaged over users with at least one test item;
    ``n_users`` counts them and ``n_users_without_test`` the excluded ones."""
    per_user = rank_metrics_per_user(scores, test, train, ks, users)
    first = next(iter(per_user.values()))
    valid = ~np.isnan(first)
    if not valid.any():
        raise ValueError("no user has a test item outside its training items; nothing to rank")
    result = {name: float(values[valid].mean()) for name, values in per_user.items()}
    result["n_users"] = int(valid.sum())
    result["n_users_without_test"] = int((~valid).sum())
    return result


def relevance_recall(
    scores: Any,
    true_relevance: Any,
    train_mask: UserItems | Any | None = None,
    k: int = 20,
) -> float:
    """Mean share of each user's k truly most relevant non-train items found in the model's top-k
    non-train items (divided by min(k, non-train items); simulator ground truth only)."""
    matrix, relevance, masked = _relevance_inputs(scores, true_relevance, train_mask)
    available = (~masked).sum(axis=1)
    length = min(int(k), matrix.shape[1])
    if length < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keep = available > 0
    if not keep.any():
        raise ValueError("every item of every user is masked; nothing to rank")
    predicted = top_k(matrix, length, masked)
    ideal = top_k(relevance, length, masked)
    usable = np.minimum(available, length)
    # Only the first `usable` positions hold unmasked items; compare those as sets.
    position = np.arange(length)[None, :] < usable[:, None]
    chosen = np.zeros(matrix.shape, dtype=bool)
    np.put_along_axis(chosen, predicted, position, axis=1)
    best = np.zeros(matrix.shape, dtype=bool)
    np.put_along_axis(best, ideal, position, axis=1)
    found = (chosen & best).sum(axis=1)
    return float((found[keep] / usable[keep]).mean())


def true_relevance_at_k(
    scores: Any,
    true_relevance: Any,
    train_mask: UserItems | Any | None = None,
    k: int = 20,
) -> float:
    """Mean true relevance of the model's top-k non-train items (averaged per user, then over
    users with at least one non-train item)."""
    matrix, relevance, masked = _relevance_inputs(scores, true_relevance, train_mask)
    length = min(int(k), matrix.shape[1])
    if length < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    available = (~masked).sum(axis=1)
    keep = available > 0
    if not keep.any():
        raise ValueError("every item of every user is masked; nothing to rank")
    predicted = top_k(matrix, length, masked)
    usable = np.minimum(available, length)
    position = np.arange(length)[None, :] < usable[:, None]
    gathered = np.take_along_axis(relevance, predicted, axis=1) * position
    return float((gathered.sum(axis=1)[keep] / usable[keep]).mean())


def _relevance_inputs(
    scores: Any, true_relevance: Any, train_mask: UserItems | Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matrix = _scores(scores)
    relevance = _numpy(true_relevance).astype(np.float64)
    if relevance.shape != matrix.shape:
        raise ValueError(f"true_relevance must have the scores' shape {matrix.shape}, got "
                         f"{relevance.shape}")
    rows = np.arange(matrix.shape[0])
    masked = (_rows(train_mask, rows, matrix.shape[1], "train_mask") if train_mask is not None
              else np.zeros(matrix.shape, dtype=bool))
    return matrix, relevance, masked


def rating_metrics(prediction: Any, label: Any) -> dict[str, float]:
    """Mean squared and mean absolute error of rating predictions."""
    pred, true = _numpy(prediction).astype(np.float64), _numpy(label).astype(np.float64)
    if pred.shape != true.shape or pred.ndim != 1 or pred.size == 0:
        raise ValueError(f"prediction and label must be non-empty 1-D arrays of equal length, got "
                         f"{pred.shape} and {true.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise ValueError("prediction and label must be finite")
    error = pred - true
    return {"mse": float(np.mean(error**2)), "mae": float(np.mean(np.abs(error)))}


def auc(scores: Any, labels: Any) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties); labels are 0/1, both present."""
    values, truth = _numpy(scores).astype(np.float64), _numpy(labels)
    if values.shape != truth.shape or values.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {values.shape} and "
                         f"{truth.shape}")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("labels must be 0/1 (binarise ratings first, e.g. label >= 4)")
    if np.isnan(values).any():
        raise ValueError("scores hold NaN")
    positive = truth.astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = average_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))

