"""PLD-protocol noise: random non-interacted items added to each user's training positives.

Protocol (Zhang et al., WWW 2025; /work/shared/papers/pld_denoising.md): for a ratio ``r``, each
user ``u`` gets ``int(r * |train_u|)`` items drawn uniformly without replacement from the items
``u`` never interacted with (in train, valid or test), added to train only with label 1.0 and
``noise=True``; valid and test stay clean.

Vectorised: each short user draws an oversample of random items at once (numpy), the interacted
items and repeats are removed with a polars anti-join and ``unique``, and the first draws are kept.
The (rare) users still short after a few rounds get an exact draw: a random key on every one of
their free items.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.validation import message

__all__ = ["inject_noise"]

_ROUNDS = 4


def inject_noise(
    train: pl.DataFrame,
    interacted: pl.DataFrame,
    n_items: int,
    ratio: float,
    seed: int = 0,
) -> pl.DataFrame:
    """``train`` with a ``noise`` column (False) followed by the injected rows (True).

    ``interacted`` holds every ``(user_id, item_id)`` a user interacted with (train ∪ valid ∪
    test; train is added anyway). Injected rows have label 1.0 and nulls in any other column of
    ``train``. Raises ``ValueError`` if a user has fewer never-interacted items than needed.
    """
    if not (np.isfinite(ratio) and ratio >= 0):
        raise ValueError(message("ratio", "a non-negative number", repr(ratio)))
    if isinstance(n_items, bool) or int(n_items) != n_items or n_items < 1:
        raise ValueError(message("n_items", "a positive integer", repr(n_items)))
    for name, frame in (("train", train), ("interacted", interacted)):
        missing = {"user_id", "item_id"} - set(frame.columns)
        if missing:
            raise ValueError(
                message(name, "user_id and item_id columns", f"no {sorted(missing)} columns")
            )
    clean = train.with_columns(pl.lit(False).alias("noise"))
    pairs = (
        pl.concat([train.select("user_id", "item_id"), interacted.select("user_id", "item_id")])
        .with_columns(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64))
        .unique()
    )
    if pairs.height and (pairs["item_id"].min() < 0 or pairs["item_id"].max() >= n_items):
        raise ValueError(
            message("train, interacted", f"item ids in [0, n_items) = [0, {n_items})",
                    f"ids in [{pairs['item_id'].min()}, {pairs['item_id'].max()}]",
                    "reindex first")
        )
    need = (
        train.group_by("user_id")
        .len()
        .with_columns(pl.col("user_id").cast(pl.Int64))
        .join(pairs.group_by("user_id").len().rename({"len": "used"}), on="user_id", how="left")
        .select(
            "user_id",
            # int(ratio * n) exactly as Python computes it (float product, then truncation)
            (pl.col("len").cast(pl.Float64) * float(ratio)).floor().cast(pl.Int64).alias("k"),
            (int(n_items) - pl.col("used")).alias("free"),
        )
        .filter(pl.col("k") > 0)
        .sort("user_id")  # group_by's order is arbitrary; the draws must not depend on it
    )
    short = need.filter(pl.col("free") < pl.col("k"))
    if short.height:
        row = short.row(0, named=True)
        raise ValueError(
            message("ratio", "a noise ratio every user has enough never-interacted items for",
                    f"{ratio}, which {short.height} users have fewer never-interacted items for "
                    f"(user {row['user_id']}: {row['free']} free, {row['k']} needed)",
                    "lower the ratio")
        )
    rng = np.random.default_rng(seed)
    picked: list[pl.DataFrame] = []
    todo = need
    for _ in range(_ROUNDS):
        if todo.height == 0:
            break
        # Draws so that about 1.5x the needed items survive the rejection of interacted ones.
        per_user = (
            todo["k"].to_numpy() * 1.5 * n_items / todo["free"].to_numpy()
        ).astype(np.int64) + 4
        users = np.repeat(todo["user_id"].to_numpy(), per_user)
        draws = pl.DataFrame(
            {
                "user_id": users,
                "item_id": rng.integers(0, n_items, size=users.size, dtype=np.int64),
                "__draw": np.arange(users.size, dtype=np.int64),
            }
        )
        kept = _first_k(draws.join(pairs, on=["user_id", "item_id"], how="anti"), todo)
        picked.append(kept)
        pairs = pl.concat([pairs, kept.select("user_id", "item_id")])
        todo = _still_short(todo, kept)
    if todo.height:
        picked.append(_exact(todo, pairs, n_items, rng))
    noise = (
        pl.concat(picked)
        .sort("user_id", "__draw")
        .select(
            pl.col("user_id").cast(train.schema["user_id"]),
            pl.col("item_id").cast(train.schema["item_id"]),
            pl.lit(1.0).cast(train.schema.get("label", pl.Float64)).alias("label"),
            pl.lit(True).alias("noise"),
        )
        if picked
        else clean.clear().select("user_id", "item_id", "label", "noise")
    )
    return pl.concat([clean, noise], how="diagonal_relaxed").select(clean.columns)


def _first_k(candidates: pl.DataFrame, todo: pl.DataFrame) -> pl.DataFrame:
    """Each user's first ``k`` distinct candidates in draw order (``k`` from ``todo``)."""
    return (
        candidates.sort("__draw")  # joins may reorder rows; "first" means first drawn
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
        .join(todo.select("user_id", "k"), on="user_id")
        .sort("user_id", "__draw")
        .filter(pl.int_range(pl.len()).over("user_id") < pl.col("k"))
        .select("user_id", "item_id", "__draw")
    )


def _still_short(todo: pl.DataFrame, kept: pl.DataFrame) -> pl.DataFrame:
    """The users of ``todo`` whose ``k`` is not met by ``kept``: with ``k`` as the number still
    needed, ``free`` reduced accordingly."""
    got = kept.group_by("user_id").len().rename({"len": "got"})
    return (
        todo.join(got, on="user_id", how="left")
        .with_columns(pl.col("got").fill_null(0))
        .filter(pl.col("got") < pl.col("k"))
        .with_columns(
            (pl.col("k") - pl.col("got")).alias("k"), (pl.col("free") - pl.col("got")).alias("free")
        )
        .drop("got")
        .sort("user_id")
    )


def _exact(
    todo: pl.DataFrame, pairs: pl.DataFrame, n_items: int, rng: np.random.Generator
) -> pl.DataFrame:
    """``k`` items per remaining user drawn exactly: a random key on every item not in ``pairs``
    (the interacted items and those picked in earlier rounds)."""
    users = todo["user_id"].to_numpy()
    grid = pl.DataFrame(
        {
            "user_id": np.repeat(users, n_items),
            "item_id": np.tile(np.arange(n_items, dtype=np.int64), users.size),
        }
    )
    free = grid.join(pairs, on=["user_id", "item_id"], how="anti").sort("user_id", "item_id")
    # Draw keys continue after the oversampling rounds' so the final sort keeps their order.
    keys = (1 << 40) + rng.permutation(free.height).astype(np.int64)
    return _first_k(free.with_columns(pl.Series("__draw", keys)), todo)
