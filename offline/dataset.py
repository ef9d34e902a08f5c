"""One experiment's data, as every part of the offline pipeline sees it.

Loaders (Coat, the Open Bandit Dataset, FINN.no slates, the lake, simulated logs) and splits
produce a ``Dataset``; propensity estimators, objectives, trainers and metrics consume it. Ids are
contiguous integers ``0..n_users-1`` and ``0..n_items-1`` (loaders map raw ids).

Frames (``train``, ``valid``, ``test``, ``mar_sample``) share one column contract:

- ``user_id`` Int64, ``item_id`` Int64, ``label`` Float64: a rating (task ``"rating"``) or a
  0/1 outcome (task ``"implicit"``; positives-only frames hold only 1.0);
- optional ``propensity`` Float64: P(the pair is observed / the item is shown), when known;
- optional ``noise`` Boolean: ground truth that the interaction is noise (injected or accidental);
- optional ``event_time_ms`` Int64.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from recsys.validation import message

Task = Literal["rating", "implicit"]
TASKS: tuple[str, ...] = ("rating", "implicit")

REQUIRED_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.Int64(),
    "item_id": pl.Int64(),
    "label": pl.Float64(),
}
OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "propensity": pl.Float64(),
    "noise": pl.Boolean(),
    "event_time_ms": pl.Int64(),
}
RUN_LINEAGE: frozenset[str] = frozenset({"seed", "lake_uri"})
"""Lineage keys that describe a run or a location, not the data (left out of the data hash)."""


def interactions_frame(
    user_id: np.ndarray,
    item_id: np.ndarray,
    label: np.ndarray | None = None,
    **optional: np.ndarray,
) -> pl.DataFrame:
    """A frame in the interaction contract from arrays (``label`` defaults to 1.0)."""
    columns: dict[str, pl.Series] = {
        "user_id": pl.Series(np.asarray(user_id), dtype=pl.Int64),
        "item_id": pl.Series(np.asarray(item_id), dtype=pl.Int64),
        "label": pl.Series(
            np.ones(len(user_id)) if label is None else np.asarray(label), dtype=pl.Float64
        ),
    }
    for name, values in optional.items():
        if name not in OPTIONAL_COLUMNS:
            raise ValueError(
                message("optional", f"columns among {', '.join(OPTIONAL_COLUMNS)}", repr(name))
            )
        columns[name] = pl.Series(np.asarray(values), dtype=OPTIONAL_COLUMNS[name])
    return pl.DataFrame(columns)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions split into train/valid/test plus whatever side information the source has."""

    name: str
    task: Task
    n_users: int
    n_items: int
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    user_features: np.ndarray | None = None
    """(n_users, n_user_features) float, when the source has user features."""
    item_features: np.ndarray | None = None
    """(n_items, n_item_features) float, when the source has item features."""
    propensity_matrix: np.ndarray | None = None
    """(n_users, n_items) P(observed), when the source ships one (Coat)."""
    mar_sample: pl.DataFrame | None = None
    """A small missing-at-random sample of labels (Naive Bayes propensities); never in ``test``."""
    true_relevance: np.ndarray | None = None
    """(n_users, n_items) ground-truth relevance (simulated data only)."""
    user_ids: tuple[str, ...] | None = None
    """The source's id of each contiguous user, when users were re-indexed (exported user
    tables are keyed by these)."""
    item_ids: tuple[int, ...] | None = None
    """The source's id of each contiguous item, when items were re-indexed (None: item ``j`` is
    the source's item ``j``). With ``user_ids``, the id maps a registered model is logged with."""
    lineage: Mapping[str, str] = field(default_factory=dict)
    """Where the data came from: ``data_source``, ``split``, ``noise_ratio``, lake offsets..."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(message("task", f"one of {TASKS}", repr(self.task)))
        for name, count in (("n_users", self.n_users), ("n_items", self.n_items)):
            if count < 1:
                raise ValueError(message(f"{self.name}.{name}", "an integer >= 1", count))
        frames = {"train": self.train, "valid": self.valid, "test": self.test}
        if self.mar_sample is not None:
            frames["mar_sample"] = self.mar_sample
        for part, frame in frames.items():
            check_interactions(frame, f"{self.name}.{part}", self.n_users, self.n_items)
        for name, rows in (("user_features", self.n_users), ("item_features", self.n_items)):
            array = getattr(self, name)
            if array is not None and (array.ndim != 2 or array.shape[0] != rows):
                raise ValueError(
                    message(f"{self.name}.{name}", f"shape ({rows}, n_features)",
                            f"shape {array.shape}")
                )
        if self.user_ids is not None and len(self.user_ids) != self.n_users:
            raise ValueError(
                message(f"{self.name}.user_ids", f"one id for each of the {self.n_users} users",
                        f"{len(self.user_ids)} ids")
            )
        if self.item_ids is not None and len(self.item_ids) != self.n_items:
            raise ValueError(
                message(f"{self.name}.item_ids", f"one id for each of the {self.n_items} items",
                        f"{len(self.item_ids)} ids")
            )
        for name in ("propensity_matrix", "true_relevance"):
            array = getattr(self, name)
            if array is not None and array.shape != (self.n_users, self.n_items):
                raise ValueError(
                    message(f"{self.name}.{name}", f"shape ({self.n_users}, {self.n_items})",
                            f"shape {array.shape}")
                )

    def fingerprint(self) -> str:
        """A short hash of the data itself: every row of every split as one multiset
        (``user_id``, ``item_id``, ``label``; order and split assignment ignored), the feature
        arrays, and the data specification (``lineage`` without the run keys ``RUN_LINEAGE``: the
        seed and where the files live). The same data split the same way gets the same hash
        whatever the run's seed; rows drawn per seed (PLD-protocol noise injected into train)
        are rows of the data, so those hashes differ, as the data do."""
        digest = hashlib.sha256()
        parts = [self.train, self.valid, self.test]
        if self.mar_sample is not None:
            parts.append(self.mar_sample)
        rows = pl.concat([part.select(list(REQUIRED_COLUMNS)) for part in parts])
        digest.update(np.sort(rows.hash_rows(seed=0).to_numpy()).tobytes())
        for array in (self.user_features, self.item_features):
            if array is not None:
                digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        spec = {k: str(v) for k, v in self.lineage.items() if k not in RUN_LINEAGE}
        digest.update(json.dumps([self.task, self.n_users, self.n_items, spec],
                                 sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def split_fingerprint(self) -> str:
        """A short hash of the split: which rows are in train, valid and test, in order (random
        splits differ per seed; the data's own hash is :meth:`fingerprint`)."""
        digest = hashlib.sha256()
        for frame in (self.train, self.valid, self.test):
            digest.update(
                frame.select(list(REQUIRED_COLUMNS)).hash_rows(seed=0).to_numpy().tobytes()
            )
            digest.update(b"|")
        return digest.hexdigest()[:16]


def check_interactions(frame: pl.DataFrame, where: str, n_users: int, n_items: int) -> None:
    """Raise ``ValueError`` naming ``where`` if ``frame`` breaks the interaction contract."""
    for name, dtype in REQUIRED_COLUMNS.items():
        if name not in frame.columns:
            raise ValueError(message(f"{where}.{name}", f"a {dtype} column", "no such column"))
        if frame.schema[name] != dtype:
            raise ValueError(message(f"{where}.{name}", f"dtype {dtype}", frame.schema[name]))
    for name, dtype in OPTIONAL_COLUMNS.items():
        if name in frame.columns and frame.schema[name] != dtype:
            raise ValueError(message(f"{where}.{name}", f"dtype {dtype}", frame.schema[name]))
    if frame.height == 0:
        return
    for name, bound in (("user_id", n_users), ("item_id", n_items)):
        low, high = frame[name].min(), frame[name].max()
        if low < 0 or high >= bound:
            raise ValueError(
                message(f"{where}.{name}", f"ids in [0, {bound})", f"values in [{low}, {high}]")
            )
    if frame["label"].null_count() or not np.isfinite(frame["label"].to_numpy()).all():
        raise ValueError(message(f"{where}.label", "finite values", "nulls or non-finite values"))
    if "propensity" in frame.columns:
        p = frame["propensity"].to_numpy()
        bad = ~((p > 0) & (p <= 1))
        if bad.any():
            raise ValueError(
                message(f"{where}.propensity", "probabilities in (0, 1]",
                        f"{int(bad.sum())} values outside (e.g. {p[bad][0]!r})")
            )
