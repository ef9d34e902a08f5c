"""The Arrow schemas of the Parquet lake: impressions, feedback and rewards, one name per concept.

Everything that writes or reads logged events as tables uses these schemas: the simulator's
logged frames (``simulators.logged_data``), the OPE adapter (``recsys.ope.dataframe``), the
Kafka → Parquet lake sink and the offline readers (polars lazy scans).

Decisions
---------
* **Names are the event contract's** (``recsys.events``): ``request_id``, ``event_time_ms``,
  ``user_id``, ``policy_name``, ``policy_version``, ``item_id``, ``position``, ``score``,
  ``propensity``, ``reward``, ``event_type``, ``value``, ``schema_version``. A nested field is
  flattened by joining its path with ``_``: ``context.dense`` is ``context_dense``. The reward of
  a shown item is ``reward`` everywhere (never ``click``); a feedback event's magnitude stays
  ``value`` (a dwell time or a rating is not yet a reward: the joiner turns feedback into rewards).
* **Grain.** ``rewards``: one row per shown item (the ``recsys.rewards`` contract). ``impressions``:
  one row per shown item too, the request's columns repeated and the slate flattened into
  ``position``, ``item_id``, ``score``, ``propensity`` — the shape OPE and offline training read,
  and a slate is still one ``request_id``. Parquet's dictionary and run-length encodings make the
  repeated request columns nearly free. ``feedback``: one row per feedback event.
* **Context.** ``context_dense`` is ``list<float32>`` (embeddings are float32; the dimension is a
  deployment setting, not a schema property, so not a fixed-size list); ``context_cluster_ids``
  ``list<int64>`` and ``context_cluster_weights`` ``list<float32>``. A mode that is not used is an
  empty list, never null, as in the events (``()``).
* **Time.** ``event_time_ms`` is int64 milliseconds since the Unix epoch (UTC), as in the events.
  The lake is hive-partitioned by ``event_date`` (date32) and ``event_hour`` (int8), both derived
  from ``event_time_ms`` in UTC by ``partition_expressions``; they live in the directory names,
  not in the files (``PARTITIONING`` is the partitioning schema for pyarrow's writer and for
  polars' ``scan_parquet(hive_schema=...)``), and frames read back with them validate.
* **Provenance.** ``kafka_topic``, ``kafka_partition``, ``kafka_offset`` say which record a row
  came from, so the lake sink can write each offset range exactly once and a reader can
  de-duplicate. They are nullable: present in every frame, filled by the lake sink, null in
  frames that did not come from Kafka (the simulator's).
* **Propensity error.** ``propensity_se`` (impressions and rewards) is the standard error of a
  Monte Carlo propensity (Thompson sampling; 0 when exact), so OPE can tell estimated propensities
  from exact ones. It is the other nullable column: null where the source did not record it (lake
  files written before the column existed read back with nulls, see ``recsys.lake``).
* **Version.** ``SCHEMA_VERSION`` is ``recsys.events.SCHEMA_VERSION``: the table schemas change
  exactly when the event contract does. Each row carries the ``schema_version`` of its event, and
  each schema's metadata carries the version it describes (``recsys.schema_version``).
* **Extra columns** are rejected unless the caller declares them (``extra_columns``): the
  simulator declares its ground-truth ``noise`` label and the policy ``score`` of the shown item.

The serving app's user-feature table (``user_id``, ``context_dense``) is a contract too:
``USER_FEATURES``, written by ``write_user_features`` (the simulator's users, the offline user
embeddings) and read by ``read_user_features``. With each user's cluster memberships it is
``USER_FEATURES_WITH_CLUSTERS`` (``recsys export-online``), which ``read_user_table`` (the
serving app) reads in the same pass.

Public API: ``IMPRESSIONS``, ``FEEDBACK``, ``REWARDS`` (``pa.Schema``), ``arrow_schema(name)``,
``polars_schema(name)``, ``validate_frame``/``conform`` (polars frames), and
``impressions_to_arrow``/``feedback_to_arrow``/``rewards_to_arrow`` (a batch of event structs to an
Arrow table in one pass; ``pl.from_arrow`` makes it a polars frame without copying).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.events import SCHEMA_VERSION, Context, Feedback, Impression, Reward
from recsys.storage import PathLike, resolve, write_bytes_atomic
from recsys.validation import as_array, check_finite, first_non_finite, message

__all__ = [
    "FEEDBACK",
    "IMPRESSIONS",
    "PARTITIONING",
    "PROVENANCE_COLUMNS",
    "REWARDS",
    "SCHEMA_VERSION",
    "USER_FEATURES",
    "TableName",
    "arrow_schema",
    "conform",
    "feedback_to_arrow",
    "impressions_to_arrow",
    "partition_expressions",
    "polars_schema",
    "read_user_features",
    "read_user_table",
    "rewards_to_arrow",
    "validate_frame",
    "write_user_features",
]

TableName = Literal["impressions", "feedback", "rewards"]

_METADATA = {b"recsys.schema_version": str(SCHEMA_VERSION).encode()}


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


_REQUEST = [
    _required("request_id", pa.string()),
    _required("event_time_ms", pa.int64()),
    _required("user_id", pa.string()),
]
_POLICY = [
    _required("policy_name", pa.string()),
    _required("policy_version", pa.int64()),
]
_CONTEXT = [
    _required("context_dense", pa.list_(pa.float32())),
    _required("context_cluster_ids", pa.list_(pa.int64())),
    _required("context_cluster_weights", pa.list_(pa.float32())),
]
_SHOWN = [
    _required("position", pa.int64()),
    _required("item_id", pa.int64()),
]
_PROVENANCE = [
    pa.field("kafka_topic", pa.string()),
    pa.field("kafka_partition", pa.int32()),
    pa.field("kafka_offset", pa.int64()),
]
_VERSION = [_required("schema_version", pa.int32())]
_PROPENSITY = [
    _required("propensity", pa.float64()),
    pa.field("propensity_se", pa.float64()),
]

IMPRESSIONS = pa.schema(
    [
        *_REQUEST,
        *_POLICY,
        *_CONTEXT,
        *_SHOWN,
        _required("score", pa.float64()),
        *_PROPENSITY,
        *_VERSION,
        *_PROVENANCE,
    ],
    metadata=_METADATA,
)
"""``recsys.impressions`` flattened: one row per shown item of a served slate."""

FEEDBACK = pa.schema(
    [
        *_REQUEST,
        *_SHOWN,
        _required("event_type", pa.string()),
        _required("value", pa.float64()),
        *_VERSION,
        *_PROVENANCE,
    ],
    metadata=_METADATA,
)
"""``recsys.feedback``: one row per user action on a shown item."""

REWARDS = pa.schema(
    [
        *_REQUEST,
        *_POLICY,
        *_CONTEXT,
        *_SHOWN,
        _required("reward", pa.float64()),
        *_PROPENSITY,
        *_VERSION,
        *_PROVENANCE,
    ],
    metadata=_METADATA,
)
"""``recsys.rewards``: one row per shown item once its attribution window has closed."""

SCHEMAS: dict[str, pa.Schema] = {
    "impressions": IMPRESSIONS,
    "feedback": FEEDBACK,
    "rewards": REWARDS,
}

PROVENANCE_COLUMNS = tuple(field.name for field in _PROVENANCE)

PARTITIONING = pa.schema([("event_date", pa.date32()), ("event_hour", pa.int8())])
"""Hive partition columns of the lake (directory names, not file columns), derived from
``event_time_ms`` in UTC."""


def arrow_schema(name: TableName) -> pa.Schema:
    """The lake schema of table ``name`` (``impressions``, ``feedback`` or ``rewards``)."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"name: expected one of {sorted(SCHEMAS)}, got {name!r}") from None


