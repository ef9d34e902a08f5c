"""The ``table`` source: any Parquet or CSV interaction table with a column mapping trains from
``recsys train --config``; ids of any type are re-indexed and kept; a missing-at-random flag makes
the test set and the Naive Bayes sample; every bad input is one SpecError naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from offline.data.table import table_dataset
from offline.prepared import PreparedData
from offline.sources import attach_propensities, load_source, prepare
from offline.spec import Component, SpecError, TrainSpec
from recsys.cli import main

COLUMNS = {"user": "userId", "item": "movieId", "label": "rating", "timestamp": "ts",
           "propensity": "p", "mar": "is_random"}


def ratings_table(n_users: int = 24, n_items: int = 30, per_user: int = 12, n_mar: int = 4,
                  seed: int = 0) -> pl.DataFrame:
    """Ratings 1..5 under renamed columns: string user ids, integer item ids from 100, a time,
    a logged propensity, and the last ``n_mar`` rows of each user flagged missing-at-random."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    return pl.DataFrame({
        "userId": [f"u{u:03d}" for u in users],
        "movieId": 100 + items,
        "rating": rng.integers(1, 6, users.size).astype(np.float64),
        "ts": rng.permutation(users.size).astype(np.int64) * 1000,
        "p": rng.uniform(0.05, 1.0, users.size),
        "is_random": np.tile(np.arange(per_user) >= per_user - n_mar, n_users),
    })


