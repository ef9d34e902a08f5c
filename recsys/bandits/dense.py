"""Dense-layout sufficient statistics: per (item, feature) sums for Diag-LinUCB / diagonal TS.

For item j and feature c the statistics are ``sxx[j, c] = Σ x_c²``, ``sxr[j, c] = Σ x_c·r`` and a
per-item ``count``; the prior precision λ and optional prior means μ₀ complete the Gaussian
posterior::

    d = λ + sxx          θ̂ = (λ·μ₀ + sxr) / d          Var θ = 1 / d   (per coordinate)

``centred=True`` adds two sums, ``sx[j, c] = Σ x_c`` and ``sr[j] = Σ r``, and fits each feature's
univariate regression *with an intercept* (still diagonal, still additive)::

    n' = n + λ     x̄ = sx/n'     d = λ + sxx − sx·x̄     θ̂ = (λ·μ₀ + sxr − x̄·sr) / d
    score mean = sr/n' + Σ_c θ̂_c (x_c − x̄_c)     variance = 1/n' + Σ_c (x_c − x̄_c)²/d_c

With dense embeddings the contexts an item is shown to are selected by the policy, so their mean
is far from zero; the plain diagonal then double-counts that shared mean in every coordinate.
Centring removes this (the dominant) error; the rest of the Diag-vs-full gap is the dropped
covariance between features, reported by ``tests/benchmarks/regret.py``. One-hot contexts (the
Online Matching K = 1 case, where Diag equals LinUCB) want the plain layout.

Only the sums are learned, and sums add: a batch becomes a *delta* (a ``DenseStats`` over the
batch's items), deltas from any number of workers ``merge`` in any order, and an exponential
``decay`` multiplies every sum by the same factor so it commutes with merging. λ and μ₀ are the
prior, not data: they are never summed or decayed, and merging refuses statistics whose priors
disagree. The scoring rule (UCB, Thompson sampling, ...) lives in the policies, not here.

Warm start (``recsys.bandits.warm_start``): the prior mean μ₀ may carry a strength n0 ≥ 0
(``prior_strength``: the prior counts as n0 events per coordinate); λ above becomes λ + n0 in d
and in the prior term (``d = λ + n0 + sxx``, ``θ̂ = ((λ + n0)·μ₀ + sxr)/d``), so before any event
θ̂ = μ₀ with variance 1/(λ + n0). The intercept of centred statistics keeps n' = n + λ. Without
a prior mean, n0 is ignored; n0 = 0 is the plain λ·μ₀ prior.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.accumulate import scatter_add_many, touched_rows
from recsys.bandits.contexts import DenseContexts
from recsys.bandits.graph import check_strength
from recsys.bandits.influence import DEFAULT_CLIP_NORM, check_clip_norm, check_products, clip_one
from recsys.bandits.items import ItemIndex
from recsys.bandits.protocol import (
    DenseBatch,
    ItemSummary,
    Part,
    StatsBase,
    check_sample_weight,
    new_origin,
    register_layout,
)
from recsys.bandits.validation import (
    check_context_one,
    check_contexts,
    check_positive,
    check_reward_one,
)

if TYPE_CHECKING:
    from recsys.config import StreamSettings

FORMAT = "recsys.bandits.DenseStats/1"
_SMALL_BATCH = 64
"""Batches up to this size use ``np.add.at`` (low fixed cost); larger ones use bincount."""

Rows = NDArray[np.intp] | slice
_FLOAT_MAX = float(np.finfo(np.float64).max)
_PART_SUMS = {"both": {"sxx", "sxr", "sx", "count", "sr"}, "exposure": {"sxx", "sx", "count"},
              "reward": {"sxr", "sr"}}
"""The sums each ``part`` of an update touches (see ``recsys.bandits.protocol.Part``)."""


@dataclass(eq=False)
class DensePosterior:
    """The scoring arrays of one statistics version, and the score moments computed from them.

    The arrays are numpy arrays (``DenseStats`` caches them) or the same arrays on another array
    backend (torch tensors on a device: ``recsys.serving.backends``); :meth:`moments` uses only
    operators both support, so every backend scores with this one function.
    """

    version: int
    theta: Any  # slope means [n, d]
    inv_d: Any  # slope variances (before v²) [n, d]
    w1: Any = None  # centred: x̄/d [n, d]
    b0: Any = None  # centred: intercept of the mean [n]
    c0: Any = None  # centred: constant of the variance [n]

    def map(self, convert: Callable[[Any], Any]) -> DensePosterior:
        """The same posterior with every array converted (to a device, a dtype, some rows)."""
        def each(a: Any) -> Any:
            return None if a is None else convert(a)

        return DensePosterior(self.version, each(self.theta), each(self.inv_d), each(self.w1),
                              each(self.b0), each(self.c0))

    def moments(self, x: Any) -> tuple[Any, Any]:
        """Mean and variance of each item's score for each context row of ``x`` [batch, d]
        (in the arrays' dtype and backend): [batch, items]; for one context ``x`` [d]: [items]."""
        mean = x @ self.theta.T
        var = (x * x) @ self.inv_d.T
        if self.w1 is not None:
            mean += self.b0
            cross = x @ self.w1.T
            cross *= 2.0
            var += self.c0
            var -= cross
            var = var.clip(min=0.0)  # λ + Σ(x − x̄)² ≥ λ exactly; this guards float cancellation
        return mean, var


@register_layout
@dataclass(eq=False)
class DenseStats(StatsBase):
    """Additive per-(item, feature) statistics over a dense context of dimension ``dim``.

    Build with :meth:`empty`; mutate only through the methods (they bump ``version`` and refresh
    the cached posterior). ``space`` names the feature space (for example the embedding model's
    version): statistics from different spaces never merge. Implements the
    :class:`~recsys.bandits.protocol.Statistics` protocol (``layout = "dense"``).
    """

    layout = "dense"
    format = FORMAT

    items: ItemIndex
    dim: int
    lam: float
    sxx: NDArray[np.floating]
    sxr: NDArray[np.floating]
    count: NDArray[np.floating]
    sx: NDArray[np.floating] | None = None
    sr: NDArray[np.floating] | None = None
    prior_mean: NDArray[np.floating] | None = None
    prior_strength: float = 0.0
    """n0: the prior mean counts as this many events (module docs; only with a prior mean)."""
    space: str = ""
    version: int = 0
    clip_norm: float = DEFAULT_CLIP_NORM
    """Contexts learned are clipped to this norm (``recsys.bandits.influence``)."""
    origin: str = field(default_factory=new_origin)
    _borrowed: bool = field(default=False, repr=False)
    _cache: DensePosterior | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(
        cls,
        items: ArrayLike,
        dim: int,
        *,
        lam: float = 1.0,
        centred: bool = False,
        prior_mean: ArrayLike | None = None,
        space: str = "",
        dtype: type[np.floating] = np.float64,
        clip_norm: float = DEFAULT_CLIP_NORM,
        prior_strength: float = 0.0,
    ) -> DenseStats:
        """Zero statistics for ``items`` (integer ids) and contexts of dimension ``dim``.

        ``dtype=np.float32`` halves the memory for very large catalogues at the cost of precision
        in long-running sums (decay keeps them bounded); the posterior is computed in float64.
        ``clip_norm`` bounds the norm of every context learned (``recsys.bandits.influence``).
        """
        if int(dim) != dim or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        index = ItemIndex(items)
        n = len(index)
        stats = cls(
            items=index,
            dim=int(dim),
            lam=check_positive(lam, "lam"),
            sxx=np.zeros((n, dim), dtype=dtype),
            sxr=np.zeros((n, dim), dtype=dtype),
            count=np.zeros(n, dtype=np.float64),
            sx=np.zeros((n, dim), dtype=dtype) if centred else None,
            sr=np.zeros(n, dtype=np.float64) if centred else None,
            space=str(space), clip_norm=check_clip_norm(clip_norm),
        )
        if prior_mean is not None:
            stats.set_prior_mean(prior_mean, strength=prior_strength)
        return stats

    @classmethod
    def for_stream(cls, stream: StreamSettings) -> DenseStats:
        """Empty statistics over items ``0 .. stream.n_items - 1`` and ``stream.dim`` features,
        clipping learned contexts to ``stream.context_clip_norm``; warm-started from
        ``stream.prior_file`` when set (``recsys.bandits.warm_start.load_item_prior``)."""
        stats = cls.empty(np.arange(stream.n_items), stream.dim, lam=stream.lam,
                          centred=stream.centred,
                          clip_norm=check_clip_norm(stream.context_clip_norm,
                                                    "stream.context_clip_norm"))
        prior_file = stream.prior_file
        if prior_file is not None:
            from recsys.bandits.warm_start import load_item_prior

            item_ids, prior, strength = load_item_prior(prior_file)
            if prior.shape[1] != stream.dim:
                raise ValueError(f"stream.prior_file {prior_file}: prior of dim {prior.shape[1]}"
                                 f", expected stream.dim = {stream.dim}")
            mu = np.zeros((stream.n_items, stream.dim))
            mu[stats.items.rows(item_ids, name="stream.prior_file items")] = prior
            if strength > 0:
                stats.set_prior_mean(mu, strength=strength)
        return stats

    @property
    def centred(self) -> bool:
        return self.sx is not None

    def context_codec(self) -> DenseContexts:
        """Contexts are dense vectors of ``dim`` features."""
        return DenseContexts(self.dim)

    @property
    def prior_precision(self) -> float:
        """λ + n0 when a prior mean is held, else λ: each coordinate's precision before data."""
        return self.lam + (self.prior_strength if self.prior_mean is not None else 0.0)

    @property
    def d(self) -> NDArray[np.floating]:
        """The diagonal precision per (item, feature): ``λ + n0 + Σ x²`` (centred: of x − x̄)."""
        if not self.centred:
            return self.prior_precision + self.sxx
        return 1.0 / self.posterior()[1]

    def _sums(self) -> dict[str, NDArray[np.floating]]:
        """Every additive array by name (the feature sums [n, d], then the item sums [n])."""
        out = {"sxx": self.sxx, "sxr": self.sxr}
        if self.sx is not None:
            out["sx"] = self.sx
        out["count"] = self.count
        if self.sr is not None:
            out["sr"] = self.sr
        return out

    def _set_sums(self, sums: dict[str, NDArray[np.floating]]) -> None:
        for name, value in sums.items():
            setattr(self, name, value)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (statistics, counts, prior; not the scoring cache)."""
        total = sum(a.nbytes for a in self._sums().values()) + self.items.ids.nbytes
        return total + (0 if self.prior_mean is None else self.prior_mean.nbytes)

    def _after_change(self) -> None:
        self._bump()
        self._cache = None

    # ------------------------------------------------------------------ prior / warm start
    def set_prior_mean(self, prior_mean: ArrayLike | None, *, strength: float = 0.0) -> None:
        """Warm start: prior means μ₀ for θ (shape [n_items, dim], or [n_items, 1] / scalar to
        broadcast) counting as ``strength`` n0 events (module docs). With n0 = 0 only the mean
        moves; d and therefore the exploration bonus are unchanged."""
        self.prior_strength = check_strength(strength)
        if prior_mean is None:
            self.prior_mean = None
            self.prior_strength = 0.0
        else:
            mu = np.asarray(prior_mean, dtype=np.float64)
            try:
                mu = np.broadcast_to(mu, (self.n_items, self.dim))
            except ValueError:
                raise ValueError(
                    f"prior_mean: shape {mu.shape} does not broadcast to "
                    f"[n_items={self.n_items}, dim={self.dim}]"
                ) from None
            if not np.isfinite(mu).all():
                raise ValueError("prior_mean: contains NaN or infinity")
            self.prior_mean = np.array(mu, dtype=self.sxx.dtype)
        self._after_change()

    # ------------------------------------------------------------------ learning
    _batch = StatsBase._dense_batch

    def _event_terms(
        self, x: NDArray[np.float64], r: NDArray[np.float64], part: Part = "both",
        w: NDArray[np.float64] | None = None,
    ) -> dict[str, NDArray[np.float64]]:
        """Per-event contributions to each sum that ``part`` touches, by name, each multiplied
        by the event's weight ``w`` (None: 1)."""
        wanted = _PART_SUMS[part]
        if w is not None:  # weight the per-event factors once: w·x² = (w·x)·x, w·x·r = x·(w·r)
            wx, wr = x * w[:, None], r * w
        else:
            wx, wr = x, r
        terms = {}
        if "sxx" in wanted:
            terms["sxx"] = wx * x
        if "sxr" in wanted:
            terms["sxr"] = x * wr[:, None]
        if self.centred and "sx" in wanted:
            terms["sx"] = wx
        if "count" in wanted:
            terms["count"] = np.ones(r.shape[0]) if w is None else w
        if self.centred and "sr" in wanted:
            terms["sr"] = wr
        return terms

    def _batch_sums(
        self, rows: NDArray[np.intp], x: NDArray[np.float64], r: NDArray[np.float64],
        part: Part = "both", w: NDArray[np.float64] | None = None,
    ) -> tuple[NDArray[np.intp], dict[str, NDArray[np.float64]]]:
        """Touched rows and the batch's sums that ``part`` touches, events weighted by ``w``
        (bincount, no event loop)."""
        unique, local = touched_rows(rows, self.n_items)
        terms = self._event_terms(x, r, part, w)
        wide = [name for name, v in terms.items() if v.ndim == 2]
        sums = dict(zip(wide, scatter_add_many(local, [terms[n] for n in wide], unique.size),
                        strict=True))
        if "count" in terms:
            sums["count"] = np.bincount(local, weights=w, minlength=unique.size
                                        ).astype(np.float64)
        if "sr" in terms:
            sums["sr"] = np.bincount(local, weights=terms["sr"], minlength=unique.size)
        return unique, sums

    def _delta(self, batch: DenseBatch, part: Part) -> DenseStats:
        x, rows, r, w = batch
        unique, sums = self._batch_sums(rows, x, r, part, w)
        dtype = self.sxx.dtype
        delta = DenseStats.empty(self.items.ids[unique], self.dim, lam=self.lam,
                                 centred=self.centred, space=self.space, dtype=dtype.type,
                                 clip_norm=self.clip_norm)
        delta._set_sums({k: (v.astype(dtype, copy=False) if v.ndim == 2 else v)
                         for k, v in sums.items()})
        delta.version = 0
        return delta

    def _learn(self, batch: DenseBatch, part: Part) -> DenseStats:
        x, rows, r, w = batch
        current = self._sums()
        if rows.size <= _SMALL_BATCH:  # scatter-add straight in: cheapest for a few events
            for name, values in self._event_terms(x, r, part, w).items():
                np.add.at(current[name], rows, values)
            self._updated(rows)
            return self
        unique, sums = self._batch_sums(rows, x, r, part, w)
        every_row = unique.size == self.n_items  # plain adds, no fancy indexing
        for name, value in sums.items():
            if every_row:
                current[name] += value
            else:
                current[name][unique] += value
        self._updated(unique)
        return self

    def learn_one(
        self,
        context: ArrayLike,
        item: int,
        reward: float,
        *,
        reward_range: tuple[float, float] = (-np.inf, np.inf),
        sample_weight: float | None = None,
    ) -> DenseStats:
        """Add a single event in place: same result as ``learn`` on a batch of one, with a
        fraction of the fixed per-call cost (river's ``learn_one``); ``sample_weight`` (None:
        1) multiplies its terms."""
        x = clip_one(check_context_one(context, self.dim), self.clip_norm)
        row = self.items.row_one(item)
        r = check_reward_one(reward, reward_range)
        if abs(r) * self.clip_norm > _FLOAT_MAX:  # rare: only then look at the products
            check_products(x[None, :], np.array([r]), self.clip_norm, name="reward")
        wx, wr, w = x, r, 1.0
        if sample_weight is not None:
            w = float(check_sample_weight(sample_weight, 1)[0])  # type: ignore[index]
            wx, wr = x * w, r * w
        view = self.sxx[row]
        view += wx * x
        view = self.sxr[row]
        view += x * wr
        self.count[row] += w
        if self.sx is not None and self.sr is not None:
            view = self.sx[row]
            view += wx
            self.sr[row] += wr
        self._updated(slice(row, row + 1))
        return self

    def _updated(self, rows: Rows) -> None:
        """Bump the version; refresh the cached posterior on the touched rows only."""
        cache = self._cache
        self._bump()
        n_rows = (rows.stop - rows.start) if isinstance(rows, slice) else rows.size
        if cache is None or cache.version != self.version - 1 or n_rows * 4 > self.n_items:
            self._cache = None
            return
        fresh = self._posterior_rows(rows)
        for name in ("theta", "inv_d", "w1", "b0", "c0"):
            target = getattr(cache, name)
            if target is not None:
                target[rows] = getattr(fresh, name)
        cache.version = self.version

    # ------------------------------------------------------------------ algebra
    def _check_compatible(self, other: DenseStats) -> None:
        if not isinstance(other, DenseStats):
            raise TypeError(f"cannot merge DenseStats with {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dim {self.dim} and {other.dim}")
        if other.lam != self.lam:
            raise ValueError(f"cannot merge statistics with different priors λ={self.lam}, "
                             f"λ={other.lam}")
        if other.centred != self.centred:
            raise ValueError("cannot merge centred with uncentred statistics")
        if other.space != self.space:
            raise ValueError(
                f"cannot merge statistics from feature space {self.space!r} with {other.space!r}:"
                " migrate or reset them when the feature space changes"
            )

    def merge(self, other: DenseStats) -> DenseStats:
        """A new ``DenseStats`` = self + other over the union of their items.

        Commutative and associative up to float rounding. Priors: at most one side may carry
        prior means, or both the same ones. The result is a new lineage (fresh ``snapshot_id``).
        """
        self._check_compatible(other)
        if self.items == other.items:
            out = self._copy()
            mine = out._sums()
            for name, value in other._sums().items():
                mine[name] += value
        else:
            out = DenseStats.empty(
                np.union1d(self.items.ids, other.items.ids), self.dim, lam=self.lam,
                centred=self.centred, space=self.space, dtype=self.sxx.dtype.type,
                clip_norm=self.clip_norm,
            )
            mine = out._sums()
            for part in (self, other):
                rows = out.items.rows(part.items.ids)
                for name, value in part._sums().items():
                    mine[name][rows] += value
        out.prior_mean = _merged_prior(self, other, out)
        out.prior_strength = _merged_strength(self, other)
        out.version = 0
        out.origin = new_origin()
        out._cache = None
        return out

    def merge_inplace(self, other: DenseStats) -> DenseStats:
        """Add ``other`` into ``self`` (items of ``other`` must be held); returns ``self``.

        The parameter-shard path: no reallocation of the large arrays. A delta with NaN or
        infinity, or one that would overflow the sums, raises
        :class:`~recsys.bandits.influence.NonFiniteError` and nothing is merged.
        """
        self._check_compatible(other)
        if other.prior_mean is not None:
            raise ValueError("merge_inplace: a delta must not carry prior means")
        rows = self.items.rows(other.items.ids, name="delta items")
        theirs = other._sums()
        self._check_finite_delta(theirs)
        mine = self._sums()
        merged = {}
        with np.errstate(over="ignore"):
            for name, value in theirs.items():
                merged[name] = mine[name][rows] + value
                self._check_finite_result(name, merged[name])
        for name, value in merged.items():
            mine[name][rows] = value
        self._updated(rows)
        return self

    def add_items(self, items: ArrayLike, prior_mean: ArrayLike | None = None) -> DenseStats:
        """Add new items with zero statistics (and optional prior means [m, dim]) in place;
        without ``prior_mean``, a warm start (n0 > 0) gives them the mean item prior."""
        new = self._new_item_ids(items)
        index = ItemIndex(np.concatenate([self.items.ids, new]))
        keep = index.rows(self.items.ids)
        fresh = index.rows(new)
        n = len(index)
        grown = {}
        for name, value in self._sums().items():
            grown[name] = np.zeros((n, *value.shape[1:]), dtype=value.dtype)
            grown[name][keep] = value
        if self.prior_mean is not None or prior_mean is not None:
            mu = np.zeros((n, self.dim), dtype=self.sxx.dtype)
            if self.prior_mean is not None:
                mu[keep] = self.prior_mean
                if prior_mean is None and self.prior_strength > 0 and self.n_items:
                    mu[fresh] = self.prior_mean.mean(axis=0)
            if prior_mean is not None:
                mu[fresh] = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64),
                                            (new.size, self.dim))
                if not np.isfinite(mu).all():
                    raise ValueError("add_items: prior_mean contains NaN or infinity")
            self.prior_mean = mu
        self.items = index
        self._set_sums(grown)
        self._after_change()
        return self

    def retire_items(self, items: ArrayLike) -> DenseStats:
        """Drop items (and their statistics) in place; unknown ids raise."""
        keep = self._rows_kept_without(items)
        self.items = ItemIndex(self.items.ids[keep])
        self._set_sums({name: value[keep] for name, value in self._sums().items()})
        if self.prior_mean is not None:
            self.prior_mean = self.prior_mean[keep]
        self._after_change()
        return self

    # ------------------------------------------------------------------ posterior
    def _posterior_rows(self, rows: Rows) -> DensePosterior:
        """Scoring arrays for some rows, computed in float64 and stored in the stats' dtype."""
        dtype = self.sxx.dtype
        sxx = self.sxx[rows].astype(np.float64)
        sxr = self.sxr[rows].astype(np.float64)
        p = self.prior_precision
        prior = 0.0 if self.prior_mean is None else p * self.prior_mean[rows]
        if self.sx is None or self.sr is None:
            inv_d = 1.0 / (p + sxx)
            return DensePosterior(self.version, ((sxr + prior) * inv_d).astype(dtype, copy=False),
                              inv_d.astype(dtype, copy=False))
        nn = self.count[rows] + self.lam
        sr = self.sr[rows]
        xbar = self.sx[rows].astype(np.float64) / nn[:, None]
        # λ + Σ(x − x̄)² ≥ λ in exact arithmetic; the clip guards float cancellation
        inv_d = 1.0 / np.maximum(p + sxx - self.sx[rows] * xbar, p)
        theta = (sxr - xbar * sr[:, None] + prior) * inv_d
        w1 = xbar * inv_d
        return DensePosterior(
            self.version, theta.astype(dtype, copy=False), inv_d.astype(dtype, copy=False),
            w1=w1.astype(dtype, copy=False),
            b0=(sr / nn - (theta * xbar).sum(axis=1)).astype(dtype, copy=False),
            c0=(1.0 / nn + (xbar * w1).sum(axis=1)).astype(dtype, copy=False),
        )

    def _posterior(self) -> DensePosterior:
        if self._cache is None or self._cache.version != self.version:
            self._cache = self._posterior_rows(slice(None))
        return self._cache

    def posterior(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Per (item, feature) posterior mean θ̂ and variance 1/d (cached until the next update).

        For centred statistics these are the slopes; the intercept is part of the score mean.
        """
        post = self._posterior()
        return post.theta, post.inv_d

    def linear_posterior(self) -> DensePosterior:
        """The cached scoring arrays (numpy) that any array backend scores with."""
        return self._posterior()

    def prepare_scoring(self) -> None:
        """Build the scoring cache now (seconds for a million items), not at the first request."""
        self._posterior()

    def moments(
        self, contexts: ArrayLike, rows: NDArray[np.intp] | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], None]:
        """Mean and variance of each item's score for each context, [batch, items]; ``rows``
        restricts the items to those rows (a candidate list). Every item is a candidate, so the
        eligibility mask is None."""
        x = check_contexts(contexts, self.dim)
        post = self._posterior()
        if rows is not None:
            post = post.map(lambda a: a[rows])
        mean, var = post.moments(x.astype(post.theta.dtype, copy=False))
        return mean.astype(np.float64, copy=False), var.astype(np.float64, copy=False), None

    def moments_one(
        self, context: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], None]:
        """Score mean and variance [n_items] for a single context (the per-event fast path);
        every item is a candidate, so the eligibility mask is None."""
        post = self._posterior()
        x = check_context_one(context, self.dim).astype(post.theta.dtype, copy=False)
        mean, var = post.moments(x)
        return mean.astype(np.float64, copy=False), var.astype(np.float64, copy=False), None

    def item_summary(self) -> ItemSummary:
        """Exposure ``count_j``; centred: reward ``sr_j = Σ r`` and expected reward
        ``sr_j / (count_j + λ)``, the posterior mean score at the item's mean context x̄_j (the
        centred model's intercept, no exploration bonus). Uncentred sums hold Σ x·r but no
        Σ r, so there is no context-free reward (NaN)."""
        exposures = np.asarray(self.count, dtype=np.float64)
        if self.sr is None:
            nan = np.full(self.n_items, np.nan)
            return ItemSummary(self.item_ids, exposures, nan, nan.copy())
        rewards = np.asarray(self.sr, dtype=np.float64)
        return ItemSummary(self.item_ids, exposures, rewards, rewards / (exposures + self.lam))

    # ------------------------------------------------------------------ copies / sharding
    def _copy(self, rows: Rows | None = None) -> DenseStats:
        """A deep copy of all rows (or of ``rows``) as a new lineage."""
        pick: Any = slice(None) if rows is None else rows
        out = DenseStats(
            items=ItemIndex(self.items.ids[pick]), dim=self.dim, lam=self.lam, sxx=self.sxx,
            sxr=self.sxr, count=self.count,
            prior_mean=None if self.prior_mean is None else self.prior_mean[pick].copy(),
            prior_strength=self.prior_strength,
            space=self.space, version=self.version if rows is None else 0,
            clip_norm=self.clip_norm,
        )
        out._set_sums({name: value[pick].copy() for name, value in self._sums().items()})
        return out

    def copy(self) -> DenseStats:
        """A deep copy (a new lineage: its ``snapshot_id`` differs)."""
        return self._copy()

    def select(self, items: ArrayLike) -> DenseStats:
        """A copy holding only ``items`` (all must be held): a shard's share, or one delta's."""
        ids = np.asarray(items, dtype=np.int64).ravel()
        return self._copy(self.items.rows(ids, name="select"))

    def allclose(self, other: object, *, rtol: float = 1e-10, atol: float = 1e-10) -> bool:
        """Same items, layout, prior and sums up to float rounding (not the version)."""
        if not isinstance(other, DenseStats) or self.items != other.items:
            return False
        if (self.dim, self.lam, self.space, self.centred) != (
                other.dim, other.lam, other.space, other.centred):
            return False
        if (self.prior_mean is None) != (other.prior_mean is None):
            return False
        if self.prior_mean is not None and self.prior_strength != other.prior_strength:
            return False
        theirs = other._sums()
        pairs = [(value, theirs[name]) for name, value in self._sums().items()]
        if self.prior_mean is not None and other.prior_mean is not None:
            pairs.append((self.prior_mean, other.prior_mean))
        return all(np.allclose(a, b, rtol=rtol, atol=atol) for a, b in pairs)

    # ------------------------------------------------------------------ snapshots
    def _arrays_and_meta(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays = {"items": self.items.ids, **self._sums()}
        if self.prior_mean is not None:
            arrays["prior_mean"] = self.prior_mean
        meta = {"dim": self.dim, "lam": self.lam, "space": self.space, "centred": self.centred,
                "prior_strength": self.prior_strength}
        return arrays, meta

    @classmethod
    def _from_parts(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> DenseStats:
        dim = int(meta["dim"])
        n = arrays["items"].size
        centred = bool(meta.get("centred"))
        wide = ["sxx", "sxr", "sx"] if centred else ["sxx", "sxr"]
        narrow = ["count", "sr"] if centred else ["count"]
        for name in wide:
            if name not in arrays or arrays[name].shape != (n, dim):
                raise ValueError(f"{name} is missing or not of shape {(n, dim)}")
        for name in narrow:
            if name not in arrays or arrays[name].shape != (n,):
                raise ValueError(f"{name} is missing or not of shape {(n,)}")
        return cls(
            items=ItemIndex(arrays["items"]), dim=dim, lam=float(meta["lam"]),
            sxx=arrays["sxx"], sxr=arrays["sxr"], count=arrays["count"],
            sx=arrays.get("sx"), sr=arrays.get("sr"), prior_mean=arrays.get("prior_mean"),
            prior_strength=check_strength(meta.get("prior_strength", 0.0),
                                          "meta['prior_strength']"),
            space=str(meta["space"]),
        )


def _merged_strength(a: DenseStats, b: DenseStats) -> float:
    """The prior strength of a merge: the prior holder's; two holders must agree."""
    held = [s.prior_strength for s in (a, b) if s.prior_mean is not None]
    if len(held) == 2 and held[0] != held[1]:
        raise ValueError(f"cannot merge statistics with prior strengths {held[0]} and {held[1]}")
    return held[0] if held else 0.0


def _merged_prior(
    a: DenseStats, b: DenseStats, out: DenseStats
) -> NDArray[np.floating] | None:
    """The prior of a merge: the one side that has it, or both if they agree on shared items."""
    if a.prior_mean is None and b.prior_mean is None:
        return None
    mu = np.zeros_like(out.sxx)
    seen = np.zeros(out.n_items, dtype=bool)
    for part in (a, b):
        if part.prior_mean is None:
            continue
        rows = out.items.rows(part.items.ids)
        overlap = seen[rows]
        if overlap.any() and not np.allclose(mu[rows[overlap]], part.prior_mean[overlap]):
            raise ValueError("cannot merge statistics whose prior means disagree")
        mu[rows] = part.prior_mean
        seen[rows] = True
    return mu
