"""PLD noise: int(r * |train_u|) injected rows per user, never an item the user interacted with
(train, valid or test), no repeats, label 1.0 and noise=True, existing rows untouched with
noise=False, deterministic under a seed, and a clear error when a user has too few free items."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import offline.data.noise as noise_module
from offline.data.noise import inject_noise


def frames(n_users: int, n_items: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, all interactions) with 3..30 items per user, 80% of each user's items in train."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        items = rng.choice(n_items, rng.integers(3, 31), replace=False)
        rows += [(user, int(i), j < 0.8 * len(items)) for j, i in enumerate(items)]
    every = pl.DataFrame(rows, schema=["user_id", "item_id", "in_train"], orient="row")
    train = every.filter("in_train").drop("in_train").with_columns(label=pl.lit(1.0))
    return train, every.drop("in_train")


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_counts_are_exact_and_never_an_interacted_item(ratio):
    train, every = frames(200, 120, seed=1)
    out = inject_noise(train, every, 120, ratio, seed=7)
    assert out.columns == [*train.columns, "noise"]
    clean, noise = out.filter(~pl.col("noise")), out.filter(pl.col("noise"))
    assert clean.drop("noise").equals(train)
    expected = {u: int(ratio * n) for u, n in train.group_by("user_id").len().iter_rows()}
    got = dict(noise.group_by("user_id").len().iter_rows())
    assert {u: got.get(u, 0) for u in expected} == expected
    assert noise.join(every, on=["user_id", "item_id"]).height == 0
    assert noise.select("user_id", "item_id").is_unique().all()
    assert (noise["label"] == 1.0).all()
    assert noise["item_id"].min() >= 0 if noise.height else True
    assert (noise["item_id"] < 120).all()


def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise():
    train, every = frames(50, 200, seed=2)
    a = inject_noise(train, every, 200, 0.5, seed=3)
    assert a.equals(inject_noise(train, every, 200, 0.5, seed=3))
    assert not a.equals(inject_noise(train, every, 200, 0.5, seed=4))


def test_noise_items_are_uniform_over_the_free_items():
    train = pl.DataFrame({"user_id": [0] * 10, "item_id": list(range(10)), "label": [1.0] * 10})
    counts = np.zeros(40)
    for seed in range(300):
        noise = inject_noise(train, train, 40, 0.5, seed=seed).filter("noise")
        counts += np.bincount(noise["item_id"].to_numpy(), minlength=40)
    assert counts[:10].sum() == 0
    expected = 300 * 5 / 30
    assert np.abs(counts[10:] - expected).max() < 5 * np.sqrt(expected)


def test_users_needing_every_free_item_get_them_also_by_the_exact_draw(monkeypatch):
    train = pl.DataFrame({"user_id": [0] * 10 + [1] * 4, "item_id": [*range(10), 0, 1, 2, 3],
                          "label": [1.0] * 14})
    out = inject_noise(train, train, 15, 0.5, seed=0)
    assert sorted(out.filter(pl.col("noise") & (pl.col("user_id") == 0))["item_id"]) == [
        10, 11, 12, 13, 14]
    monkeypatch.setattr(noise_module, "_ROUNDS", 0)  # only the exact draw
    exact = inject_noise(train, train, 15, 0.5, seed=0).filter("noise")
    assert sorted(exact.filter(pl.col("user_id") == 0)["item_id"]) == [10, 11, 12, 13, 14]
    assert exact.filter(pl.col("user_id") == 1).height == 2
    assert exact.join(train, on=["user_id", "item_id"]).height == 0


def test_too_few_free_items_and_bad_arguments_are_refused():
    train = pl.DataFrame({"user_id": [0] * 10, "item_id": list(range(10)), "label": [1.0] * 10})
    with pytest.raises(ValueError, match="fewer never-interacted items"):
        inject_noise(train, train, 12, 0.5, seed=0)
    with pytest.raises(ValueError, match="ratio"):
        inject_noise(train, train, 100, -0.1)
    with pytest.raises(ValueError, match="item ids"):
        inject_noise(train, train, 5, 0.1)
