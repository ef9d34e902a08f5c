"""LoggedSlates: rows grouped into requests in time order, contexts from each request's first row,
the world of simulator logs read from world.json, and logs that cannot be evaluated rejected with
the column and the number of bad rows."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import polars as pl
import pytest

from recsys.comparison import LoggedSlates
from recsys.schema import partition_expressions
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import UniformPolicy
from simulators.world import world_of, write_world

HOUR_MS = 3_600_000
CONFIG = SimulatorConfig(n_users=30, n_items=8, dim=3, slate_size=2, seed=4)


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    sim = SlateSimulator(CONFIG)
    # 40 requests one hour apart: the lake gets one directory per hour.
    return collect_logs(sim, UniformPolicy(8, random_state=0), 40, np.random.default_rng(1),
                        ms_per_request=HOUR_MS)


def write_lake(root, frame: pl.DataFrame) -> None:
    """``frame`` as the lake's hive layout of the rewards table."""
    fs, base = fsspec.core.url_to_fs(str(root))
    keyed = frame.with_columns(partition_expressions())
    for (date, hour), part in keyed.group_by(["event_date", "event_hour"]):
        directory = f"{base}/rewards/event_date={date.isoformat()}/event_hour={hour}"
        fs.makedirs(directory, exist_ok=True)
        part.drop("event_date", "event_hour").write_parquet(f"{directory}/part.parquet")


def test_rows_are_grouped_into_requests_in_time_order(frame):
    logs = LoggedSlates.from_frame(frame.sample(fraction=1.0, shuffle=True, seed=3))
    ordered = frame.sort(["event_time_ms", "position"])
    assert (logs.n_requests, logs.n_rows, logs.len_list) == (40, 80, 2)
    assert np.array_equal(logs.action, ordered["item_id"].to_numpy())
    assert np.array_equal(logs.position, np.tile([0, 1], 40))
    assert np.array_equal(logs.request_index, np.repeat(np.arange(40), 2))
    assert np.array_equal(logs.row_start, np.arange(0, 82, 2))
    assert np.array_equal(logs.pscore, ordered["propensity"].to_numpy())
    first = ordered.filter(pl.col("position") == 0)
    assert list(logs.request_ids) == first["request_id"].to_list()
    assert list(logs.requests.user_ids) == first["user_id"].to_list()
    dense = np.stack(first["context_dense"].to_numpy()).astype(float)
    assert np.array_equal(logs.requests.dense, dense)
    assert logs.requests.clusters is None
    assert np.array_equal(logs.items_, np.unique(logs.action))
    assert logs.logged_pairs.sum() == np.unique(logs.action * 2 + logs.position).size
    assert logs.world is None
    assert logs.source == {"source": "frame", "propensities": "exact", "requests_logged": 40,
                           "requests_kept": 40, "dropped_policies": []}


def test_requests_with_monte_carlo_propensities_are_left_out_unless_asked(frame):
    ids = frame["request_id"].unique(maintain_order=True)
    sampled = pl.col("request_id").is_in(ids[::4].implode())
    logged = frame.with_columns(
        propensity_se=pl.when(sampled).then(0.01).otherwise(None).cast(pl.Float64),
        policy_name=pl.when(sampled).then(pl.lit("ts")).otherwise(pl.lit("uniform")))
    exact = LoggedSlates.from_frame(logged)
    assert exact.n_requests == 30 and not set(exact.request_ids) & set(ids[::4].to_list())
    assert exact.source["dropped_policies"] == ["ts"]
    assert "left out 10 of 40 requests" in exact.source["notes"][0]
    every = LoggedSlates.from_frame(logged, propensities="all")
    assert every.n_requests == 40 and "Monte Carlo" in every.source["notes"][0]
    with pytest.raises(ValueError, match="none of 40"):
        LoggedSlates.from_frame(logged.with_columns(propensity_se=pl.lit(0.01)))
    with pytest.raises(ValueError, match="did you mean exact"):
        LoggedSlates.from_frame(logged, propensities="exakt")


