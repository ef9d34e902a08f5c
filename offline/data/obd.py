"""The Open Bandit Dataset as an implicit-feedback data set with logged propensities.

``recsys.obd`` reads and validates the files; this module turns one policy's logs into an
``offline.dataset.Dataset``: users are the distinct user-feature tuples, items carry
``item_context.csv``'s features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from offline.data.splits import split_by_time, split_per_user
from offline.dataset import Dataset
from recsys.obd import USER_FEATURES, load_item_context, load_obd
from recsys.validation import message

__all__ = ["obd_dataset"]


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
        raise ValueError(message("split", "'time' or 'user'", repr(split)))
    logs = load_obd(root, policy, campaign)
    context = load_item_context(root, policy, campaign)
    n_items = context.height
    if logs["item_id"].max() >= n_items:
        raise ValueError(
            message(f"{root}", f"logged item ids below the {n_items} items of item_context.csv",
                    f"item {logs['item_id'].max()}")
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
