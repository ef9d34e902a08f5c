"""Event contexts in the form a statistics layout scores and learns from.

Every layout answers ``context_codec()`` with one of these codecs, so serving (one request's
context) and learners (columns of many events' contexts) read contexts without asking which
layout they hold: dense and full statistics take a dense vector of ``dim`` features, graph
statistics take soft cluster memberships (:class:`~recsys.bandits.graph.SoftContexts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.events import Context

Columns = dict[str, NDArray[Any]]
ColumnSpec = dict[str, tuple[Any, int | None, Any]]
"""Column name -> (dtype, width, fill): width None is a scalar column, an int a matrix column
whose width may grow (ragged rows are padded with ``fill``)."""


class ContextError(ValueError):
    """A context that does not fit the statistics; ``field`` names the part that is wrong."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__(f"context.{field}: {msg}")
        self.field, self.msg = field, msg


class ContextCodec(Protocol):
    """Reads event contexts for one layout (see the module docs)."""

    def columns(self) -> ColumnSpec:
        """How a batch of contexts is stored as columns."""
        ...

    def read(self, contexts: Sequence[Context]) -> tuple[Columns, NDArray[np.bool_]]:
        """Columns of a batch of contexts, and which rows fit (the others hold the fill)."""
        ...

    def of(self, columns: Mapping[str, NDArray[Any]]) -> Any:
        """Stored columns back as the scoring/learning input of the layout."""
        ...

    def one(self, context: Context) -> tuple[Any, Context]:
        """One request's scoring input (a batch of one) and the context to log with it, which
        keeps only the part the layout scores with; raises :class:`ContextError`."""
        ...


def padded(lengths: NDArray[np.int64], flat: NDArray[Any], pad: Any) -> NDArray[Any]:
    """Ragged rows (``flat`` cut by ``lengths``) as a [rows, max length] matrix, padded."""
    width = int(lengths.max()) if lengths.size else 0
    out = np.full((lengths.size, max(width, 1)), pad, dtype=flat.dtype)
    if flat.size:
        rows = np.repeat(np.arange(lengths.size), lengths)
        starts = np.cumsum(lengths) - lengths
        out[rows, np.arange(flat.size) - np.repeat(starts, lengths)] = flat
    return out


@dataclass(frozen=True, eq=False)
class SoftContexts:
    """Sparse soft cluster memberships for a batch: ``clusters`` and ``weights`` of shape [B, K].

    Padding entries use cluster ``-1`` with weight 0.
    """

    clusters: NDArray[np.int64]
    weights: NDArray[np.float64]

    @classmethod
    def of(cls, clusters: ArrayLike, weights: ArrayLike) -> SoftContexts:
        """Validated contexts; a single request may be given as 1-d arrays."""
        c = np.asarray(clusters)
        w = np.asarray(weights, dtype=np.float64)
        if c.ndim == 1:
            c = c[None, :]
        if w.ndim == 1:
            w = w[None, :]
        if c.ndim != 2 or c.shape != w.shape:
            raise ValueError(
                f"soft contexts: clusters {c.shape} and weights {w.shape} must both be [batch, K]"
            )
        if c.size and not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"soft contexts: cluster ids must be integers, got {c.dtype}")
        if not np.isfinite(w).all():
            raise ValueError("soft contexts: weights contain NaN or infinity")
        if (w < 0).any():
            raise ValueError("soft contexts: weights must be >= 0")
        c = c.astype(np.int64)
        if ((c < 0) & (w > 0)).any():
            raise ValueError("soft contexts: a padding cluster (-1) has a non-zero weight")
        return cls(c, w)

    def __len__(self) -> int:
        return int(self.clusters.shape[0])

    def __getitem__(self, rows: slice | ArrayLike) -> SoftContexts:
        """The contexts of some requests (a slice, index array or mask), still [rows, K]."""
        pick = rows if isinstance(rows, slice) else np.asarray(rows)
        return SoftContexts(self.clusters[pick].reshape(-1, self.clusters.shape[1]),
                            self.weights[pick].reshape(-1, self.weights.shape[1]))


def as_soft_contexts(contexts: SoftContexts | tuple[ArrayLike, ArrayLike]) -> SoftContexts:
    """``contexts`` as :class:`SoftContexts` (a ``(clusters, weights)`` pair is validated)."""
    if isinstance(contexts, SoftContexts):
        return contexts
    if isinstance(contexts, tuple) and len(contexts) == 2:
        return SoftContexts.of(*contexts)
    raise TypeError(
        "graph-mode contexts must be SoftContexts or a (clusters, weights) pair, got "
        f"{type(contexts).__name__}"
    )


@dataclass(frozen=True)
class DenseContexts:
    """Dense vectors of ``dim`` features (dense and full layouts)."""

    dim: int

    def columns(self) -> ColumnSpec:
        return {"dense": (np.float64, self.dim, 0.0)}

    def read(self, contexts: Sequence[Context]) -> tuple[Columns, NDArray[np.bool_]]:
        lengths = np.fromiter((len(c.dense) for c in contexts), np.int64, len(contexts))
        ok = lengths == self.dim
        rows = ([c.dense for c in contexts] if ok.all()
                else [c.dense for c, good in zip(contexts, ok, strict=True) if good])
        dense = np.zeros((len(contexts), self.dim))
        if rows:
            dense[ok] = np.array(rows, dtype=np.float64)
        return {"dense": dense}, ok

    def of(self, columns: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        return columns["dense"]

    def one(self, context: Context) -> tuple[NDArray[np.float64], Context]:
        if not context.dense:
            raise ContextError("dense", "expected dense features: this deployment scores dense "
                               "user embeddings")
        if len(context.dense) != self.dim:
            raise ContextError("dense", f"expected {self.dim} features, got "
                               f"{len(context.dense)}")
        x = np.asarray(context.dense, dtype=np.float64)
        return x[None, :], (Context(dense=context.dense) if context.cluster_ids else context)


@dataclass(frozen=True)
class ClusterContexts:
    """Soft memberships over ``n_clusters`` user clusters (graph layout)."""

    n_clusters: int

    def columns(self) -> ColumnSpec:
        return {"clusters": (np.int64, 1, -1), "weights": (np.float64, 1, 0.0)}

    def read(self, contexts: Sequence[Context]) -> tuple[Columns, NDArray[np.bool_]]:
        lengths = np.fromiter((len(c.cluster_ids) for c in contexts), np.int64, len(contexts))
        total = int(lengths.sum())
        ids = np.fromiter((i for c in contexts for i in c.cluster_ids), np.int64, total)
        weights = np.fromiter((w for c in contexts for w in c.cluster_weights), np.float64,
                              total)
        clusters, w = padded(lengths, ids, -1), padded(lengths, weights, 0.0)
        ok = ((clusters < self.n_clusters) | (w <= 0)).all(axis=1)
        return {"clusters": np.where(w > 0, clusters, -1), "weights": w}, ok

    def of(self, columns: Mapping[str, NDArray[Any]]) -> Any:
        return SoftContexts(columns["clusters"], columns["weights"])

    def one(self, context: Context) -> tuple[Any, Context]:
        if not context.cluster_ids:
            raise ContextError("cluster_ids", "expected cluster ids and weights: this "
                               "deployment scores soft cluster memberships")
        try:
            soft = SoftContexts.of(np.asarray(context.cluster_ids, dtype=np.int64),
                                   np.asarray(context.cluster_weights, dtype=np.float64))
        except ValueError as exc:
            raise ContextError("cluster_ids", str(exc)) from None
        return soft, Context(cluster_ids=context.cluster_ids,
                             cluster_weights=context.cluster_weights)
