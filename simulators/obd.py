"""Open Bandit Dataset (ZOZOTOWN, Saito et al.) loader, in the project's log-frame layout.

Reads ``<root>/obd/<behavior_policy>/<campaign>/all.csv`` (and ``item_context.csv``) as shipped by
OBD: an unnamed index, ``timestamp``, ``item_id``, ``position`` (1-based), ``click``,
``propensity_score``, ``user_feature_0..3`` (hashed categoricals) and ``user-item_affinity_*``.
The frame keeps OBD's columns and adds the lake schema's names (``recsys.schema``) for what it
has: ``request_id`` (row index as text), ``event_time_ms``, ``position`` 0-based, ``reward``
(OBD's ``click`` as a float), ``propensity`` and ``policy_name``, so ``recsys.ope``'s frame
adapter reads it without a ``columns`` override. It has no dense context (its user features are
hashed categoricals; see ``user_context``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

BEHAVIOR_POLICIES = ("random", "bts")
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))


def obd_dir(shared_data: Path | str) -> Path:
    """The ``obd`` folder inside the shared data folder."""
    return Path(shared_data) / "obd"


def load_obd(
    shared_data: Path | str, behavior_policy: str = "random", campaign: str = "all"
) -> pl.DataFrame:
    """One behaviour policy's logs as a frame (one row per shown item)."""
    if behavior_policy not in BEHAVIOR_POLICIES:
        raise ValueError(
            f"`behavior_policy` must be one of {BEHAVIOR_POLICIES}, got {behavior_policy!r}"
        )
    path = obd_dir(shared_data) / behavior_policy / campaign / f"{campaign}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"Open Bandit Dataset logs not found at {path}")
    frame = pl.read_csv(path, infer_schema_length=10_000)
    index = frame.columns[0]
    required = {"timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES}
    missing = sorted(required - set(frame.columns))
    if missing:
        raise ValueError(f"{path} lacks the OBD columns {missing}")
    return frame.with_columns(
        pl.col(index).cast(pl.Utf8).alias("request_id"),
        (pl.col("timestamp").str.to_datetime(time_zone="UTC", time_unit="us").dt.epoch("ms")).alias(
            "event_time_ms"
        ),
        (pl.col("position") - 1).alias("position"),
        pl.col("click").cast(pl.Float64).alias("reward"),
        pl.col("propensity_score").alias("propensity"),
        pl.lit(f"obd_{behavior_policy}").alias("policy_name"),
    )


def load_item_context(
    shared_data: Path | str, behavior_policy: str = "random", campaign: str = "all"
) -> pl.DataFrame:
    """Item features (``item_id``, ``item_feature_0..3``)."""
    path = obd_dir(shared_data) / behavior_policy / campaign / "item_context.csv"
    if not path.is_file():
        raise FileNotFoundError(f"OBD item context not found at {path}")
    frame = pl.read_csv(path)
    return frame.drop(frame.columns[0]) if frame.columns[0] in ("", "column_0") else frame


def load_action_dist(path: Path | str, n_items: int | None = None) -> np.ndarray:
    """A context-free evaluation policy from ``item_id, position_index, probability`` rows, as an
    (n_items, len_list) matrix (e.g. ``obd/bts_action_dist.csv``)."""
    frame = pl.read_csv(path)
    for column in ("item_id", "position_index", "probability"):
        if column not in frame.columns:
            raise ValueError(f"{path} lacks the column `{column}`")
    items = frame["item_id"].to_numpy()
    positions = frame["position_index"].to_numpy()
    n_items = int(items.max()) + 1 if n_items is None else n_items
    dist = np.zeros((n_items, int(positions.max()) + 1))
    dist[items, positions] = frame["probability"].to_numpy()
    sums = dist.sum(axis=0)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise ValueError(f"{path}: probabilities per position must sum to 1, got {sums}")
    return dist / sums


def user_context(frame: pl.DataFrame) -> np.ndarray:
    """One-hot encoding of the hashed user features: the context a reward model can use."""
    return frame.select(USER_FEATURES).to_dummies().to_numpy().astype(float)


def choice_data(frame: pl.DataFrame) -> dict[str, np.ndarray | int]:
    """OBD rows as slate-choice logs for ``SlateChoiceModel``: each row is a slate of one item at
    its position; users are the distinct combinations of the hashed user features."""
    user_index = frame.select(
        pl.concat_str(list(USER_FEATURES), separator="|").rank("dense") - 1
    ).to_series()
    return {
        "user_index": user_index.to_numpy().astype(np.int64),
        "slates": frame["item_id"].to_numpy().astype(np.int64)[:, None],
        "positions": frame["position"].to_numpy().astype(np.int64)[:, None],
        "clicked": np.where(frame["reward"].to_numpy() > 0, 0, -1),
        "n_users": int(user_index.max()) + 1,
    }
