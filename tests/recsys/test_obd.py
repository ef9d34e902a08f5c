"""recsys.obd reads the Open Bandit Dataset: the real sample loads typed (10,000 rows, 80 items,
3 positions per policy), generated files round-trip, and bad values are refused naming the file,
line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.obd import load_item_context, load_obd

AFFINITIES = [f"user-item_affinity_{i}" for i in range(4)]


def write_obd(root: Path, policy: str = "random", n: int = 60, n_items: int = 4, seed: int = 0):
    """A small OBD sample in the shipped layout (unnamed index column included)."""
    rng = np.random.default_rng(seed)
    folder = root / policy / "all"
    folder.mkdir(parents=True, exist_ok=True)
    start = np.datetime64("2019-11-24T00:00:00", "us")
    times = start + np.sort(rng.integers(0, 10**9, n)).astype("timedelta64[us]")
    logs = pl.DataFrame(
        {
            "": np.arange(n),
            "timestamp": [f"{t.astype(str).replace('T', ' ')}+00:00" for t in times],
            "item_id": rng.integers(0, n_items, n),
            "position": rng.integers(1, 4, n),
            "click": rng.integers(0, 2, n),
            "propensity_score": np.full(n, 1 / n_items),
            **{f"user_feature_{i}": [f"h{i}{v}" for v in rng.integers(0, 2, n)] for i in range(4)},
            **{name: rng.normal(size=n) for name in AFFINITIES},
        }
    )
    logs.write_csv(folder / "all.csv")
    pl.DataFrame(
        {
            "": np.arange(n_items),
            "item_id": np.arange(n_items)[::-1],
            "item_feature_0": rng.normal(size=n_items),
            "item_feature_1": [f"c{v}" for v in rng.integers(0, 3, n_items)],
        }
    ).write_csv(folder / "item_context.csv")
    return logs


def test_the_real_sample_loads_typed(shared_data):
    for policy in ("random", "bts"):
        logs = load_obd(shared_data / "obd", policy)
        assert logs.height == 10_000
        assert logs["item_id"].n_unique() == 80 and logs["item_id"].max() == 79
        assert sorted(logs["position"].unique()) == [0, 1, 2]
        assert logs.schema["event_time_ms"] == pl.Int64 and logs.schema["click"] == pl.Int64
        assert set(logs["click"].unique()) == {0, 1}
        assert logs["event_time_ms"].min() > 1_500_000_000_000  # 2017 or later, in ms
        assert len([c for c in logs.columns if c.startswith("user-item_affinity_")]) == 80
        p = logs["propensity_score"]
        assert ((p > 0) & (p <= 1)).all()
        context = load_item_context(shared_data / "obd", policy)
        assert context.height == 80 and context["item_id"].to_list() == list(range(80))


def test_the_real_random_policy_logs_uniform_propensities(shared_data):
    p = load_obd(shared_data / "obd", "random")["propensity_score"].unique().to_list()
    assert len(p) == 1 and 0 < p[0] < 1


def test_generated_files_load_typed(tmp_path):
    logs = write_obd(tmp_path, n=50)
    loaded = load_obd(tmp_path)
    assert loaded["position"].to_list() == (logs["position"] - 1).to_list()
    assert loaded["click"].to_list() == logs["click"].to_list()
    assert loaded["user-item_affinity_2"].to_list() == logs["user-item_affinity_2"].to_list()
    expected_ms = pl.Series(logs["timestamp"]).str.to_datetime(time_zone="UTC").dt.epoch("ms")
    assert loaded["event_time_ms"].to_list() == expected_ms.to_list()
    context = load_item_context(tmp_path)
    assert context["item_id"].to_list() == [0, 1, 2, 3]
    assert context.schema["item_feature_0"] == pl.Float64
    assert context.schema["item_feature_1"] == pl.String
    with pytest.raises(ValueError, match=r"^policy: expected one of"):
        load_obd(tmp_path, "ucb")


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("timestamp", "yesterday", "timestamp"),
        ("item_id", "-3", "item id"),
        ("item_id", "a7", "item id"),
        ("position", "0", "position"),
        ("click", "2", "click 0 or 1"),
        ("propensity_score", "0", "propensity"),
        ("propensity_score", "1.2", "propensity"),
        ("user_feature_1", "", "user_feature_1"),
        ("user-item_affinity_3", "inf", "user-item_affinity_3"),
    ],
)
def test_a_bad_value_names_the_file_line_and_column(tmp_path, column, value, message):
    logs = write_obd(tmp_path, n=20)
    row = 13
    logs = logs.with_columns(pl.col(column).cast(pl.String))
    logs[row, column] = value
    path = tmp_path / "random" / "all" / "all.csv"
    logs.write_csv(path)
    with pytest.raises(ValueError) as error:
        load_obd(tmp_path)
    text = str(error.value)
    assert f"{path}, line {row + 2}, column '{column}'" in text and message in text


def test_missing_columns_and_bad_item_context_are_refused(tmp_path):
    logs = write_obd(tmp_path, n=20)
    path = tmp_path / "random" / "all" / "all.csv"
    logs.drop("click").write_csv(path)
    with pytest.raises(ValueError, match=r"line 1: missing the columns \['click'\]"):
        load_obd(tmp_path)
    write_obd(tmp_path, n=20)
    context = tmp_path / "random" / "all" / "item_context.csv"
    pl.read_csv(context).with_columns(pl.lit(0).alias("item_id")).write_csv(context)
    with pytest.raises(ValueError, match=r"exactly 0\.\.3"):
        load_item_context(tmp_path)
