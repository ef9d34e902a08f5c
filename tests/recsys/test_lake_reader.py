"""recsys.lake reads a hand-written hive layout: values round-trip with the schema's dtypes and
the directory columns, each Kafka record is read once, rewards once per (request_id, item_id)
(the smallest partition, then offset), rows without provenance are kept as written, extra
columns survive, a memory:// root reads the same as a local one, and files written before
``propensity_se`` existed read it as null."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pytest

from recsys.lake import lake_files, scan_lake
from recsys.schema import SCHEMA_VERSION, conform, partition_expressions, polars_schema

HOUR_MS = 3_600_000
T0 = 1_709_337_600_000  # 2024-03-02T00:00Z


def rewards_frame(
    n: int,
    *,
    start_ms: int = T0,
    step_ms: int = 60_000,
    users: Sequence[str] | None = None,
    items: Sequence[int] | None = None,
    rewards: Sequence[float] | None = None,
    propensities: Sequence[float] | None = None,
    topic: str | None = "recsys.rewards",
    partition: int = 0,
    first_offset: int = 0,
    request_prefix: str = "r",
    extra: dict[str, Sequence] | None = None,
) -> pl.DataFrame:
    """``n`` rows in the rewards schema; provenance null when ``topic`` is None."""
    columns = {
        "request_id": [f"{request_prefix}{i}" for i in range(n)],
        "event_time_ms": [start_ms + i * step_ms for i in range(n)],
        "user_id": list(users) if users is not None else [f"u{i % 3}" for i in range(n)],
        "policy_name": ["ucb"] * n,
        "policy_version": [1] * n,
        "context_dense": [[0.5, -1.0]] * n,
        "context_cluster_ids": [[]] * n,
        "context_cluster_weights": [[]] * n,
        "position": [i % 2 for i in range(n)],
        "item_id": list(items) if items is not None else [10 + i % 4 for i in range(n)],
        "reward": list(rewards) if rewards is not None else [float(i % 2) for i in range(n)],
        "propensity": list(propensities) if propensities is not None else [0.25] * n,
        "schema_version": [SCHEMA_VERSION] * n,
    }
    if topic is not None:
        columns |= {
            "kafka_topic": [topic] * n,
            "kafka_partition": [partition] * n,
            "kafka_offset": list(range(first_offset, first_offset + n)),
        }
    frame = pl.DataFrame(columns, schema_overrides={"context_cluster_ids": pl.List(pl.Int64)})
    extras = {}
    if extra:
        frame = frame.with_columns(pl.Series(k, list(v)) for k, v in extra.items())
        extras = {k: frame.schema[k] for k in extra}
    return conform(frame, "rewards", extra_columns=extras)


def write_hive(root: str | Path, table: str, frame: pl.DataFrame, name: str = "part") -> list[str]:
    """``frame`` as ``<root>/<table>/event_date=D/event_hour=H/<name>.parquet`` files, one per
    (date, hour), through fsspec (any root: a local path or a URI)."""
    fs, base = fsspec.core.url_to_fs(str(root))
    keyed = frame.with_columns(partition_expressions())
    written = []
    for (date, hour), part in keyed.group_by(["event_date", "event_hour"], maintain_order=True):
        directory = f"{base}/{table}/event_date={date.isoformat()}/event_hour={hour}"
        fs.makedirs(directory, exist_ok=True)
        path = f"{directory}/{name}.parquet"
        with fs.open(path, "wb") as handle:
            part.drop("event_date", "event_hour").write_parquet(handle)
        written.append(path)
    return written


def test_a_table_round_trips_with_schema_dtypes_and_directory_columns(tmp_path):
    frame = rewards_frame(6, step_ms=HOUR_MS // 2)  # 3 hours: 3 directories
    files = write_hive(tmp_path, "rewards", frame)
    assert len(files) == 3 and lake_files(tmp_path, "rewards") == sorted(files)
    read = scan_lake(tmp_path, "rewards").collect()
    expected_schema = {**polars_schema("rewards"), "event_date": pl.Date, "event_hour": pl.Int8}
    assert dict(read.schema) == expected_schema
    read = read.sort("kafka_offset")
    assert read.drop("event_date", "event_hour").equals(frame)
    times = pl.from_epoch(read["event_time_ms"], time_unit="ms")
    assert read["event_date"].to_list() == times.dt.date().to_list()
    assert read["event_hour"].to_list() == times.dt.hour().to_list()


def test_directory_filters_prune_and_select_the_rows_of_one_hour(tmp_path):
    write_hive(tmp_path, "rewards", rewards_frame(8, step_ms=HOUR_MS // 2))
    one = (
        scan_lake(tmp_path, "rewards")
        .filter((pl.col("event_date") == dt.date(2024, 3, 2)) & (pl.col("event_hour") == 1))
        .collect()
    )
    assert sorted(one["kafka_offset"].to_list()) == [2, 3]


def test_each_record_is_read_once_when_files_overlap(tmp_path):
    frame = rewards_frame(5)
    write_hive(tmp_path, "rewards", frame, name="a")
    write_hive(tmp_path, "rewards", frame.slice(2), name="b")  # a replay's copy of offsets 2..4
    raw = scan_lake(tmp_path, "rewards", deduplicate=False).collect()
    assert raw.height == 8
    read = scan_lake(tmp_path, "rewards").collect()
    assert sorted(read["kafka_offset"].to_list()) == [0, 1, 2, 3, 4]


def test_a_reward_resent_at_a_new_offset_keeps_the_smallest_partition_then_offset(tmp_path):
    first = rewards_frame(2, items=[7, 8], partition=1, first_offset=50)
    resent = rewards_frame(2, items=[7, 8], partition=1, first_offset=90)
    other = rewards_frame(1, items=[8], partition=0, first_offset=99)  # r0 item 8 at partition 0
    write_hive(tmp_path, "rewards", pl.concat([first, resent, other]))
    read = scan_lake(tmp_path, "rewards").collect().sort("request_id", "item_id")
    kept = read.select("request_id", "item_id", "kafka_partition", "kafka_offset").rows()
    assert kept == [("r0", 7, 1, 50), ("r0", 8, 0, 99), ("r1", 8, 1, 51)]


def test_rows_without_provenance_are_kept_as_written_with_their_extra_columns(tmp_path):
    logged = rewards_frame(4, topic=None, extra={"noise": [False, True, False, False]})
    write_hive(tmp_path, "rewards", logged)
    read = scan_lake(tmp_path, "rewards").collect().sort("request_id")
    assert read.height == 4
    assert read["kafka_offset"].null_count() == 4
    assert read["noise"].to_list() == [False, True, False, False]


def test_an_empty_or_missing_table_is_an_empty_frame_and_a_bad_name_is_refused(tmp_path):
    empty = scan_lake(tmp_path, "impressions").collect()
    assert empty.height == 0 and dict(empty.schema) == {
        **polars_schema("impressions"),
        "event_date": pl.Date,
        "event_hour": pl.Int8,
    }
    assert lake_files(tmp_path, "feedback") == []
    with pytest.raises(ValueError, match="clicks"):
        scan_lake(tmp_path, "clicks")


def test_a_memory_root_reads_what_a_local_root_reads(tmp_path):
    frame = rewards_frame(6, step_ms=HOUR_MS // 2, extra={"noise": [True] + [False] * 5})
    write_hive(tmp_path, "rewards", frame)
    root = f"memory://lake-reader-{np.random.default_rng().integers(1 << 30)}"
    write_hive(root, "rewards", frame)
    try:
        local = scan_lake(tmp_path, "rewards").collect().sort("kafka_offset")
        remote = scan_lake(root, "rewards").collect().sort("kafka_offset")
        assert remote.columns == local.columns and remote.equals(local)
        assert len(lake_files(root, "rewards")) == 3
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


@pytest.mark.parametrize("old_file_first", [True, False])
@pytest.mark.parametrize("memory", [False, True])
def test_files_written_before_propensity_se_existed_read_it_as_null(tmp_path, old_file_first,
                                                                     memory):
    old = rewards_frame(3)
    new = rewards_frame(3, first_offset=3, request_prefix="s").with_columns(
        pl.Series("propensity_se", [0.0, 0.01, 0.02])
    )
    root = f"memory://lake-old-{np.random.default_rng().integers(1 << 30)}" if memory else tmp_path
    names = ("a", "b") if old_file_first else ("b", "a")
    write_hive(root, "rewards", old.drop("propensity_se"), name=names[0])
    write_hive(root, "rewards", new, name=names[1])
    try:
        read = scan_lake(root, "rewards").collect().sort("kafka_offset")
        assert dict(read.drop("event_date", "event_hour").schema) == dict(polars_schema("rewards"))
        assert read["propensity_se"].to_list() == [None, None, None, 0.0, 0.01, 0.02]
        assert read["propensity"].to_list() == [0.25] * 6
    finally:
        if memory:
            fsspec.filesystem("memory").rm(str(root).removeprefix("memory://"), recursive=True)
