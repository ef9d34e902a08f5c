"""Full-covariance statistics for the LinUCB / LinTS accuracy references.

Per item ``A = λI + Σ x xᵀ`` and ``b = Σ x·r``. ``A`` and ``b`` are additive like the diagonal
statistics; ``A⁻¹`` is kept up to date with Sherman–Morrison rank-one updates, vectorised across
items: a batch is split into waves holding at most one event per item, so the Python loop runs
over waves (the largest per-item count in the batch), never over events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recsys.bandits.accumulate import scatter_add
from recsys.bandits.items import ItemIndex
from recsys.bandits.validation import (
    check_contexts,
    check_items,
    check_positive,
    check_rewards,
)


@dataclass
class FullStats:
    """Per-item Gram matrices, their inverses (Sherman–Morrison) and reward sums."""

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

    @classmethod
    def empty(
        cls,
        items: ArrayLike,
        dim: int,
        *,
        lam: float = 1.0,
        prior_mean: ArrayLike | None = None,
        space: str = "",
    ) -> FullStats:
        """Zero statistics (``A = λI``) for ``items`` and contexts of dimension ``dim``."""
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
            space=space,
        )

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def item_ids(self) -> NDArray[np.int64]:
        return self.items.ids

    def learn(
        self,
        contexts: ArrayLike,
        items: ArrayLike,
        rewards: ArrayLike,
        *,
        reward_range: tuple[float, float] = (-np.inf, np.inf),
    ) -> FullStats:
        """Add a batch in place: Gram and reward sums by scatter-add, A⁻¹ by Sherman–Morrison."""
        x = check_contexts(contexts, self.dim)
        r = check_rewards(rewards, x.shape[0], reward_range)
        rows = self.items.rows(check_items(items, x.shape[0]))
        outer = (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)
        self.gram += scatter_add(rows, outer, self.n_items).reshape(self.gram.shape)
        self.sxr += scatter_add(rows, x * r[:, None], self.n_items)
        self.count += np.bincount(rows, minlength=self.n_items)
        # occurrence rank of each event within its item → waves with distinct items
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        starts = np.r_[0, np.flatnonzero(sorted_rows[1:] != sorted_rows[:-1]) + 1]
        group_start = np.repeat(starts, np.diff(np.r_[starts, sorted_rows.size]))
        rank = np.empty_like(rows)
        rank[order] = np.arange(rows.size) - group_start
        for wave in range(int(rank.max(initial=-1)) + 1):  # loop over waves, not events
            sel = rank == wave
            wr, wx = rows[sel], x[sel]
            u = np.einsum("nij,nj->ni", self.a_inv[wr], wx)
            denom = 1.0 + np.einsum("ni,ni->n", wx, u)
            self.a_inv[wr] -= u[:, :, None] * u[:, None, :] / denom[:, None, None]
        self.version += 1
        return self

    def refresh(self) -> FullStats:
        """Recompute A⁻¹ from the Gram matrices (removes accumulated rounding)."""
        self.a_inv = np.linalg.inv(self.lam * np.eye(self.dim) + self.gram)
        self.version += 1
        return self

    def merge(self, other: FullStats) -> FullStats:
        """A new FullStats = self + other (same items, dim, λ, space); inverses recomputed."""
        if (self.items != other.items or self.dim != other.dim or self.lam != other.lam
                or self.space != other.space):
            raise ValueError("FullStats.merge: items, dim, λ and space must match")
        out = FullStats(
            items=self.items, dim=self.dim, lam=self.lam, gram=self.gram + other.gram,
            a_inv=self.a_inv.copy(), sxr=self.sxr + other.sxr, count=self.count + other.count,
            prior_mean=self.prior_mean if self.prior_mean is not None else other.prior_mean,
            space=self.space, version=max(self.version, other.version),
        )
        return out.refresh()

    def posterior(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Posterior mean θ̂ = A⁻¹(b + λμ₀) [n, d] and covariance A⁻¹ [n, d, d]."""
        num = self.sxr if self.prior_mean is None else self.sxr + self.lam * self.prior_mean
        return np.einsum("nij,nj->ni", self.a_inv, num), self.a_inv

    def moments(
        self, contexts: ArrayLike
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], None]:
        """Mean ``x·θ̂_j`` and variance ``xᵀA_j⁻¹x`` of every item's score, [batch, n_items]."""
        x = check_contexts(contexts, self.dim)
        theta, a_inv = self.posterior()
        var = np.einsum("bi,nij,bj->bn", x, a_inv, x, optimize=True)
        return x @ theta.T, np.maximum(var, 0.0), None


class FullCovariancePolicy:
    """Mixin that puts a diagonal policy's scoring rule on :class:`FullStats` (LinUCB, LinTS).

    List it before the diagonal policy it refines: ``class LinUCB(FullCovariancePolicy,
    DiagLinUCB)``. The host provides ``lam`` and ``centred``.
    """

    lam: float
    centred: bool

    def _new_stats(
        self, items: ArrayLike, dim: int, prior_mean: ArrayLike | None, space: str,
        dtype: type[np.floating],
    ) -> FullStats:
        if self.centred:
            raise ValueError("centred applies to diagonal statistics; full covariance models the "
                             "intercept through a constant feature")
        return FullStats.empty(items, dim, lam=self.lam, prior_mean=prior_mean, space=space)

    def use(self, stats: object):
        if not isinstance(stats, FullStats):
            name = type(self).__name__
            raise TypeError(f"{name} needs FullStats (full covariance); use Diag{name} for "
                            f"{type(stats).__name__}")
        return super().use(stats)  # type: ignore[misc]
