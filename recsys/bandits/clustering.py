"""Offline construction of the Online Matching graph and of soft cluster contexts.

k-means (scikit-learn) over user embeddings gives C clusters; each cluster links to its top-W
items by inner product with the centroid; a user's context is their top-K clusters with weights.
A graph may carry a warm-start prior (``edge_prior`` per edge and its strength n0, from
``recsys.bandits.warm_start``): :meth:`ClusterGraph.stats` (and so ``stream.graph_file``) then
starts from it; a graph file without one loads as a cold start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.graph import GraphStats, SoftContexts, Weighting, check_strength
from recsys.bandits.persistence import decode_npz, encode_npz
from recsys.storage import PathLike, read_bytes, resolve, write_bytes_atomic

GRAPH_FORMAT = "recsys.bandits.ClusterGraph/1"

Calibration = Literal["k1", "normalised", "raw"]
_CHUNK = 1024


@dataclass(frozen=True, eq=False)
class ClusterGraph:
    """Centroids [C, d] and the cluster→item edges (edge_clusters[e], edge_items[e]); optional
    warm-start prior: ``edge_prior[e]`` (reward scale) counting as ``prior_strength`` events."""

    centroids: NDArray[np.float64]
    item_ids: NDArray[np.int64]
    edge_clusters: NDArray[np.int64]
    edge_items: NDArray[np.int64]
    version: str = ""
    edge_prior: NDArray[np.float64] | None = None
    prior_strength: float = 0.0
    calibration: Calibration = "k1"
    """How the serving contexts of this graph were made (:meth:`contexts`); :meth:`stats`
    picks the matching update rule by default."""

    def __post_init__(self) -> None:
        if self.calibration not in ("k1", "normalised", "raw"):
            raise ValueError(f"calibration must be k1, normalised or raw, got "
                             f"{self.calibration!r}")
        if self.edge_clusters.shape != self.edge_items.shape:
            raise ValueError(f"edge_clusters {self.edge_clusters.shape} and edge_items "
                             f"{self.edge_items.shape} must have the same shape")
        object.__setattr__(self, "prior_strength", check_strength(self.prior_strength))
        if self.edge_prior is not None:
            prior = np.asarray(self.edge_prior, dtype=np.float64)
            if prior.shape != self.edge_items.shape or not np.isfinite(prior).all():
                raise ValueError(f"edge_prior: expected {self.edge_items.size} finite values "
                                 f"(one per edge), got shape {prior.shape}")
            object.__setattr__(self, "edge_prior", prior)

    @property
    def n_edges(self) -> int:
        return int(self.edge_items.size)

    @property
    def warm(self) -> bool:
        """True when the graph carries a prior that counts (strength > 0)."""
        return self.edge_prior is not None and self.prior_strength > 0

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def save(self, uri: PathLike, *, filesystem: Any = None) -> None:
        """Write the graph as an ``.npz`` (plain arrays and a JSON header) to a path or URI."""
        fs, path = resolve(uri, filesystem)
        arrays = {"centroids": self.centroids, "item_ids": self.item_ids,
                  "edge_clusters": self.edge_clusters, "edge_items": self.edge_items}
        if self.edge_prior is not None:
            arrays["edge_prior"] = self.edge_prior
        write_bytes_atomic(fs, path, encode_npz({"format": GRAPH_FORMAT, "version": self.version,
                                                 "prior_strength": self.prior_strength,
                                                 "calibration": self.calibration}, arrays))

    @classmethod
    def load(cls, uri: PathLike, *, filesystem: Any = None) -> ClusterGraph:
        """Read a graph written by :meth:`save` (what ``stream.graph_file`` names)."""
        fs, path = resolve(uri, filesystem)
        meta, arrays = decode_npz(read_bytes(fs, path), where=str(uri))
        if meta.get("format") != GRAPH_FORMAT:
            raise ValueError(f"{uri}: format {meta.get('format')!r}, expected {GRAPH_FORMAT!r} "
                             "(write it with ClusterGraph.save)")
        missing = {"centroids", "item_ids", "edge_clusters", "edge_items"} - set(arrays)
        if missing:
            raise ValueError(f"{uri}: missing arrays {sorted(missing)}")
        try:
            return cls(arrays["centroids"], arrays["item_ids"], arrays["edge_clusters"],
                       arrays["edge_items"], version=str(meta.get("version", "")),
                       edge_prior=arrays.get("edge_prior"),
                       prior_strength=meta.get("prior_strength", 0.0),
                       calibration=meta.get("calibration", "k1"))
        except ValueError as exc:
            raise ValueError(f"{uri}: {exc}") from None

    def stats(
        self, *, lam: float = 1.0, calibration: Calibration | None = None,
        prior_mean: ArrayLike | None = None, prior_strength: float | None = None,
    ) -> GraphStats:
        """Statistics on this graph, no evidence yet, with the update rule that matches
        ``calibration`` (default: the graph's own). Without ``prior_mean`` they start from the
        graph's prior when it carries one with strength > 0 (warm), else cold;
        ``prior_strength`` overrides n0."""
        calibration = self.calibration if calibration is None else calibration
        weighting: Weighting = "linear" if calibration == "normalised" else "squared"
        strength = prior_strength
        if prior_mean is None and self.warm:
            prior_mean = self.edge_prior
            strength = self.prior_strength if strength is None else strength
        if prior_mean is not None and strength == 0.0 and prior_mean is self.edge_prior:
            prior_mean = None  # the graph's prior at strength 0: a cold start
        return GraphStats.empty(
            self.item_ids, self.n_clusters, self.edge_clusters, self.edge_items, lam=lam,
            weighting=weighting, prior_mean=prior_mean, prior_strength=strength or 0.0,
            space=self.version,
        )

    def with_prior(self, edge_prior: ArrayLike | None, strength: float,
                   calibration: Calibration | None = None) -> ClusterGraph:
        """The same graph carrying ``edge_prior`` (per edge, in this graph's edge order) at
        strength n0 (None or n0 = 0: a cold graph), and ``calibration`` if given."""
        return ClusterGraph(self.centroids, self.item_ids, self.edge_clusters, self.edge_items,
                            version=self.version,
                            edge_prior=None if edge_prior is None else np.asarray(
                                edge_prior, dtype=np.float64),
                            prior_strength=strength,
                            calibration=self.calibration if calibration is None else calibration)

    def contexts(
        self, user_embeddings: ArrayLike, *, top_k: int = 1, calibration: Calibration = "k1",
        temperature: float = 1.0,
    ) -> SoftContexts:
        """Each user's top-K clusters by squared distance, with soft weights.

        ``"k1"``: the nearest cluster, weight 1 (Diag-LinUCB is exact there). ``"normalised"``:
        softmax(−dist²/temperature) over the top K, summing to one (use with the ``"linear"``
        per-edge weighted mean). ``"raw"``: the same softmax weights over all C clusters, not
        renormalised over the top K (the published soft context; its mean is not calibrated).
        """
        u = np.asarray(user_embeddings, dtype=np.float64)
        if u.ndim == 1:
            u = u[None, :]
        if u.shape[1] != self.centroids.shape[1] or not np.isfinite(u).all():
            raise ValueError(f"user embeddings must be finite with {self.centroids.shape[1]} "
                             f"features, got shape {u.shape}")
        if calibration not in ("k1", "normalised", "raw"):
            raise ValueError(f"calibration must be k1, normalised or raw, got {calibration!r}")
        k = 1 if calibration == "k1" else int(top_k)
        if not 1 <= k <= self.n_clusters:
            raise ValueError(f"top_k must be in [1, {self.n_clusters}], got {top_k}")
        dist = (
            (u * u).sum(1, keepdims=True) - 2 * u @ self.centroids.T
            + (self.centroids**2).sum(1)
        )
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < self.n_clusters else \
            np.broadcast_to(np.arange(self.n_clusters), dist.shape).copy()
        d_top = np.take_along_axis(dist, nearest, axis=1)
        order = np.argsort(d_top, axis=1)
        nearest = np.take_along_axis(nearest, order, axis=1)
        if calibration == "k1":
            return SoftContexts.of(nearest, np.ones(nearest.shape))
        logits = -dist / temperature
        logits -= logits.max(axis=1, keepdims=True)
        soft = np.exp(logits)
        soft /= soft.sum(axis=1, keepdims=True)
        w = np.take_along_axis(soft, nearest, axis=1)
        if calibration == "normalised":
            w = w / w.sum(axis=1, keepdims=True)
        elif calibration != "raw":
            raise ValueError(f"calibration must be k1, normalised or raw, got {calibration!r}")
        return SoftContexts.of(nearest, w)


def build_cluster_graph(
    user_embeddings: ArrayLike,
    item_embeddings: ArrayLike,
    *,
    item_ids: ArrayLike | None = None,
    n_clusters: int = 100,
    top_w: int = 50,
    random_state: int | None = 0,
    version: str = "",
) -> ClusterGraph:
    """k-means over users, then each cluster's top-W items by centroid·item inner product."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    users = np.asarray(user_embeddings, dtype=np.float64)
    items = np.asarray(item_embeddings, dtype=np.float64)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"embeddings must be [n, d] with the same d: users {users.shape}, "
                         f"items {items.shape}")
    if not (np.isfinite(users).all() and np.isfinite(items).all()):
        raise ValueError("embeddings contain NaN or infinity")
    ids = np.arange(items.shape[0]) if item_ids is None else np.asarray(item_ids, np.int64)
    if not 1 <= top_w <= items.shape[0]:
        raise ValueError(f"top_w must be in [1, {items.shape[0]}], got {top_w}")
    algo = KMeans if users.shape[0] <= 50_000 else MiniBatchKMeans
    km = algo(n_clusters=n_clusters, random_state=random_state, n_init=3).fit(users)
    centroids = km.cluster_centers_
    tops = []
    for start in range(0, n_clusters, _CHUNK):  # chunks of clusters bound the [C, n] memory
        sims = centroids[start:start + _CHUNK] @ items.T
        tops.append(np.argpartition(-sims, top_w - 1, axis=1)[:, :top_w])
    top = np.concatenate(tops)
    return ClusterGraph(
        centroids=centroids,
        item_ids=ids,
        edge_clusters=np.repeat(np.arange(n_clusters), top_w),
        edge_items=ids[top.ravel()],
        version=version,
    )
