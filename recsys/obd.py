"""Reading the Open Bandit Dataset (Saito et al., ZOZOTOWN): typed, validated frames.

One reader for every package that uses OBD: the offline pipeline builds its implicit data set from
it (``offline.data.obd``), the simulators their OPE checks (``simulators.obd``). Layout of ``root``
(the ``obd`` folder; /work/shared/data/SOURCES.md)::

    <root>/<policy>/<campaign>/<campaign>.csv     logs: unnamed index, timestamp, item_id,
                                                  position (1-based), click, propensity_score,
                                                  user_feature_0..3, user-item_affinity_*
    <root>/<policy>/<campaign>/item_context.csv   unnamed index, item_id, item_feature_0..3
    <root>/bts_action_dist.csv                    item_id, position_index, probability

``policy`` is ``random`` (uniform) or ``bts`` (Bernoulli Thompson sampling). Every value is
checked; a bad one raises ``ValueError`` naming the file, the 1-based line (line 1 is the header)
and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.validation import message

__all__ = ["POLICIES", "USER_FEATURES", "load_action_dist", "load_item_context", "load_obd"]

POLICIES = ("random", "bts")
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
_AFFINITY = "user-item_affinity_"


def _path(root: Path | str, policy: str, campaign: str, name: str) -> Path:
    if policy not in POLICIES:
        raise ValueError(message("policy", f"one of {POLICIES}", repr(policy)))
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
        raise ValueError(f"{path}: expected a readable CSV, got {exc}") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}, line 1: missing the columns {missing}")
    return frame


_SOURCE = {"event_time_ms": "timestamp"}
_EXPECTED = {
    "event_time_ms": "a timestamp like 2019-11-24 00:00:00.000000+00:00",
    "item_id": "a non-negative integer item id",
    "position": "a position 1, 2, 3, ...",
    "click": "a click 0 or 1",
    "propensity_score": "a propensity in (0, 1]",
    "position_index": "a position index 0, 1, 2, ...",
    "probability": "a probability in [0, 1]",
}


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


def load_obd(root: Path | str, policy: str = "random", campaign: str = "all") -> pl.DataFrame:
    """One logging policy's logs, one row per shown item: ``event_time_ms`` (Int64, from
    ``timestamp``), ``item_id``, ``position`` (0-based), ``click`` (Int64 0/1),
    ``propensity_score`` (Float64), ``user_feature_0..3`` (hashed categoricals, text) and the
    ``user-item_affinity_*`` columns (Float64), in file order."""
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
        raise ValueError(f"{path}, line 1: expected item_feature_* columns, got {text.columns}")
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


def load_action_dist(path: Path | str, n_items: int | None = None) -> np.ndarray:
    """A context-free evaluation policy from ``item_id, position_index, probability`` rows, as an
    (n_items, len_list) matrix whose columns sum to 1 (e.g. ``obd/bts_action_dist.csv``)."""
    path = Path(path)
    frame = _read_text_csv(path, ("item_id", "position_index", "probability"))
    index = {
        "item_id": pl.col("item_id").cast(pl.Int64, strict=False),
        "position_index": pl.col("position_index").cast(pl.Int64, strict=False),
    }
    probability = pl.col("probability").cast(pl.Float64, strict=False)
    typed = _cast(
        path,
        frame,
        {
            **{name: pl.when(value >= 0).then(value) for name, value in index.items()},
            "probability": pl.when((probability >= 0) & (probability <= 1)).then(probability),
        },
    )
    items = typed["item_id"].to_numpy()
    positions = typed["position_index"].to_numpy()
    n_items = int(items.max()) + 1 if n_items is None else n_items
    if items.max() >= n_items:
        raise ValueError(message("n_items", f"more than the largest item id {items.max()}",
                                 n_items, f"{path} holds that item"))
    dist = np.zeros((n_items, int(positions.max()) + 1))
    dist[items, positions] = typed["probability"].to_numpy()
    sums = dist.sum(axis=0)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise ValueError(f"{path}: expected probabilities that sum to 1 per position, got {sums}")
    return dist / sums
