"""Ranking and rating metrics: hand-computed cases and a per-user reference on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recsys.ranking import (
    auc,
    rank_metrics,
    rank_metrics_per_user,
    rating_metrics,
    relevance_recall,
    true_relevance_at_k,
    user_items,
)

LOG2 = math.log2


def test_user_items_collapses_duplicates_and_densifies():
    sets = user_items(np.array([2, 0, 2, 2]), np.array([1, 3, 1, 0]), n_users=4, n_items=5)
    assert sets.counts().tolist() == [1, 0, 2, 0]
    dense = sets.dense()
    assert dense.shape == (4, 5)
    assert [np.flatnonzero(row).tolist() for row in dense] == [[3], [], [0, 1], []]
    assert sets.dense(np.array([2, 0])).tolist() == dense[[2, 0]].tolist()
    with pytest.raises(ValueError, match="item_id must lie"):
        user_items(np.array([0]), np.array([5]), n_users=1, n_items=5)


def _hand_case():
    # One user, 6 items scored 6..1 (item 0 best). Train {0}; test {1, 3, 5}.
    scores = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    train = user_items(np.array([0]), np.array([0]), 1, 6)
    test = user_items(np.array([0, 0, 0]), np.array([1, 3, 5]), 1, 6)
    return scores, test, train


def test_hand_case_capped_and_uncapped_ndcg_differ_when_test_exceeds_k():
    scores, test, train = _hand_case()
    got = rank_metrics(scores, test, train, ks=(2, 10))
    # K=2: the list is items 1, 2 (item 0 masked): one hit at rank 1.
    assert got["recall@2"] == pytest.approx(1 / 3)
    assert got["precision@2"] == pytest.approx(1 / 2)
    assert got["ndcg@2"] == pytest.approx(1 / (1 + 1 / LOG2(3)))
    assert got["ndcg_uncapped@2"] == pytest.approx(1 / (1 + 1 / LOG2(3) + 1 / LOG2(4)))
    assert got["ndcg_uncapped@2"] < got["ndcg@2"]
    # K=10 > 6 items: the list is 1, 2, 3, 4, 5 (+ the masked 0 last, never a hit).
    dcg = 1 + 1 / LOG2(4) + 1 / LOG2(6)
    ideal = 1 + 1 / LOG2(3) + 1 / LOG2(4)
    assert got["recall@10"] == pytest.approx(1.0)
    assert got["precision@10"] == pytest.approx(3 / 6)
    assert got["ndcg@10"] == pytest.approx(dcg / ideal)
    assert got["ndcg_uncapped@10"] == pytest.approx(dcg / ideal)  # |test| <= K: same
    assert got["n_users"] == 1 and got["n_users_without_test"] == 0


def test_masked_train_items_are_never_counted():
    scores, test, _ = _hand_case()
    # Item 1 is both a test and a train item: it must neither be a hit nor in the denominator.
    train = user_items(np.array([0, 0]), np.array([0, 1]), 1, 6)
    got = rank_metrics(scores, test, train, ks=(1,))
    assert got["recall@1"] == 0.0  # top-1 after masking is item 2
    got = rank_metrics(scores, test, train, ks=(2,))
    assert got["recall@2"] == pytest.approx(1 / 2)  # item 3 of the remaining {3, 5}
    unmasked = rank_metrics(scores, test, None, ks=(1,))
    assert unmasked["recall@1"] == 0.0  # item 0 (not a test item) is first without a mask
    everything = np.ones((1, 6), dtype=bool)
    with pytest.raises(ValueError, match="no user has a test item"):
        rank_metrics(scores, test, everything, ks=(2,))


def test_users_without_test_items_are_excluded_and_counted():
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    test = user_items(np.array([0, 2]), np.array([0, 1]), 3, 3)
    got = rank_metrics(scores, test, None, ks=(1,))
    assert got["n_users"] == 2 and got["n_users_without_test"] == 1
    assert got["recall@1"] == pytest.approx(0.5)  # user 0 hits, user 2 misses, user 1 ignored
    per_user = rank_metrics_per_user(scores, test, None, ks=(1,))
    assert np.isnan(per_user["recall@1"][1])


def _reference(scores, test, train, k):
    """A per-user loop written from the definitions, to check the vectorised version."""
    out = {"recall": [], "precision": [], "ndcg": [], "ndcg_uncapped": []}
    n_items = scores.shape[1]
    for u in range(scores.shape[0]):
        candidates = [i for i in np.argsort(-scores[u], kind="stable") if not train[u, i]]
        truth = {i for i in np.flatnonzero(test[u]) if not train[u, i]}
        if not truth:
            continue
        ranked = candidates[:k]
        gains = [1 / LOG2(r + 2) for r, i in enumerate(ranked) if i in truth]
        ideal = lambda n: sum(1 / LOG2(r + 2) for r in range(n))  # noqa: E731
        out["recall"].append(len(gains) / len(truth))
        out["precision"].append(len(gains) / min(k, n_items))
        out["ndcg"].append(sum(gains) / ideal(min(len(truth), k)))
        out["ndcg_uncapped"].append(sum(gains) / ideal(len(truth)))
    return {name: float(np.mean(v)) for name, v in out.items()}


def test_matches_a_per_user_reference_on_random_data():
    rng = np.random.default_rng(3)
    n_users, n_items = 40, 30
    scores = rng.normal(size=(n_users, n_items))  # continuous: no ties, one true ranking
    train = rng.random((n_users, n_items)) < 0.2
    test = rng.random((n_users, n_items)) < 0.15
    test[:3] = False  # some users with nothing to find
    u, i = np.nonzero(test)
    tu, ti = np.nonzero(train)
    csr = rank_metrics(scores, user_items(u, i, n_users, n_items),
                       user_items(tu, ti, n_users, n_items), ks=(5, 20, 50))
    dense = rank_metrics(torch.from_numpy(scores), torch.from_numpy(test), train, ks=(5, 20, 50))
    for k in (5, 20, 50):
        expected = _reference(scores, test, train, k)
        for name, value in expected.items():
            assert csr[f"{name}@{k}"] == pytest.approx(value), (name, k)
            assert dense[f"{name}@{k}"] == pytest.approx(value), (name, k)
    # Batched rows (users=...) give the same per-user values as one call.
    rows = np.array([7, 2, 39])
    batch = rank_metrics_per_user(scores[rows], test, train, ks=(5,), users=rows)
    full = rank_metrics_per_user(scores, test, train, ks=(5,))
    np.testing.assert_array_equal(batch["ndcg@5"], full["ndcg@5"][rows])


def test_rank_metrics_refuse_bad_shapes():
    with pytest.raises(ValueError, match="columns"):
        rank_metrics(np.zeros((2, 3)), user_items(np.array([0]), np.array([0]), 2, 4))
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(np.full((1, 2), np.nan), np.ones((1, 2), dtype=bool))


def test_auc_equals_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # rounding makes ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="0/1"):
        auc(np.array([0.1, 0.2]), np.array([1, 4]))


def test_rating_metrics_hand_case():
    got = rating_metrics(np.array([3.0, 4.0, 1.0]), np.array([5.0, 4.0, 2.0]))
    assert got["mse"] == pytest.approx((4 + 0 + 1) / 3)
    assert got["mae"] == pytest.approx((2 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="equal length"):
        rating_metrics(np.ones(2), np.ones(3))


def test_relevance_recall_and_true_relevance_hand_case():
    # Two users, 5 items. User 0 has item 0 in train (masked).
    relevance = np.array([[0.9, 0.8, 0.1, 0.7, 0.2],
                          [0.1, 0.2, 0.3, 0.4, 0.5]])
    scores = np.array([[9.0, 0.0, 5.0, 4.0, 1.0],
                       [0.0, 0.0, 0.0, 2.0, 3.0]])
    train = np.zeros((2, 5), dtype=bool)
    train[0, 0] = True
    # k=2. User 0: true best non-train {1, 3}; model top non-train {2, 3} -> 1/2.
    # User 1: true best {4, 3}; model top {4, 3} -> 1.
    assert relevance_recall(scores, relevance, train, k=2) == pytest.approx(0.75)
    # Mean relevance of the model's lists: user 0 (0.1 + 0.7)/2, user 1 (0.5 + 0.4)/2.
    assert true_relevance_at_k(scores, relevance, train, k=2) == pytest.approx((0.4 + 0.45) / 2)
    # Without the mask user 0's true best is {0, 1} and the model's {0, 2}.
    assert relevance_recall(scores, relevance, None, k=2) == pytest.approx((0.5 + 1.0) / 2)
    # k beyond the non-train items: user 0 has 4, so both lists are all of them -> 1.
    assert relevance_recall(scores, relevance, train, k=10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        relevance_recall(scores, relevance[:1], train, k=2)