def polars_schema(name: TableName) -> pl.Schema:
    """The polars dtypes of table ``name``, as ``pl.from_arrow`` reads the Arrow schema."""
    return pl.from_arrow(arrow_schema(name).empty_table()).schema  # type: ignore[union-attr]


def _partition_dtypes() -> pl.Schema:
    return pl.from_arrow(PARTITIONING.empty_table()).schema  # type: ignore[union-attr]


def partition_expressions() -> list[pl.Expr]:
    """``event_date`` and ``event_hour`` (UTC) from ``event_time_ms``, for writing the lake."""
    moment = pl.from_epoch("event_time_ms", time_unit="ms")
    return [
        moment.dt.date().alias("event_date"),
        moment.dt.hour().cast(pl.Int8).alias("event_hour"),
    ]


def _declared(
    name: TableName, extra_columns: Mapping[str, pl.DataType] | None
) -> tuple[pl.Schema, dict[str, pl.DataType], set[str]]:
    schema = polars_schema(name)
    extras = {**_partition_dtypes(), **(extra_columns or {})}
    clash = sorted(set(extras) & set(schema))
    if clash:
        raise ValueError(
            f"extra_columns: expected names outside the {name} schema, got {clash}; "
            "schema columns cannot be redeclared"
        )
    required = {field.name for field in arrow_schema(name) if not field.nullable}
    return schema, extras, required


