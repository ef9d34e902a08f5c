"""Warm start of the bandit statistics from an offline model, and migration when users re-cluster.

The offline model knows a score for every (user, item); the bandit should not start cold on what
it already knows. The hand-off gives each statistic a **prior mean** μ₀ (on the reward scale)
and a **strength** n0 ≥ 0, the one hyperparameter of the warm start:

    *The prior counts as n0 events.* Before any event an edge's (or an item coordinate's)
    posterior mean is μ₀ and its variance 1/(λ + n0); after events with weights x and rewards r
    (Σx² = sxx, Σx·r = sxr) it is ``θ̂ = ((λ + n0)·μ₀ + sxr) / (λ + n0 + sxx)``, the mean of the
    prior's λ + n0 pseudo-events at μ₀ and the real ones. n0 = 0 is a cold start: no prior at
    all, exactly today's empty statistics (so the warm start is off at n0 = 0 and, for any
    n0 > 0, the whole prior precision λ + n0 sits at μ₀). Large n0 trusts the offline model for
    longer (less exploration, slower to correct it); n0 ≈ a few events per edge is a sensible
    start; ``tests/benchmarks/bench_warm_start.py`` measures regret against it.

The prior is kept apart from the evidence: ``sxx``/``sxr``/``count`` hold only learned sums, the
prior lives in ``prior_mean``/``prior_strength`` (``GraphStats``, ``DenseStats``), travels in
snapshots and checkpoints, is never decayed, and deltas never carry it, so shards merge deltas
exactly as before. For the graph layout the prior rides in the graph file (``ClusterGraph``'s
``edge_prior``/``prior_strength``): ``stream.graph_file`` of a warm graph starts warm. For the
dense layout ``stream.prior_file`` names an item-prior file (:func:`save_item_prior`).

**Re-clustering** (a new offline model, new clusters): :func:`migrate_graph_stats` carries the
online evidence to the new graph by an explicit rule.

* ``"move"``: each old edge (c, j)'s sums (sxx, sxr, count) are split over the new clusters c'
  by the transition matrix ``T[c, c']`` (:func:`cluster_transition`: the share of old cluster
  c's users now nearest to c'), onto the new edge (c', j). Shares landing on a pair (c', j) that
  is not an edge of the new graph, or the part of a row of T that sums to less than one (an old
  cluster with no users to follow), are dropped. The :class:`MigrationReport` says how much:
  ``evidence_in = evidence_moved + evidence_dropped`` (in events, the ``count`` sum; every sum's
  own split is in ``sums``). The new prior (if any) is added on top, as for a fresh graph.
* ``"reset"``: nothing is kept but the new prior (all evidence is reported dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.clustering import Calibration, ClusterGraph
from recsys.bandits.dense import DenseStats
from recsys.bandits.graph import GraphStats, check_strength
from recsys.bandits.persistence import decode_npz, encode_npz
from recsys.storage import PathLike, read_bytes, resolve, write_bytes_atomic
from recsys.validation import message

Link = Literal["identity", "sigmoid"]
Rule = Literal["move", "reset"]
ITEM_PRIOR_FORMAT = "recsys.bandits.ItemPrior/1"
_CHUNK = 4096
_SUMS = ("sxx", "sxr", "count")


def _link(scores: NDArray[np.float64], link: str) -> NDArray[np.float64]:
    if link == "identity":
        return scores
    if link == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.clip(scores, -500, 500)))
    raise ValueError(message("link", "'identity' or 'sigmoid'", repr(link)))


def _matrix(values: ArrayLike, name: str, dim: int | None = None) -> NDArray[np.float64]:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, d]"
        raise ValueError(message(name, f"a {want} matrix", f"shape {a.shape}"))
    if not np.isfinite(a).all():
        raise ValueError(message(name, "finite values", "NaN or infinity"))
    return a


def nearest_clusters(centroids: ArrayLike, user_embeddings: ArrayLike) -> NDArray[np.intp]:
    """Each user's nearest centroid (squared distance), in chunks of users."""
    c = _matrix(centroids, "centroids")
    u = _matrix(user_embeddings, "user_embeddings", c.shape[1])
    c2 = (c * c).sum(1)
    out = np.empty(u.shape[0], dtype=np.intp)
    for start in range(0, u.shape[0], _CHUNK):
        part = u[start:start + _CHUNK]
        out[start:start + _CHUNK] = np.argmin(c2 - 2 * part @ c.T, axis=1)
    return out