def test_a_pandas_frame_and_a_minimal_frame_are_accepted(frame):
    from_pandas = LoggedSlates.from_frame(frame.to_pandas())
    assert np.array_equal(from_pandas.action, LoggedSlates.from_frame(frame).action)
    minimal = pl.DataFrame({"request_id": ["b", "a", "a"], "position": [0, 1, 0],
                            "item_id": [5, 6, 7], "reward": [0.0, 1.0, 0.0],
                            "propensity": [0.5, 0.5, 0.25]})
    logs = LoggedSlates.from_frame(minimal)  # no time: ordered by request id
    assert list(logs.request_ids) == ["a", "b"] and list(logs.action) == [7, 6, 5]
    assert logs.requests.dense is None and logs.event_time_ms is None


def test_parquet_logs_read_their_world_beside_the_file(tmp_path, frame):
    path = tmp_path / "logs.parquet"
    frame.write_parquet(path)
    assert LoggedSlates.from_parquet(path).world is None
    (tmp_path / "logs.parquet.world.json").write_text(json.dumps(world_of(CONFIG)))
    logs = LoggedSlates.from_parquet(path)
    assert logs.world == world_of(CONFIG) and logs.n_rows == frame.height
    assert logs.describe()["source"] == "parquet"
    with pytest.raises(FileNotFoundError, match="no such file"):
        LoggedSlates.from_parquet(tmp_path / "absent.parquet")


def test_the_lake_is_read_over_a_time_range_with_its_world(tmp_path, frame):
    write_lake(tmp_path, frame)
    write_world(tmp_path, CONFIG)
    t0 = int(frame["event_time_ms"].min())
    logs = LoggedSlates.from_lake(tmp_path, t0 + 10 * HOUR_MS, t0 + 20 * HOUR_MS)
    assert logs.n_requests == 10
    assert logs.event_time_ms.min() == t0 + 10 * HOUR_MS
    assert logs.event_time_ms.max() == t0 + 19 * HOUR_MS
    assert logs.world == world_of(CONFIG)
    summary = logs.describe()
    assert summary["range_ms"] == [t0 + 10 * HOUR_MS, t0 + 20 * HOUR_MS]
    assert summary["observed_range_ms"] == [t0 + 10 * HOUR_MS, t0 + 19 * HOUR_MS]
    assert LoggedSlates.from_lake(tmp_path).n_requests == 40
    with pytest.raises(ValueError, match="no rows; check the lake root and the time range"):
        LoggedSlates.from_lake(tmp_path, 0, 1000)
    (tmp_path / "world.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r'world\.json: expected a JSON object with a "kind"'):
        LoggedSlates.from_lake(tmp_path)


def _broken(frame: pl.DataFrame, **columns) -> pl.DataFrame:
    return frame.with_columns(**columns)


@pytest.mark.parametrize(("change", "match"), [
    (lambda f: f.drop("propensity"), r"logs: expected columns .* got no \['propensity'\]"),
    (lambda f: _broken(f, propensity=pl.when(pl.col("position") == 1).then(None)
                       .otherwise(pl.col("propensity"))), "propensity: expected no nulls, got 40"),
    (lambda f: _broken(f, propensity=pl.when(pl.col("position") == 1).then(0.0)
                       .otherwise(pl.col("propensity"))), r"propensity: .*got 40 values <= 0"),
    (lambda f: _broken(f, propensity=pl.lit(1.5)), "propensity: .*80 values above 1"),
    (lambda f: _broken(f, position=pl.lit(0)), "40 repeated \\(request_id, position\\) rows"),
    (lambda f: _broken(f, position=pl.col("position") - 1), "position: .*40 negative rows"),
    (lambda f: _broken(f, item_id=pl.col("item_id").cast(pl.Float64)), "item_id: expected "
                                                                         "integers"),
    (lambda f: _broken(f, reward=pl.lit(float("nan"))), "reward: expected finite values"),
    (lambda f: f.head(0), "logs: expected logged rows, got none"),
])
def test_logs_that_cannot_be_evaluated_are_rejected_with_the_count(frame, change, match):
    with pytest.raises(ValueError, match=match):
        LoggedSlates.from_frame(change(frame))
