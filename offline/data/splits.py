"""Filters, contiguous re-indexing and train/valid/test splits of interaction frames.

All of it is vectorised (polars window expressions over a random key or a time column), so the
cost is a few sorts whatever the number of users. Cut rule, shared by every split: a group of
``n`` rows ranked ``0..n-1`` puts rank ``r`` in train when ``r < round(f_train * n)``, in valid
when ``r < round((f_train + f_valid) * n)`` and in test otherwise (``round`` is half-up). Per-user
splits keep at least one train row per user, so every user of valid/test is known to training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from recsys.validation import message

__all__ = [
    "check_fractions",
    "filter_min_interactions",
    "reindex",
    "split_by_time",
    "split_per_user",
]

_RANK = "__rank"
_COUNT = "__count"
_PART = "__part"


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``fractions`` as a (train, valid, test) triple, or ``ValueError`` saying what is wrong."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise ValueError(message("fractions", "(train, valid, test)", f"{len(values)} values"))
    if not all(np.isfinite(values)) or min(values) < 0:
        raise ValueError(message("fractions", "non-negative numbers", values))
    if values[0] <= 0:
        raise ValueError(message("fractions", "a train fraction > 0", values))
    if abs(sum(values) - 1.0) > 1e-9:
        raise ValueError(message("fractions", "a sum of 1", f"{values} (sum {sum(values)})"))
    return values  # type: ignore[return-value]


def filter_min_interactions(frame: pl.DataFrame, min_per_user: int) -> pl.DataFrame:
    """The rows of users with at least ``min_per_user`` rows (one pass, not an iterated k-core)."""
    if isinstance(min_per_user, bool) or int(min_per_user) != min_per_user or min_per_user < 1:
        raise ValueError(message("min_per_user", "a positive integer", repr(min_per_user)))
    return frame.filter(pl.len().over("user_id") >= int(min_per_user))


def reindex(
    frame: pl.DataFrame, *, users: bool = True, items: bool = True
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """``frame`` with contiguous ``user_id``/``item_id`` (0..n-1, in sorted order of the raw ids),
    and the raw ids: ``user_ids[new_id]`` is the original (strings stay strings).

    With ``users=False`` (``items=False``) that column is left as it is and its returned array is
    the sorted distinct raw ids present, unused.
    """
    mapped: dict[str, np.ndarray] = {}
    columns = []
    for name, enabled in (("user_id", users), ("item_id", items)):
        if name not in frame.columns:
            raise ValueError(message("frame", f"a {name} column", f"columns {frame.columns}"))
        raw = frame[name]
        if raw.null_count():
            raise ValueError(message(f"frame.{name}", "no nulls", f"{raw.null_count()} nulls"))
        mapped[name] = np.asarray(raw.unique().sort().to_list())
        if enabled:
            columns.append((pl.col(name).rank("dense") - 1).cast(pl.Int64).alias(name))
    return frame.with_columns(columns), mapped["user_id"], mapped["item_id"]


def _parts(fractions: tuple[float, float, float], keep_one_train: bool) -> pl.Expr:
    """0/1/2 (train/valid/test) from the ``_RANK`` and ``_COUNT`` columns by the cut rule."""
    n = pl.col(_COUNT).cast(pl.Float64)
    train_end = (n * fractions[0] + 0.5).floor()
    if keep_one_train:
        train_end = pl.max_horizontal(train_end, pl.lit(1.0))
    valid_end = pl.max_horizontal((n * (fractions[0] + fractions[1]) + 0.5).floor(), train_end)
    rank = pl.col(_RANK).cast(pl.Float64)
    return (
        pl.when(rank < train_end).then(0).when(rank < valid_end).then(1).otherwise(2).alias(_PART)
    )


def _split(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return tuple(  # type: ignore[return-value]
        frame.filter(pl.col(_PART) == part).drop(_RANK, _COUNT, _PART) for part in range(3)
    )


def split_per_user(
    frame: pl.DataFrame, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Each user's rows shuffled (a random key per row) and cut by ``fractions``; every user keeps
    at least one train row. Deterministic for a given frame (row order included) and ``seed``."""
    fr = check_fractions(fractions)
    key = np.random.default_rng(seed).random(frame.height)
    ranked = frame.with_columns(pl.Series("__key", key)).with_columns(
        (pl.col("__key").rank("ordinal").over("user_id") - 1).alias(_RANK),
        pl.len().over("user_id").alias(_COUNT),
    )
    return _split(ranked.drop("__key").with_columns(_parts(fr, keep_one_train=True)))


def split_by_time(
    frame: pl.DataFrame,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    *,
    time_column: str = "event_time_ms",
    per_user: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Rows ordered by ``time_column`` and cut by ``fractions``: global cut points (the oldest
    70% of all rows train, ...) or, with ``per_user``, each user's own oldest rows train (at least
    one). Rows with equal times are ordered as they come, so a cut can fall between them."""
    fr = check_fractions(fractions)
    if time_column not in frame.columns:
        raise ValueError(message("time_column", "a column of frame", repr(time_column)))
    if frame[time_column].null_count():
        raise ValueError(
            message(f"frame.{time_column}", "no nulls", f"{frame[time_column].null_count()} nulls")
        )
    over = "user_id" if per_user else None
    rank = pl.struct(pl.col(time_column), pl.int_range(pl.len()).alias("__row")).rank("ordinal")
    ranked = frame.with_columns(
        ((rank.over(over) if over else rank) - 1).alias(_RANK),
        (pl.len().over(over) if over else pl.len()).alias(_COUNT),
    )
    return _split(ranked.with_columns(_parts(fr, keep_one_train=per_user)))
