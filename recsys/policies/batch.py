"""A batch of requests in the one form every registered policy reads its contexts from.

A bandit scores the dense context (or the soft cluster memberships, graph mode) that was used
when the request was served; an offline model scores the user id; a baseline needs nothing. The
comparison, the registry's pyfunc and serving therefore hand every policy the same
:class:`RequestBatch` and each policy takes the part it needs (``recsys.registry``).

Columns follow the lake schema (``recsys.schema``): ``user_id``, ``context_dense``,
``context_cluster_ids``, ``context_cluster_weights``; a mode that is not used is an empty list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.contexts import padded
from recsys.bandits.graph import SoftContexts
from recsys.validation import message

CONTEXT_COLUMNS = ("user_id", "context_dense", "context_cluster_ids", "context_cluster_weights")
"""The request columns of the lake schema a policy may score from."""


@dataclass(frozen=True, eq=False)
class RequestBatch:
    """``n`` requests: raw user ids, dense contexts ``[n, d]`` and/or soft cluster contexts.

    ``dense`` is None when no request carries a dense context, ``clusters`` when none carries
    cluster memberships; ``user_ids`` is always present (``""`` where unknown).
    """

    user_ids: NDArray[np.object_]
    dense: NDArray[np.float64] | None = None
    clusters: SoftContexts | None = None

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        if self.dense is not None and (self.dense.ndim != 2 or self.dense.shape[0] != n):
            raise ValueError(message("dense", f"shape ({n}, d)", f"shape {self.dense.shape}"))
        if self.clusters is not None and len(self.clusters) != n:
            raise ValueError(message("clusters", f"{n} rows", len(self.clusters)))

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def of(cls, user_ids: ArrayLike | None = None, dense: ArrayLike | None = None,
           clusters: SoftContexts | None = None) -> RequestBatch:
        """A batch from arrays; ``user_ids`` default to ``""`` (as many as the contexts)."""
        dense_array = None if dense is None else np.asarray(dense, dtype=np.float64)
        if dense_array is not None and dense_array.ndim == 1:
            dense_array = dense_array[None, :]
        if user_ids is None:
            n = (len(dense_array) if dense_array is not None
                 else len(clusters) if clusters is not None else 0)
            ids = np.full(n, "", dtype=object)
        else:
            ids = np.asarray(user_ids).astype(str).astype(object)
        return cls(ids, dense_array, clusters)

    def take(self, rows: slice | ArrayLike) -> RequestBatch:
        """The requests at ``rows`` (a slice, index array or mask)."""
        pick = rows if isinstance(rows, slice) else np.asarray(rows)
        return RequestBatch(
            self.user_ids[pick],
            None if self.dense is None else self.dense[pick],
            None if self.clusters is None else self.clusters[pick],
        )

    @classmethod
    def from_frame(cls, frame: pl.DataFrame | pd.DataFrame) -> RequestBatch:
        """One request per row from the lake's request columns (any of them may be missing).

        Dense contexts must all have one length (or all be empty); cluster ids and weights are
        padded to the longest row with cluster -1 and weight 0.
        """
        if isinstance(frame, pd.DataFrame):
            frame = pl.from_pandas(frame[[c for c in CONTEXT_COLUMNS if c in frame.columns]])
        if not isinstance(frame, pl.DataFrame):
            raise TypeError(message("frame", "a polars or pandas DataFrame", type(frame).__name__))
        n = frame.height
        users = (frame["user_id"].cast(pl.String).fill_null("").to_numpy().astype(object)
                 if "user_id" in frame.columns else np.full(n, "", dtype=object))
        dense = _dense(frame["context_dense"]) if "context_dense" in frame.columns else None
        clusters = None
        if "context_cluster_ids" in frame.columns:
            clusters = _clusters(frame["context_cluster_ids"],
                                 frame["context_cluster_weights"]
                                 if "context_cluster_weights" in frame.columns else None)
        return cls(users, dense, clusters)

    def to_pandas(self) -> pd.DataFrame:
        """The batch as the registry pyfunc's input frame (lists for the context columns)."""
        n = len(self)
        data: dict[str, Any] = {"user_id": self.user_ids.astype(str)}
        data["context_dense"] = (list(self.dense) if self.dense is not None
                                 else [np.empty(0)] * n)
        if self.clusters is not None:
            keep = self.clusters.clusters >= 0
            data["context_cluster_ids"] = [c[m] for c, m in zip(self.clusters.clusters, keep,
                                                                 strict=True)]
            data["context_cluster_weights"] = [w[m] for w, m in zip(self.clusters.weights, keep,
                                                                    strict=True)]
        else:
            data["context_cluster_ids"] = [np.empty(0, dtype=np.int64)] * n
            data["context_cluster_weights"] = [np.empty(0)] * n
        return pd.DataFrame(data)


def _dense(series: pl.Series) -> NDArray[np.float64] | None:
    if series.null_count():
        raise ValueError(message("context_dense", "a list on every row (empty when unused)",
                                 f"{series.null_count()} nulls"))
    if isinstance(series.dtype, pl.Array):
        return series.to_numpy().astype(np.float64)
    lengths = series.list.len().to_numpy()
    if lengths.size == 0 or lengths.max() == 0:
        return None
    if lengths.min() != lengths.max():
        raise ValueError(message("context_dense", "vectors of one length",
                                 f"lengths from {lengths.min()} to {lengths.max()}"))
    flat = series.explode().to_numpy().astype(np.float64)
    return flat.reshape(len(lengths), int(lengths[0]))


def _clusters(ids: pl.Series, weights: pl.Series | None) -> SoftContexts | None:
    lengths = ids.list.len().fill_null(0).to_numpy().astype(np.int64)
    if lengths.size == 0 or lengths.max() == 0:
        return None
    if weights is None:
        raise ValueError(message("context_cluster_weights", "a column beside "
                                 "context_cluster_ids", "no such column"))
    if not np.array_equal(weights.list.len().fill_null(0).to_numpy(), lengths):
        raise ValueError(message("context_cluster_weights", "one weight per cluster id",
                                 "lists of other lengths"))
    flat_ids = ids.explode().drop_nulls().to_numpy().astype(np.int64)
    flat_w = weights.explode().drop_nulls().to_numpy().astype(np.float64)
    return SoftContexts.of(padded(lengths, flat_ids, -1), padded(lengths, flat_w, 0.0))