def write(frame: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def without(mapping: dict[str, str], *roles: str) -> dict[str, str]:
    return {k: v for k, v in mapping.items() if k not in roles}


# -- loading --------------------------------------------------------------------------------------


def test_parquet_and_csv_with_renamed_columns_load_the_same(tmp_path) -> None:
    frame = ratings_table()
    a = table_dataset(write(frame, tmp_path / "r.parquet"), columns=COLUMNS, seed=3)
    b = table_dataset(write(frame, tmp_path / "r.csv"), columns=COLUMNS, seed=3)
    assert a.fingerprint() == b.fingerprint() and a.split_fingerprint() == b.split_fingerprint()
    assert (a.task, a.n_users, a.n_items) == ("rating", 24, len(set(frame["movieId"])))
    assert a.user_ids == tuple(sorted(set(frame["userId"])))
    assert a.item_ids == tuple(sorted(set(frame["movieId"])))
    # the MAR rows are the test set; the rest is train + a per-user 10% valid
    assert a.test.height == 24 * 4 and a.train.height + a.valid.height == 24 * 8
    assert a.mar_sample is None
    for part in (a.train, a.valid, a.test):
        assert set(part.columns) == {"user_id", "item_id", "label", "propensity", "event_time_ms"}
    raw = frame.with_columns(pl.Series("user_id", np.searchsorted(a.user_ids, frame["userId"])),
                             pl.Series("item_id", np.searchsorted(a.item_ids, frame["movieId"])))
    back = pl.concat([a.train, a.valid]).join(raw, on=["user_id", "item_id"])
    assert back.height == 24 * 8 and (back["label"] == back["rating"]).all()
    assert not back["is_random"].any() and (back["propensity"] == back["p"]).all()


def test_the_task_is_inferred_and_implicit_tables_keep_positives_once(tmp_path) -> None:
    frame = ratings_table().select("userId", "movieId")
    positives = write(frame, tmp_path / "clicks.parquet")
    data = table_dataset(positives, columns={"user": "userId", "item": "movieId"},
                         task="implicit", valid_fraction=0.1, test_fraction=0.2)
    assert data.task == "implicit"
    assert data.train.height + data.valid.height + data.test.height == frame.height
    clicks = ratings_table().with_columns((pl.col("rating") >= 4).cast(pl.Int64).alias("click"))
    path = write(pl.concat([clicks, clicks.head(5)]), tmp_path / "shown.csv")  # 5 repeats
    mapping = {"user": "userId", "item": "movieId", "label": "click"}
    implicit = table_dataset(path, columns=mapping, task="implicit")
    n_clicked = clicks.filter(pl.col("click") == 1).height
    parts = (implicit.train, implicit.valid, implicit.test)
    assert sum(p.height for p in parts) == n_clicked
    assert all((p["label"] == 1.0).all() for p in parts)
    assert table_dataset(path, columns=mapping).task == "rating"  # 0/1 outcomes: inferred
    rated = table_dataset(write(ratings_table(), tmp_path / "r.parquet"),
                          columns={"user": "userId", "item": "movieId", "label": "rating"},
                          task="implicit", positive_threshold=4)
    assert sum(p.height for p in (rated.train, rated.valid, rated.test)) == (
        ratings_table().filter(pl.col("rating") >= 4).height)


def test_time_split_separate_files_and_min_interactions(tmp_path) -> None:
    frame = ratings_table()
    path = write(frame, tmp_path / "r.parquet")
    timed = table_dataset(path, columns=without(COLUMNS, "mar"), split="time",
                          valid_fraction=0.1, test_fraction=0.2)
    assert timed.train["event_time_ms"].max() < timed.valid["event_time_ms"].min()
    assert timed.valid["event_time_ms"].max() < timed.test["event_time_ms"].min()
    assert timed.test.height == round(0.2 * frame.height)
    # users with fewer training rows than min_interactions are dropped everywhere
    thin = pl.concat([frame, frame.head(3).with_columns(pl.lit("zz").alias("userId"))])
    kept = table_dataset(write(thin, tmp_path / "thin.parquet"), columns=COLUMNS,
                         min_interactions=5)
    assert "zz" not in kept.user_ids and kept.n_users == 24
    assert "zz" in table_dataset(tmp_path / "thin.parquet", columns=COLUMNS).user_ids
    # separate files: the test file is the test set, valid comes from the train file
    train, test = frame.filter(~pl.col("is_random")), frame.filter(pl.col("is_random"))
    split = table_dataset(train_path=write(train, tmp_path / "train.csv"),
                          test_path=write(test, tmp_path / "test.parquet"),
                          columns=without(COLUMNS, "mar"), valid_fraction=0.25)
    assert split.test.height == test.height and split.valid.height == 24 * 2


def test_features_are_read_only_when_given_and_aligned_to_the_ids(tmp_path) -> None:
    frame = ratings_table()
    path = write(frame, tmp_path / "r.parquet")
    users = sorted(set(frame["userId"]))
    user_table = pl.DataFrame({"userId": users[::-1], "age": np.arange(24.0)[::-1],
                               "f": np.ones(24)})
    items = sorted(set(frame["movieId"]))
    item_table = pl.DataFrame({"movieId": items, "price": np.arange(len(items), dtype=float)})
    data = table_dataset(path, columns=COLUMNS,
                         user_features_path=write(user_table, tmp_path / "users.csv"),
                         item_features_path=write(item_table, tmp_path / "items.parquet"))
    np.testing.assert_array_equal(data.user_features[:, 0], np.arange(24.0))
    np.testing.assert_array_equal(data.item_features[:, 0], np.arange(len(items), dtype=float))
    assert table_dataset(path, columns=COLUMNS).user_features is None
    write(user_table.head(20), tmp_path / "few.csv")
    with pytest.raises(SpecError, match=r"^train.data.user_features_path: expected a row for "
                                        r"every id .* 4 ids without one"):
        table_dataset(path, columns=COLUMNS, user_features_path=tmp_path / "few.csv")


def test_a_global_mar_sample_feeds_naive_bayes_which_sets_the_valid_propensities(
        tmp_path) -> None:
    path = write(ratings_table(), tmp_path / "r.parquet")
    data = table_dataset(path, columns=COLUMNS, mar_sample_fraction=0.05)
    assert data.mar_sample.height == 5 and data.test.height == 24 * 4 - 5  # round(0.05 · 96)
    prepared = attach_propensities(PreparedData(data), Component("naive_bayes"), clip=0.0)
    from offline.propensity import NaiveBayesPropensity

    expected = NaiveBayesPropensity().fit(data).predict_frame(data.valid)
    np.testing.assert_array_equal(prepared.dataset.valid["propensity"].to_numpy(), expected)
    assert not np.array_equal(expected, data.valid["propensity"].to_numpy())  # not the logged
    with pytest.raises(SpecError, match=r"round-half-up\(0.05 × n\) rows of each user"):
        table_dataset(path, columns=COLUMNS, mar_sample_fraction=0.05,
                      mar_sample_scope="per_user")
    per_user = table_dataset(path, columns=COLUMNS, mar_sample_fraction=0.25,
                             mar_sample_scope="per_user")
    assert (per_user.mar_sample.group_by("user_id").len()["len"] == 1).all()


# -- mistakes -------------------------------------------------------------------------------------


def _broken(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    if what == "null":
        return frame.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(None)
                                  .otherwise(pl.col("rating")).alias("rating"))
    if what == "propensity":
        return frame.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(1.5)
                                  .otherwise(pl.col("p")).alias("p"))
    return frame