def validate_frame(
    frame: pl.DataFrame,
    name: TableName,
    extra_columns: Mapping[str, pl.DataType] | None = None,
) -> pl.DataFrame:
    """Check ``frame`` against the lake schema ``name``; return it unchanged.

    Every schema column must be present with its exact dtype, required columns must hold no
    nulls, and any other column must be declared in ``extra_columns`` (name → dtype) or be a
    partition column. All problems are reported in one ``ValueError``, one line each, starting
    with ``<name>.<column>:``.
    """
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"frame: expected a polars DataFrame, got {type(frame).__name__}")
    schema, extras, required = _declared(name, extra_columns)
    problems = []
    present = frame.schema
    for column, dtype in schema.items():
        if column not in present:
            problems.append(
                f"{name}.{column}: expected a {dtype} column, got no such column; add it "
                "(recsys.schema.conform fills missing nullable columns with nulls)"
            )
        elif present[column] != dtype:
            problems.append(
                f"{name}.{column}: expected dtype {dtype}, got {present[column]}; cast it "
                "(recsys.schema.conform casts where the values allow)"
            )
    present_required = [c for c in required if c in present]
    null_counts = frame.select(present_required).null_count().row(0) if present_required else ()
    for column, nulls in zip(present_required, null_counts, strict=True):
        if nulls:
            problems.append(
                f"{name}.{column}: expected no nulls (a required column), got {nulls} null "
                f"values of {frame.height}; fix the rows that produced them"
            )
    undeclared = []
    for column, dtype in present.items():
        if column in schema:
            continue
        if column not in extras:
            undeclared.append(column)
        elif dtype != extras[column]:
            problems.append(f"{name}.{column}: expected dtype {extras[column]}, got {dtype}")
    if undeclared:
        problems.append(
            f"{name}: expected only the schema's columns and declared extras, got undeclared "
            f"columns {undeclared}; drop them or declare them in extra_columns"
        )
    if problems:
        raise ValueError("\n".join(problems))
    return frame


def conform(
    frame: pl.DataFrame,
    name: TableName,
    extra_columns: Mapping[str, pl.DataType] | None = None,
) -> pl.DataFrame:
    """``frame`` in the lake schema's column order and dtypes, then validated.

    Casts are strict (a value that does not fit is an error naming the column, never a silent
    null); missing nullable columns (provenance, ``propensity_se``) are added as nulls; declared
    extras and partition columns are kept after the schema columns. Anything else is left for
    ``validate_frame`` to reject.
    """
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"frame: expected a polars DataFrame, got {type(frame).__name__}")
    schema, extras, _ = _declared(name, extra_columns)
    nullable = {field.name for field in arrow_schema(name) if field.nullable}
    columns = []
    for column, dtype in schema.items():
        if column in frame.columns:
            columns.append(pl.col(column).cast(dtype, strict=True))
        elif column in nullable:
            columns.append(pl.lit(None, dtype=dtype).alias(column))
    kept = [c for c in frame.columns if c not in schema]
    columns += [pl.col(c).cast(extras[c], strict=True) if c in extras else pl.col(c) for c in kept]
    try:
        conformed = frame.select(columns)
    except pl.exceptions.PolarsError as exc:
        raise ValueError(
            f"{name}: expected values that fit the schema's dtypes, got a failed cast ({exc}); "
            "fix the column named above"
        ) from exc
    return validate_frame(conformed, name, extra_columns)


