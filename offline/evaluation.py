"""Scoring a trained model on a split with the metrics its data set supports.

- Rating data (explicit ratings, or 0/1 outcomes of shown items): MSE and MAE of the predictions
  (ratings clipped to the training label range, with ``<split>_clipped_share`` the share of raw
  predictions the clipping moved; logits turned into probabilities), the
  self-normalised inverse-propensity MSE/MAE when the split's rows carry propensities (an
  estimate of the missing-at-random error from missing-not-at-random validation rows: early
  stopping on Coat uses it), and AUC (ratings binarised at ``RATING_POSITIVE``).
- Implicit data: full-ranking Recall/NDCG@K with the training items masked (and validation
  items too when scoring the test split), from ``recsys.ranking``.
- Simulated data: Recall@K against the true relevance and the mean true relevance of the top K.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import polars as pl
import torch
from torch import nn

from offline.prepared import PreparedData
from recsys.ranking import (
    UserItems,
    auc,
    rank_metrics_per_user,
    rating_metrics,
    relevance_recall,
    true_relevance_at_k,
    user_items,
)

Split = Literal["valid", "test"]
KS = (20, 50)
RATING_POSITIVE = 4.0
"""Ratings at or above this count as positive for AUC (Coat's usual binarisation)."""
SCORE_CHUNK = 1024
"""Users scored at once in full ranking (bounds the (users, items) score block)."""


def is_binary(labels: pl.Series) -> bool:
    """0/1 labels: the model's outputs are logits."""
    return bool(labels.is_in([0.0, 1.0]).all())


@torch.no_grad()
def predict_pairs(model: nn.Module, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The model's raw outputs for (user, item) pairs."""
    device = next(model.parameters()).device
    out = model(
        torch.tensor(users, dtype=torch.long, device=device),
        torch.tensor(items, dtype=torch.long, device=device),
    )
    return out.detach().cpu().double().numpy()


@torch.no_grad()
def score_blocks(model: nn.Module, n_users: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(users, their scores over every item) in blocks of ``SCORE_CHUNK`` users, so full ranking
    never holds the whole (n_users, n_items) matrix."""
    device = next(model.parameters()).device
    for start in range(0, n_users, SCORE_CHUNK):
        users = np.arange(start, min(start + SCORE_CHUNK, n_users))
        scores = model.score_all(torch.as_tensor(users, device=device))
        yield users, scores.detach().cpu().double().numpy()


def score_matrix(model: nn.Module, n_users: int) -> np.ndarray:
    """(n_users, n_items) scores (for the simulator's true-relevance metrics)."""
    return np.concatenate([scores for _, scores in score_blocks(model, n_users)], axis=0)


def _rank_metrics(model: nn.Module, test: UserItems, mask: UserItems | None,
                  n_users: int) -> dict[str, float]:
    """``recsys.ranking.rank_metrics`` over score blocks: per-user values, averaged over the
    users with a test item."""
    blocks: dict[str, list[np.ndarray]] = {}
    for users, scores in score_blocks(model, n_users):
        for name, values in rank_metrics_per_user(scores, test, mask, KS, users=users).items():
            blocks.setdefault(name, []).append(values)
    per_user = {name: np.concatenate(values) for name, values in blocks.items()}
    ranked = ~np.isnan(next(iter(per_user.values())))
    if not ranked.any():
        raise ValueError("no user has a held-out item outside its training items; nothing to rank")
    return {name: float(values[ranked].mean()) for name, values in per_user.items()}


def _rating(model: nn.Module, data: PreparedData, split: Split) -> dict[str, float]:
    dataset = data.dataset
    frame = dataset.valid if split == "valid" else dataset.test
    if frame.height == 0:
        return {}
    labels = frame["label"].to_numpy()
    raw = predict_pairs(model, frame["user_id"].to_numpy(), frame["item_id"].to_numpy())
    binary = is_binary(dataset.train["label"])
    if binary:
        prediction = 1.0 / (1.0 + np.exp(-raw))
    else:
        low, high = dataset.train["label"].min(), dataset.train["label"].max()
        prediction = np.clip(raw, low, high)
    out = {f"{split}_{k}": v for k, v in rating_metrics(prediction, labels).items()}
    if not binary:  # how much the clipping hides (a diverging model has raw outputs far out)
        out[f"{split}_clipped_share"] = float(np.mean((raw < low) | (raw > high)))
    propensity = frame["propensity"].to_numpy() if "propensity" in frame.columns else None
    if propensity is not None and split == "valid":
        weights = 1.0 / propensity
        for name, error in (("mse", (prediction - labels) ** 2),
                            ("mae", np.abs(prediction - labels))):
            out[f"{split}_snips_{name}"] = float(np.sum(weights * error) / np.sum(weights))
    positive = labels >= (0.5 if binary else RATING_POSITIVE)
    if 0 < positive.sum() < len(positive):
        out[f"{split}_auc"] = auc(prediction, positive.astype(np.int64))
    return out


def _ranking(model: nn.Module, data: PreparedData, split: Split) -> dict[str, float]:
    dataset = data.dataset
    n_users, n_items = dataset.n_users, dataset.n_items
    truth = dataset.valid if split == "valid" else dataset.test
    seen = [dataset.train] if split == "valid" else [dataset.train, dataset.valid]
    if dataset.task == "rating":  # exposures: rank against the clicked ones, nothing masked
        truth = truth.filter(pl.col("label") > 0)
        seen = []
    seen_frame = pl.concat([f.select("user_id", "item_id") for f in seen]) if seen else None
    out: dict[str, float] = {}
    mask = None
    if seen_frame is not None:
        mask = user_items(seen_frame["user_id"], seen_frame["item_id"], n_users, n_items)
    if truth.height:
        test = user_items(truth["user_id"], truth["item_id"], n_users, n_items)
        metrics = _rank_metrics(model, test, mask, n_users)
        out.update({f"{split}_{k}": v for k, v in metrics.items()})
    if split == "test" and dataset.true_relevance is not None:
        scores = score_matrix(model, n_users)
        for k in KS:
            out[f"test_true_recall@{k}"] = relevance_recall(scores, dataset.true_relevance, mask, k)
            out[f"test_true_relevance@{k}"] = true_relevance_at_k(
                scores, dataset.true_relevance, mask, k
            )
    return out


def evaluate(model: nn.Module, data: PreparedData, split: Split) -> dict[str, float]:
    """Every metric the data set supports on ``split``, keyed ``<split>_<metric>``."""
    model.eval()
    dataset = data.dataset
    if dataset.task == "rating":
        out = _rating(model, data, split)
        if split == "test" and dataset.true_relevance is not None:
            out.update(_ranking(model, data, split))
        return out
    return _ranking(model, data, split)