@pytest.mark.parametrize(
    ("params", "break_", "pattern"),
    [
        ({"path": "nowhere.parquet"}, None,
         r"^train.data.path: expected an existing Parquet or CSV file, got '.*nowhere.parquet' "
         r"\(no such file\)"),
        ({"columns": {**COLUMNS, "user": "user"}}, None,
         r"^train.data.columns.user: expected a column of path .* got 'user'; map it: columns = "),
        ({"columns": {**COLUMNS, "propensity": "prop"}}, None,
         r"^train.data.columns.propensity: expected a column .* got 'prop'"),
        ({"columns": without(COLUMNS, "label")}, None,
         r"^train.data.columns.label: .*got 'label'; .*or set task = \"implicit\""),
        ({"columns": {**COLUMNS, "usr": "x"}}, None,
         r"^train.data.columns: expected roles among .* did you mean user\?"),
        ({"label_range": [1, 4]}, None,
         r"^train.data.columns.label: expected labels in \[1, 4\] \(label_range\), got \d+ "
         r"outside, e.g. 5.0"),
        ({"task": "implicit"}, None,
         r"^train.data.columns.label: expected clicks 0/1 for task = \"implicit\""),
        ({}, "null", r"^train.data.columns.label: expected a column without nulls .* 'rating' "
                     r"with 1 nulls \(first at row 7\); drop or fill those rows"),
        ({}, "propensity", r"^train.data.columns.propensity: expected probabilities in \(0, 1\], "
                           r"got 1 outside, e.g. 1.5"),
        ({"columns": without(COLUMNS, "timestamp", "mar"), "split": "time"}, None,
         r"^train.data.split: expected a timestamp column for a time split"),
        ({"columns": without(COLUMNS, "mar"), "mar_sample_fraction": 0.1}, None,
         r"^train.data.mar_sample_fraction: expected 0 without a missing-at-random flag.*"
         r"map columns.mar"),
        ({"split": "by_time"}, None, r"^train.data.split: expected one of"),
        ({"format": "xlsx"}, None, r"^train.data.format: expected"),
        ({"test_path": "t.csv"}, None, r"^train.data.path: expected one file"),
    ],
)
def test_a_bad_input_is_a_spec_error_naming_the_key(tmp_path, params, break_, pattern) -> None:
    path = write(_broken(ratings_table(), break_), tmp_path / "r.parquet")
    params = {"path": path, "columns": COLUMNS, **params}
    if not Path(params["path"]).is_absolute():
        params["path"] = tmp_path / params["path"]
    with pytest.raises(SpecError, match=pattern):
        load_source(Component("table", params), seed=0, data_dir=tmp_path, lake_uri="")


def _spec(path: Path, estimator: str, model: str = "mf", **data) -> TrainSpec:
    return TrainSpec.from_table({
        "data": {"source": "table", "path": str(path), **data},
        "propensity": {"estimator": estimator},
        "model": {"name": model}, "objective": {"name": "naive"},
    })


@pytest.mark.parametrize(
    ("columns", "estimator", "model", "pattern"),
    [
        (without(COLUMNS, "mar"), "naive_bayes", "mf",
         r"^train.propensity.estimator = 'naive_bayes' on data set 'table': .*columns.mar"),
        (without(COLUMNS, "propensity"), "logged", "mf",
         r"^train.propensity.estimator = 'logged' .*columns.propensity"),
        (COLUMNS, "shipped", "mf", r"ships no propensity matrix \(choose 'logged'"),
        (COLUMNS, "logistic", "mf", r"user_features_path and item_features_path"),
        (COLUMNS, "none", "two_tower",
         r"^train.model.name = 'two_tower': expected a data set with user_features and "
         r"item_features.*set \[train.data\] user_features_path and item_features_path"),
    ],
)
def test_an_estimator_or_model_needing_what_the_table_lacks_is_named(
        tmp_path, columns, estimator, model, pattern) -> None:
    path = write(ratings_table(), tmp_path / "r.parquet")
    spec = _spec(path, estimator, model, columns=columns)
    with pytest.raises(SpecError, match=pattern):
        prepare(spec, 0, tmp_path, "")


def test_an_unknown_key_names_the_closest() -> None:
    with pytest.raises(SpecError, match=r"^train.data: expected keys of source 'table' among .*"
                                        r"got unknown keys \['valid_fractio'\]; did you mean "
                                        r"valid_fraction\?"):
        load_source(Component("table", {"path": "x", "valid_fractio": 0.1}), 0, Path("."), "")