# ------------------------------------------------------------------------ events → Arrow tables


def _kafka_columns(
    n: int,
    kafka_topic: str | None,
    kafka_partition: int | Sequence[int] | np.ndarray | None,
    kafka_offset: Sequence[int] | np.ndarray | None,
) -> list[pa.Array]:
    given = [kafka_topic is not None, kafka_partition is not None, kafka_offset is not None]
    if not any(given):
        return [pa.nulls(n, field.type) for field in _PROVENANCE]
    if not all(given):
        raise ValueError(
            "kafka_topic, kafka_partition, kafka_offset: expected all three or none, got "
            f"{sum(given)} of them"
        )
    offsets = np.asarray(kafka_offset, dtype=np.int64)
    partitions = np.broadcast_to(np.asarray(kafka_partition, dtype=np.int32), (n,))
    if offsets.shape != (n,):
        raise ValueError(f"kafka_offset: expected one offset per event ({n}), got {offsets.shape}")
    topic = pa.array([kafka_topic], pa.string())
    return [
        topic.take(pa.array(np.zeros(n, dtype=np.int64))),
        pa.array(partitions, pa.int32()),
        pa.array(offsets, pa.int64()),
    ]


def _list_array(offsets: list[int], values: list, type_: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(values, type_.value_type), type=type_
    )


class _ContextColumns:
    """Builds the three context list columns while the records are read once."""

    def __init__(self) -> None:
        self.dense: list[float] = []
        self.cluster_ids: list[int] = []
        self.cluster_weights: list[float] = []
        self.dense_offsets = [0]
        self.cluster_offsets = [0]

    def add(self, context: Context) -> None:
        self.dense.extend(context.dense)
        self.dense_offsets.append(len(self.dense))
        self.cluster_ids.extend(context.cluster_ids)
        self.cluster_weights.extend(context.cluster_weights)
        self.cluster_offsets.append(len(self.cluster_ids))

    def arrays(self) -> list[pa.Array]:
        dense = _list_array(self.dense_offsets, self.dense, pa.list_(pa.float32()))
        # float64 event values beyond float32's range would become infinite in the lake.
        where = first_non_finite(dense.values.to_numpy())
        if where is not None:
            raise ValueError(
                "context_dense: expected values that fit float32 (|x| < 3.4e38), got "
                f"{self.dense[where[0]]}; rescale the features"
            )
        return [
            dense,
            _list_array(self.cluster_offsets, self.cluster_ids, pa.list_(pa.int64())),
            _list_array(self.cluster_offsets, self.cluster_weights, pa.list_(pa.float32())),
        ]


def _check_type(event: object, expected: type, index: int) -> None:
    if type(event) is not expected:
        raise TypeError(
            f"events[{index}]: expected a recsys.events.{expected.__name__}, "
            f"got {type(event).__name__}"
        )


