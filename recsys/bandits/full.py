"""Full-covariance statistics for the LinUCB / LinTS accuracy references.

Per item ``A = λI + Σ x xᵀ`` and ``b = Σ x·r``. ``A`` and ``b`` are additive like the diagonal
statistics; ``A⁻¹`` is derived state: every update (a batch, a merged delta, decay) recomputes the
inverses of the items it touched in one batched ``np.linalg.inv`` (faster than rank-one
Sherman–Morrison waves for batches, and free of their accumulated rounding), and snapshots store
the sums only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.accumulate import scatter_add
from recsys.bandits.contexts import DenseContexts
from recsys.bandits.influence import DEFAULT_CLIP_NORM, check_clip_norm
from recsys.bandits.items import ItemIndex
from recsys.bandits.protocol import (
    DenseBatch,
    ItemSummary,
    Part,
    StatsBase,
    new_origin,
    register_layout,
)
from recsys.bandits.validation import (
    check_contexts,
    check_positive,
)

FORMAT = "recsys.bandits.FullStats/1"
_MOMENT_BLOCK_CELLS = 4_000_000
"""Upper bound on the [requests, items, dim] cells of one block of :meth:`FullStats.moments`."""


@register_layout
@dataclass(eq=False)
class FullStats(StatsBase):
    """Per-item Gram matrices, their inverses (Sherman–Morrison) and reward sums.

    Implements the :class:`~recsys.bandits.protocol.Statistics` protocol (``layout = "full"``).
    """

    layout = "full"
    format = FORMAT

    items: ItemIndex
    dim: int
    lam: float
    gram: NDArray[np.float64]  # Σ x xᵀ, [n, d, d] (without λI)
    a_inv: NDArray[np.float64]  # (λI + gram)⁻¹, [n, d, d]
    sxr: NDArray[np.float64]  # Σ x r, [n, d]
    count: NDArray[np.float64]
    prior_mean: NDArray[np.float64] | None = None
    space: str = ""
    version: int = 0
    clip_norm: float = DEFAULT_CLIP_NORM
    """Contexts learned are clipped to this norm (``recsys.bandits.influence``)."""
    origin: str = field(default_factory=new_origin)
    _borrowed: bool = field(default=False, repr=False)

    @classmethod
    def empty(
        cls,
        items: ArrayLike,
        dim: int,
        *,
        lam: float = 1.0,
        prior_mean: ArrayLike | None = None,
        space: str = "",
        clip_norm: float = DEFAULT_CLIP_NORM,
    ) -> FullStats:
        """Zero statistics (``A = λI``) for ``items`` and contexts of dimension ``dim``; learned
        contexts are clipped to ``clip_norm`` (``recsys.bandits.influence``)."""
        if int(dim) != dim or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        index = ItemIndex(items)
        n = len(index)
        lam = check_positive(lam, "lam")
        eye = np.broadcast_to(np.eye(dim), (n, dim, dim))
        mu = None
        if prior_mean is not None:
            mu = np.array(np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (n, dim)))
            if not np.isfinite(mu).all():
                raise ValueError("prior_mean: contains NaN or infinity")
        return cls(
            items=index, dim=int(dim), lam=lam, gram=np.zeros((n, dim, dim)),
            a_inv=eye / lam, sxr=np.zeros((n, dim)), count=np.zeros(n), prior_mean=mu,
            space=space, clip_norm=check_clip_norm(clip_norm),
        )

    def context_codec(self) -> DenseContexts:
        """Contexts are dense vectors of ``dim`` features."""
        return DenseContexts(self.dim)

    def item_summary(self) -> ItemSummary:
        """Exposure ``count_j`` only: the sums hold Σ x·r but no Σ r (reward and expected
        reward are NaN)."""
        nan = np.full(self.n_items, np.nan)
        return ItemSummary(self.item_ids, np.asarray(self.count, dtype=np.float64), nan,
                           nan.copy())

    # ------------------------------------------------------------------ learning
    _batch = StatsBase._dense_batch

    def _learn(self, batch: DenseBatch, part: Part) -> FullStats:
        """Gram and reward sums by scatter-add, then the touched items' inverses recomputed in
        one batched call (exact, no accumulated rank-one rounding). Events weighted by ``w``."""
        x, rows, r, w = batch
        wx = x if w is None else x * w[:, None]
        if part != "exposure":
            self.sxr += scatter_add(rows, wx * r[:, None], self.n_items)
        if part != "reward":  # the Gram matrices, and so the inverses, change with exposure only
            outer = (wx[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
            self.gram += scatter_add(rows, outer, self.n_items).reshape(self.gram.shape)
            self.count += np.bincount(rows, weights=w, minlength=self.n_items)
            self._refresh_rows(np.unique(rows))
        self._bump()
        return self

    def learn_one(
        self, context: ArrayLike, item: int, reward: float, *,
        reward_range: tuple[float, float] = (-np.inf, np.inf),
        sample_weight: float | None = None,
    ) -> FullStats:
        """Add a single event (a batch of one), weighted by ``sample_weight`` (None: 1)."""
        return self.learn(np.asarray(context, dtype=np.float64)[None, :] if np.ndim(context) == 1
                          else context, np.array([item]), np.array([reward]),
                          reward_range=reward_range,
                          sample_weight=None if sample_weight is None else [sample_weight])

    def _delta(self, batch: DenseBatch, part: Part) -> FullStats:
        x, rows, r, w = batch
        wx = x if w is None else x * w[:, None]
        unique, local = np.unique(rows, return_inverse=True)
        m, d = unique.size, self.dim
        gram, count = np.zeros((m, d, d)), np.zeros(m)
        if part != "reward":
            outer = (wx[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
            gram = scatter_add(local, outer, m).reshape(m, d, d)
            count = np.bincount(local, weights=w, minlength=m).astype(np.float64)
        sxr = (scatter_add(local, wx * r[:, None], m) if part != "exposure" else np.zeros((m, d)))
        return FullStats(
            items=ItemIndex(self.items.ids[unique]), dim=d, lam=self.lam, gram=gram,
            a_inv=np.zeros((m, d, d)), sxr=sxr, count=count, space=self.space,
            clip_norm=self.clip_norm,
        )

    def _refresh_rows(self, rows: NDArray[np.intp] | slice) -> None:
        self.a_inv[rows] = np.linalg.inv(self.lam * np.eye(self.dim) + self.gram[rows])

    # ------------------------------------------------------------------ algebra
    def _check_compatible(self, other: FullStats) -> None:
        if not isinstance(other, FullStats):
            raise TypeError(f"cannot merge FullStats with {type(other).__name__}")
        if (self.dim, self.lam, self.space) != (other.dim, other.lam, other.space):
            raise ValueError("FullStats.merge: dim, λ and space must match")

    def merge(self, other: FullStats) -> FullStats:
        """A new FullStats = self + other over the union of their items; inverses recomputed."""
        self._check_compatible(other)
        if self.prior_mean is not None and other.prior_mean is not None:
            raise ValueError("cannot merge two FullStats that both carry prior means")
        out = FullStats.empty(np.union1d(self.items.ids, other.items.ids), self.dim,
                              lam=self.lam, space=self.space, clip_norm=self.clip_norm)
        for part in (self, other):
            rows = out.items.rows(part.items.ids)
            out.gram[rows] += part.gram
            out.sxr[rows] += part.sxr
            out.count[rows] += part.count
            if part.prior_mean is not None:
                out.prior_mean = np.zeros((out.n_items, out.dim))
                out.prior_mean[rows] = part.prior_mean
        out._refresh_rows(slice(None))
        return out

    def merge_inplace(self, other: FullStats) -> FullStats:
        """Add a delta into ``self`` (its items must be held); the touched inverses are rebuilt.
        A delta that is not finite, or would overflow the sums, raises
        :class:`~recsys.bandits.influence.NonFiniteError` and nothing is merged."""
        self._check_compatible(other)
        if other.prior_mean is not None:
            raise ValueError("merge_inplace: a delta must not carry prior means")
        rows = self.items.rows(other.items.ids, name="delta items")
        theirs = other._sums()
        self._check_finite_delta(theirs)
        mine = self._sums()
        with np.errstate(over="ignore"):
            merged = {name: mine[name][rows] + value for name, value in theirs.items()}
        for name, value in merged.items():
            self._check_finite_result(name, value)
        for name, value in merged.items():
            mine[name][rows] = value
        self._refresh_rows(rows)
        self._bump()
        return self

    def _sums(self) -> dict[str, NDArray[np.float64]]:
        return {"gram": self.gram, "sxr": self.sxr, "count": self.count}

    def _after_change(self) -> None:
        self._refresh_rows(slice(None))
        self._bump()

    # ------------------------------------------------------------------ catalogue / sharding
    def add_items(self, items: ArrayLike) -> FullStats:
        """Add new items with zero statistics (``A = λI``) in place."""
        new = self._new_item_ids(items)
        grown = FullStats.empty(np.concatenate([self.items.ids, new]), self.dim, lam=self.lam,
                                space=self.space)
        keep = grown.items.rows(self.items.ids)
        grown.gram[keep], grown.a_inv[keep] = self.gram, self.a_inv
        grown.sxr[keep], grown.count[keep] = self.sxr, self.count
        if self.prior_mean is not None:
            grown.prior_mean = np.zeros((grown.n_items, self.dim))
            grown.prior_mean[keep] = self.prior_mean
        self.items, self.gram, self.a_inv = grown.items, grown.gram, grown.a_inv
        self.sxr, self.count, self.prior_mean = grown.sxr, grown.count, grown.prior_mean
        self._bump()
        return self

    def retire_items(self, items: ArrayLike) -> FullStats:
        """Drop items (and their statistics) in place; unknown ids raise."""
        self._take(self._rows_kept_without(items))
        self._bump()
        return self

    def _take(self, rows: NDArray[Any]) -> None:
        self.items = ItemIndex(self.items.ids[rows])
        self.gram, self.a_inv = self.gram[rows], self.a_inv[rows]
        self.sxr, self.count = self.sxr[rows], self.count[rows]
        if self.prior_mean is not None:
            self.prior_mean = self.prior_mean[rows]

    def select(self, items: ArrayLike) -> FullStats:
        """A copy holding only ``items`` (all must be held): a shard's share."""
        rows = self.items.rows(np.asarray(items, dtype=np.int64).ravel(), name="select")
        out = self.copy()
        out._take(np.sort(rows))
        out.version = 0
        return out

    def copy(self) -> FullStats:
        """A deep copy (a new lineage: its ``snapshot_id`` differs)."""
        return FullStats(
            items=self.items, dim=self.dim, lam=self.lam, gram=self.gram.copy(),
            a_inv=self.a_inv.copy(), sxr=self.sxr.copy(), count=self.count.copy(),
            prior_mean=None if self.prior_mean is None else self.prior_mean.copy(),
            space=self.space, version=self.version, clip_norm=self.clip_norm,
        )

    def allclose(self, other: object, *, rtol: float = 1e-10, atol: float = 1e-10) -> bool:
        """Same items, prior and sums up to float rounding (not the version)."""
        if not isinstance(other, FullStats) or self.items != other.items:
            return False
        if (self.dim, self.lam, self.space) != (other.dim, other.lam, other.space):
            return False
        if (self.prior_mean is None) != (other.prior_mean is None):
            return False
        pairs = [(self.gram, other.gram), (self.sxr, other.sxr), (self.count, other.count)]
        if self.prior_mean is not None and other.prior_mean is not None:
            pairs.append((self.prior_mean, other.prior_mean))
        return all(np.allclose(a, b, rtol=rtol, atol=atol) for a, b in pairs)

    # ------------------------------------------------------------------ scoring
    def posterior(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Posterior mean θ̂ = A⁻¹(b + λμ₀) [n, d] and covariance A⁻¹ [n, d, d]."""
        num = self.sxr if self.prior_mean is None else self.sxr + self.lam * self.prior_mean
        return np.einsum("nij,nj->ni", self.a_inv, num), self.a_inv

    def moments(
        self, contexts: ArrayLike, rows: NDArray[np.intp] | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], None]:
        """Mean ``x·θ̂_j`` and variance ``xᵀA_j⁻¹x`` of every item's score, [batch, items];
        ``rows`` restricts the items to those rows (a candidate list)."""
        x = check_contexts(contexts, self.dim)
        theta, a_inv = self.posterior()
        if rows is not None:
            theta, a_inv = theta[rows], a_inv[rows]
        n, d = theta.shape
        # xᵀA⁻¹x for every (request, item) as one matrix product per block of requests: an
        # einsum over [b, n, d, d] is an order of magnitude slower than BLAS here
        stacked = a_inv.transpose(1, 0, 2).reshape(d, n * d)
        var = np.empty((x.shape[0], n))
        step = max(1, _MOMENT_BLOCK_CELLS // max(n * d, 1))
        for start in range(0, x.shape[0], step):  # blocks of requests, not single events
            block = x[start:start + step]
            xa = (block @ stacked).reshape(block.shape[0], n, d)
            var[start:start + step] = np.einsum("bnj,bj->bn", xa, block)
        return x @ theta.T, np.maximum(var, 0.0), None

    def moments_one(
        self, context: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], None]:
        """:meth:`moments` for a single context [dim]: arrays of [n_items]."""
        mean, var, _ = self.moments(context)
        return mean[0], var[0], None

    # ------------------------------------------------------------------ snapshots
    def _arrays_and_meta(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays = {"items": self.items.ids, "gram": self.gram, "sxr": self.sxr,
                  "count": self.count}
        if self.prior_mean is not None:
            arrays["prior_mean"] = self.prior_mean
        return arrays, {"dim": self.dim, "lam": self.lam, "space": self.space}

    @classmethod
    def _from_parts(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> FullStats:
        dim, n = int(meta["dim"]), arrays["items"].size
        for name, shape in (("gram", (n, dim, dim)), ("sxr", (n, dim)), ("count", (n,))):
            if name not in arrays or arrays[name].shape != shape:
                raise ValueError(f"{name} is missing or not of shape {shape}")
        lam = float(meta["lam"])
        gram = np.array(arrays["gram"], dtype=np.float64)
        return cls(
            items=ItemIndex(arrays["items"]), dim=dim, lam=lam, gram=gram,
            a_inv=np.linalg.inv(lam * np.eye(dim) + gram), sxr=np.array(arrays["sxr"]),
            count=np.array(arrays["count"]), prior_mean=arrays.get("prior_mean"),
            space=str(meta["space"]),
        )


class FullCovariancePolicy:
    """Mixin that puts a diagonal policy's scoring rule on :class:`FullStats` (LinUCB, LinTS).

    List it before the diagonal policy it refines: ``class LinUCB(FullCovariancePolicy,
    DiagLinUCB)``. The host provides ``centred`` and the checked ``_lam``.
    """

    centred: bool
    _lam: float

    def _new_stats(
        self, items: ArrayLike, dim: int, prior_mean: ArrayLike | None, space: str,
        dtype: type[np.floating],
    ) -> FullStats:
        if self.centred:
            raise ValueError("centred: expected False for full covariance, got True; centring "
                             "applies to diagonal statistics, full covariance models the "
                             "intercept through a constant feature")
        return FullStats.empty(items, dim, lam=self._lam, prior_mean=prior_mean, space=space)

    def use(self, stats: Any):
        """Score and learn with existing full-covariance statistics (``layout == "full"``)."""
        layout = getattr(stats, "layout", None)
        if layout != "full":
            name = type(self).__name__
            raise TypeError(f"stats: expected FullStats (layout 'full') for {name}, got "
                            f"{type(stats).__name__} (layout {layout!r}); use Diag{name} for it")
        return super().use(stats)  # type: ignore[misc]
