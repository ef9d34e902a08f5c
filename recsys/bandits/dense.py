"""Dense-layout sufficient statistics: per (item, feature) sums for Diag-LinUCB / diagonal TS.

For item j and feature c the statistics are ``sxx[j, c] = Σ x_c²``, ``sxr[j, c] = Σ x_c·r`` and a
per-item ``count``; the prior precision λ and optional prior means μ₀ complete the Gaussian
posterior::

    d = λ + sxx          θ̂ = (λ·μ₀ + sxr) / d          Var θ = 1 / d   (per coordinate)

Only the sums are learned, and sums add: a batch becomes a *delta* (a ``DenseStats`` over the
batch's items), deltas from any number of workers ``merge`` in any order, and an exponential
``decay`` multiplies every sum by the same factor so it commutes with merging. λ and μ₀ are the
prior, not data: they are never summed or decayed, and merging refuses statistics whose priors
disagree. The scoring rule (UCB, Thompson sampling, ...) lives in the policies, not here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.accumulate import scatter_sums, touched_rows
from recsys.bandits.items import ItemIndex
from recsys.bandits.persistence import read_npz, write_npz
from recsys.bandits.validation import (
    check_context_one,
    check_contexts,
    check_items,
    check_positive,
    check_reward_one,
    check_rewards,
)

FORMAT = "recsys.bandits.DenseStats/1"
_SMALL_BATCH = 64
"""Batches up to this size use ``np.add.at`` (low fixed cost); larger ones use bincount."""


@dataclass
class DenseStats:
    """Additive per-(item, feature) statistics over a dense context of dimension ``dim``.

    Build with :meth:`empty`; mutate only through the methods (they bump ``version`` and drop the
    cached posterior). ``space`` names the feature space (for example the embedding model's
    version): statistics from different spaces never merge.
    """

    items: ItemIndex
    dim: int
    lam: float
    sxx: NDArray[np.floating]
    sxr: NDArray[np.floating]
    count: NDArray[np.floating]
    prior_mean: NDArray[np.floating] | None = None
    space: str = ""
    version: int = 0
    _cache: tuple[int, NDArray[np.floating], NDArray[np.floating]] | None = field(
        default=None, repr=False, compare=False
    )

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(
        cls,
        items: ArrayLike,
        dim: int,
        *,
        lam: float = 1.0,
        prior_mean: ArrayLike | None = None,
        space: str = "",
        dtype: type[np.floating] = np.float64,
    ) -> DenseStats:
        """Zero statistics for ``items`` (integer ids) and contexts of dimension ``dim``.

        ``dtype=np.float32`` halves the memory for very large catalogues at the cost of precision
        in long-running sums (decay keeps them bounded).
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
            space=str(space),
        )
        if prior_mean is not None:
            stats.set_prior_mean(prior_mean)
        return stats

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> NDArray[np.int64]:
        """Item ids in row order."""
        return self.items.ids

    @property
    def d(self) -> NDArray[np.floating]:
        """The diagonal precision ``λ + Σ x²`` per (item, feature)."""
        return self.lam + self.sxx

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (statistics, counts, prior; not the scoring cache)."""
        total = self.sxx.nbytes + self.sxr.nbytes + self.count.nbytes + self.items.ids.nbytes
        return total + (0 if self.prior_mean is None else self.prior_mean.nbytes)

    def _touch(self) -> None:
        self.version += 1
        self._cache = None

    # ------------------------------------------------------------------ prior / warm start
    def set_prior_mean(self, prior_mean: ArrayLike | None) -> None:
        """Warm start: prior means μ₀ for θ (shape [n_items, dim], or [n_items, 1] / scalar to
        broadcast). Only the mean moves; d and therefore the exploration bonus are unchanged."""
        if prior_mean is None:
            self.prior_mean = None
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
        self._touch()

    # ------------------------------------------------------------------ learning
    def _validated(
        self,
        contexts: ArrayLike,
        items: ArrayLike,
        rewards: ArrayLike,
        reward_range: tuple[float, float],
    ) -> tuple[NDArray[np.float64], NDArray[np.intp], NDArray[np.float64]]:
        x = check_contexts(contexts, self.dim)
        ids = check_items(items, x.shape[0])
        r = check_rewards(rewards, x.shape[0], reward_range)
        return x, self.items.rows(ids), r

    def delta_from_batch(
        self,
        contexts: ArrayLike,
        items: ArrayLike,
        rewards: ArrayLike,
        *,
        reward_range: tuple[float, float] = (-np.inf, np.inf),
    ) -> DenseStats:
        """The statistics of one batch alone, over the batch's distinct items.

        Same ``dim``, λ and ``space`` as ``self``, no prior and version 0, so that
        ``self.merge(delta)`` equals learning the batch. Items must be known to ``self``.
        """
        x, rows, r = self._validated(contexts, items, rewards, reward_range)
        unique, local = touched_rows(rows, self.n_items)
        sxx, sxr, count = scatter_sums(local, x * x, x * r[:, None], unique.size)
        return DenseStats(
            items=ItemIndex(self.items.ids[unique]),
            dim=self.dim,
            lam=self.lam,
            sxx=sxx.astype(self.sxx.dtype, copy=False),
            sxr=sxr.astype(self.sxx.dtype, copy=False),
            count=count,
            space=self.space,
        )

    def learn(
        self,
        contexts: ArrayLike,
        items: ArrayLike,
        rewards: ArrayLike,
        *,
        reward_range: tuple[float, float] = (-np.inf, np.inf),
    ) -> DenseStats:
        """Add one batch (or one event) in place; returns ``self``."""
        x, rows, r = self._validated(contexts, items, rewards, reward_range)
        x_sq, x_r = x * x, x * r[:, None]
        if rows.size <= _SMALL_BATCH:  # scatter-add straight in: cheapest for a few events
            np.add.at(self.sxx, rows, x_sq)
            np.add.at(self.sxr, rows, x_r)
            np.add.at(self.count, rows, 1.0)
            self._updated(rows)
            return self
        unique, local = touched_rows(rows, self.n_items)
        sxx, sxr, count = scatter_sums(local, x_sq, x_r, unique.size)
        if unique.size == self.n_items:  # every row touched: plain adds, no fancy indexing
            self.sxx += sxx
            self.sxr += sxr
            self.count += count
        else:
            self.sxx[unique] += sxx
            self.sxr[unique] += sxr
            self.count[unique] += count
        self._updated(unique)
        return self

    def learn_one(
        self,
        context: ArrayLike,
        item: int,
        reward: float,
        *,
        reward_range: tuple[float, float] = (-np.inf, np.inf),
    ) -> DenseStats:
        """Add a single event in place: same result as ``learn`` on a batch of one, with a
        fraction of the fixed per-call cost (river's ``learn_one``)."""
        x = check_context_one(context, self.dim)
        row = self.items.row_one(item)
        r = check_reward_one(reward, reward_range)
        sxx, sxr = self.sxx[row], self.sxr[row]  # views: updated in place
        sxx += x * x
        sxr += x * r
        self.count[row] += 1.0
        cache = self._cache
        self.version += 1
        if cache is None or cache[0] != self.version - 1:
            self._cache = None
            return self
        inv = 1.0 / (self.lam + sxx)
        cache[2][row] = inv
        cache[1][row] = (sxr if self.prior_mean is None else
                         sxr + self.lam * self.prior_mean[row]) * inv
        self._cache = (self.version, cache[1], cache[2])
        return self

    def _updated(self, rows: NDArray[np.intp]) -> None:
        """Bump the version; refresh the cached posterior on the touched rows only."""
        cache = self._cache
        self.version += 1
        if cache is None or cache[0] != self.version - 1 or rows.size * 4 > self.n_items:
            self._cache = None
            return
        _, theta, inv_d = cache
        d = self.lam + self.sxx[rows]
        num = self.sxr[rows] if self.prior_mean is None else (
            self.sxr[rows] + self.lam * self.prior_mean[rows])
        inv_d[rows] = 1.0 / d
        theta[rows] = num * inv_d[rows]
        self._cache = (self.version, theta, inv_d)

    # ------------------------------------------------------------------ algebra
    def _check_compatible(self, other: DenseStats) -> None:
        if not isinstance(other, DenseStats):
            raise TypeError(f"cannot merge DenseStats with {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dim {self.dim} and {other.dim}")
        if other.lam != self.lam:
            raise ValueError(f"cannot merge statistics with different priors λ={self.lam}, "
                             f"λ={other.lam}")
        if other.space != self.space:
            raise ValueError(
                f"cannot merge statistics from feature space {self.space!r} with {other.space!r}:"
                " migrate or reset them when the feature space changes"
            )

    def merge(self, other: DenseStats) -> DenseStats:
        """A new ``DenseStats`` = self + other over the union of their items.

        Commutative and associative up to float rounding. Priors: at most one side may carry
        prior means, or both the same ones. The version is the larger of the two.
        """
        self._check_compatible(other)
        if self.items == other.items:
            out = self._copy()
            out.sxx += other.sxx
            out.sxr += other.sxr
            out.count += other.count
        else:
            out = DenseStats.empty(
                np.union1d(self.items.ids, other.items.ids),
                self.dim,
                lam=self.lam,
                space=self.space,
                dtype=self.sxx.dtype.type,
            )
            for part in (self, other):
                rows = out.items.rows(part.items.ids)
                out.sxx[rows] += part.sxx
                out.sxr[rows] += part.sxr
                out.count[rows] += part.count
        out.prior_mean = _merged_prior(self, other, out)
        out.version = max(self.version, other.version)
        out._cache = None
        return out

    def merge_inplace(self, other: DenseStats) -> DenseStats:
        """Add ``other`` into ``self`` (items of ``other`` must be held); returns ``self``.

        The parameter-shard path: no reallocation of the large arrays.
        """
        self._check_compatible(other)
        if other.prior_mean is not None:
            raise ValueError("merge_inplace: a delta must not carry prior means")
        rows = self.items.rows(other.items.ids, name="delta items")
        self.sxx[rows] += other.sxx
        self.sxr[rows] += other.sxr
        self.count[rows] += other.count
        self._updated(rows)
        return self

    def decay(self, factor: float) -> DenseStats:
        """Multiply every sum by ``factor`` in (0, 1] in place (exponential forgetting).

        Linear in the sums, so decaying then merging equals merging then decaying. Use
        ``factor = 0.5 ** (elapsed / half_life)`` for a time-based half-life.
        """
        f = float(factor)
        if not (0.0 < f <= 1.0):
            raise ValueError(f"decay factor must be in (0, 1], got {factor!r}")
        self.sxx *= f
        self.sxr *= f
        self.count *= f
        self._touch()
        return self

    def add_items(self, items: ArrayLike, prior_mean: ArrayLike | None = None) -> DenseStats:
        """Add new items with zero statistics (and optional prior means [m, dim]) in place."""
        new = np.asarray(items, dtype=np.int64).ravel()
        clash = self.items.contains(new)
        if clash.any():
            raise ValueError(f"add_items: item id(s) {new[clash][:5].tolist()} already present")
        index = ItemIndex(np.concatenate([self.items.ids, new]))
        keep = index.rows(self.items.ids)
        fresh = index.rows(new)
        n = len(index)
        sxx = np.zeros((n, self.dim), dtype=self.sxx.dtype)
        sxr = np.zeros_like(sxx)
        count = np.zeros(n)
        sxx[keep], sxr[keep], count[keep] = self.sxx, self.sxr, self.count
        if self.prior_mean is not None or prior_mean is not None:
            mu = np.zeros_like(sxx)
            if self.prior_mean is not None:
                mu[keep] = self.prior_mean
            if prior_mean is not None:
                mu[fresh] = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64),
                                            (new.size, self.dim))
                if not np.isfinite(mu).all():
                    raise ValueError("add_items: prior_mean contains NaN or infinity")
            self.prior_mean = mu
        self.items, self.sxx, self.sxr, self.count = index, sxx, sxr, count
        self._touch()
        return self

    def retire_items(self, items: ArrayLike) -> DenseStats:
        """Drop items (and their statistics) in place; unknown ids raise."""
        gone = np.asarray(items, dtype=np.int64).ravel()
        rows = self.items.rows(gone, name="retire_items")
        keep = np.ones(self.n_items, dtype=bool)
        keep[rows] = False
        self.items = ItemIndex(self.items.ids[keep])
        self.sxx, self.sxr, self.count = self.sxx[keep], self.sxr[keep], self.count[keep]
        if self.prior_mean is not None:
            self.prior_mean = self.prior_mean[keep]
        self._touch()
        return self

    # ------------------------------------------------------------------ posterior
    def posterior(self) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Per (item, feature) posterior mean θ̂ and variance 1/d (cached until the next update)."""
        if self._cache is None or self._cache[0] != self.version:
            d = self.lam + self.sxx
            num = self.sxr if self.prior_mean is None else self.sxr + self.lam * self.prior_mean
            inv_d = 1.0 / d
            self._cache = (self.version, num * inv_d, inv_d)
        return self._cache[1], self._cache[2]

    def score_moments(
        self, contexts: NDArray[np.float64], rows: NDArray[np.intp] | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Mean ``x·θ̂_j`` and variance ``Σ_c x_c²/d_jc`` of each item's score, [batch, items].

        ``rows`` restricts the result to those item rows (candidate lists).
        """
        theta, inv_d = self.posterior()
        if rows is not None:
            theta, inv_d = theta[rows], inv_d[rows]
        x = contexts.astype(theta.dtype, copy=False)
        mean = x @ theta.T
        var = (x * x) @ inv_d.T
        return mean.astype(np.float64, copy=False), np.maximum(var, 0.0).astype(np.float64,
                                                                                  copy=False)

    def moments(
        self, contexts: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], None]:
        """Validated :meth:`score_moments` for all items (every item is a candidate)."""
        mean, var = self.score_moments(check_contexts(contexts, self.dim))
        return mean, var, None

    # ------------------------------------------------------------------ comparison / copies
    def _copy(self) -> DenseStats:
        return DenseStats(
            items=ItemIndex(self.items.ids),
            dim=self.dim,
            lam=self.lam,
            sxx=self.sxx.copy(),
            sxr=self.sxr.copy(),
            count=self.count.copy(),
            prior_mean=None if self.prior_mean is None else self.prior_mean.copy(),
            space=self.space,
            version=self.version,
        )

    def copy(self) -> DenseStats:
        """A deep copy."""
        return self._copy()

    def allclose(self, other: DenseStats, *, rtol: float = 1e-10, atol: float = 1e-10) -> bool:
        """Same items, prior and sums up to float rounding (the version is not compared)."""
        if not isinstance(other, DenseStats) or self.items != other.items:
            return False
        if (self.dim, self.lam, self.space) != (other.dim, other.lam, other.space):
            return False
        if (self.prior_mean is None) != (other.prior_mean is None):
            return False
        pairs = [(self.sxx, other.sxx), (self.sxr, other.sxr), (self.count, other.count)]
        if self.prior_mean is not None:
            pairs.append((self.prior_mean, other.prior_mean))  # type: ignore[arg-type]
        return all(np.allclose(a, b, rtol=rtol, atol=atol) for a, b in pairs)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` file (plain arrays only, loadable without pickle)."""
        arrays = {
            "items": self.items.ids,
            "sxx": self.sxx,
            "sxr": self.sxr,
            "count": self.count,
        }
        if self.prior_mean is not None:
            arrays["prior_mean"] = self.prior_mean
        meta = {"dim": self.dim, "lam": self.lam, "space": self.space, "version": self.version}
        write_npz(path, FORMAT, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DenseStats:
        """Read a file written by :meth:`save` (refuses other formats and pickled objects)."""
        meta, arrays = read_npz(path, FORMAT)
        dim = int(meta["dim"])
        n = arrays["items"].size
        for name in ("sxx", "sxr"):
            if arrays[name].shape != (n, dim):
                raise ValueError(f"{path}: {name} has shape {arrays[name].shape}, "
                                 f"expected {(n, dim)}")
        return cls(
            items=ItemIndex(arrays["items"]),
            dim=dim,
            lam=float(meta["lam"]),
            sxx=arrays["sxx"],
            sxr=arrays["sxr"],
            count=arrays["count"],
            prior_mean=arrays.get("prior_mean"),
            space=str(meta["space"]),
            version=int(meta["version"]),
        )


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
