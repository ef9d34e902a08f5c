"""Any interaction table as a data set: Parquet or CSV files with a column mapping (the ``table``
source of ``offline.sources``).

A user brings one file (``path``), or separate files (``train_path`` and optional ``valid_path``,
``test_path``), holding one row per interaction. The ``columns`` mapping names the file's columns
for each role (defaults in ``DEFAULT_COLUMNS``)::

    [train.data]
    source = "table"
    path = "ratings.csv"            # relative to the working directory; or train_path/test_path
    columns = { user = "userId", item = "movieId", label = "rating", timestamp = "ts",
                propensity = "p", mar = "is_random" }
    task = "rating"                 # or "implicit"; inferred when left out
    split = "random"                # per-user random, or "time" / "time_per_user"
    valid_fraction = 0.1
    test_fraction = 0.2
    min_interactions = 1            # users with fewer training rows are dropped everywhere

Roles: ``user`` and ``item`` (ids of any type, re-indexed to ``0..n-1``; the raw ids are kept as
``Dataset.user_ids``, and as ``item_ids`` when they are integers), ``label`` (a rating, or a
click 0/1), optional ``timestamp`` (integer times in any unit, kept as ``event_time_ms``, or a
datetime, converted to epoch milliseconds; the time splits use their order), optional
``propensity`` (the logged P(shown), needed by the ``logged`` estimator) and optional ``mar``
(true for the rows of a missing-at-random sample, like Coat's test set: those
rows become the test set, and ``mar_sample_fraction`` of them the ``mar_sample`` the
``naive_bayes`` estimator needs). Feature files (``user_features_path``, ``item_features_path``:
the id column under the same name as in the interactions, every other column a numeric feature)
are read only when given; the two-tower model and the logistic estimator need them.

The task is ``"implicit"`` when every label is 1 (positives only), else ``"rating"``. An implicit
task keeps the positive rows (label > 0, or label >= ``positive_threshold``) once per pair.

Every mistake is a ``SpecError`` naming the ``[train.data]`` key and the fix: a missing file, a
mapped column the file lacks, nulls, labels outside ``label_range`` (or not 0/1 for an implicit
task), propensities outside (0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from offline.data.splits import check_fractions, reindex, split_by_time, split_per_user
from offline.dataset import TASKS, Dataset
from offline.spec import SpecError
from recsys.validation import did_you_mean, message

__all__ = [
    "DEFAULT_COLUMNS",
    "MAR_SCOPES",
    "SPLITS",
    "draw_mar_sample",
    "table_dataset",
]

DEFAULT_COLUMNS: dict[str, str | None] = {
    "user": "user_id",
    "item": "item_id",
    "label": "label",
    "timestamp": None,
    "propensity": None,
    "mar": None,
}
"""The column of each role when ``columns`` does not map it (None: the role is unused)."""
SPLITS = ("random", "time", "time_per_user")
MAR_SCOPES = ("global", "per_user")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}

_INTERNAL = {"user": "user_id", "item": "item_id", "label": "label",
             "timestamp": "event_time_ms", "propensity": "propensity", "mar": "mar"}
_PART = "__file"


def _half_up(x: np.ndarray | float) -> np.ndarray:
    """Round half up (0.5 -> 1), the rounding every split of this package uses."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def draw_mar_sample(
    frame: pl.DataFrame,
    fraction: float,
    scope: str = "global",
    seed: int = 0,
    *,
    source: str = "train.data",
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Split missing-at-random rows into (test, mar_sample) with ``mar_sample`` a random
    ``fraction`` of them (None when ``fraction`` is 0).

    ``scope = "global"``: round-half-up(fraction × all rows) rows, at least 1, drawn uniformly
    over all rows. ``scope = "per_user"``: each user gives round-half-up(fraction × its rows)
    rows (0.05 of 10 rows is 0.5, which rounds to 1; 0.04 of 10 rounds to 0). A sample that is
    empty anyway is a ``SpecError`` naming the fraction and the rounding, never the data set.
    """
    if scope not in MAR_SCOPES:
        raise SpecError(message(f"{source}.mar_sample_scope", f"one of {MAR_SCOPES}",
                                repr(scope), did_you_mean(str(scope), MAR_SCOPES)))
    if not (np.isfinite(fraction) and 0 <= fraction < 1):
        raise SpecError(message(f"{source}.mar_sample_fraction", "a fraction in [0, 1)",
                                repr(fraction)))
    if fraction == 0:
        return frame, None
    n = frame.height
    if n == 0:
        raise SpecError(message(f"{source}.mar_sample_fraction", "missing-at-random rows to "
                                "draw from", "none", "set mar_sample_fraction = 0"))
    key = pl.Series("__key", np.random.default_rng(seed).random(n))
    if scope == "global":
        k = max(1, int(_half_up(fraction * n)))
        chosen = key.rank("ordinal").to_numpy() <= k
    else:
        ranked = frame.select("user_id").with_columns(key).select(
            pl.col("__key").rank("ordinal").over("user_id").alias("rank"),
            pl.len().over("user_id").alias("count"),
        )
        counts = ranked["count"].to_numpy()
        chosen = ranked["rank"].to_numpy() <= _half_up(fraction * counts)
        if not chosen.any():
            smallest = 0.5 / counts.max()
            low, high = counts.min(), counts.max()
            per_user = f"{low}" if low == high else f"{low} to {high}"
            raise SpecError(message(
                f"{source}.mar_sample_fraction", "a sample of at least one row",
                f"none: mar_sample_scope = 'per_user' takes round-half-up({fraction} × n) rows "
                f"of each user, and with {per_user} missing-at-random rows "
                f"per user that is 0 for every user",
                f"raise mar_sample_fraction to at least {smallest:.3g}, or use "
                f"mar_sample_scope = 'global' (round-half-up({fraction} × {n}), at least 1)"))
    mask = pl.Series(chosen)
    return frame.filter(~mask), frame.filter(mask)


def _file(params_key: str, path: str | Path, format: str | None) -> pl.DataFrame:
    """One interaction or feature file, read by its suffix or ``format``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(message(f"train.data.{params_key}", "an existing Parquet or CSV file",
                                f"{str(path)!r} (no such file)",
                                f"fix the path (relative paths start at {Path.cwd()})"))
    kind = format or FORMATS.get(path.suffix.lower())
    if kind not in ("parquet", "csv", "tsv"):
        raise SpecError(message(f"train.data.{params_key}", "a .parquet, .csv or .tsv file",
                                repr(str(path)), "or set format = \"parquet\" or \"csv\""))
    try:
        if kind == "parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, separator="\t" if kind == "tsv" else ",",
                           infer_schema_length=100_000)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SpecError(f"train.data.{params_key}: cannot read {path} as {kind}: {exc}") from None