def graph_prior(
    graph: ClusterGraph,
    user_embeddings: ArrayLike | None,
    item_embeddings: ArrayLike,
    *,
    link: Link = "identity",
    scale: float = 1.0,
    offset: float | ArrayLike = 0.0,
) -> NDArray[np.float64]:
    """Each edge (c, j)'s prior reward mean from the offline score, in the graph's edge order.

    The score of user u and item j is ``scale·(u·v_j) + offset_j`` (``offset``: a scalar or one
    value per item in ``graph.item_ids`` order, e.g. the two-tower item bias); the prior is the
    mean over cluster c's users (nearest centroid) of ``link(score)``, on the reward scale. With
    ``user_embeddings=None``, or for a cluster with no users, the centroid's score is used (the
    same value for the identity link, since a k-means centroid is its users' mean).
    ``item_embeddings`` [n_items, d] are in ``graph.item_ids`` order.
    """
    items = _matrix(item_embeddings, "item_embeddings", graph.centroids.shape[1])
    if items.shape[0] != graph.item_ids.size:
        raise ValueError(message("item_embeddings", f"one row per graph item "
                                 f"({graph.item_ids.size})", f"{items.shape[0]} rows"))
    bias = np.broadcast_to(np.asarray(offset, dtype=np.float64), (items.shape[0],))
    order = np.argsort(graph.item_ids, kind="stable")
    rows = order[np.searchsorted(graph.item_ids, graph.edge_items, sorter=order)]
    if not np.array_equal(graph.item_ids[rows], graph.edge_items):
        raise ValueError("graph: edge items that are not among its item_ids")
    clusters = graph.edge_clusters
    prior = _link(scale * np.einsum("ed,ed->e", graph.centroids[clusters], items[rows])
                  + bias[rows], link)
    if user_embeddings is None:
        return prior
    users = _matrix(user_embeddings, "user_embeddings", graph.centroids.shape[1])
    member = nearest_clusters(graph.centroids, users)
    by_cluster = np.argsort(member, kind="stable")
    bounds = np.searchsorted(member[by_cluster], np.arange(graph.n_clusters + 1))
    edges_by_cluster = np.argsort(clusters, kind="stable")
    edge_bounds = np.searchsorted(clusters[edges_by_cluster], np.arange(graph.n_clusters + 1))
    for c in range(graph.n_clusters):  # offline, once per export: a loop over clusters is fine
        who = by_cluster[bounds[c]:bounds[c + 1]]
        edges = edges_by_cluster[edge_bounds[c]:edge_bounds[c + 1]]
        if who.size == 0 or edges.size == 0:
            continue
        total = np.zeros(edges.size)
        for start in range(0, who.size, _CHUNK):
            s = scale * users[who[start:start + _CHUNK]] @ items[rows[edges]].T + bias[rows[edges]]
            total += _link(s, link).sum(axis=0)
        prior[edges] = total / who.size
    return prior


def warm_graph_stats(
    graph: ClusterGraph, edge_prior: ArrayLike, *, strength: float, lam: float = 1.0,
    calibration: Calibration = "k1",
) -> GraphStats:
    """Statistics on ``graph`` that start at ``edge_prior`` (graph edge order) counting as
    ``strength`` n0 events (module docs); n0 = 0: cold, equal to ``graph.stats()`` without a
    prior."""
    n0 = check_strength(strength, "strength")
    prior = np.asarray(edge_prior, dtype=np.float64)
    if prior.shape != (graph.n_edges,):
        raise ValueError(message("edge_prior", f"one value per graph edge ({graph.n_edges})",
                                 f"shape {prior.shape}"))
    cold = graph.with_prior(None, 0.0)
    if n0 == 0:
        return cold.stats(lam=lam, calibration=calibration)
    return cold.stats(lam=lam, calibration=calibration, prior_mean=prior, prior_strength=n0)


