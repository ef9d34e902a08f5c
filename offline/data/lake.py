"""The Parquet lake as training data: lazy scans with pushed-down time filters, and a Dataset.

Built on ``recsys.lake.scan_lake`` (de-duplicated by Kafka provenance, rewards once per
``(request_id, item_id)``), so offline never imports ``streaming``. ``lake_dataset`` maps the
lake's string user ids and int item ids to contiguous ints and returns them with the Dataset in a
``LakeData``: ``user_ids[i]`` is the lake's user id of user ``i`` (what a user-feature table
exported by the trainer is keyed by), ``item_ids[j]`` the lake's item id of item ``j``.

Rows with a null in a column training reads, a non-finite reward or a propensity outside (0, 1]
are refused with ``ValueError`` naming the column: bad data must not reach training silently.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from offline.data.splits import filter_min_interactions, reindex, split_by_time, split_per_user
from offline.dataset import Dataset
from recsys.lake import scan_lake
from recsys.schema import TableName
from recsys.storage import PathLike
from recsys.validation import message

__all__ = ["LakeData", "lake_dataset", "lake_offsets", "scan_interactions"]

_TIME = "event_time_ms"
_READ = ("user_id", "item_id", "reward", "propensity", _TIME)


@dataclass(frozen=True, eq=False)
class LakeData:
    """A lake Dataset with its id mappings: ``user_ids[i]`` (str) and ``item_ids[j]`` (int) are
    the lake's ids of contiguous user ``i`` and item ``j``."""

    dataset: Dataset
    user_ids: np.ndarray
    item_ids: np.ndarray


def _date(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date()


def scan_interactions(
    lake_uri: PathLike,
    table: TableName = "rewards",
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> pl.LazyFrame:
    """The lake table as a lazy frame with ``since_ms <= event_time_ms < until_ms``; the
    ``event_date`` bounds are added as well so partition directories outside the window are
    pruned where the table allows it (impressions and feedback; rewards are de-duplicated over
    the whole table first, see ``recsys.lake``)."""
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ValueError(message("until_ms", f"a time after since_ms ({since_ms})", until_ms))
    frame = scan_lake(lake_uri, table)
    if since_ms is not None:
        frame = frame.filter(
            (pl.col("event_date") >= _date(int(since_ms))) & (pl.col(_TIME) >= int(since_ms))
        )
    if until_ms is not None:
        frame = frame.filter(
            (pl.col("event_date") <= _date(int(until_ms))) & (pl.col(_TIME) < int(until_ms))
        )
    return frame


def lake_offsets(frame: pl.DataFrame) -> str | None:
    """The highest ``kafka_offset`` per topic and partition as compact JSON
    (``{"topic": {"partition": offset}}``), or None when no row has provenance."""
    filled = frame.select("kafka_topic", "kafka_partition", "kafka_offset").drop_nulls()
    if filled.height == 0:
        return None
    top = filled.group_by("kafka_topic", "kafka_partition").agg(pl.col("kafka_offset").max())
    offsets: dict[str, dict[str, int]] = {}
    for topic, partition, offset in top.sort("kafka_topic", "kafka_partition").iter_rows():
        offsets.setdefault(topic, {})[str(partition)] = int(offset)
    return json.dumps(offsets, sort_keys=True, separators=(",", ":"))


def _check(frame: pl.DataFrame, where: str) -> None:
    """Refuse nulls, non-finite rewards and propensities outside (0, 1], naming the column."""
    columns = [*_READ, *(["noise"] if "noise" in frame.columns else [])]
    nulls = frame.select(columns).null_count().row(0, named=True)
    for name, count in nulls.items():
        if count:
            raise ValueError(
                message(f"{where}.{name}", "no nulls", f"{count} nulls of {frame.height} rows",
                        "fix the rows that produced them (training never fills them in)")
            )
    reward = frame["reward"].to_numpy()
    if not np.isfinite(reward).all():
        raise ValueError(
            message(f"{where}.reward", "finite values",
                    f"{int((~np.isfinite(reward)).sum())} non-finite values")
        )
    p = frame["propensity"].to_numpy()
    bad = ~((p > 0) & (p <= 1))
    if bad.any():
        raise ValueError(
            message(f"{where}.propensity", "probabilities in (0, 1]",
                    f"{int(bad.sum())} rows outside (e.g. {p[bad][0]!r})",
                    "a logged propensity of 0 cannot be inverted")
        )


def lake_dataset(
    lake_uri: PathLike,
    split: Literal["time", "user"] = "time",
    seed: int = 0,
    *,
    table: TableName = "rewards",
    since_ms: int | None = None,
    until_ms: int | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    min_interactions: int = 1,
    name: str = "lake",
) -> LakeData:
    """The lake's logged rewards as an implicit-feedback Dataset with its id mappings.

    ``label`` = reward, ``propensity`` = the logged propensity, ``event_time_ms``, and ``noise``
    when the files carry it (simulated logs). Users with fewer than ``min_interactions`` rows are
    dropped; the split is by time (global cut points) or per user at random. Lineage:
    ``data_source="lake"``, the URI, table, split, seed, row count and ``lake_offsets`` (max
    Kafka offset per topic/partition) when the provenance columns are filled.
    """
    if split not in ("time", "user"):
        raise ValueError(message("split", "'time' or 'user'", repr(split)))
    lazy = scan_interactions(lake_uri, table, since_ms, until_ms)
    present = lazy.collect_schema().names()
    if "reward" not in present:
        raise ValueError(message("table", "a table with a reward column", repr(table),
                                 "read 'rewards'"))
    extra = ["noise"] if "noise" in present else []
    provenance = ("kafka_topic", "kafka_partition", "kafka_offset")
    raw = lazy.select("request_id", *_READ, *extra, *provenance).collect()
    if raw.height == 0:
        raise ValueError(message(f"{lake_uri} ({table})", "rows in the requested window", "none"))
    _check(raw, f"{lake_uri} ({table})")
    offsets = lake_offsets(raw)
    # One row per (request_id, item_id) after scan_lake: a stable order whatever the scan's.
    frame = raw.sort(_TIME, "request_id", "item_id").select(
        "user_id",
        "item_id",
        pl.col("reward").cast(pl.Float64).alias("label"),
        pl.col("propensity").cast(pl.Float64),
        pl.col(_TIME).cast(pl.Int64),
        *[pl.col(c).cast(pl.Boolean) for c in extra],
    )
    if min_interactions > 1:
        frame = filter_min_interactions(frame, min_interactions)
    frame, user_ids, item_ids = reindex(frame)
    if split == "time":
        train, valid, test = split_by_time(frame, fractions)
    else:
        train, valid, test = split_per_user(frame, fractions, seed)
    lineage = {
        "data_source": "lake",
        "lake_uri": str(lake_uri),
        "table": table,
        "split": split,
        "seed": str(seed),
        "rows": str(frame.height),
    }
    if offsets is not None:
        lineage["lake_offsets"] = offsets
    for key, value in (("since_ms", since_ms), ("until_ms", until_ms)):
        if value is not None:
            lineage[key] = str(int(value))
    dataset = Dataset(
        name=name,
        task="implicit",
        n_users=len(user_ids),
        user_ids=tuple(str(u) for u in user_ids),
        n_items=len(item_ids),
        item_ids=tuple(int(i) for i in item_ids),
        train=train,
        valid=valid,
        test=test,
        lineage=lineage,
    )
    return LakeData(dataset=dataset, user_ids=user_ids, item_ids=item_ids)
