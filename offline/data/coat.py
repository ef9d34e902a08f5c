"""Coat shopping ratings (Schnabel et al., ICML 2016): loader and the rating / implicit data sets.

Layout of ``root`` (as shipped; /work/shared/data/SOURCES.md): dense ASCII matrices, one row per
user (or item), space-separated numbers, 0 = missing:

- ``train.ascii``: missing-not-at-random ratings 1..5 (users x items; 24 per user in the release);
- ``test.ascii``: missing-at-random ratings 1..5 (16 per user);
- ``propensities.ascii``: P(observed) of every cell (the authors' logistic regression);
- ``user_item_features/user_features.ascii`` and ``item_features.ascii``: one-hot features.

Any shape works as long as the files agree (tests use small generated files). A malformed file
raises ``ValueError`` naming the file and the 1-based line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from offline.data.noise import inject_noise
from offline.data.splits import reindex, split_per_user
from offline.data.table import draw_mar_sample
from offline.dataset import Dataset, interactions_frame

__all__ = [
    "CoatData",
    "coat_implicit_dataset",
    "coat_rating_dataset",
    "load_coat",
    "read_matrix",
]

COAT_MIN_INTERACTIONS = 5
"""Default minimum of positives (rating >= 4) per user for the implicit set: on the real data it
keeps 222 of 290 users and 2,498 of 2,674 positives (10, the PLD protocol's, keeps 110 users)."""


@dataclass(frozen=True, eq=False)
class CoatData:
    """Coat as shipped: ratings as interaction frames (label = rating 1..5, 0-based ids, with the
    cell's ``propensity``), the propensity matrix and the one-hot features."""

    train: pl.DataFrame
    test: pl.DataFrame
    propensities: np.ndarray
    user_features: np.ndarray
    item_features: np.ndarray

    @property
    def n_users(self) -> int:
        return int(self.propensities.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.propensities.shape[1])


def read_matrix(path: Path | str) -> np.ndarray:
    """A dense whitespace-separated numeric matrix; ``ValueError`` naming the file and 1-based line
    for a ragged row, a non-numeric or non-finite token, or an empty file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a numeric matrix")
    tokens = pl.Series("line", lines).str.extract_all(r"\S+")
    counts = tokens.list.len().to_numpy()
    width = int(counts[0])
    ragged = np.flatnonzero(counts != width)
    if width == 0 or ragged.size:
        line = 1 if width == 0 else int(ragged[0]) + 1
        raise ValueError(
            f"{path}, line {line}: expected {width or 'at least one'} columns like line 1, "
            f"got {counts[line - 1]}"
        )
    flat = tokens.explode()
    values = flat.cast(pl.Float64, strict=False).to_numpy()
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        index = int(bad[0])
        raise ValueError(
            f"{path}, line {index // width + 1}, column {index % width + 1}: expected a finite "
            f"number, got {flat[index]!r}"
        )
    return values.reshape(len(lines), width)


def _check_rows(path: Path, matrix: np.ndarray, rows: int, like: str) -> None:
    if matrix.shape[0] != rows:
        line = min(matrix.shape[0], rows) + 1
        raise ValueError(
            f"{path}, line {line}: expected {rows} rows like {like}, got {matrix.shape[0]}"
        )


def _check_cells(path: Path, bad: np.ndarray, matrix: np.ndarray, expected: str) -> None:
    """``ValueError`` at the first cell flagged in ``bad`` (row-major, as the file reads)."""
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{path}, line {row + 1}, column {column + 1}: expected {expected}, "
            f"got {matrix[row, column]!r}"
        )


def _ratings(path: Path) -> np.ndarray:
    matrix = read_matrix(path)
    bad = (matrix != np.round(matrix)) | (matrix < 0) | (matrix > 5)
    _check_cells(path, bad, matrix, "an integer rating in 0..5 (0 = missing)")
    return matrix


def _frame(ratings: np.ndarray, propensities: np.ndarray) -> pl.DataFrame:
    users, items = np.nonzero(ratings)
    return interactions_frame(
        users, items, ratings[users, items], propensity=propensities[users, items]
    )


def load_coat(root: Path | str) -> CoatData:
    """Coat from ``root`` (see the module docs for the layout), every file validated."""
    root = Path(root)
    train_path, test_path = root / "train.ascii", root / "test.ascii"
    train = _ratings(train_path)
    test = _ratings(test_path)
    if test.shape[1] != train.shape[1]:
        raise ValueError(
            f"{test_path}, line 1: expected {train.shape[1]} columns like {train_path.name}, "
            f"got {test.shape[1]}"
        )
    _check_rows(test_path, test, train.shape[0], train_path.name)
    prop_path = root / "propensities.ascii"
    propensities = read_matrix(prop_path)
    _check_rows(prop_path, propensities, train.shape[0], train_path.name)
    if propensities.shape[1] != train.shape[1]:
        raise ValueError(
            f"{prop_path}, line 1: expected {train.shape[1]} columns like {train_path.name}, "
            f"got {propensities.shape[1]}"
        )
    _check_cells(
        prop_path, ~((propensities > 0) & (propensities <= 1)), propensities,
        "a propensity in (0, 1]",
    )
    features = root / "user_item_features"
    user_path, item_path = features / "user_features.ascii", features / "item_features.ascii"
    user_features = read_matrix(user_path)
    _check_rows(user_path, user_features, train.shape[0], f"{train_path.name} (users)")
    item_features = read_matrix(item_path)
    _check_rows(item_path, item_features, train.shape[1], f"{train_path.name}'s columns (items)")
    return CoatData(
        train=_frame(train, propensities),
        test=_frame(test, propensities),
        propensities=propensities,
        user_features=user_features,
        item_features=item_features,
    )


def _check_fraction(name: str, value: float, upper: float = 1.0) -> float:
    if not (np.isfinite(value) and 0 <= value < upper):
        raise ValueError(f"{name}: expected a fraction in [0, {upper}), got {value!r}")
    return float(value)


def coat_rating_dataset(
    root: Path | str,
    seed: int = 0,
    valid_fraction: float = 0.1,
    mar_sample_fraction: float = 0.0,
    mar_sample_scope: str = "global",
) -> Dataset:
    """Coat for rating prediction under selection bias: train on the MNAR ratings (minus a
    per-user random ``valid_fraction`` held out as valid), test on the MAR ratings (minus a
    random ``mar_sample_fraction`` of them moved to ``mar_sample`` for Naive Bayes propensities:
    drawn over all MAR ratings with ``mar_sample_scope = "global"``, round-half-up(fraction × n)
    and at least 1, or per user with ``"per_user"``, round-half-up(fraction × the user's MAR
    ratings) each; see ``offline.data.table.draw_mar_sample``)."""
    valid_fraction = _check_fraction("valid_fraction", valid_fraction)
    mar_sample_fraction = _check_fraction("mar_sample_fraction", mar_sample_fraction)
    coat = load_coat(root)
    train, valid, _ = split_per_user(coat.train, (1 - valid_fraction, valid_fraction, 0.0), seed)
    test, mar_sample = draw_mar_sample(coat.test, mar_sample_fraction, mar_sample_scope, seed + 1)
    return Dataset(
        name="coat",
        task="rating",
        n_users=coat.n_users,
        n_items=coat.n_items,
        train=train,
        valid=valid,
        test=test,
        user_features=coat.user_features,
        item_features=coat.item_features,
        propensity_matrix=coat.propensities,
        mar_sample=mar_sample,
        lineage={
            "data_source": "coat",
            "split": "mnar_train_mar_test",
            "seed": str(seed),
            "valid_fraction": str(valid_fraction),
            "mar_sample_fraction": str(mar_sample_fraction),
            **({"mar_sample_scope": mar_sample_scope} if mar_sample_fraction else {}),
        },
    )


def coat_implicit_dataset(
    root: Path | str,
    seed: int = 0,
    noise_ratio: float = 0.0,
    min_interactions: int = COAT_MIN_INTERACTIONS,
    positive_threshold: float = 4,
) -> Dataset:
    """Coat as implicit feedback for denoising (PLD protocol): positives are the rated cells
    (MNAR ∪ MAR) with rating >= ``positive_threshold``; users with at least ``min_interactions``
    positives, re-indexed 0..n-1 (items keep their ids); a per-user random 70/10/20 split; noise
    at ``noise_ratio`` injected into train only (``noise`` column, False for real positives)."""
    if isinstance(min_interactions, bool) or int(min_interactions) != min_interactions or (
        min_interactions < 1
    ):
        raise ValueError(f"min_interactions: expected a positive integer, got {min_interactions!r}")
    coat = load_coat(root)
    positives = (
        pl.concat([coat.train, coat.test])
        .filter(pl.col("label") >= positive_threshold)
        .select("user_id", "item_id")
        .unique()
        .sort("user_id", "item_id")
        .filter(pl.len().over("user_id") >= int(min_interactions))
        .with_columns(pl.lit(1.0).alias("label"))
    )
    if positives.height == 0:
        raise ValueError(
            f"{root}: no user has {min_interactions} ratings >= {positive_threshold}; lower "
            "min_interactions or positive_threshold"
        )
    positives, user_ids, _ = reindex(positives, items=False)
    train, valid, test = split_per_user(positives, (0.7, 0.1, 0.2), seed)
    train = inject_noise(train, positives, coat.n_items, noise_ratio, seed)
    no_noise = pl.lit(False).alias("noise")
    return Dataset(
        name="coat_implicit",
        task="implicit",
        n_users=len(user_ids),
        n_items=coat.n_items,
        train=train,
        valid=valid.with_columns(no_noise),
        test=test.with_columns(no_noise),
        user_features=coat.user_features[user_ids],
        item_features=coat.item_features,
        propensity_matrix=coat.propensities[user_ids],
        user_ids=tuple(str(int(u)) for u in user_ids),
        lineage={
            "data_source": "coat",
            "split": "per_user_random_70_10_20",
            "seed": str(seed),
            "noise_ratio": str(noise_ratio),
            "min_interactions": str(int(min_interactions)),
            "positive_threshold": str(positive_threshold),
        },
    )