def warm_dense_stats(
    items: ArrayLike, item_prior: ArrayLike, *, strength: float, lam: float = 1.0,
    centred: bool = False, space: str = "",
) -> DenseStats:
    """Dense statistics over ``items`` whose slopes start at ``item_prior`` [n_items, dim]
    counting as ``strength`` n0 events per coordinate; n0 = 0: cold (no prior)."""
    n0 = check_strength(strength, "strength")
    prior = _matrix(item_prior, "item_prior")
    ids = np.asarray(items, dtype=np.int64).ravel()
    if prior.shape[0] != ids.size:
        raise ValueError(message("item_prior", f"one row per item ({ids.size})",
                                 f"{prior.shape[0]} rows"))
    if n0 == 0:
        return DenseStats.empty(ids, prior.shape[1], lam=lam, centred=centred, space=space)
    return DenseStats.empty(ids, prior.shape[1], lam=lam, centred=centred, space=space,
                            prior_mean=prior, prior_strength=n0)


def save_item_prior(uri: PathLike, item_ids: ArrayLike, item_prior: ArrayLike, *,
                    strength: float, filesystem: Any = None) -> None:
    """Write a dense item prior (ids [n], prior [n, dim], n0) for ``stream.prior_file``."""
    ids = np.asarray(item_ids, dtype=np.int64).ravel()
    prior = _matrix(item_prior, "item_prior")
    if prior.shape[0] != ids.size:
        raise ValueError(message("item_prior", f"one row per item id ({ids.size})",
                                 f"{prior.shape[0]} rows"))
    fs, path = resolve(uri, filesystem)
    write_bytes_atomic(fs, path, encode_npz(
        {"format": ITEM_PRIOR_FORMAT, "strength": check_strength(strength, "strength")},
        {"item_ids": ids, "prior": prior}))


def load_item_prior(uri: PathLike, *, filesystem: Any = None
                    ) -> tuple[NDArray[np.int64], NDArray[np.float64], float]:
    """``(item_ids, prior [n, dim], strength)`` written by :func:`save_item_prior`."""
    fs, path = resolve(uri, filesystem)
    meta, arrays = decode_npz(read_bytes(fs, path), where=str(uri))
    if meta.get("format") != ITEM_PRIOR_FORMAT or not {"item_ids", "prior"} <= set(arrays):
        raise ValueError(message(str(uri), f"an item-prior file ({ITEM_PRIOR_FORMAT})",
                                 f"format {meta.get('format')!r}",
                                 "write it with recsys.bandits.warm_start.save_item_prior"))
    return (arrays["item_ids"].astype(np.int64), _matrix(arrays["prior"], str(uri)),
            check_strength(meta.get("strength", 0.0), f"{uri}: strength"))


# ---------------------------------------------------------------------- re-clustering


