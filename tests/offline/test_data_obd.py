"""The Open Bandit Dataset as an offline data set: user-feature tuples become users, logged
propensities are kept, splits by time or per user (``recsys.obd`` reads the files; its tests are
tests/recsys/test_obd.py)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from offline.data.obd import obd_dataset
from recsys.obd import load_item_context
from tests.recsys.test_obd import write_obd


def test_the_real_data_set(shared_data):
    data = obd_dataset(shared_data / "obd", "bts")
    assert (data.n_items, data.task) == (80, "implicit")
    assert (data.train.height, data.valid.height, data.test.height) == (7000, 1000, 2000)
    assert data.item_features.shape[0] == 80 and data.user_features.shape[0] == data.n_users
    assert data.train["event_time_ms"].max() <= data.test["event_time_ms"].min()


def test_generated_files_build_a_data_set(tmp_path):
    logs = write_obd(tmp_path, n=50)
    data = obd_dataset(tmp_path, seed=0, split="time")
    tuples = logs.select(pl.concat_str([f"user_feature_{i}" for i in range(4)], separator="|"))
    assert data.n_users == tuples.n_unique() and data.n_items == 4
    every = pl.concat([data.train, data.valid, data.test])
    assert every.height == 50 and (every["propensity"] == 0.25).all()
    same_user = every.group_by("user_id").agg(pl.col("event_time_ms"))
    assert same_user.height == data.n_users
    # one numeric item feature + three one-hot categories, rows in item order
    context = load_item_context(tmp_path)
    assert data.item_features.shape == (4, 1 + context["item_feature_1"].n_unique())
    assert np.allclose(data.item_features[:, 0], context["item_feature_0"].to_numpy())
    per_user = obd_dataset(tmp_path, seed=1, split="user")
    assert per_user.train.height + per_user.valid.height + per_user.test.height == 50
    with pytest.raises(ValueError, match=r"^split: expected 'time' or 'user', got 'random'"):
        obd_dataset(tmp_path, split="random")


def test_logged_items_beyond_the_item_context_are_refused(tmp_path):
    logs = write_obd(tmp_path, n=20)
    path = tmp_path / "random" / "all" / "all.csv"
    logs.with_columns(pl.lit(9).alias("item_id")).write_csv(path)
    with pytest.raises(ValueError, match="expected logged item ids below the 4 items"):
        obd_dataset(tmp_path)
