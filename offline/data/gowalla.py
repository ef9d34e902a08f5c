"""Gowalla check-ins (Cho et al., KDD 2011) in the recommender-literature split, under the PLD
protocol (Zhang et al., WWW 2025; /work/shared/papers/pld_denoising.md).

Files (as redistributed with the LightGCN++ code): ``train.txt``, ``valid.txt``, ``test.txt``,
one line per user ``user_id item_id item_id …`` (space-separated, ids from 0; a line may hold the
user alone). The published split is not the PLD one, so the three files are pooled per user
(repeated pairs kept once), users with at least ``min_interactions`` interactions kept, ids
re-indexed 0..n-1, each user's interactions split 70/10/20 at random, and ``noise_ratio`` ·
|train_u| never-interacted items added to each user's train rows only (``inject_noise``).

Reading is polars end to end: each line is one string, split and exploded, so there is no
per-line Python loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from offline.data.noise import inject_noise
from offline.data.splits import filter_min_interactions, reindex, split_per_user
from offline.dataset import Dataset
from recsys.validation import message

__all__ = ["GOWALLA_FILES", "GOWALLA_MIN_INTERACTIONS", "gowalla_dataset", "read_gowalla"]

GOWALLA_FILES: tuple[str, ...] = ("train.txt", "valid.txt", "test.txt")
GOWALLA_MIN_INTERACTIONS = 10
"""The PLD protocol keeps users with at least this many interactions."""


def _read_lines(path: Path) -> pl.DataFrame:
    """(user_id, item_id) Int64 pairs of one ``user item item …`` file."""
    lines = pl.read_csv(
        path, has_header=False, new_columns=["line"], separator="\n", quote_char=None,
        schema_overrides={"line": pl.String},
    )
    tokens = lines.select(
        pl.col("line").str.strip_chars().str.split(" ").list.eval(
            pl.element().filter(pl.element() != "")
        ).alias("ids")
    ).filter(pl.col("ids").list.len() > 0)
    try:
        pairs = (
            tokens.select(
                pl.col("ids").list.first().cast(pl.Int64).alias("user_id"),
                pl.col("ids").list.slice(1).alias("item_id"),
            )
            .explode("item_id")
            .drop_nulls("item_id")
            .with_columns(pl.col("item_id").cast(pl.Int64))
        )
    except pl.exceptions.InvalidOperationError as exc:
        raise ValueError(
            message(str(path), "lines of space-separated integer ids `user item item …`",
                    f"a non-integer token ({exc})")
        ) from exc
    if pairs.height and min(pairs["user_id"].min(), pairs["item_id"].min()) < 0:
        raise ValueError(message(str(path), "ids >= 0", "a negative id"))
    return pairs


def read_gowalla(root: Path | str) -> pl.DataFrame:
    """Every distinct (user_id, item_id) pair of the three files (raw ids), sorted."""
    root = Path(root)
    missing = [name for name in GOWALLA_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root}: Gowalla files {missing} not found (expected {', '.join(GOWALLA_FILES)}; "
            "set [train.data] path or RECSYS_SHARED_DATA)"
        )
    return pl.concat([_read_lines(root / name) for name in GOWALLA_FILES]).unique().sort(
        "user_id", "item_id"
    )


def gowalla_dataset(
    root: Path | str,
    seed: int = 0,
    noise_ratio: float = 0.0,
    min_interactions: int = GOWALLA_MIN_INTERACTIONS,
    max_users: int | None = None,
) -> Dataset:
    """Gowalla under the PLD protocol: pooled, users with >= ``min_interactions``, a per-user
    random 70/10/20 split with ``seed`` and PLD-protocol noise at ``noise_ratio`` in train only.
    ``max_users`` keeps a random subset of that many eligible users (a quick run; the subset is
    fixed by ``seed`` too); items are those the kept users interacted with."""
    pairs = filter_min_interactions(read_gowalla(root), min_interactions)
    if pairs.height == 0:
        raise ValueError(f"{root}: no user has {min_interactions} interactions; lower "
                         "min_interactions")
    if max_users is not None:
        if isinstance(max_users, bool) or int(max_users) != max_users or max_users < 1:
            raise ValueError(message("max_users", "a positive integer or None", repr(max_users)))
        users = pairs["user_id"].unique().sort().to_numpy()
        if max_users < users.size:
            keep = np.random.default_rng([seed, 1]).choice(users, int(max_users), replace=False)
            pairs = pairs.filter(pl.col("user_id").is_in(keep))
    positives, user_ids, item_ids = reindex(pairs.with_columns(pl.lit(1.0).alias("label")))
    train, valid, test = split_per_user(positives, (0.7, 0.1, 0.2), seed)
    train = inject_noise(train, positives, len(item_ids), noise_ratio, seed)
    no_noise = pl.lit(False).alias("noise")
    return Dataset(
        name="gowalla",
        task="implicit",
        n_users=len(user_ids),
        n_items=len(item_ids),
        train=train,
        valid=valid.with_columns(no_noise),
        test=test.with_columns(no_noise),
        user_ids=tuple(str(int(u)) for u in user_ids),
        item_ids=tuple(int(i) for i in item_ids),
        lineage={
            "data_source": "gowalla",
            "split": "per_user_random_70_10_20",
            "seed": str(seed),
            "noise_ratio": str(noise_ratio),
            "min_interactions": str(int(min_interactions)),
            "max_users": "all" if max_users is None else str(int(max_users)),
        },
    )