# -- end to end -----------------------------------------------------------------------------------

CONFIG = """
[mlflow]
experiment = "byo-table"

[train]
name = "byo-{suffix}"
seeds = [0]

[train.data]
source = "table"
path = "{path}"
mar_sample_fraction = 0.05
valid_fraction = 0.2

[train.data.columns]
user = "userId"
item = "movieId"
label = "rating"
timestamp = "ts"
propensity = "p"
mar = "is_random"

[train.propensity]
estimator = "naive_bayes"

[train.model]
name = "mf"
dim = 4

[train.objective]
name = "ips"

[train.optimizer]
lr = 0.05
epochs = 2
batch_size = 512
monitor = "valid_snips_mse"
"""


@pytest.mark.integration
def test_recsys_train_runs_on_a_generated_parquet_and_csv_table(tmp_path, capsys) -> None:
    """The real CLI and a real mlflow store (in process, no Ray): the Parquet table trains and
    registers a version whose id maps are the table's raw ids, with Naive Bayes propensities;
    the same table as CSV trains into the same store (models not logged, to keep it short) on
    data with the same hash."""
    import mlflow

    data_dir = tmp_path / "data"
    for suffix in ("parquet", "csv"):
        path = write(ratings_table(), tmp_path / f"ratings.{suffix}")
        config = tmp_path / f"{suffix}.toml"
        config.write_text(CONFIG.format(suffix=suffix, path=path))
        code = main(["--data-dir", str(data_dir), "train", "--config", str(config), "--quiet",
                     "--backend", "local", *(["--no-models"] if suffix == "csv" else [])])
        out = capsys.readouterr().out
        assert code == 0, out
    mlflow.set_tracking_uri(f"sqlite:///{(data_dir / 'mlflow.db').resolve()}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("byo-table").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == ["byo-csv-seed0", "byo-parquet-seed0"], sorted(by_name)
    for run in runs:
        assert run.data.params["data.source"] == "table"
        assert run.data.params["data.columns.user"] == "userId"
        assert run.data.params["propensity.estimator"] == "naive_bayes"
        assert "valid_snips_mse" in run.data.metrics and "final_test_mse" in run.data.metrics
    hashes = {run.data.tags["recsys.dataset_hash"] for run in runs}
    assert len(hashes) == 1  # the same data, whichever file format
    (version,) = client.search_model_versions("name='byo-parquet'")
    from offline.registry import load_id_maps

    ids = load_id_maps(f"models:/byo-parquet/{version.version}")
    frame = ratings_table()
    assert ids.user_ids.tolist() == sorted(set(frame["userId"]))
    assert ids.item_ids.tolist() == sorted(set(frame["movieId"]))
    assert not client.search_model_versions("name='byo-csv'")


def test_the_shipped_example_config_prepares_a_movielens_style_file(tmp_path) -> None:
    """offline/configs/table_example.toml with its documented `path` set: every key is valid
    and the data, propensities and split come out as it says."""
    from offline.reproduce import shipped_spec

    frame = ratings_table(per_user=14).rename({"ts": "timestamp"}).drop("p", "is_random")
    path = write(frame.with_columns(pl.col("rating") / 2 + 0.5), tmp_path / "ratings.csv")
    spec = shipped_spec("table_example").with_overrides({"data.path": str(path)})
    prepared = prepare(spec, 0, tmp_path, "")
    data = prepared.dataset
    assert data.task == "rating" and data.n_users == 24
    assert data.valid.height == 24 and data.test.height == 24 * 3  # 10% and 20% of 14
    assert prepared.train_propensity.shape == (data.train.height,)
    assert "propensity" in data.valid.columns


@pytest.mark.usefixtures("services_never_started")
def test_a_bad_table_is_one_line_from_recsys_train_before_anything_starts(tmp_path, capsys):
    config = tmp_path / "table.toml"
    config.write_text(CONFIG.format(suffix="x", path=tmp_path / "missing.csv"))
    assert main(["--data-dir", str(tmp_path / "data"), "train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsys train: train.data.path: expected an existing Parquet or CSV "
                          f"file, got '{tmp_path / 'missing.csv'}' (no such file)"), err
    assert err.count("\n") == 1
    write(ratings_table().drop("is_random"), tmp_path / "missing.csv")
    assert main(["--data-dir", str(tmp_path / "data"), "train", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith(
        "recsys train: train.data.columns.mar: expected a column of path ")