def _mapping(columns: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The role -> column mapping with defaults, refusing unknown roles."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(DEFAULT_COLUMNS))
    if unknown:
        hints = "; ".join(filter(None, (did_you_mean(k, DEFAULT_COLUMNS) for k in unknown)))
        raise SpecError(message("train.data.columns", f"roles among {', '.join(DEFAULT_COLUMNS)}",
                                f"unknown roles {unknown}", hints or None))
    for role, column in columns.items():
        if not isinstance(column, str) or not column:
            raise SpecError(message(f"train.data.columns.{role}", "a column name", repr(column)))
    return {**DEFAULT_COLUMNS, **columns}


def _select(frame: pl.DataFrame, where: str, path: str, mapping: dict[str, str | None],
            explicit: set[str], implicit_task: bool) -> pl.DataFrame:
    """The mapped columns of one file under their internal names, each checked."""
    out = []
    for role, column in mapping.items():
        if column is None:
            continue
        if column not in frame.columns:
            if role == "label" and "label" not in explicit and implicit_task:
                out.append(pl.lit(1.0).alias("label"))
                continue
            fix = (f"map it: columns = {{ {role} = \"<column of {Path(path).name}>\" }}"
                   if role in ("user", "item", "label") else f"drop columns.{role} or fix it")
            if role == "label" and "label" not in explicit:
                fix += ", or set task = \"implicit\" for a table of positives only"
            raise SpecError(message(f"train.data.columns.{role}",
                                    f"a column of {where} {path} (columns: {frame.columns})",
                                    repr(column), fix))
        nulls = frame[column].null_count()
        if nulls:
            row = int(frame[column].is_null().arg_true()[0])
            raise SpecError(message(f"train.data.columns.{role}",
                                    f"a column without nulls in {where} {path}",
                                    f"{column!r} with {nulls} nulls (first at row {row})",
                                    "drop or fill those rows"))
        out.append(_cast(frame[column], role, column, where, path).alias(_INTERNAL[role]))
    return frame.select(out)


def _cast(series: pl.Series, role: str, column: str, where: str, path: str) -> pl.Series:
    """A column in its role's internal dtype (ids keep their own type)."""
    if role in ("user", "item"):
        return series
    dtype = series.dtype
    bad = None
    if role == "timestamp":
        if dtype.is_temporal():
            return series.cast(pl.Datetime("ms")).dt.epoch("ms").cast(pl.Int64)
        if dtype.is_integer():
            return series.cast(pl.Int64)
        bad = "integer times or a datetime"
    elif role == "mar":
        if dtype == pl.Boolean:
            return series
        if dtype.is_integer() and series.is_in([0, 1]).all():
            return series.cast(pl.Boolean)
        bad = "true/false (or 0/1) values"
    elif dtype.is_numeric():
        values = series.cast(pl.Float64)
        if not np.isfinite(values.to_numpy()).all():
            bad = "finite numbers"
        else:
            return values
    else:
        bad = "numbers"
    raise SpecError(message(f"train.data.columns.{role}", f"{bad} in {where} {path}",
                            f"column {column!r} of dtype {dtype}"))


def _check_values(frame: pl.DataFrame, task: str, label_range: Sequence[float] | None,
                  positive_threshold: float | None) -> None:
    """Labels in range (0/1 for an implicit task without a threshold), propensities in (0, 1]."""
    labels = frame["label"].to_numpy()
    if label_range is not None:
        if len(label_range) != 2:
            raise SpecError(message("train.data.label_range", "[low, high]", list(label_range)))
        low, high = (float(v) for v in label_range)
        bad = (labels < low) | (labels > high)
        if bad.any():
            raise SpecError(message("train.data.columns.label", f"labels in [{low:g}, {high:g}] "
                                    "(label_range)", f"{int(bad.sum())} outside, e.g. "
                                    f"{float(labels[bad][0])!r}", "fix the rows or label_range"))
    if task == "implicit" and positive_threshold is None:
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            raise SpecError(message("train.data.columns.label", "clicks 0/1 for task = "
                                    "\"implicit\"", f"{int(bad.sum())} other labels, e.g. "
                                    f"{float(labels[bad][0])!r}", "set positive_threshold (labels "
                                    ">= it are positives) or task = \"rating\""))
    if "propensity" in frame.columns:
        p = frame["propensity"].to_numpy()
        bad = ~((p > 0) & (p <= 1))
        if bad.any():
            raise SpecError(message("train.data.columns.propensity", "probabilities in (0, 1]",
                                    f"{int(bad.sum())} outside, e.g. {float(p[bad][0])!r}",
                                    "logged propensities are P(the item was shown)"))


def _features(key: str, path: str | Path, format: str | None, id_column: str,
              raw_ids: np.ndarray) -> np.ndarray:
    """A feature file's rows in the order of ``raw_ids`` (every id must have a row)."""
    frame = _file(key, path, format)
    if id_column not in frame.columns:
        raise SpecError(message(f"train.data.{key}", f"an id column {id_column!r} like the "
                                "interactions'", f"columns {frame.columns}"))
    features = [c for c in frame.columns if c != id_column]
    bad = [c for c in features if not frame[c].dtype.is_numeric()]
    if not features or bad:
        raise SpecError(message(f"train.data.{key}", "numeric feature columns besides the id",
                                f"non-numeric {bad}" if bad else "none"))
    if frame[id_column].n_unique() != frame.height:
        raise SpecError(message(f"train.data.{key}", "one row per id", "repeated ids"))
    ids = pl.DataFrame({"__id": [str(v) for v in raw_ids]})
    table = frame.with_columns(pl.col(id_column).cast(pl.String).alias("__id"))
    joined = ids.join(table, on="__id", how="left", maintain_order="left")
    missing = joined[features[0]].is_null() if frame.height else pl.Series([True] * len(ids))
    if missing.any():
        raise SpecError(message(f"train.data.{key}", "a row for every id in the interactions",
                                f"{int(missing.sum())} ids without one, e.g. "
                                f"{ids['__id'][int(missing.arg_true()[0])]!r}"))
    matrix = joined.select(features).cast(pl.Float64).to_numpy()
    if not np.isfinite(matrix).all():
        raise SpecError(message(f"train.data.{key}", "finite feature values",
                                "nulls or non-finite values"))
    return matrix


def table_dataset(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    train_path: str | Path | None = None,
    valid_path: str | Path | None = None,
    test_path: str | Path | None = None,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    task: str | None = None,
    split: str = "random",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    min_interactions: int = 1,
    positive_threshold: float | None = None,
    label_range: Sequence[float] | None = None,
    mar_sample_fraction: float = 0.0,
    mar_sample_scope: str = "global",
    user_features_path: str | Path | None = None,
    item_features_path: str | Path | None = None,
    name: str = "table",
) -> Dataset:
    """An interaction table (see the module docs) split into a ``Dataset`` with ``seed``."""
    if (path is None) == (train_path is None) or (
            path is not None and (valid_path, test_path) != (None, None)):
        given = [k for k, v in (("path", path), ("train_path", train_path),
                                ("valid_path", valid_path), ("test_path", test_path)) if v]
        raise SpecError(message("train.data.path", "one file (path) or train_path with optional "
                                "valid_path/test_path", f"{', '.join(given) or 'none of them'}"))
    if format is not None and format not in ("parquet", "csv", "tsv"):
        raise SpecError(message("train.data.format", "\"parquet\", \"csv\" or \"tsv\"",
                                repr(format)))
    if task is not None and task not in TASKS:
        raise SpecError(message("train.data.task", f"one of {TASKS}", repr(task)))
    if split not in SPLITS:
        raise SpecError(message("train.data.split", f"one of {SPLITS}", repr(split),
                                did_you_mean(str(split), SPLITS)))
    if isinstance(min_interactions, bool) or int(min_interactions) != min_interactions or (
            min_interactions < 1):
        raise SpecError(message("train.data.min_interactions", "a positive integer",
                                repr(min_interactions)))
    mapping = _mapping(columns)
    explicit = set(columns or {})
    files = {"path": path} if path is not None else {
        k: v for k, v in (("train_path", train_path), ("valid_path", valid_path),
                          ("test_path", test_path)) if v is not None}
    has_mar = mapping["mar"] is not None
    if has_mar and test_path is not None:
        raise SpecError(message("train.data.test_path", "no test file when columns.mar is "
                                "mapped", repr(str(test_path)),
                                "the missing-at-random rows are the test set; drop one of them"))
    if mar_sample_fraction and not has_mar:
        raise SpecError(message("train.data.mar_sample_fraction", "0 without a missing-at-random "
                                "flag", mar_sample_fraction, "map columns.mar to the column "
                                "that flags the missing-at-random rows"))
    parts = []
    for index, (key, file) in enumerate(files.items()):
        frame = _select(_file(key, file, format), key.replace("_", " "), str(file), mapping,
                        explicit, task == "implicit")
        parts.append(frame.with_columns(pl.lit(index, pl.Int8).alias(_PART)))
    try:
        rows = pl.concat(parts, how="vertical")
    except pl.exceptions.PolarsError as exc:
        raise SpecError(f"train.data: the files' mapped columns disagree in type: {exc}") from None
    if rows.height == 0:
        raise SpecError(message("train.data.path", "at least one interaction", "an empty table"))
    labels = rows["label"].to_numpy()
    if task is None:
        task = "implicit" if (labels == 1).all() else "rating"
    _check_values(rows, task, label_range, positive_threshold)
    if task == "implicit":
        keep = (pl.col("label") > 0 if positive_threshold is None
                else pl.col("label") >= float(positive_threshold))
        rows = (rows.filter(keep).with_columns(pl.lit(1.0).alias("label"))
                .unique(["user_id", "item_id", _PART], keep="first", maintain_order=True))
    order = list(files)
    pool_rows = rows.filter(pl.col(_PART) == 0)  # the training file's rows ...
    if has_mar:
        pool_rows = pool_rows.filter(~pl.col("mar"))  # ... that are not missing-at-random
    counts = pool_rows.group_by("user_id").len()
    keep_users = counts.filter(pl.col("len") >= int(min_interactions))["user_id"]
    rows = rows.filter(pl.col("user_id").is_in(keep_users.implode()))
    if rows.height == 0 or keep_users.len() == 0:
        raise SpecError(message("train.data.min_interactions", "a value some users reach",
                                min_interactions, "lower it"))
    rows, user_ids, item_ids = reindex(rows)
    mar = rows["mar"] if has_mar else pl.Series("mar", np.zeros(rows.height, dtype=bool))
    keep_cols = [c for c in ("user_id", "item_id", "label", "propensity", "event_time_ms")
                 if c in rows.columns]

    def part(key: str, *, marked: bool = False) -> pl.DataFrame:
        mask = (rows[_PART] == order.index(key)) & (mar if marked else ~mar)
        return rows.filter(mask).select(keep_cols)

    first = order[0]
    pool = part(first)
    held_valid = part("valid_path") if "valid_path" in order else None
    held_test = part("test_path") if "test_path" in order else None
    v = 0.0 if held_valid is not None else float(valid_fraction)
    t = 0.0 if (held_test is not None or has_mar) else float(test_fraction)
    try:
        fractions = check_fractions((1.0 - v - t, v, t))
    except ValueError as exc:
        raise SpecError(f"train.data.valid_fraction/test_fraction: {exc}") from None
    if split == "random":
        train, valid, test = split_per_user(pool, fractions, seed)
    else:
        if "event_time_ms" not in pool.columns:
            raise SpecError(message("train.data.split", "a timestamp column for a time split",
                                    repr(split), "map columns.timestamp or use split = "
                                    "\"random\""))
        train, valid, test = split_by_time(pool, fractions, per_user=split == "time_per_user")
    valid = held_valid if held_valid is not None else valid
    mar_sample = None
    if has_mar:
        marked = pl.concat([part(key, marked=True) for key in order])
        test, mar_sample = draw_mar_sample(marked, float(mar_sample_fraction), mar_sample_scope,
                                           seed + 1)
    elif held_test is not None:
        test = held_test
    user_features = item_features = None
    if user_features_path is not None:
        user_features = _features("user_features_path", user_features_path, None,
                                  str(mapping["user"]), user_ids)
    if item_features_path is not None:
        item_features = _features("item_features_path", item_features_path, None,
                                  str(mapping["item"]), item_ids)
    integer_items = np.issubdtype(np.asarray(item_ids).dtype, np.integer)
    return Dataset(
        name=name,
        task=task,  # type: ignore[arg-type]
        n_users=len(user_ids),
        n_items=len(item_ids),
        train=train,
        valid=valid,
        test=test,
        user_features=user_features,
        item_features=item_features,
        mar_sample=mar_sample,
        user_ids=tuple(str(u) for u in user_ids),
        item_ids=tuple(int(i) for i in item_ids) if integer_items else None,
        lineage={
            "data_source": "table",
            "columns": json.dumps({k: v for k, v in mapping.items() if v}, sort_keys=True),
            "task": task,
            "split": split if not has_mar else f"{split}_train_mar_test",
            "seed": str(seed),
            "valid_fraction": str(v),
            "test_fraction": str(t),
            "min_interactions": str(int(min_interactions)),
            "mar_sample_fraction": str(mar_sample_fraction),
            "mar_sample_scope": mar_sample_scope,
            "item_ids": "raw" if integer_items else "contiguous (non-integer raw ids)",
        },
    )
