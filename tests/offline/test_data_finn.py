"""FINN.no slates on a small data.npz in the release's layout (keys, shapes, 0 = padding,
1 = no click, 2 = unknown item): impressions are the real items shown, clicks the real items
clicked, ids contiguous and mapped back, the split is by interaction index, and a file with
missing keys or inconsistent shapes is refused with the array named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from offline.data.finn import FIRST_ITEM, finn_dataset, load_finn_slates


def make_npz(path: Path, users: int = 6, steps: int = 5, width: int = 7, seed: int = 0,
             **override: np.ndarray) -> dict[str, np.ndarray]:
    """Slates of 2..width entries (the no-click item first), a click on one entry or nothing."""
    rng = np.random.default_rng(seed)
    slate = np.zeros((users, steps, width), dtype=np.int32)
    click = np.zeros((users, steps), dtype=np.int32)
    click_idx = np.zeros((users, steps), dtype=np.int32)
    lengths = np.zeros((users, steps), dtype=np.int32)
    kind = np.zeros((users, steps), dtype=np.int32)
    for u in range(users):
        active = rng.integers(2, steps + 1)  # users have different numbers of interactions
        for t in range(active):
            n = rng.integers(2, width + 1)
            items = rng.choice(np.arange(FIRST_ITEM - 1, 40), n - 1, replace=False)  # 2 = <UNK>
            slate[u, t, :n] = [1, *items]
            lengths[u, t] = n
            click_idx[u, t] = rng.integers(0, n)
            click[u, t] = slate[u, t, click_idx[u, t]]
            kind[u, t] = rng.integers(1, 3)
    arrays = {"userId": rng.permutation(10**6)[:users].astype(np.int32), "click": click,
              "click_idx": click_idx, "slate_lengths": lengths, "slate": slate,
              "interaction_type": kind}
    arrays |= override
    np.savez_compressed(path, **arrays)
    return arrays


def test_impressions_and_clicks_hold_the_real_items_with_contiguous_ids(tmp_path):
    a = make_npz(tmp_path / "data.npz")
    slates = load_finn_slates(tmp_path / "data.npz")
    shown = a["slate"][a["slate"] >= FIRST_ITEM]
    assert slates.impressions.height == shown.size
    imp = slates.impressions
    raw = slates.item_ids[imp["item_id"].to_numpy()]
    u, t, p = (imp[c].to_numpy() for c in ("user_id", "interaction", "position"))
    assert np.array_equal(a["slate"][u, t, p], raw)
    assert np.array_equal(imp["clicked"].to_numpy(), a["click"][u, t] == raw)
    assert np.array_equal(imp["interaction_type"].to_numpy(), a["interaction_type"][u, t])
    real = a["click"] >= FIRST_ITEM
    clicks = slates.clicks
    assert clicks.height == real.sum() and (clicks["label"] == 1.0).all()
    cu, ct = clicks["user_id"].to_numpy(), clicks["interaction"].to_numpy()
    assert real[cu, ct].all()
    assert np.array_equal(slates.item_ids[clicks["item_id"].to_numpy()], a["click"][cu, ct])
    assert imp["clicked"].sum() == clicks.height  # every real click is on a shown item
    assert slates.item_ids.min() >= FIRST_ITEM and np.all(np.diff(slates.item_ids) > 0)
    assert slates.n_users == 6 and np.array_equal(slates.raw_user_ids, a["userId"])
    assert load_finn_slates(tmp_path / "data.npz", max_users=2).clicks["user_id"].max() <= 1


def test_the_data_set_is_split_by_interaction_index_per_user(tmp_path):
    make_npz(tmp_path / "data.npz", users=20, steps=12, seed=3)
    slates = load_finn_slates(tmp_path / "data.npz")
    data = finn_dataset(tmp_path / "data.npz")
    assert data.task == "implicit" and data.n_items == slates.n_items
    first = slates.clicks.sort("interaction").unique(["user_id", "item_id"], keep="first")
    step = {(u, i): t for u, i, t in first.select("user_id", "item_id", "interaction").rows()}
    every = pl.concat([data.train, data.valid, data.test])
    assert every.height == first.height and every.select("user_id", "item_id").is_unique().all()
    for user in every["user_id"].unique().to_list():
        steps = [
            [step[(user, i)] for i in part.filter(pl.col("user_id") == user)["item_id"]]
            for part in (data.train, data.test)
        ]
        if steps[1]:
            assert max(steps[0]) <= min(steps[1])
    assert data.lineage["data_source"] == "finn"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"slate": np.zeros((6, 5), dtype=np.int32)}, "slate: expected shape"),
        ({"click": np.zeros((6, 4), dtype=np.int32)}, r"click: expected shape \(6, 5\)"),
        ({"userId": np.zeros(5, dtype=np.int32)}, r"userId: expected shape \(6,\)"),
        ({"click_idx": np.full((6, 5), 7, dtype=np.int32)}, "click_idx: expected slate positions"),
        ({"slate": np.zeros((6, 5, 7), dtype=np.float32)}, "slate: expected integers"),
    ],
)
def test_inconsistent_arrays_are_refused(tmp_path, override, message):
    make_npz(tmp_path / "data.npz", **override)
    with pytest.raises(ValueError, match=message):
        load_finn_slates(tmp_path / "data.npz")


def test_missing_keys_are_named(tmp_path):
    np.savez(tmp_path / "data.npz", userId=np.zeros(3), click=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"expected the arrays \['slate', 'click_idx'"):
        load_finn_slates(tmp_path / "data.npz")
    with pytest.raises(FileNotFoundError):
        load_finn_slates(tmp_path / "nothing.npz")
