"""Reading the Parquet lake: ``scan_lake`` and ``lake_files``, shared by streaming and offline.

The lake sink (``streaming.lake``) writes it; this module only reads it, so the offline pipeline
can train on the lake without importing ``streaming``. Layout (under a root that is a local path
or any fsspec URI: ``s3://``, ``gs://``, ``memory://``)::

    <root>/<table>/event_date=2024-03-01/event_hour=23/<topic>-p<partition>-<first>-<last>.parquet

Reading. ``scan_lake(root, table)`` returns a ``polars.LazyFrame`` of the table with the schema's
dtypes plus ``event_date``/``event_hour`` from the directory names (filter on them to prune
partitions), de-duplicated, in no particular order:

* rows are unique by provenance: ``kafka_topic, kafka_partition, kafka_offset`` (and
  ``position`` for impressions, whose record is one row per shown item). Rows of one offset are
  copies of one Kafka record (a file kept across a restore that straddles its offset, then
  rewritten by the replay), so which copy is kept does not matter;
* ``rewards`` are also unique by ``(request_id, item_id)``, keeping the row with the smallest
  ``(kafka_partition, kafka_offset)``: a joiner recovered from a checkpoint re-sends the rewards
  it produced after it, identical records at new offsets, and a request's rewards share a
  partition (key = request id), so the smallest offset is the first sent.

Rows whose provenance is null were not written by the sink (the simulator's logs written in the
lake layout, ``recsys.schema.conform`` fills the provenance with nulls): they cannot be replays,
so both de-duplications leave them as they are.

Pruning works for impressions and feedback; for rewards a filter runs after the de-duplication by
``(request_id, item_id)``, which must see every copy of an example wherever it lies, so the whole
table is read (a replay's copies share their event time and directory, but a request repeated
after its window closed may not). It lists the files when called (files written later are not in
that frame); a table with no files yet is an empty frame of the right schema. Local roots are read
by polars' native scanner, other URIs through a pyarrow dataset over the fsspec filesystem. Files
may carry extra columns after the table's schema (simulated logs add ``score`` and ``noise``);
scans keep them (the pyarrow path takes them from the first file).
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
    ``(kafka_partition, kafka_offset)`` (see the module docs), unless ``deduplicate=False``;
    rows without provenance are kept as written; order is unspecified.
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
