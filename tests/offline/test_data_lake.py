"""The lake as training data: time windows filter lazily, ids map to contiguous ints and back,
reward/propensity/time (and the simulator's noise) arrive in the interaction contract, lineage
records the Kafka offsets read, and nulls or impossible propensities are refused by column."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from offline.data.lake import lake_dataset, scan_interactions
from tests.recsys.test_lake_reader import HOUR_MS, T0, rewards_frame, write_hive


def lake(tmp_path, n: int = 40, **kwargs) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    frame = rewards_frame(
        n,
        step_ms=HOUR_MS // 4,
        users=[f"user-{u}" for u in rng.integers(0, 5, n)],
        items=(rng.integers(0, 6, n) * 1000 + 7).tolist(),
        rewards=rng.integers(0, 2, n).astype(float).tolist(),
        propensities=rng.uniform(0.05, 1.0, n).tolist(),
        **kwargs,
    )
    write_hive(tmp_path, "rewards", frame)
    return frame


def test_scan_interactions_is_lazy_and_keeps_the_time_window(tmp_path):
    frame = lake(tmp_path)
    since, until = T0 + 2 * HOUR_MS, T0 + 5 * HOUR_MS + 1
    scan = scan_interactions(tmp_path, since_ms=since, until_ms=until)
    assert isinstance(scan, pl.LazyFrame)
    got = sorted(scan.collect()["event_time_ms"].to_list())
    expected = sorted(t for t in frame["event_time_ms"] if since <= t < until)
    assert got == expected and len(got) == 13
    assert scan_interactions(tmp_path, since_ms=since).collect().height == 32
    with pytest.raises(ValueError, match="until_ms"):
        scan_interactions(tmp_path, since_ms=until, until_ms=since)


def test_lake_dataset_maps_ids_and_carries_the_logged_columns(tmp_path):
    frame = lake(tmp_path, partition=2, first_offset=100)
    data = lake_dataset(tmp_path, split="time")
    ds = data.dataset
    every = pl.concat([ds.train, ds.valid, ds.test])
    assert (ds.train.height, ds.valid.height, ds.test.height) == (28, 4, 8)
    assert ds.task == "implicit" and ds.n_users == len(data.user_ids) == frame["user_id"].n_unique()
    assert ds.n_items == len(data.item_ids) == 6
    back = every.with_columns(
        pl.Series("lake_user", data.user_ids[every["user_id"].to_numpy()]),
        pl.Series("lake_item", data.item_ids[every["item_id"].to_numpy()]),
    )
    original = frame.select(
        pl.col("user_id").alias("lake_user"), pl.col("item_id").alias("lake_item"),
        "event_time_ms", "reward", "propensity",
    )
    joined = back.join(original, on=["lake_user", "lake_item", "event_time_ms"])
    assert joined.height == 40
    assert (joined["label"] == joined["reward"]).all()
    assert (joined["propensity"] == joined["propensity_right"]).all()
    assert ds.train["event_time_ms"].max() <= ds.test["event_time_ms"].min()
    assert ds.lineage["data_source"] == "lake" and ds.lineage["rows"] == "40"
    assert json.loads(ds.lineage["lake_offsets"]) == {"recsys.rewards": {"2": 139}}
    assert "noise" not in ds.train.columns
    again = lake_dataset(tmp_path, split="time")
    assert again.dataset.fingerprint() == ds.fingerprint()


def test_simulated_logs_keep_their_noise_column_and_have_no_offsets(tmp_path):
    noise = [i % 5 == 0 for i in range(40)]
    lake(tmp_path, topic=None, extra={"score": [0.5] * 40, "noise": noise})
    data = lake_dataset(tmp_path, split="user", seed=3).dataset
    every = pl.concat([data.train, data.valid, data.test])
    assert every.height == 40 and every["noise"].sum() == sum(noise)
    assert "lake_offsets" not in data.lineage and data.lineage["split"] == "user"
    users = set(data.train["user_id"])
    assert set(data.valid["user_id"]) <= users and set(data.test["user_id"]) <= users


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("propensity", 0.0, r"\(rewards\)\.propensity: expected probabilities in \(0, 1\]"),
        ("propensity", 1.5, r"\(rewards\)\.propensity: expected probabilities in \(0, 1\]"),
        ("reward", None, r"\(rewards\)\.reward: expected no nulls, got 1 nulls"),
        ("propensity", None, r"\(rewards\)\.propensity: expected no nulls, got 1 nulls"),
        ("reward", float("nan"), r"\(rewards\)\.reward: expected finite values, got 1 non"),
    ],
)
def test_bad_rows_are_refused_naming_the_column(tmp_path, column, value, message):
    frame = rewards_frame(5)
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(value, pl.Float64)).otherwise(
            pl.col(column)).alias(column)
    )
    write_hive(tmp_path, "rewards", bad)  # written directly: the sink would never write this
    with pytest.raises(ValueError, match=message):
        lake_dataset(tmp_path)


def test_an_empty_window_is_refused(tmp_path):
    lake(tmp_path)
    with pytest.raises(ValueError, match=r"\(rewards\): expected rows in the requested window"):
        lake_dataset(tmp_path, since_ms=T0 + 100 * HOUR_MS)
