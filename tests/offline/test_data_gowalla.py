"""Gowalla under the PLD protocol: small generated files in the release's layout are pooled per
user, filtered (>= 10 interactions), re-indexed, split 70/10/20 per user with noise in train only;
malformed files are refused naming the file; the ``gowalla`` source reaches the loader; the real
release (when present) has its documented counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from offline.data.gowalla import GOWALLA_FILES, gowalla_dataset, read_gowalla
from offline.sources import load_source
from offline.spec import Component


def make_gowalla(root: Path, n_users: int = 30, n_items: int = 60, seed: int = 0) -> pl.DataFrame:
    """Files in the release's layout (``user item item …`` per line, each user's items spread
    over the three files, one pair repeated across files, one user with 6 items) and the distinct
    pairs they hold."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {name: [] for name in GOWALLA_FILES}
    pairs = []
    for user in range(n_users):
        degree = 6 if user == 3 else int(rng.integers(10, 30))
        items = rng.choice(n_items, degree, replace=False)
        pairs += [(user, int(i)) for i in items]
        parts = np.array_split(items, [int(0.6 * degree), int(0.8 * degree)])
        parts[2] = np.append(parts[2], items[0])  # a pair in train.txt and test.txt: kept once
        for name, part in zip(GOWALLA_FILES, parts, strict=True):
            lines[name].append(" ".join(str(x) for x in [user, *part.tolist()]))
    lines["valid.txt"].append("99")  # a user line with no items
    for name, text in lines.items():
        (root / name).write_text("\n".join(text) + "\n")
    return pl.DataFrame(pairs, schema=["user_id", "item_id"], orient="row").unique()


def test_files_are_pooled_into_distinct_pairs(tmp_path):
    pairs = make_gowalla(tmp_path)
    read = read_gowalla(tmp_path)
    assert read.schema == {"user_id": pl.Int64, "item_id": pl.Int64}
    assert read.height == pairs.height
    assert read.sort("user_id", "item_id").equals(pairs.sort("user_id", "item_id"))


def test_protocol_filter_split_and_noise(tmp_path):
    pairs = make_gowalla(tmp_path)
    data = gowalla_dataset(tmp_path, seed=1, noise_ratio=0.4)
    kept = pairs.filter(pl.len().over("user_id") >= 10)
    assert data.task == "implicit"
    assert data.n_users == kept["user_id"].n_unique() == 29  # user 3 (6 items) dropped
    assert data.n_items == kept["item_id"].n_unique()
    assert "3" not in data.user_ids
    clean = data.train.filter(~pl.col("noise"))
    held = pl.concat([clean, data.valid, data.test]).select("user_id", "item_id")
    assert held.height == kept.height and held.unique().height == held.height
    # Back to raw ids: the clean rows are exactly the kept pairs.
    raw = held.select(
        pl.col("user_id").map_elements(lambda u: int(data.user_ids[u]), return_dtype=pl.Int64),
        pl.col("item_id").map_elements(lambda i: data.item_ids[i], return_dtype=pl.Int64),
    )
    assert raw.sort("user_id", "item_id").equals(kept.sort("user_id", "item_id"))
    degree = held.group_by("user_id").len().sort("user_id")
    train_n = clean.group_by("user_id").len().sort("user_id")
    expected = np.floor(degree["len"].to_numpy() * 0.7 + 0.5)
    assert np.array_equal(train_n["len"].to_numpy(), expected)
    noise = data.train.filter(pl.col("noise")).group_by("user_id").len().sort("user_id")
    assert np.array_equal(noise["len"].to_numpy(), np.floor(expected * 0.4).astype(np.int64))
    assert data.train.filter(pl.col("noise")).join(held, on=["user_id", "item_id"]).height == 0
    assert not data.valid["noise"].any() and not data.test["noise"].any()
    again = gowalla_dataset(tmp_path, seed=1, noise_ratio=0.4)
    assert again.train.equals(data.train) and again.test.equals(data.test)
    assert not gowalla_dataset(tmp_path, seed=2, noise_ratio=0.4).train.equals(data.train)


def test_max_users_keeps_a_seeded_subset(tmp_path):
    make_gowalla(tmp_path)
    small = gowalla_dataset(tmp_path, seed=0, max_users=5)
    assert small.n_users == 5
    assert set(small.train["user_id"].unique()) == set(range(5))
    assert small.user_ids == gowalla_dataset(tmp_path, seed=0, max_users=5).user_ids
    with pytest.raises(ValueError, match="max_users"):
        gowalla_dataset(tmp_path, max_users=0)


def test_malformed_and_missing_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.txt"):
        read_gowalla(tmp_path)
    make_gowalla(tmp_path)
    (tmp_path / "valid.txt").write_text("0 1 2\n1 x 3\n")
    with pytest.raises(ValueError, match=r"valid\.txt.*integer"):
        read_gowalla(tmp_path)


def test_the_gowalla_source_loads_from_its_path(tmp_path):
    make_gowalla(tmp_path / "gowalla")
    params = {"path": str(tmp_path / "gowalla"), "noise_ratio": 0.2}
    prepared = load_source(Component("gowalla", params), seed=0, data_dir=tmp_path, lake_uri="")
    assert prepared.dataset.name == "gowalla"
    assert prepared.dataset.lineage["noise_ratio"] == "0.2"
    assert prepared.dataset.train["noise"].any()


def test_the_real_release_has_its_documented_counts(shared_data):
    root = shared_data / "gowalla"
    if not (root / "train.txt").is_file():
        pytest.skip(f"Gowalla not found at {root}")
    pairs = read_gowalla(root)
    assert pairs.height == 1_027_370
    assert pairs["user_id"].n_unique() == 29_858
    assert pairs["item_id"].n_unique() == 40_981
