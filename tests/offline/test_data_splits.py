"""Splits: fractions are validated, parts are disjoint and cover the frame, per-user splits keep
a train row for every user and cut each user by the half-up rule, time splits never put a row
before a train row in test, re-indexing is contiguous and invertible, seeds decide the result."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from offline.data.splits import (
    check_fractions,
    filter_min_interactions,
    reindex,
    split_by_time,
    split_per_user,
)


def interactions(counts: list[int], seed: int = 0) -> pl.DataFrame:
    """Users with the given numbers of rows, distinct items per user, random distinct times."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(counts)), counts)
    items = np.concatenate([rng.choice(1000, c, replace=False) for c in counts])
    return pl.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "label": np.ones(users.size),
            "event_time_ms": rng.permutation(users.size) * 1000,
        }
    )


def key(frame: pl.DataFrame) -> set[tuple[int, int]]:
    return set(frame.select("user_id", "item_id").iter_rows())


@pytest.mark.parametrize(
    "fractions",
    [(0.7, 0.1), (0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (0.7, np.nan, 0.3)],
)
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="fractions"):
        check_fractions(fractions)
    with pytest.raises(ValueError, match="fractions"):
        split_per_user(interactions([3]), fractions)


def test_per_user_split_is_disjoint_covers_and_cuts_each_user_by_the_rule():
    counts = [1, 2, 3, 5, 10, 24, 37]
    frame = interactions(counts)
    train, valid, test = split_per_user(frame, (0.7, 0.1, 0.2), seed=3)
    parts = [key(train), key(valid), key(test)]
    assert sum(len(p) for p in parts) == frame.height
    assert set.union(*parts) == key(frame)
    for user, n in enumerate(counts):
        got = [p.filter(pl.col("user_id") == user).height for p in (train, valid, test)]
        n_train = max(1, int(np.floor(0.7 * n + 0.5)))
        n_valid = max(int(np.floor(0.8 * n + 0.5)), n_train) - n_train
        assert got == [n_train, n_valid, n - n_train - n_valid], (user, n, got)
    assert train.columns == frame.columns


def test_per_user_split_depends_on_the_seed_only():
    frame = interactions([20] * 30)
    a = split_per_user(frame, seed=1)
    b = split_per_user(frame, seed=1)
    c = split_per_user(frame, seed=2)
    assert all(x.equals(y) for x, y in zip(a, b, strict=True))
    assert key(a[2]) != key(c[2])


def test_global_time_split_orders_parts_in_time_with_exact_fractions():
    frame = interactions([40, 30, 30])
    train, valid, test = split_by_time(frame, (0.6, 0.2, 0.2))
    assert (train.height, valid.height, test.height) == (60, 20, 20)
    assert train["event_time_ms"].max() < valid["event_time_ms"].min()
    assert valid["event_time_ms"].max() < test["event_time_ms"].min()


def test_per_user_time_split_keeps_each_users_latest_rows_for_test():
    frame = interactions([10, 10, 1])
    train, _, test = split_by_time(frame, per_user=True)
    for user in (0, 1):
        latest = train.filter(pl.col("user_id") == user)["event_time_ms"].max()
        assert test.filter(pl.col("user_id") == user)["event_time_ms"].min() > latest
        assert test.filter(pl.col("user_id") == user).height == 2
    assert train.filter(pl.col("user_id") == 2).height == 1
    with pytest.raises(ValueError, match="when"):
        split_by_time(frame, time_column="when")


def test_filter_min_interactions_and_reindex():
    frame = interactions([1, 4, 2, 6]).with_columns(
        ("u" + pl.col("user_id").cast(pl.String)).alias("user_id"), pl.col("item_id") * 7
    )
    kept = filter_min_interactions(frame, 2)
    assert sorted(kept["user_id"].unique().to_list()) == ["u1", "u2", "u3"]
    with pytest.raises(ValueError, match="min_per_user"):
        filter_min_interactions(frame, 0)
    mapped, user_ids, item_ids = reindex(kept)
    assert sorted(mapped["user_id"].unique().to_list()) == [0, 1, 2]
    assert sorted(mapped["item_id"].unique().to_list()) == list(range(len(item_ids)))
    assert mapped.schema["user_id"] == pl.Int64
    assert user_ids[mapped["user_id"].to_numpy()].tolist() == kept["user_id"].to_list()
    assert item_ids[mapped["item_id"].to_numpy()].tolist() == kept["item_id"].to_list()
    only_users, _, _ = reindex(kept, items=False)
    assert only_users["item_id"].equals(kept["item_id"])
