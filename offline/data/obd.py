"""Open Bandit Dataset (Saito et al., ZOZOTOWN): typed, validated logs and an implicit data set.

Layout of ``root`` (the ``obd`` folder; /work/shared/data/SOURCES.md)::

    <root>/<policy>/<campaign>/<campaign>.csv         logs: unnamed index, timestamp, item_id,
                                                      position (1-based), click, propensity_score,
                                                      user_feature_0..3, user-item_affinity_*
    <root>/<policy>/<campaign>/item_context.csv       unnamed index, item_id, item_feature_0..3

``policy`` is ``random`` (uniform) or ``bts`` (Bernoulli Thompson sampling). Every value is
checked; a bad one raises ``ValueError`` naming the file and the 1-based line (line 1 is the
header).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from offline.data.splits import split_by_time, split_per_user
from offline.dataset import Dataset

__all__ = ["POLICIES", "USER_FEATURES", "load_item_context", "load_obd", "obd_dataset"]

POLICIES = ("random", "bts")
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
_AFFINITY = "user-item_affinity_"


def _path(root: Path | str, policy: str, campaign: str, name: str) -> Path:
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    path = Path(root) / policy / campaign / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: Open Bandit Dataset file not found (root is the obd folder)"
        )
    return path


def _read_text_csv(path: Path, required: tuple[str, ...]) -> pl.DataFrame:
    """The CSV with every column as text (so a bad value can be located, not guessed at)."""
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}, line 1: missing the columns {missing}")
    return frame


def _cast(path: Path, frame: pl.DataFrame, casts: dict[str, pl.Expr]) -> pl.DataFrame:
    """Apply ``casts`` (expressions over the text columns); the first value that is null or does
    not parse raises ``ValueError`` with its file, line and column."""
    typed = frame.select(**casts)
    for name in casts:
        bad = np.flatnonzero(typed[name].is_null().to_numpy())
        if bad.size:
            row = int(bad[0])
            source = name if name in frame.columns else _SOURCE.get(name, name)
            expected = _EXPECTED.get(name, "a number")
            raise ValueError(
                f"{path}, line {row + 2}, column {source!r}: expected {expected}, "
                f"got {frame[source][row]!r}"
            )
    return typed


_SOURCE = {"event_time_ms": "timestamp"}
_EXPECTED = {
    "event_time_ms": "a timestamp like 2019-11-24 00:00:00.000000+00:00",
    "item_id": "a non-negative integer item id",
    "position": "a position 1, 2, 3, ...",
    "click": "a click 0 or 1",
    "propensity_score": "a propensity in (0, 1]",
}


def load_obd(root: Path | str, policy: str = "random", campaign: str = "all") -> pl.DataFrame:
    """One logging policy's logs, one row per shown item: ``event_time_ms`` (Int64, from
    ``timestamp``), ``item_id``, ``position`` (0-based), ``click`` (Int64 0/1),
    ``propensity_score`` (Float64), ``user_feature_0..3`` (hashed categoricals, text) and the
    ``user-item_affinity_*`` columns (Float64)."""
    path = _path(root, policy, campaign, f"{campaign}.csv")
    required = ("timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES)
    text = _read_text_csv(path, required)
    affinities = [c for c in text.columns if c.startswith(_AFFINITY)]
    item = pl.col("item_id").cast(pl.Int64, strict=False)
    position = pl.col("position").cast(pl.Int64, strict=False)
    click = pl.col("click").cast(pl.Int64, strict=False)
    score = pl.col("propensity_score").cast(pl.Float64, strict=False)
    casts = {
        "event_time_ms": pl.col("timestamp")
        .str.to_datetime(time_zone="UTC", time_unit="us", strict=False)
        .dt.epoch("ms"),
        "item_id": pl.when(item >= 0).then(item),
        "position": pl.when(position >= 1).then(position - 1),
        "click": pl.when(click.is_in([0, 1])).then(click),
        "propensity_score": pl.when((score > 0) & (score <= 1)).then(score),
        **{name: pl.col(name).str.strip_chars().replace("", None) for name in USER_FEATURES},
        **{
            name: pl.when(pl.col(name).cast(pl.Float64, strict=False).is_finite()).then(
                pl.col(name).cast(pl.Float64, strict=False)
            )
            for name in affinities
        },
    }
    return _cast(path, text, casts)


def load_item_context(
    root: Path | str, policy: str = "random", campaign: str = "all"
) -> pl.DataFrame:
    """Item features: ``item_id`` (Int64, exactly 0..n_items-1 in any order) and
    ``item_feature_*`` (numbers as Float64, hashed categoricals as text), sorted by item."""
    path = _path(root, policy, campaign, "item_context.csv")
    text = _read_text_csv(path, ("item_id",))
    features = [c for c in text.columns if c.startswith("item_feature_")]
    if not features:
        raise ValueError(f"{path}, line 1: expected item_feature_* columns")
    item = pl.col("item_id").cast(pl.Int64, strict=False)
    casts: dict[str, pl.Expr] = {"item_id": pl.when(item >= 0).then(item)}
    for name in features:
        numeric = text[name].cast(pl.Float64, strict=False)
        if numeric.null_count() == 0 and numeric.is_finite().all():
            casts[name] = pl.col(name).cast(pl.Float64)
        else:  # a hashed categorical
            casts[name] = pl.col(name).str.strip_chars().replace("", None)
    frame = _cast(path, text, casts)
    ids = np.sort(frame["item_id"].to_numpy())
    if not np.array_equal(ids, np.arange(frame.height)):
        raise ValueError(
            f"{path}: expected item_id to be exactly 0..{frame.height - 1} (one row per item)"
        )
    return frame.sort("item_id")


def _item_features(context: pl.DataFrame) -> np.ndarray:
    """Numeric features as they are, categorical ones one-hot (sorted categories)."""
    numeric = [c for c, t in context.schema.items() if c != "item_id" and t == pl.Float64]
    categorical = [c for c, t in context.schema.items() if t == pl.String]
    parts = [context.select(numeric).to_numpy()] if numeric else []
    if categorical:
        parts.append(_one_hot(context.select(categorical)))
    return np.hstack(parts).astype(np.float64)


def _one_hot(frame: pl.DataFrame) -> np.ndarray:
    """Every column one-hot over its sorted distinct values, side by side."""
    blocks = []
    for name in frame.columns:
        values = frame[name].to_numpy()
        blocks.append(values[:, None] == np.unique(values)[None, :])
    return np.hstack(blocks).astype(np.float64)


def obd_dataset(
    root: Path | str,
    policy: str = "random",
    seed: int = 0,
    split: Literal["time", "user"] = "time",
    campaign: str = "all",
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
) -> Dataset:
    """OBD as implicit feedback with logged propensities: ``user_id`` is the id of the distinct
    user-feature tuple (dense, in sorted order), ``label`` the click, ``propensity`` the logged
    ``propensity_score``, plus ``event_time_ms`` and ``position`` (0-based); split by time
    (global cut points) or per user at random. User features: the tuple one-hot; item features:
    ``item_context.csv`` (numeric as is, categorical one-hot)."""
    if split not in ("time", "user"):
        raise ValueError(f"split: expected 'time' or 'user', got {split!r}")
    logs = load_obd(root, policy, campaign)
    context = load_item_context(root, policy, campaign)
    n_items = context.height
    if logs["item_id"].max() >= n_items:
        raise ValueError(
            f"{root}: logs hold item {logs['item_id'].max()} but item_context.csv has "
            f"{n_items} items"
        )
    key = pl.concat_str(list(USER_FEATURES), separator="|")
    frame = logs.select(
        (key.rank("dense") - 1).cast(pl.Int64).alias("user_id"),
        "item_id",
        pl.col("click").cast(pl.Float64).alias("label"),
        pl.col("propensity_score").alias("propensity"),
        "event_time_ms",
        "position",
    )
    users = (
        logs.select(key.rank("dense").alias("rank"), *USER_FEATURES)
        .unique("rank")
        .sort("rank")
        .drop("rank")
    )
    user_features = _one_hot(users)
    if split == "time":
        train, valid, test = split_by_time(frame, fractions)
    else:
        train, valid, test = split_per_user(frame, fractions, seed)
    return Dataset(
        name=f"obd_{policy}_{campaign}",
        task="implicit",
        n_users=users.height,
        n_items=n_items,
        train=train,
        valid=valid,
        test=test,
        user_features=user_features,
        item_features=_item_features(context),
        lineage={
            "data_source": "obd",
            "policy": policy,
            "campaign": campaign,
            "split": split,
            "seed": str(seed),
            "rows": str(frame.height),
        },
    )
