"""Graph-layout statistics (Online Matching): sums on the edges of a cluster→item graph.

A request's context is a sparse soft membership over user clusters (:class:`SoftContexts`);
the reward model is ``E[r | u, j] = Σ_c x_uc·θ_jc`` with one parameter per graph edge (c, j).
Candidates for a request are the graph neighbours of its active clusters.

Two update rules, chosen by ``weighting``:

* ``"squared"`` — Diag-LinUCB as published: ``d_e += x_c²``, ``b_e += x_c·r``; score
  ``Σ_c x_c·θ_e`` with variance ``Σ_c x_c²/d_e``. Exact (= LinUCB) when each request has one
  cluster with weight 1 (K = 1); with soft overlapping weights it drops cross terms and the
  mean is inflated by up to the number of active clusters.
* ``"linear"`` — per-edge weighted means for normalised soft contexts (weights sum to one):
  ``d_e += x_c``, ``b_e += x_c·r`` so θ_e is a weighted average reward on the edge, and the score
  is the weight-normalised mix ``Σ_c x_c·θ_e / Σ_c x_c`` over the request's edges to the item,
  with variance ``Σ_c x_c²/d_e / (Σ_c x_c)²``. Scores stay on the reward scale (calibrated).

Events on (cluster, item) pairs that are not edges of the graph are ignored by design (the graph
is the exploration space); :attr:`GraphStats.skipped` counts them so that a drift is visible.

Prior (warm start, ``recsys.bandits.warm_start``): an optional per-edge prior mean μ₀ with a
strength n0 ≥ 0 (``prior_strength``, in pseudo-events). The prior is not data: sxx/sxr/count hold
only the evidence, and the posterior adds it::

    d_e = λ + n0 + sxx_e          θ̂_e = ((λ + n0)·μ₀_e + sxr_e) / d_e

so before any event θ̂_e = μ₀_e with variance 1/(λ + n0); n0 = 0 is the older ``prior_mean``
semantics (λ·μ₀). Without a prior mean, n0 is ignored. Deltas never carry a prior. With
n0 > 0, an edge added later (``add_edges``) starts at the mean prior of its cluster's edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.contexts import ClusterContexts, SoftContexts, as_soft_contexts
from recsys.bandits.influence import DEFAULT_CLIP_NORM, check_clip_norm, check_products, clip_rows
from recsys.bandits.items import ItemIndex
from recsys.bandits.protocol import (
    ItemSummary,
    Moments,
    Part,
    StatsBase,
    check_part,
    check_sample_weight,
    new_origin,
    register_layout,
)
from recsys.bandits.validation import check_items, check_positive, check_rewards

if TYPE_CHECKING:
    from recsys.config import StreamSettings

FORMAT = "recsys.bandits.GraphStats/1"
Weighting = Literal["squared", "linear"]
EdgeBatch = tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                  int]
"""A batch as sums on the edges it touched: edges, Σx² (or Σx), Σx·r, counts, events off the
graph."""


@register_layout
@dataclass(eq=False)
class GraphStats(StatsBase):
    """Additive per-edge statistics over a cluster→item graph (see module docs).

    Edges are sorted by (cluster, item row); ``indptr`` is the CSR index of each cluster's edges.
    ``space`` names the graph/embedding version: statistics of different graphs never merge.
    Implements the :class:`~recsys.bandits.protocol.Statistics` protocol (``layout = "graph"``).
    """

    layout = "graph"
    format = FORMAT

    items: ItemIndex
    n_clusters: int
    edge_cluster: NDArray[np.int64]
    edge_row: NDArray[np.intp]
    sxx: NDArray[np.float64]
    sxr: NDArray[np.float64]
    count: NDArray[np.float64]
    lam: float = 1.0
    weighting: Weighting = "squared"
    prior_mean: NDArray[np.float64] | None = None
    prior_strength: float = 0.0
    """n0: the prior mean counts as this many events (see module docs; only with a prior mean)."""
    space: str = ""
    version: int = 0
    skipped: int = 0
    clip_norm: float = DEFAULT_CLIP_NORM
    """Each event's cluster-weight vector is clipped to this norm (``recsys.bandits.influence``)."""
    origin: str = field(default_factory=new_origin)
    _borrowed: bool = field(default=False, repr=False)
    indptr: NDArray[np.intp] = field(init=False, repr=False)
    _keys: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.weighting not in ("squared", "linear"):
            raise ValueError(f"weighting must be 'squared' or 'linear', got {self.weighting!r}")
        self._keys = self.edge_cluster * max(len(self.items), 1) + self.edge_row
        if self._keys.size and (np.diff(self._keys) <= 0).any():
            raise ValueError("graph edges must be sorted by (cluster, item) without duplicates")
        self.indptr = np.searchsorted(self.edge_cluster, np.arange(self.n_clusters + 1))

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(
        cls,
        items: ArrayLike,
        n_clusters: int,
        edge_clusters: ArrayLike,
        edge_items: ArrayLike,
        *,
        lam: float = 1.0,
        weighting: Weighting = "squared",
        prior_mean: ArrayLike | None = None,
        prior_strength: float = 0.0,
        space: str = "",
        clip_norm: float = DEFAULT_CLIP_NORM,
    ) -> GraphStats:
        """Zero statistics on the edges (edge_clusters[e], edge_items[e]) (any order); each
        event's cluster weights are clipped to norm ``clip_norm`` when learned. ``prior_mean``
        (per edge, in the same order, or a scalar) with ``prior_strength`` n0: module docs."""
        index = ItemIndex(items)
        c = np.asarray(edge_clusters, dtype=np.int64).ravel()
        ids = np.asarray(edge_items, dtype=np.int64).ravel()
        if c.shape != ids.shape:
            raise ValueError("edge_clusters and edge_items must have the same length")
        if c.size and (c.min() < 0 or c.max() >= n_clusters):
            raise ValueError(f"edge cluster ids must be in [0, {n_clusters})")
        rows = index.rows(ids, name="edge items")
        keys = c * max(len(index), 1) + rows
        order = np.argsort(keys, kind="stable")
        if keys.size and (np.diff(keys[order]) == 0).any():
            raise ValueError("duplicate (cluster, item) edges")
        stats = cls(
            items=index, n_clusters=int(n_clusters), edge_cluster=c[order],
            edge_row=rows[order].astype(np.intp), sxx=np.zeros(c.size), sxr=np.zeros(c.size),
            count=np.zeros(c.size), lam=check_positive(lam, "lam"), weighting=weighting,
            space=space, clip_norm=check_clip_norm(clip_norm),
        )
        if prior_mean is not None:
            mu = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (c.size,))[order]
            if not np.isfinite(mu).all():
                raise ValueError("prior_mean: contains NaN or infinity")
            stats.prior_mean = np.array(mu)
        stats.prior_strength = check_strength(prior_strength)
        return stats

    @classmethod
    def for_stream(cls, stream: StreamSettings) -> GraphStats:
        """Statistics on the edges of the offline graph ``stream.graph_file``: empty, or
        warm-started from the prior the graph file carries (``ClusterGraph.edge_prior``)."""
        from recsys.bandits.clustering import ClusterGraph

        if stream.graph_file is None:
            raise ValueError("stream.graph_file: expected the cluster→item graph file "
                             "(ClusterGraph.save) for layout 'graph', got none")
        return ClusterGraph.load(stream.graph_file).stats(lam=stream.lam).set_clip_norm(
            check_clip_norm(stream.context_clip_norm, "stream.context_clip_norm"))

    @property
    def n_edges(self) -> int:
        return int(self.edge_cluster.size)

    @property
    def edge_items(self) -> NDArray[np.int64]:
        """Item id of every edge."""
        return self.items.ids[self.edge_row]

    @property
    def prior_precision(self) -> float:
        """λ + n0 when a prior mean is held, else λ: the precision of every edge before data."""
        return self.lam + (self.prior_strength if self.prior_mean is not None else 0.0)

    @property
    def d(self) -> NDArray[np.float64]:
        return self.prior_precision + self.sxx

    def context_codec(self) -> ClusterContexts:
        """Contexts are soft memberships over this graph's clusters."""
        return ClusterContexts(self.n_clusters)

    def delta_template(self) -> GraphStats:
        """The whole graph without its prior: a delta lives on its edges, so learners need them
        all, and deltas never carry the prior."""
        out = self.copy()
        out.prior_mean, out.prior_strength = None, 0.0
        return out

    def _like(self, keep: NDArray[np.intp]) -> GraphStats:
        """Zero-sum statistics on a subset of this graph's edges (the shape of a delta)."""
        return GraphStats(
            items=self.items, n_clusters=self.n_clusters, edge_cluster=self.edge_cluster[keep],
            edge_row=self.edge_row[keep], sxx=np.zeros(keep.size), sxr=np.zeros(keep.size),
            count=np.zeros(keep.size), lam=self.lam, weighting=self.weighting, space=self.space,
            clip_norm=self.clip_norm,
        )

    # ------------------------------------------------------------------ learning
    def _batch(
        self, contexts: SoftContexts | tuple[ArrayLike, ArrayLike], items: ArrayLike,
        rewards: ArrayLike | None, reward_range: tuple[float, float], part: Part,
        sample_weight: ArrayLike | None = None,
    ) -> EdgeBatch:
        """Touched edges and their sums, each event's terms multiplied by its ``sample_weight``
        (None: 1); the sums ``part`` does not touch are zero, and events off the graph are
        counted once, with their exposure (not again with their reward)."""
        check_part(part, rewards)
        ctx = as_soft_contexts(contexts)
        self._check_clusters(ctx)
        batch = len(ctx)
        rows = self.items.rows(check_items(items, batch))
        r = np.zeros(batch) if rewards is None else check_rewards(rewards, batch, reward_range)
        sw = check_sample_weight(sample_weight, batch)
        w = clip_rows(ctx.weights, self.clip_norm)
        if rewards is not None and part != "exposure":
            check_products(w, r, self.clip_norm)
        active = w > 0
        keys = ctx.clusters * self.n_items + rows[:, None]
        pos = np.searchsorted(self._keys, keys[active])
        hit = pos < self._keys.size
        hit[hit] = self._keys[pos[hit]] == keys[active][hit]
        edges = pos[hit]
        wa = w[active][hit]
        ra = np.broadcast_to(r[:, None], w.shape)[active][hit]
        sq = wa * wa if self.weighting == "squared" else wa
        we = None if sw is None else np.broadcast_to(sw[:, None], w.shape)[active][hit]
        if we is not None:  # the event's weight on each of its edges' terms
            sq, ra = sq * we, ra * we
        uniq, inv = np.unique(edges, return_inverse=True)
        m = uniq.size
        exposure, reward = part != "reward", part != "exposure"
        zeros = np.zeros(m)
        return (uniq, np.bincount(inv, weights=sq, minlength=m) if exposure else zeros,
                np.bincount(inv, weights=wa * ra, minlength=m) if reward else zeros,
                np.bincount(inv, weights=we, minlength=m).astype(np.float64) if exposure
                else zeros,
                int((~hit).sum()) if exposure else 0)

    def _delta(self, batch: EdgeBatch, part: Part) -> GraphStats:
        edges, sxx, sxr, count, skipped = batch
        delta = self._like(edges)
        delta.sxx, delta.sxr, delta.count, delta.skipped = sxx, sxr, count, skipped
        return delta

    def _learn(self, batch: EdgeBatch, part: Part) -> GraphStats:
        edges, sxx, sxr, count, skipped = batch
        self.sxx[edges] += sxx
        self.sxr[edges] += sxr
        self.count[edges] += count
        self.skipped += skipped
        self._bump()
        return self

    def learn_one(
        self, context: SoftContexts | tuple[ArrayLike, ArrayLike], item: int, reward: float, *,
        reward_range: tuple[float, float] = (-np.inf, np.inf),
        sample_weight: float | None = None,
    ) -> GraphStats:
        """Add a single event: ``context`` is one request's (clusters [K], weights [K]);
        ``sample_weight`` (None: 1) multiplies its terms."""
        return self.learn(context, np.array([item]), np.array([reward]),
                          reward_range=reward_range,
                          sample_weight=None if sample_weight is None else [sample_weight])

    def _check_clusters(self, ctx: SoftContexts) -> None:
        active = ctx.weights > 0
        if active.any() and ctx.clusters[active].max() >= self.n_clusters:
            raise ValueError(
                f"soft contexts: cluster id {int(ctx.clusters[active].max())} is out of range for "
                f"a graph of {self.n_clusters} clusters (was the graph rebuilt?)"
            )

    # ------------------------------------------------------------------ catalogue changes
    def _rebuilt(self, items: NDArray[np.int64], clusters: NDArray[np.int64],
                 edge_items: NDArray[np.int64], keep_edges: NDArray[np.bool_]) -> None:
        """Replace the graph by the kept old edges plus new zero edges, sums carried over."""
        old_c, old_i = self.edge_cluster[keep_edges], self.edge_items[keep_edges]
        fresh = GraphStats.empty(
            items, self.n_clusters, np.concatenate([old_c, clusters]),
            np.concatenate([old_i, edge_items]), lam=self.lam, weighting=self.weighting,
            space=self.space,
        )
        pos = np.searchsorted(fresh._keys, old_c * fresh.n_items + fresh.items.rows(old_i))
        for name in ("sxx", "sxr", "count"):
            getattr(fresh, name)[pos] = getattr(self, name)[keep_edges]
        if self.prior_mean is not None:
            kept = self.prior_mean[keep_edges]
            fresh.prior_mean = np.zeros(fresh.n_edges)
            if self.prior_strength > 0:  # a warm start: a new edge starts at its cluster's mean
                fresh.prior_mean = _cluster_means(old_c, kept, self.n_clusters)[
                    fresh.edge_cluster]
            fresh.prior_mean[pos] = kept
        self.items, self.edge_cluster = fresh.items, fresh.edge_cluster
        self.edge_row = fresh.edge_row
        self.sxx, self.sxr, self.count = fresh.sxx, fresh.sxr, fresh.count
        self.prior_mean, self.indptr, self._keys = fresh.prior_mean, fresh.indptr, fresh._keys
        self._bump()

    def add_items(self, items: ArrayLike) -> GraphStats:
        """Add items without edges (not yet candidates anywhere; see :meth:`add_edges`)."""
        new = self._new_item_ids(items)
        empty = np.zeros(0, dtype=np.int64)
        self._rebuilt(np.concatenate([self.items.ids, new]), empty, empty,
                      np.ones(self.n_edges, dtype=bool))
        return self

    def add_edges(self, edge_clusters: ArrayLike, edge_items: ArrayLike) -> GraphStats:
        """Add new (cluster, item) edges with zero statistics, adding unknown items, in place."""
        c = np.asarray(edge_clusters, dtype=np.int64).ravel()
        ids = np.asarray(edge_items, dtype=np.int64).ravel()
        if c.size == 0 and ids.size == 0:
            return self
        items = np.union1d(self.items.ids, ids)
        self._rebuilt(items, c, ids, np.ones(self.n_edges, dtype=bool))
        return self

    def retire_items(self, items: ArrayLike) -> GraphStats:
        """Drop items and all their edges in place; unknown ids raise."""
        keep_items = self._rows_kept_without(items)
        empty = np.zeros(0, dtype=np.int64)
        self._rebuilt(self.items.ids[keep_items], empty, empty, keep_items[self.edge_row])
        return self

    # ------------------------------------------------------------------ algebra
    def _check_compatible(self, other: GraphStats) -> None:
        if not isinstance(other, GraphStats):
            raise TypeError(f"cannot merge GraphStats with {type(other).__name__}")
        same = (self.n_clusters == other.n_clusters and self.lam == other.lam
                and self.weighting == other.weighting and self.space == other.space)
        if not same:
            raise ValueError("cannot merge GraphStats of different graphs, λ, weighting or "
                             "space: migrate or reset statistics when the graph changes")

    def merge(self, other: GraphStats) -> GraphStats:
        """A new GraphStats = self + other over the union of their items and edges.

        Both sides must come from the same graph (clusters, λ, weighting, space); shards that
        hold disjoint selections of it merge back into the whole.
        """
        self._check_compatible(other)
        strength = _merged_strength(self, other)
        index = ItemIndex(np.union1d(self.items.ids, other.items.ids))
        n = max(len(index), 1)
        part_keys = [part.edge_cluster * n + index.rows(part.edge_items) for part in (self, other)]
        keys = np.union1d(*part_keys)
        out = GraphStats(
            items=index, n_clusters=self.n_clusters, edge_cluster=keys // n,
            edge_row=(keys % n).astype(np.intp), sxx=np.zeros(keys.size),
            sxr=np.zeros(keys.size), count=np.zeros(keys.size), lam=self.lam,
            weighting=self.weighting, space=self.space, skipped=self.skipped + other.skipped,
            clip_norm=self.clip_norm, prior_strength=strength,
        )
        seen = np.zeros(keys.size, dtype=bool)
        for part, mine in zip((self, other), part_keys, strict=True):
            pos = np.searchsorted(keys, mine)
            out.sxx[pos] += part.sxx
            out.sxr[pos] += part.sxr
            out.count[pos] += part.count
            if part.prior_mean is not None:
                if out.prior_mean is None:
                    out.prior_mean = np.zeros(keys.size)
                both = seen[pos]
                if both.any() and not np.allclose(out.prior_mean[pos[both]],
                                                  part.prior_mean[both]):
                    raise ValueError("cannot merge GraphStats whose prior means disagree on "
                                     "shared edges")
                out.prior_mean[pos] = part.prior_mean
                seen[pos] = True
        return out

    def merge_inplace(self, other: GraphStats) -> GraphStats:
        """Add a delta into ``self`` in place; every edge of ``other`` must be an edge of ``self``.

        Edges are matched by (cluster, item id), so a delta computed over the whole catalogue
        merges into a shard that holds a selection of it. A delta that is not finite, or would
        overflow the sums, raises :class:`~recsys.bandits.influence.NonFiniteError` and nothing
        is merged.
        """
        self._check_compatible(other)
        if other.prior_mean is not None:
            raise ValueError("merge_inplace: a delta must not carry prior means")
        pos = self._edge_positions(other.edge_cluster, other.edge_items, name="delta edges")
        self._check_finite_delta(other._sums())
        with np.errstate(over="ignore"):
            for name, value in other._sums().items():
                self._check_finite_result(name, self._sums()[name][pos] + value)
        np.add.at(self.sxx, pos, other.sxx)
        np.add.at(self.sxr, pos, other.sxr)
        np.add.at(self.count, pos, other.count)
        self.skipped += other.skipped
        self._bump()
        return self

    def _edge_positions(
        self, clusters: NDArray[np.int64], item_ids: NDArray[np.int64], *, name: str
    ) -> NDArray[np.intp]:
        """Index of each (cluster, item id) edge in this graph; raises naming missing edges."""
        rows = self.items.rows(item_ids, name=name)
        keys = clusters * max(self.n_items, 1) + rows
        pos = np.searchsorted(self._keys, keys)
        found = pos < self._keys.size
        found[found] = self._keys[pos[found]] == keys[found]
        if not found.all():
            bad = list(zip(clusters[~found][:5].tolist(), item_ids[~found][:5].tolist(),
                           strict=True))
            raise ValueError(f"{name}: {int((~found).sum())} (cluster, item) pair(s) are not "
                             f"edges of this graph, e.g. {bad}; add them with add_edges()")
        return pos

    def _sums(self) -> dict[str, NDArray[np.float64]]:
        return {"sxx": self.sxx, "sxr": self.sxr, "count": self.count}

    def allclose(self, other: object, *, rtol: float = 1e-10, atol: float = 1e-10) -> bool:
        """Same items, edges, prior and sums up to float rounding."""
        if not (isinstance(other, GraphStats) and self.items == other.items
                and np.array_equal(self._keys, other._keys)):
            return False
        if (self.prior_mean is None) != (other.prior_mean is None) or (
                self.prior_mean is not None and self.prior_strength != other.prior_strength):
            return False
        pairs = [(self.sxx, other.sxx), (self.sxr, other.sxr), (self.count, other.count)]
        if self.prior_mean is not None and other.prior_mean is not None:
            pairs.append((self.prior_mean, other.prior_mean))
        return all(np.allclose(a, b, rtol=rtol, atol=atol) for a, b in pairs)

    # ------------------------------------------------------------------ copies / sharding
    def copy(self) -> GraphStats:
        """A deep copy (a new lineage: its ``snapshot_id`` differs)."""
        return self._subset(self.items.ids, np.ones(self.n_edges, dtype=bool))

    def select(self, items: ArrayLike) -> GraphStats:
        """A copy holding only ``items`` and their edges (all must be held): a shard's share."""
        ids = np.asarray(items, dtype=np.int64).ravel()
        keep_items = np.zeros(self.n_items, dtype=bool)
        keep_items[self.items.rows(ids, name="select")] = True
        return self._subset(self.items.ids[keep_items], keep_items[self.edge_row])

    def _subset(self, item_ids: NDArray[np.int64], keep_edges: NDArray[np.bool_]) -> GraphStats:
        index = ItemIndex(item_ids)
        out = GraphStats(
            items=index, n_clusters=self.n_clusters, edge_cluster=self.edge_cluster[keep_edges],
            edge_row=index.rows(self.edge_items[keep_edges]).astype(np.intp),
            sxx=self.sxx[keep_edges].copy(), sxr=self.sxr[keep_edges].copy(),
            count=self.count[keep_edges].copy(), lam=self.lam, weighting=self.weighting,
            prior_mean=None if self.prior_mean is None else self.prior_mean[keep_edges].copy(),
            prior_strength=self.prior_strength, space=self.space, skipped=self.skipped,
            clip_norm=self.clip_norm,
        )
        return out

    # ------------------------------------------------------------------ posterior
    def posterior(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per-edge posterior mean θ̂ = ((λ + n0)·μ₀ + b)/d and variance 1/d, d = λ + n0 + Σx²
        (n0 = 0 and μ₀ = 0 without a prior)."""
        p = self.prior_precision
        d = p + self.sxx
        num = self.sxr if self.prior_mean is None else self.sxr + p * self.prior_mean
        return num / d, 1.0 / d

    def moments(
        self, contexts: SoftContexts | tuple[ArrayLike, ArrayLike],
        rows: NDArray[np.intp] | None = None,
    ) -> Moments:
        """Score mean and variance [batch, items] and the candidate mask (graph neighbours);
        ``rows`` restricts the columns to those item rows (a candidate list)."""
        if rows is not None:
            mean, var, eligible = self.moments(contexts)
            return mean[:, rows], var[:, rows], eligible[:, rows]  # type: ignore[index]
        ctx = as_soft_contexts(contexts)
        self._check_clusters(ctx)
        batch = len(ctx)
        active = ctx.weights > 0
        req, slot = np.nonzero(active)
        c = ctx.clusters[req, slot]
        w = ctx.weights[req, slot]
        starts, stops = self.indptr[c], self.indptr[c + 1]
        lengths = stops - starts
        total = int(lengths.sum())
        # every edge of every active cluster, without a Python loop over requests
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        edges = offsets + np.arange(total)
        er = np.repeat(req, lengths)
        ew = np.repeat(w, lengths)
        theta, inv_d = self.posterior()
        cell = er * self.n_items + self.edge_row[edges]
        size = batch * self.n_items
        mean = np.bincount(cell, weights=ew * theta[edges], minlength=size)
        var = np.bincount(cell, weights=ew * ew * inv_d[edges], minlength=size)
        wsum = np.bincount(cell, weights=ew, minlength=size)
        eligible = wsum > 0
        if self.weighting == "linear":
            safe = np.where(eligible, wsum, 1.0)
            mean, var = mean / safe, var / (safe * safe)
        shape = (batch, self.n_items)
        return mean.reshape(shape), var.reshape(shape), eligible.reshape(shape)

    def moments_one(
        self, context: SoftContexts | tuple[ArrayLike, ArrayLike]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
        """:meth:`moments` for one request's (clusters [K], weights [K]): arrays of [n_items]."""
        mean, var, eligible = self.moments(context)
        return mean[0], var[0], eligible[0]

    def item_summary(self) -> ItemSummary:
        """Summed over each item's edges: exposure ``Σ_e count_e`` (one per (event, edge): the
        events when each request has one cluster), reward ``Σ_e sxr_e = Σ w·r`` and expected
        reward ``Σ_e sxr_e / (Σ_e sxx_e + λ)``, the edges' pooled posterior mean: the mean
        reward per unit of cluster weight (exact for ``weighting="linear"`` with normalised
        weights, and for one cluster of weight 1)."""
        n, rows = self.n_items, self.edge_row
        exposures = np.bincount(rows, weights=self.count, minlength=n)
        rewards = np.bincount(rows, weights=self.sxr, minlength=n)
        mass = np.bincount(rows, weights=self.sxx, minlength=n)
        return ItemSummary(self.item_ids, exposures, rewards, rewards / (mass + self.lam))

    # ------------------------------------------------------------------ snapshots
    def _arrays_and_meta(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays = {"items": self.items.ids, "edge_cluster": self.edge_cluster,
                  "edge_item": self.edge_items, "sxx": self.sxx, "sxr": self.sxr,
                  "count": self.count}
        if self.prior_mean is not None:
            arrays["prior_mean"] = self.prior_mean
        meta = {"n_clusters": self.n_clusters, "lam": self.lam, "weighting": self.weighting,
                "space": self.space, "skipped": self.skipped,
                "prior_strength": self.prior_strength}
        return arrays, meta

    @classmethod
    def _from_parts(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> GraphStats:
        n_edges = arrays["edge_cluster"].size
        if "edge_item" not in arrays and "edge_row" in arrays:  # files written before protocol 1
            arrays = {**arrays, "edge_item": arrays["items"][arrays["edge_row"]]}
        for name in ("edge_item", "sxx", "sxr", "count"):
            if name not in arrays or arrays[name].shape != (n_edges,):
                raise ValueError(f"{name} is missing or not of shape {(n_edges,)}")
        index = ItemIndex(arrays["items"])
        return cls(
            items=index, n_clusters=int(meta["n_clusters"]),
            edge_cluster=arrays["edge_cluster"].astype(np.int64),
            edge_row=index.rows(arrays["edge_item"].astype(np.int64)).astype(np.intp),
            sxx=arrays["sxx"], sxr=arrays["sxr"], count=arrays["count"], lam=float(meta["lam"]),
            weighting=meta["weighting"], prior_mean=arrays.get("prior_mean"),
            prior_strength=check_strength(meta.get("prior_strength", 0.0),
                                          "meta['prior_strength']"),
            space=str(meta["space"]), skipped=int(meta["skipped"]),
        )


def check_strength(value: object, name: str = "prior_strength") -> float:
    """A prior strength n0: a finite number >= 0 (pseudo-events), as a float."""
    try:
        n0 = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        n0 = float("nan")
    if not (np.isfinite(n0) and n0 >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0 (the prior counts as that many "
                         f"events; 0 is a cold start), got {value!r}")
    return n0


def _cluster_means(clusters: NDArray[np.int64], values: NDArray[np.float64],
                   n_clusters: int) -> NDArray[np.float64]:
    """Each cluster's mean of ``values`` (the overall mean for a cluster without any)."""
    sums = np.bincount(clusters, weights=values, minlength=n_clusters)
    counts = np.bincount(clusters, minlength=n_clusters)
    overall = float(values.mean()) if values.size else 0.0
    return np.where(counts > 0, sums / np.maximum(counts, 1), overall)


def _merged_strength(a: GraphStats, b: GraphStats) -> float:
    """The prior strength of a merge: the prior holder's; two holders must agree."""
    held = [s.prior_strength for s in (a, b) if s.prior_mean is not None]
    if len(held) == 2 and held[0] != held[1]:
        raise ValueError(f"cannot merge GraphStats with prior strengths {held[0]} and {held[1]}")
    return held[0] if held else 0.0