def cluster_transition(
    old_graph: ClusterGraph, new_graph: ClusterGraph, user_embeddings_old: ArrayLike,
    user_embeddings_new: ArrayLike,
) -> NDArray[np.float64]:
    """[C_old, C_new]: the share of old cluster c's users whose nearest new cluster is c'.

    Row i of both embedding matrices is the same user (in the old and the new model's space).
    Rows of old clusters with no users are zero (their evidence has nowhere to go).
    """
    old = nearest_clusters(old_graph.centroids, user_embeddings_old)
    new = nearest_clusters(new_graph.centroids, user_embeddings_new)
    if old.size != new.size:
        raise ValueError(message("user embeddings", "the same users (rows) in the old and new "
                                 "space", f"{old.size} and {new.size} rows"))
    counts = np.zeros((old_graph.n_clusters, new_graph.n_clusters))
    np.add.at(counts, (old, new), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


@dataclass(frozen=True)
class MigrationReport:
    """How much evidence a migration carried: in events (``count``), ``evidence_in =
    evidence_moved + evidence_dropped``; ``sums`` gives (in, moved, dropped) for every sum."""

    rule: str
    evidence_in: float
    evidence_moved: float
    evidence_dropped: float
    sums: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def __str__(self) -> str:
        share = self.evidence_moved / self.evidence_in if self.evidence_in else 1.0
        return (f"migration ({self.rule}): {self.evidence_in:.6g} events in, "
                f"{self.evidence_moved:.6g} moved ({share:.1%}), {self.evidence_dropped:.6g} "
                "dropped")


def migrate_graph_stats(
    old: GraphStats, old_graph: ClusterGraph, new_graph: ClusterGraph, transition: ArrayLike,
    *, new_prior: ArrayLike | None = None, strength: float = 0.0, rule: Rule = "move",
) -> tuple[GraphStats, MigrationReport]:
    """Statistics on ``new_graph`` carrying ``old``'s evidence by ``rule`` (module docs).

    The new statistics start from ``new_prior`` at ``strength`` (new graph edge order; None:
    the new graph's own prior if it carries one, else cold), with ``old``'s λ and weighting.
    """
    if rule not in ("move", "reset"):
        raise ValueError(message("rule", "'move' or 'reset'", repr(rule)))
    if old.n_clusters != old_graph.n_clusters:
        raise ValueError(message("old", f"statistics of the old graph ({old_graph.n_clusters} "
                                 "clusters)", f"{old.n_clusters} clusters"))
    t = np.asarray(transition, dtype=np.float64)
    if t.shape != (old_graph.n_clusters, new_graph.n_clusters):
        raise ValueError(message("transition", f"[C_old, C_new] = "
                                 f"{(old_graph.n_clusters, new_graph.n_clusters)}",
                                 f"shape {t.shape}"))
    if not np.isfinite(t).all() or (t < 0).any() or (t.sum(axis=1) > 1 + 1e-9).any():
        raise ValueError(message("transition", "non-negative rows summing to at most 1",
                                 "other values", "use cluster_transition()"))
    calibration: Calibration = "normalised" if old.weighting == "linear" else "k1"
    if new_prior is not None:
        new = warm_graph_stats(new_graph, new_prior, strength=strength, lam=old.lam,
                               calibration=calibration)
    else:
        new = new_graph.stats(lam=old.lam, calibration=calibration)
    new.set_clip_norm(old.clip_norm)
    totals = {name: float(getattr(old, name).sum()) for name in _SUMS}
    if rule == "reset":
        sums = {name: (v, 0.0, v) for name, v in totals.items()}
        return new, MigrationReport("reset", totals["count"], 0.0, totals["count"], sums)
    # every (old edge, new cluster) pair with a positive share, without a loop over edges
    src_c, dst_c = np.nonzero(t)
    starts, stops = old.indptr[src_c], old.indptr[src_c + 1]
    lengths = stops - starts
    edges = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    share = np.repeat(t[src_c, dst_c], lengths)
    target_c = np.repeat(dst_c, lengths).astype(np.int64)
    item_ids = old.edge_items[edges]
    known = new.items.contains(item_ids)
    rows = np.full(item_ids.size, -1, dtype=np.int64)
    rows[known] = new.items.rows(item_ids[known])
    keys = target_c * max(new.n_items, 1) + rows
    pos = np.searchsorted(new._keys, keys)
    hit = known & (pos < new._keys.size)
    hit[hit] = new._keys[pos[hit]] == keys[hit]
    unplaced = 1.0 - t.sum(axis=1)[old.edge_cluster]  # rows of T short of one: no users
    sums = {}
    for name in _SUMS:
        values = getattr(old, name)
        moved = share[hit] * values[edges[hit]]
        np.add.at(getattr(new, name), pos[hit], moved)
        dropped = (share[~hit] * values[edges[~hit]]).sum() + (unplaced * values).sum()
        sums[name] = (totals[name], float(moved.sum()), float(dropped))
    new._bump()
    report = MigrationReport("move", *sums["count"], sums=sums)
    return new, report