def impressions_to_arrow(
    events: Sequence[Impression],
    kafka_topic: str | None = None,
    kafka_partition: int | Sequence[int] | np.ndarray | None = None,
    kafka_offset: Sequence[int] | np.ndarray | None = None,
) -> pa.Table:
    """A batch of impressions as one ``IMPRESSIONS`` table (one row per shown item).

    ``kafka_*`` give each event's source record (a partition may be one int for the batch);
    omitted, the provenance columns are null.
    """
    n = len(events)
    request_id, event_time, user_id, policy_name, policy_version, version = ([] for _ in range(6))
    slate_size, position, item_id, score, propensity, propensity_se = ([] for _ in range(6))
    context = _ContextColumns()
    for index, event in enumerate(events):
        _check_type(event, Impression, index)
        request_id.append(event.request_id)
        event_time.append(event.event_time_ms)
        user_id.append(event.user_id)
        policy_name.append(event.policy_name)
        policy_version.append(event.policy_version)
        version.append(event.schema_version)
        context.add(event.context)
        slate_size.append(len(event.slate))
        for entry in event.slate:
            position.append(entry.position)
            item_id.append(entry.item_id)
            score.append(entry.score)
            propensity.append(entry.propensity)
            propensity_se.append(entry.propensity_se)
    per_request = pa.table(
        [
            pa.array(request_id, pa.string()),
            pa.array(event_time, pa.int64()),
            pa.array(user_id, pa.string()),
            pa.array(policy_name, pa.string()),
            pa.array(policy_version, pa.int64()),
            *context.arrays(),
            pa.array(version, pa.int32()),
            *_kafka_columns(n, kafka_topic, kafka_partition, kafka_offset),
        ],
        names=[f.name for f in (*_REQUEST, *_POLICY, *_CONTEXT, *_VERSION, *_PROVENANCE)],
    )
    rows = per_request.take(np.repeat(np.arange(n), np.asarray(slate_size, dtype=np.int64)))
    shown = {
        "position": pa.array(position, pa.int64()),
        "item_id": pa.array(item_id, pa.int64()),
        "score": pa.array(score, pa.float64()),
        "propensity": pa.array(propensity, pa.float64()),
        "propensity_se": pa.array(propensity_se, pa.float64()),
    }
    columns = [shown[f.name] if f.name in shown else rows[f.name] for f in IMPRESSIONS]
    return pa.Table.from_arrays(columns, schema=IMPRESSIONS)


def feedback_to_arrow(
    events: Sequence[Feedback],
    kafka_topic: str | None = None,
    kafka_partition: int | Sequence[int] | np.ndarray | None = None,
    kafka_offset: Sequence[int] | np.ndarray | None = None,
) -> pa.Table:
    """A batch of feedback events as one ``FEEDBACK`` table (one row per event)."""
    request_id, event_time, user_id, position, item_id = ([] for _ in range(5))
    event_type, value, version = ([] for _ in range(3))
    for index, event in enumerate(events):
        _check_type(event, Feedback, index)
        request_id.append(event.request_id)
        event_time.append(event.event_time_ms)
        user_id.append(event.user_id)
        position.append(event.position)
        item_id.append(event.item_id)
        event_type.append(event.event_type)
        value.append(event.value)
        version.append(event.schema_version)
    arrays = [
        pa.array(request_id, pa.string()),
        pa.array(event_time, pa.int64()),
        pa.array(user_id, pa.string()),
        pa.array(position, pa.int64()),
        pa.array(item_id, pa.int64()),
        pa.array(event_type, pa.string()),
        pa.array(value, pa.float64()),
        pa.array(version, pa.int32()),
        *_kafka_columns(len(events), kafka_topic, kafka_partition, kafka_offset),
    ]
    return pa.Table.from_arrays(arrays, schema=FEEDBACK)


def rewards_to_arrow(
    events: Sequence[Reward],
    kafka_topic: str | None = None,
    kafka_partition: int | Sequence[int] | np.ndarray | None = None,
    kafka_offset: Sequence[int] | np.ndarray | None = None,
) -> pa.Table:
    """A batch of joined rewards as one ``REWARDS`` table (one row per event)."""
    request_id, event_time, user_id, policy_name, policy_version = ([] for _ in range(5))
    position, item_id, reward, propensity, propensity_se, version = ([] for _ in range(6))
    context = _ContextColumns()
    for index, event in enumerate(events):
        _check_type(event, Reward, index)
        request_id.append(event.request_id)
        event_time.append(event.event_time_ms)
        user_id.append(event.user_id)
        policy_name.append(event.policy_name)
        policy_version.append(event.policy_version)
        context.add(event.context)
        position.append(event.position)
        item_id.append(event.item_id)
        reward.append(event.reward)
        propensity.append(event.propensity)
        propensity_se.append(event.propensity_se)
        version.append(event.schema_version)
    arrays = [
        pa.array(request_id, pa.string()),
        pa.array(event_time, pa.int64()),
        pa.array(user_id, pa.string()),
        pa.array(policy_name, pa.string()),
        pa.array(policy_version, pa.int64()),
        *context.arrays(),
        pa.array(position, pa.int64()),
        pa.array(item_id, pa.int64()),
        pa.array(reward, pa.float64()),
        pa.array(propensity, pa.float64()),
        pa.array(propensity_se, pa.float64()),
        pa.array(version, pa.int32()),
        *_kafka_columns(len(events), kafka_topic, kafka_partition, kafka_offset),
    ]
    return pa.Table.from_arrays(arrays, schema=REWARDS)


