"""Reading the Parquet lake: ``scan_lake`` and ``lake_files``.

The lake sink (``streaming.lake``) writes the lake; reading it lives in ``recsys`` so the offline
pipeline can train on it without importing ``streaming``. A scan returns each Kafka record's rows
once and each joined reward once; the README ("Parquet lake") gives the layout and the rules.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from recsys.schema import PARTITIONING, PROVENANCE_COLUMNS, TableName, arrow_schema
from recsys.storage import PathLike, join, resolve

__all__ = ["lake_files", "scan_lake"]


def _dedup_keys(table: TableName) -> list[str]:
    """The columns that identify one row: the record, and the slate position for impressions."""
    return [*PROVENANCE_COLUMNS, "position"] if table == "impressions" else list(PROVENANCE_COLUMNS)


def scan_lake(
    root: PathLike,
    table: TableName,
    *,
    filesystem: Any = None,
    deduplicate: bool = True,
) -> pl.LazyFrame:
    """The lake table ``table`` under ``root`` as a lazy frame, each Kafka record's rows once.

    Columns: the table's schema (``recsys.schema.arrow_schema(table)``) plus ``event_date``
    (Date) and ``event_hour`` (Int8) from the directory names. Rows are de-duplicated by
    provenance, and rewards also by ``(request_id, item_id)`` keeping the smallest
    ``(kafka_partition, kafka_offset)`` (a recovered joiner re-sends identical rewards at new
    offsets; the first sent is kept), unless ``deduplicate=False``; rows without provenance
    (simulated logs) are kept as written; order is unspecified. Files are listed when called; a
    table without files is an empty frame. Filters on ``event_date``/``event_hour`` prune
    directories for impressions and feedback (rewards are read whole: the de-duplication must
    see every copy of an example).
    """
    schema = arrow_schema(table)
    fs, path = resolve(root, filesystem)
    base = join(path, table)
    files = sorted(fs.glob(join(base, "event_date=*", "event_hour=*", "*.parquet")))
    full = pa.schema([*schema, *PARTITIONING], metadata=schema.metadata)
    if not files:
        return pl.LazyFrame(pl.from_arrow(full.empty_table()))
    # Extra columns after the table's (simulated logs: score, noise) as the first file has them.
    with fs.open(files[0], "rb") as handle:
        extras = [f for f in pq.read_schema(handle) if f.name not in full.names]
    file_schema = pa.schema([*schema, *extras], metadata=schema.metadata)
    if isinstance(fs, LocalFileSystem):
        # Columns a file lacks (propensity_se in files written before it existed) read as nulls.
        frame = pl.scan_parquet(
            files,
            schema=pl.from_arrow(file_schema.empty_table()).schema,  # type: ignore[union-attr]
            hive_partitioning=True,
            hive_schema=pl.from_arrow(PARTITIONING.empty_table()).schema,  # type: ignore[union-attr]
            missing_columns="insert",
            extra_columns="ignore",
        )
    else:
        dataset = ds.dataset(
            files,
            schema=pa.schema([*file_schema, *PARTITIONING], metadata=schema.metadata),
            filesystem=fs,
            format="parquet",
            partitioning=ds.partitioning(PARTITIONING, flavor="hive"),
            partition_base_dir=base,
        )
        frame = pl.scan_pyarrow_dataset(dataset)
    if deduplicate:
        # Rows without provenance (not written by the sink: simulated logs) are kept as written.
        filled = frame.filter(pl.col("kafka_offset").is_not_null())
        filled = filled.unique(subset=_dedup_keys(table), keep="any")
        if table == "rewards":
            filled = _first_reward_per_example(filled)
        frame = pl.concat([filled, frame.filter(pl.col("kafka_offset").is_null())])
    return frame


def _first_reward_per_example(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Each ``(request_id, item_id)``'s row with the smallest ``(kafka_partition,
    kafka_offset)`` (rows already unique by provenance): the smallest partition, then among its
    rows the smallest offset, as window filters rather than a sort of the whole table."""
    example = ["request_id", "item_id"]
    return frame.filter(
        pl.col("kafka_partition") == pl.col("kafka_partition").min().over(example)
    ).filter(pl.col("kafka_offset") == pl.col("kafka_offset").min().over(example))


def lake_files(root: PathLike, table: TableName, *, filesystem: Any = None) -> list[str]:
    """The Parquet files of ``table`` under ``root`` (paths in the root's filesystem), sorted."""
    arrow_schema(table)  # validates the name
    fs, path = resolve(root, filesystem)
    return sorted(fs.glob(join(path, table, "event_date=*", "event_hour=*", "*.parquet")))
