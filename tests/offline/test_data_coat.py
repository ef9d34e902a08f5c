"""Coat: the real release loads with its documented shape and counts; small generated files of the
same layout load the same way; malformed files are refused naming the file and the 1-based line;
the rating and implicit data sets hold what the protocol says and depend only on the seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from offline.data.coat import coat_implicit_dataset, coat_rating_dataset, load_coat


def write_matrix(path: Path, matrix: np.ndarray, fmt: str = "%g") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, matrix, fmt=fmt, delimiter=" ")


def make_coat(root: Path, n_users: int = 12, n_items: int = 20, per_user: tuple[int, int] = (8, 4),
              seed: int = 0) -> dict[str, np.ndarray]:
    """A small Coat in the release's layout: ``per_user`` MNAR and MAR ratings per user."""
    rng = np.random.default_rng(seed)
    matrices = {}
    for name, k in zip(("train", "test"), per_user, strict=True):
        ratings = np.zeros((n_users, n_items))
        for u in range(n_users):
            ratings[u, rng.choice(n_items, k, replace=False)] = rng.integers(1, 6, k)
        matrices[name] = ratings
        write_matrix(root / f"{name}.ascii", ratings, "%d")
    matrices["propensities"] = rng.uniform(0.01, 0.9, (n_users, n_items))
    write_matrix(root / "propensities.ascii", matrices["propensities"], "%.18e")
    matrices["user"] = np.eye(4)[rng.integers(0, 4, n_users)]
    matrices["item"] = np.eye(5)[rng.integers(0, 5, n_items)]
    write_matrix(root / "user_item_features" / "user_features.ascii", matrices["user"], "%d")
    write_matrix(root / "user_item_features" / "item_features.ascii", matrices["item"], "%d")
    return matrices