# ------------------------------------------------------------------------ the user-feature table

USER_FEATURES = pa.schema(
    [_required("user_id", pa.string()), _required("context_dense", pa.list_(pa.float32()))],
    metadata=_METADATA,
)
"""The serving app's user-feature table: each user's dense context (float32), one row per user."""
USER_CLUSTER_COLUMNS = tuple(field.name for field in _CONTEXT[1:])
USER_FEATURES_WITH_CLUSTERS = pa.schema([*USER_FEATURES, *_CONTEXT[1:]], metadata=_METADATA)
"""``USER_FEATURES`` plus each user's cluster memberships (the graph layout's context, as
``recsys export-online`` writes it): the serving app then gives users their clusters too."""


@dataclass(frozen=True)
class UserClusters:
    """Cluster memberships row-aligned with a user table, as flat arrays (one read, no object per
    user): row i's ids are ``ids[offsets[i]:offsets[i + 1]]``, its weights likewise."""

    offsets: np.ndarray
    ids: np.ndarray
    weights: np.ndarray

    def of(self, row: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Row ``row``'s cluster ids and weights, as a ``Context`` takes them."""
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return tuple(self.ids[start:end].tolist()), tuple(self.weights[start:end].tolist())


def write_user_features(
    path: PathLike, user_ids: Sequence[str], features: np.ndarray, *,
    clusters: tuple[np.ndarray, np.ndarray] | None = None, filesystem: Any = None
) -> str:
    """Write ``features[i]`` as the context of ``user_ids[i]`` in the ``USER_FEATURES`` table;
    with ``clusters`` = (ids [n, k], weights [n, k]), also row i's cluster memberships
    (``USER_FEATURES_WITH_CLUSTERS``).

    One Parquet file at ``path`` (a local path or fsspec URI), written atomically; returns the
    path within its filesystem. Ids must be distinct and the features finite in float32.
    """
    ids = [str(u) for u in user_ids]
    matrix = as_array(features, "features", 2)
    if len(ids) != matrix.shape[0]:
        raise ValueError(
            message("user_ids", f"one id per row of features ({matrix.shape[0]})",
                    f"{len(ids)} ids", "pass the raw id of every user, in row order")
        )
    if len(set(ids)) != len(ids):
        first = ids[int(pl.Series(ids).is_duplicated().arg_true()[0])]
        raise ValueError(
            message("user_ids", "distinct ids", f"{first!r} more than once",
                    "each user needs its own id")
        )
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
        values = matrix.astype(np.float32)
    check_finite(values, "features", "rescale them to fit float32")
    n, dim = values.shape
    dense = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1) * dim, pa.int32()),
        pa.array(values.ravel(), pa.float32()),
        type=pa.list_(pa.float32()),
    )
    columns, schema = [pa.array(ids, pa.string()), dense], USER_FEATURES
    if clusters is not None:
        columns += _cluster_columns(clusters, n)
        schema = USER_FEATURES_WITH_CLUSTERS
    table = pa.Table.from_arrays(columns, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    fs, target = resolve(path, filesystem)
    write_bytes_atomic(fs, target, sink.getvalue())
    return target


def _cluster_columns(clusters: tuple[np.ndarray, np.ndarray], n: int) -> list[pa.Array]:
    """The two cluster list columns of ``n`` users from (ids [n, k], weights [n, k])."""
    cluster_ids = as_array(clusters[0], "clusters ids", 2)
    weights = as_array(clusters[1], "clusters weights", 2)
    if cluster_ids.shape != weights.shape or cluster_ids.shape[0] != n:
        raise ValueError(message("clusters", f"ids and weights of shape [{n}, k] each",
                                 f"{cluster_ids.shape} and {weights.shape}"))
    if cluster_ids.size and not (np.all(cluster_ids == np.round(cluster_ids))
                                 and cluster_ids.min() >= 0):
        raise ValueError(message("clusters ids", "integers >= 0", "other values"))
    with np.errstate(over="ignore"):
        weights = weights.astype(np.float32)
    check_finite(weights, "clusters weights")
    offsets = pa.array(np.arange(n + 1) * cluster_ids.shape[1], pa.int32())
    return [pa.ListArray.from_arrays(offsets, pa.array(cluster_ids.astype(np.int64).ravel())),
            pa.ListArray.from_arrays(offsets, pa.array(weights.ravel()))]


def read_user_features(
    path: PathLike, *, filesystem: Any = None, name: str = "path"
) -> tuple[list[str], np.ndarray]:
    """The ids and the (n_users, dim) float64 contexts of a ``USER_FEATURES`` table.

    ``name`` is how the caller's user spells ``path`` (a setting's name), for the error messages.
    """
    ids, matrix, _ = read_user_table(path, filesystem=filesystem, name=name, clusters=False)
    return ids, matrix


def read_user_table(
    path: PathLike, *, filesystem: Any = None, name: str = "path", clusters: bool = True
) -> tuple[list[str], np.ndarray, UserClusters | None]:
    """``read_user_features`` and, when the table has them (``USER_FEATURES_WITH_CLUSTERS``) and
    ``clusters`` is true, each user's cluster memberships, in one read of the file."""
    fs, source = resolve(path, filesystem)
    schema = USER_FEATURES
    try:
        with fs.open(source, "rb") as handle:
            if clusters and set(USER_CLUSTER_COLUMNS) <= set(pq.read_schema(handle).names):
                schema = USER_FEATURES_WITH_CLUSTERS
            handle.seek(0)
            table = pq.read_table(handle, columns=schema.names)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ValueError(
            message(name, f"a Parquet table with columns {USER_FEATURES.names}",
                    f"{path!r} ({exc})", "write it with recsys.schema.write_user_features")
        ) from None
    try:
        table = table.cast(schema)
    except (ValueError, pa.ArrowException) as exc:
        raise ValueError(
            message(name, f"the user-feature schema ({schema.types})",
                    f"{table.schema.types} in {path!r} ({exc})")
        ) from None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    nulls = frame.null_count().row(0)
    if any(nulls):
        raise ValueError(message(name, "no null ids or contexts", f"{sum(nulls)} in {path!r}"))
    ids = frame["user_id"].to_list()
    if len(set(ids)) != len(ids):
        raise ValueError(message(name, "one row per user id", f"repeated ids in {path!r}"))
    dims = frame["context_dense"].list.len()
    if frame.height and dims.min() != dims.max():
        raise ValueError(
            message(name, "contexts of one length", f"lengths {dims.min()}..{dims.max()} in "
                    f"{path!r}")
        )
    dim = int(dims.max()) if frame.height else 0
    flat = frame["context_dense"].explode().to_numpy() if dim else np.empty(0)
    matrix = np.asarray(flat, dtype=np.float64).reshape(frame.height, dim)
    if schema is USER_FEATURES:
        return ids, matrix, None
    cluster_ids, weights = (table.column(c).combine_chunks() for c in USER_CLUSTER_COLUMNS)
    offsets, weight_offsets = (np.asarray(a.offsets) for a in (cluster_ids, weights))
    if not np.array_equal(offsets - offsets[0], weight_offsets - weight_offsets[0]):
        raise ValueError(message(name, "one cluster weight per cluster id in every row",
                                 f"rows whose ids and weights do not pair up in {path!r}"))
    flat_ids, flat_weights = cluster_ids.flatten(), weights.flatten()
    if flat_ids.null_count or flat_weights.null_count:
        raise ValueError(message(name, "no null cluster ids or weights", f"some in {path!r}"))
    found = UserClusters(offsets - offsets[0], flat_ids.to_numpy(),
                         flat_weights.to_numpy().astype(np.float64))
    return ids, matrix, found
