"""Logged rewards as training data (clicks or shown items) and propensities attached to a split."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from offline.dataset import Dataset, interactions_frame
from offline.sources import as_feedback, attach_propensities
from offline.spec import Component, SpecError


def _logs() -> Dataset:
    # user 0 clicked item 1 twice in train (once accidentally) and again in test; item 2 unclicked.
    train = interactions_frame(np.array([0, 0, 0, 1, 1]), np.array([1, 1, 2, 3, 4]),
                               np.array([1.0, 1.0, 0.0, 1.0, 0.0]),
                               propensity=np.full(5, 0.5),
                               noise=np.array([False, True, False, False, False]))
    valid = interactions_frame(np.array([1, 1]), np.array([5, 3]), np.array([1.0, 1.0]),
                               propensity=np.full(2, 0.5), noise=np.array([False, False]))
    test = interactions_frame(np.array([0, 0]), np.array([1, 6]), np.array([1.0, 1.0]),
                              propensity=np.full(2, 0.25), noise=np.array([False, False]))
    return Dataset("logs", "implicit", 2, 20, train, valid, test)


def test_clicks_keep_each_clicked_pair_once_and_never_a_training_pair_as_a_target() -> None:
    data = as_feedback(_logs(), "clicks", noise_ratio=0.0, seed=0)
    assert data.task == "implicit"
    train = data.train.sort("user_id", "item_id")
    assert train.select("user_id", "item_id").rows() == [(0, 1), (1, 3)]
    assert train["noise"].to_list() == [False, False]  # one of its two clicks was genuine
    assert data.valid.select("user_id", "item_id").rows() == [(1, 5)]
    assert data.test.select("user_id", "item_id").rows() == [(0, 6)]


def test_clicks_with_noise_add_the_protocol_count_of_unseen_items() -> None:
    data = as_feedback(_logs(), "clicks", noise_ratio=1.0, seed=3)
    noisy = data.train.filter(pl.col("noise"))
    assert noisy.height == 2  # int(1.0 · 1) per user
    seen = {(0, 1), (0, 6), (1, 3), (1, 5)}
    assert not seen & set(noisy.select("user_id", "item_id").rows())


def test_shown_items_are_a_rating_task_and_bad_feedback_is_refused() -> None:
    data = as_feedback(_logs(), "shown", noise_ratio=0.0, seed=0)
    assert data.task == "rating" and data.train.height == 5
    with pytest.raises(SpecError, match=r"^train.data.feedback: expected one of"):
        as_feedback(_logs(), "views", noise_ratio=0.0, seed=0)


def test_propensities_are_clipped_and_summarised() -> None:
    from offline.prepared import PreparedData

    shown = as_feedback(_logs(), "shown", noise_ratio=0.0, seed=0)
    prepared = attach_propensities(PreparedData(shown), Component("logged"), clip=0.6)
    assert np.all(prepared.train_propensity == 0.6)  # 0.5 clipped up to 0.6
    assert prepared.propensity_summary["n"] == 5
    assert prepared.propensity_matrix is None  # logged propensities exist for logged pairs only