def test_the_real_release_has_its_documented_shape_and_counts(shared_data):
    coat = load_coat(shared_data / "coat")
    assert coat.propensities.shape == (290, 300)
    assert (coat.n_users, coat.n_items) == (290, 300)
    assert coat.user_features.shape == (290, 14) and coat.item_features.shape == (300, 33)
    assert coat.train.height == 6960 and coat.test.height == 4640
    assert (coat.train.group_by("user_id").len()["len"] == 24).all()
    assert (coat.test.group_by("user_id").len()["len"] == 16).all()
    assert coat.train.join(coat.test, on=["user_id", "item_id"]).height == 366
    for frame in (coat.train, coat.test):
        assert set(frame["label"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        assert frame["user_id"].min() == 0 and frame["item_id"].max() <= 299
    assert 0.0025 < coat.propensities.min() < 0.0026 and 0.69 < coat.propensities.max() < 0.6903
    assert abs(coat.propensities.mean() - 0.08) < 0.01
    assert np.array_equal(coat.user_features.sum(axis=1), np.full(290, 4.0))


def test_generated_files_of_any_shape_load_cell_for_cell(tmp_path):
    m = make_coat(tmp_path, n_users=7, n_items=11, per_user=(5, 3))
    coat = load_coat(tmp_path)
    assert coat.propensities.shape == (7, 11)
    np.testing.assert_allclose(coat.propensities, m["propensities"], rtol=0, atol=1e-15)
    for name, frame in (("train", coat.train), ("test", coat.test)):
        dense = np.zeros((7, 11))
        dense[frame["user_id"].to_numpy(), frame["item_id"].to_numpy()] = frame["label"].to_numpy()
        assert np.array_equal(dense, m[name])
        p = m["propensities"][frame["user_id"].to_numpy(), frame["item_id"].to_numpy()]
        assert np.array_equal(frame["propensity"].to_numpy(), p)
    assert np.array_equal(coat.user_features, m["user"])


@pytest.mark.parametrize(
    ("file", "line", "edit", "message"),
    [
        ("train.ascii", 3, lambda rows: rows[2].rsplit(" ", 1)[0], "columns"),
        ("train.ascii", 2, lambda rows: rows[1].replace("0", "x", 1), "finite number"),
        ("test.ascii", 4, lambda rows: "7" + rows[3][1:], "rating in 0..5"),
        ("test.ascii", 5, lambda rows: "2.5" + rows[4][1:], "rating in 0..5"),
        ("propensities.ascii", 6, lambda rows: "0.0" + rows[5][rows[5].index(" "):], "(0, 1]"),
        ("propensities.ascii", 2, lambda rows: "1.5" + rows[1][rows[1].index(" "):], "(0, 1]"),
        ("propensities.ascii", 1, lambda rows: "nan" + rows[0][rows[0].index(" "):], "finite"),
    ],
)
def test_a_malformed_cell_or_row_names_the_file_and_line(tmp_path, file, line, edit, message):
    make_coat(tmp_path)
    path = tmp_path / file
    rows = path.read_text().splitlines()
    rows[line - 1] = edit(rows)
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="line") as error:
        load_coat(tmp_path)
    text = str(error.value)
    assert f"{path}, line {line}" in text and message in text


def test_row_counts_that_disagree_between_files_are_refused(tmp_path):
    make_coat(tmp_path, n_users=6)
    path = tmp_path / "propensities.ascii"
    path.write_text("\n".join(path.read_text().splitlines()[:5]) + "\n")
    with pytest.raises(ValueError, match=r"propensities.ascii, line 6: expected 6 rows"):
        load_coat(tmp_path)
    make_coat(tmp_path, n_users=6)
    users = tmp_path / "user_item_features" / "user_features.ascii"
    users.write_text(users.read_text() + "1 0 0 0\n")
    with pytest.raises(ValueError, match=r"user_features.ascii, line 7: expected 6 rows"):
        load_coat(tmp_path)
    make_coat(tmp_path, n_users=6)
    (tmp_path / "test.ascii").write_text("")
    with pytest.raises(ValueError, match=r"test\.ascii: empty file"):
        load_coat(tmp_path)


def test_rating_dataset_holds_out_valid_and_the_mar_sample_per_user(tmp_path):
    make_coat(tmp_path, n_users=10, per_user=(10, 8))
    coat = load_coat(tmp_path)
    data = coat_rating_dataset(tmp_path, seed=4, valid_fraction=0.2, mar_sample_fraction=0.25,
                               mar_sample_scope="per_user")
    assert data.task == "rating" and data.propensity_matrix.shape == (10, 20)
    assert (data.valid.group_by("user_id").len()["len"] == 2).all()
    assert (data.mar_sample.group_by("user_id").len()["len"] == 2).all()
    pairs = lambda f: set(f.select("user_id", "item_id").iter_rows())  # noqa: E731
    assert pairs(data.train) | pairs(data.valid) == pairs(coat.train)
    assert not pairs(data.train) & pairs(data.valid)
    assert pairs(data.test) | pairs(data.mar_sample) == pairs(coat.test)
    assert not pairs(data.test) & pairs(data.mar_sample)
    assert "propensity" in data.train.columns and "propensity" in data.test.columns
    assert dict(data.lineage) | {"seed": "4"} == dict(data.lineage)
    assert data.lineage["data_source"] == "coat"
    again = coat_rating_dataset(tmp_path, seed=4, valid_fraction=0.2, mar_sample_fraction=0.25,
                                mar_sample_scope="per_user")
    assert again.fingerprint() == data.fingerprint()
    assert coat_rating_dataset(tmp_path, seed=5, valid_fraction=0.2).fingerprint() != (
        data.fingerprint()
    )
    assert coat_rating_dataset(tmp_path).mar_sample is None
    with pytest.raises(ValueError, match="valid_fraction"):
        coat_rating_dataset(tmp_path, valid_fraction=1.0)


def test_a_small_mar_fraction_draws_globally_by_default(tmp_path):
    """The defect: 0.05 of 10 MAR ratings per user rounded per user to an empty sample, and the
    error blamed the data set. Globally it is round-half-up(0.05 × 100) = 5 rows."""
    make_coat(tmp_path, n_users=10, per_user=(6, 10))
    coat = load_coat(tmp_path)
    data = coat_rating_dataset(tmp_path, seed=2, mar_sample_fraction=0.05)
    assert data.mar_sample.height == 5 and data.test.height == 95
    pairs = lambda f: set(f.select("user_id", "item_id").iter_rows())  # noqa: E731
    assert pairs(data.test) | pairs(data.mar_sample) == pairs(coat.test)
    assert coat_rating_dataset(tmp_path, mar_sample_fraction=0.001).mar_sample.height == 1
    assert data.lineage["mar_sample_scope"] == "global"
    other = coat_rating_dataset(tmp_path, seed=3, mar_sample_fraction=0.05)
    assert pairs(other.mar_sample) != pairs(data.mar_sample)  # drawn with the seed


def test_per_user_scope_rounds_half_up_and_an_empty_sample_names_the_rounding(tmp_path):
    make_coat(tmp_path, n_users=10, per_user=(6, 10))
    data = coat_rating_dataset(tmp_path, mar_sample_fraction=0.05, mar_sample_scope="per_user")
    assert (data.mar_sample.group_by("user_id").len()["len"] == 1).all()  # 0.5 rounds up to 1
    with pytest.raises(ValueError, match="mar_sample_fraction") as error:
        coat_rating_dataset(tmp_path, mar_sample_fraction=0.04, mar_sample_scope="per_user")
    text = str(error.value)
    assert "round-half-up(0.04 × n) rows of each user" in text and "10 missing-at-random" in text
    assert "mar_sample_scope = 'global'" in text and "coat" not in text
    with pytest.raises(ValueError, match="mar_sample_scope: expected one of"):
        coat_rating_dataset(tmp_path, mar_sample_fraction=0.1, mar_sample_scope="user")


def test_real_rating_dataset_counts(shared_data):
    data = coat_rating_dataset(shared_data / "coat", mar_sample_fraction=0.25)
    assert (data.train.height, data.valid.height) == (290 * 22, 290 * 2)
    assert (data.test.height, data.mar_sample.height) == (290 * 12, 290 * 4)
    per_user = coat_rating_dataset(shared_data / "coat", mar_sample_fraction=0.25,
                                   mar_sample_scope="per_user")
    assert (per_user.mar_sample.group_by("user_id").len()["len"] == 4).all()


def test_implicit_dataset_follows_the_pld_protocol(tmp_path):
    m = make_coat(tmp_path, n_users=30, n_items=60, per_user=(20, 10), seed=2)
    data = coat_implicit_dataset(tmp_path, seed=1, noise_ratio=0.4, min_interactions=8)
    rated = np.maximum(m["train"], m["test"])  # a cell rated in both counts if either is >= 4
    positives = (rated >= 4).sum(axis=1)
    kept = np.flatnonzero(positives >= 8)
    assert data.n_users == kept.size and data.n_items == 60 and data.task == "implicit"
    assert np.array_equal(data.user_features, m["user"][kept])
    real = pl.concat([data.train.filter(~pl.col("noise")), data.valid, data.test])
    assert real.height == positives[kept].sum()
    original = kept[real["user_id"].to_numpy()]
    assert (rated[original, real["item_id"].to_numpy()] >= 4).all()
    noise = data.train.filter("noise")
    n_train = data.train.filter(~pl.col("noise")).group_by("user_id").len()
    expected = {u: int(0.4 * n) for u, n in n_train.iter_rows()}
    assert dict(noise.group_by("user_id").len().iter_rows()) == {
        u: k for u, k in expected.items() if k}
    assert noise.join(real, on=["user_id", "item_id"]).height == 0
    assert not data.valid["noise"].any() and not data.test["noise"].any()
    same = coat_implicit_dataset(tmp_path, seed=1, noise_ratio=0.4, min_interactions=8)
    assert same.train.equals(data.train)


def test_real_implicit_dataset_keeps_most_users(shared_data):
    data = coat_implicit_dataset(shared_data / "coat", noise_ratio=0.2)
    assert data.n_users == 222  # users with >= 5 ratings >= 4 (of 290)
    total = data.train.filter(~pl.col("noise")).height + data.valid.height + data.test.height
    assert total == 2498
    assert coat_implicit_dataset(shared_data / "coat", min_interactions=10).n_users == 110
