"""The evaluation logs of a comparison: logged slates from a frame, the lake or a Parquet file.

Rows are in the lake's ``rewards`` schema (``recsys.schema.REWARDS``): one row per shown item with
``request_id``, ``event_time_ms``, ``user_id``, the request's contexts, ``position``, ``item_id``,
``reward`` and ``propensity`` (the logging policy's P(this item at this position | request)).
:class:`LoggedSlates` groups them into requests, ordered by time (then request id), each
request's rows contiguous and ordered by position: one :class:`~recsys.policies.RequestBatch` row
per request (its first row's contexts) and per-row arrays (``request_index``, ``action`` = item id,
``position``, ``reward``, ``pscore``). Logs written by a simulator carry the world they came from
in a ``world.json`` (at the lake root, or beside a Parquet file as ``<file>.world.json``):
``{"kind": "simulator", "config": {...}}``, read into ``world``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from recsys.lake import scan_lake
from recsys.policies.batch import CONTEXT_COLUMNS, RequestBatch
from recsys.storage import PathLike, join, resolve
from recsys.validation import check_finite, check_probabilities, did_you_mean, message

__all__ = ["REQUIRED_COLUMNS", "LoggedSlates", "read_world"]

REQUIRED_COLUMNS = ("request_id", "position", "item_id", "reward", "propensity")
"""Columns every log must have; ``event_time_ms`` and the context columns are optional."""

_OPTIONAL_COLUMNS = ("event_time_ms", *CONTEXT_COLUMNS)
_LOGGING_COLUMNS = ("propensity_se", "policy_name")
"""Nullable columns that say how a request was logged (which requests to keep)."""

PROPENSITY_CHOICES = ("exact", "all")
"""Which logged requests a comparison reads: ``exact`` (the default) leaves out every request
with a Monte Carlo propensity estimate (``propensity_se`` > 0: Thompson sampling's); ``all``
keeps them.

Why leave them out: an item Thompson sampling rarely shows is often missed by every replay, so
its estimate falls to the exploration floor, far below its probability, and the row's importance
weight is many times too large. Measured on the demo's logs: a uniform target's mean weight over
those rows was 4.5–14 instead of 1, and its IPS estimate 2.13 clicks per slate for a true 0.35.
Which requests are dropped is decided by how they were logged, before any reward is read, so the
rest is a valid log of the other arms and the estimates on it stay unbiased.
"""


def read_world(fs: Any, path: str) -> dict[str, Any] | None:
    """The world description at ``path`` (a JSON object with a ``kind``), or None if absent."""
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        try:
            world = json.loads(handle.read())
        except ValueError as err:
            raise ValueError(message(path, "a JSON world description",
                                     f"invalid JSON ({err})")) from None
    if not isinstance(world, dict) or not isinstance(world.get("kind"), str):
        got = type(world).__name__ if not isinstance(world, dict) else f"keys {sorted(world)}"
        raise ValueError(message(path, 'a JSON object with a "kind" (e.g. "simulator")', got))
    return world


def _check_columns(frame: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(message("logs", f"columns {list(REQUIRED_COLUMNS)} (rewards schema)",
                                 f"no {missing} among {frame.columns}"))
    for name in (*REQUIRED_COLUMNS, *(c for c in _OPTIONAL_COLUMNS if c in frame.columns)):
        nulls = frame[name].null_count()
        if nulls:
            raise ValueError(message(name, "no nulls", f"{nulls} null rows of {frame.height}"))


def _integers(frame: pl.DataFrame, name: str) -> np.ndarray:
    series = frame[name]
    if not series.dtype.is_integer():
        raise ValueError(message(name, "integers", f"dtype {series.dtype}"))
    return series.cast(pl.Int64).to_numpy()


@dataclass(frozen=True, eq=False)
class LoggedSlates:
    """Logged slates grouped into requests; rows of request ``r`` are
    ``row_start[r]:row_start[r + 1]``, in position order."""

    requests: RequestBatch
    request_ids: np.ndarray
    event_time_ms: np.ndarray | None
    row_start: np.ndarray
    request_index: np.ndarray
    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    world: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes and derived views
    @property
    def n_requests(self) -> int:
        return len(self.requests)

    @property
    def n_rows(self) -> int:
        return int(self.action.shape[0])

    @cached_property
    def len_list(self) -> int:
        """Slate length: the largest logged position + 1."""
        return int(self.position.max()) + 1

    @cached_property
    def items_(self) -> np.ndarray:
        """The distinct logged item ids, sorted."""
        return np.unique(self.action)

    @cached_property
    def action_code(self) -> np.ndarray:
        """Each row's item as an index into ``items_``."""
        return np.searchsorted(self.items_, self.action)

    @cached_property
    def logged_pairs(self) -> np.ndarray:
        """``[len(items_), len_list]`` bool: which (item, position) pairs the logs show."""
        logged = np.zeros((self.items_.size, self.len_list), dtype=bool)
        logged[self.action_code, self.position] = True
        return logged

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary for a comparison's ``logs``: source, time range, world."""
        observed = None
        if self.event_time_ms is not None and self.event_time_ms.size:
            observed = [int(self.event_time_ms.min()), int(self.event_time_ms.max())]
        return {**self.source, "observed_range_ms": observed, "world": self.world,
                "n_requests": self.n_requests, "n_rows": self.n_rows}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_frame(cls, frame: pl.DataFrame | pd.DataFrame, *,
                   world: dict[str, Any] | None = None,
                   source: dict[str, Any] | None = None,
                   propensities: str = "exact") -> LoggedSlates:
        """Group a rewards-schema frame (polars or pandas) into requests, with checks;
        ``propensities`` says which requests to keep (:data:`PROPENSITY_CHOICES`)."""
        if isinstance(frame, pd.DataFrame):
            frame = pl.from_pandas(frame)
        if not isinstance(frame, pl.DataFrame):
            raise TypeError(message("frame", "a polars or pandas DataFrame",
                                    type(frame).__name__))
        if frame.height == 0:
            raise ValueError(message("logs", "logged rows", "none", "check the time range"))
        _check_columns(frame)
        frame, kept = _by_propensities(frame, propensities)
        source = {**(source or {"source": "frame"}), **kept}
        frame = frame.select([c for c in (*REQUIRED_COLUMNS, *_OPTIONAL_COLUMNS, *_LOGGING_COLUMNS)
                              if c in frame.columns])
        frame = frame.with_columns(pl.col("request_id").cast(pl.String))
        order = ["request_id", "position"]
        if "event_time_ms" in frame.columns:
            # A request's time is its earliest row's: rows of one request stay together.
            frame = frame.with_columns(
                pl.col("event_time_ms").min().over("request_id").alias("_request_time"))
            order = ["_request_time", *order]
        frame = frame.sort(order)
        position = _integers(frame, "position")
        action = _integers(frame, "item_id")
        if position.min() < 0:
            raise ValueError(message("position", "0-based positions >= 0",
                                     f"{int((position < 0).sum())} negative rows"))
        reward = frame["reward"].cast(pl.Float64).to_numpy()
        check_finite(reward, "reward")
        pscore = frame["propensity"].cast(pl.Float64).to_numpy()
        check_probabilities(pscore, "propensity")
        request = frame["request_id"]
        new = (request != request.shift(1)).fill_null(True).to_numpy()
        starts = np.flatnonzero(new)
        request_index = np.cumsum(new) - 1
        same = ~new[1:] & (position[1:] == position[:-1])
        if same.any():
            raise ValueError(message(
                "position", "one row per (request_id, position)",
                f"{int(same.sum())} repeated (request_id, position) rows",
                "de-duplicate the logs (recsys.lake.scan_lake does)"))
        first = frame[starts]
        times = (first["_request_time"].to_numpy().astype(np.int64)
                 if "_request_time" in first.columns else None)
        return cls(
            requests=RequestBatch.from_frame(first.select(
                [c for c in CONTEXT_COLUMNS if c in first.columns])),
            request_ids=first["request_id"].to_numpy().astype(object),
            event_time_ms=times,
            row_start=np.r_[starts, position.size].astype(np.int64),
            request_index=request_index.astype(np.int64),
            action=action,
            position=position,
            reward=reward,
            pscore=pscore,
            world=world,
            source=source,
        )

    @classmethod
    def from_lake(cls, root: PathLike, start_ms: int | None = None, end_ms: int | None = None,
                  *, filesystem: Any = None, propensities: str = "exact") -> LoggedSlates:
        """The lake's rewards with ``start_ms <= event_time_ms < end_ms`` (None: unbounded)."""
        fs, path = resolve(root, filesystem)
        frame = scan_lake(root, "rewards", filesystem=filesystem)
        if start_ms is not None:
            frame = frame.filter(pl.col("event_time_ms") >= start_ms)
        if end_ms is not None:
            frame = frame.filter(pl.col("event_time_ms") < end_ms)
        frame = frame.select([c for c in (*REQUIRED_COLUMNS, *_OPTIONAL_COLUMNS, *_LOGGING_COLUMNS)
                              if c in frame.collect_schema().names()]).collect()
        if frame.height == 0:
            raise ValueError(message(
                "logs", f"rewards in [{start_ms}, {end_ms}) under {root}", "no rows",
                "check the lake root and the time range (epoch milliseconds)"))
        source = {"source": "lake", "path": str(root), "range_ms": [start_ms, end_ms]}
        return cls.from_frame(frame, world=read_world(fs, join(path, "world.json")),
                              source=source, propensities=propensities)

    @classmethod
    def from_parquet(cls, path: PathLike, *, filesystem: Any = None,
                     propensities: str = "exact") -> LoggedSlates:
        """Logs from one Parquet file (its world from ``<file>.world.json`` when present)."""
        fs, where = resolve(path, filesystem)
        if not fs.exists(where):
            raise FileNotFoundError(message("path", "a Parquet file of logged rewards",
                                            f"{path} (no such file)"))
        with fs.open(where, "rb") as handle:
            names = pq.read_schema(handle).names
        columns = (*REQUIRED_COLUMNS, *_OPTIONAL_COLUMNS, *_LOGGING_COLUMNS)
        wanted = [c for c in columns if c in names]
        with fs.open(where, "rb") as handle:
            frame = pl.read_parquet(handle, columns=wanted)
        source = {"source": "parquet", "path": str(path), "range_ms": [None, None]}
        return cls.from_frame(frame, world=read_world(fs, f"{where}.world.json"), source=source,
                              propensities=propensities)


def _by_propensities(frame: pl.DataFrame, propensities: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """``frame`` without the requests :data:`PROPENSITY_CHOICES` says to leave out, and what was
    kept (for the comparison's ``logs`` and its notes)."""
    if propensities not in PROPENSITY_CHOICES:
        raise ValueError(message("propensities", f"one of {PROPENSITY_CHOICES}",
                                 repr(propensities), did_you_mean(str(propensities),
                                                                   PROPENSITY_CHOICES)))
    if "propensity_se" not in frame.columns:
        return frame, {"propensities": propensities}
    flags = frame.group_by("request_id").agg(
        (pl.col("propensity_se").fill_null(0.0) > 0).any().alias("estimated"),
        *([pl.col("policy_name").first()] if "policy_name" in frame.columns else []))
    estimated = flags.filter(pl.col("estimated"))
    n_requests, n_estimated = flags.height, estimated.height
    policies = (sorted(set(estimated["policy_name"].drop_nulls().to_list()))
                if "policy_name" in estimated.columns else [])
    dropping = propensities == "exact" and n_estimated > 0
    kept: dict[str, Any] = {
        "propensities": propensities, "requests_logged": n_requests,
        "requests_kept": n_requests - n_estimated if dropping else n_requests,
        "dropped_policies": policies if dropping else []}
    if n_estimated == 0:
        return frame, kept
    by = f" (logged by {', '.join(policies)})" if policies else ""
    if not dropping:
        kept["notes"] = [f"{n_estimated:,} of {n_requests:,} requests carry Monte Carlo "
                         f"propensity estimates{by}: importance weights of items those "
                         "policies rarely show are too large (--propensities exact leaves them "
                         "out)"]
        return frame, kept
    frame = frame.join(estimated.select("request_id"), on="request_id", how="anti")
    if frame.height == 0:
        raise ValueError(message(
            "logs", "requests logged with exact propensities (propensity_se 0)",
            f"none of {n_requests:,}{by}",
            "propensities='all' (--propensities all) evaluates on the Monte Carlo estimates, "
            "which overweight the items those policies rarely show"))
    kept["notes"] = [f"left out {n_estimated:,} of {n_requests:,} requests logged with Monte "
                     f"Carlo propensity estimates{by} (--propensities all keeps them)"]
    return frame, kept
