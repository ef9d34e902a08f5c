"""How much one event can move the model: the per-event context clip, and the bound it buys.

Every statistics layout learns through one validated batch (``StatsBase._dense_batch`` for dense
and full statistics, ``GraphStats._batch`` for cluster weights), and that batch goes through
:func:`clip_rows` with the statistics' ``clip_norm`` (``stream.context_clip_norm`` for the
streamed statistics): a context ``x`` with ``‖x‖ > C`` is scaled by ``C/‖x‖`` (the usual robust
per-event clip); a smaller one is untouched. So the online learners, offline ``learn``, replay
and the joiner's rewards learned later all clip the same way, and the learner ≡ joiner
equivalence holds. The norm is computed without overflow (entries are divided by the row's
largest magnitude first): a naive ``sqrt(Σx²)`` of 32 × 1e200 is ``inf``, which would scale the
context to 0 rather than to norm ``C``. ``C`` is at most :data:`MAX_CLIP_NORM` (1e100), so
``x²`` of a clipped context is finite; a reward ``r`` whose product with a clipped context
overflows is refused (``ValueError`` naming the event; learners refuse such rewards earlier,
against the reward mapping's range, and dead-letter them).

What one event can do
---------------------
Take one item's dense statistics (diagonal: each feature c is its own 1-d regression), an event
with ``‖x‖ ≤ C`` (after the clip) and reward ``|r| ≤ R``, every past reward also in ``[-R, R]``,
and a query context ``q`` (serving refuses ``‖q‖ > serve.max_context_norm``). Write ``d_c`` for
the precision (``1/inv_d``), ``θ_c`` for the slope, ``n' = count + λ``, ``x̄ = Σx/n'``.

* **Sums** move by at most: count 1, ``|Σr|`` R, ``‖Σx‖`` C, ``Σ_c Σx_c²`` C², ``‖Σx·r‖`` C·R.
  Without the clip one event can put ``inf`` into ``Σx²`` (the bug of issue 17: every
  Thompson-sampling score became NaN and was served as ``null``).
* **A burst of N events** is one batch, and sums add, so the update is exact in closed form.
  Uncentred, ``θ_c`` becomes ``(d_c·θ_c + Σx_c·r)/(d_c + T_c)`` with ``T_c = Σx_c² ≤ N·C²``;
  Cauchy–Schwarz (``|Σx_c·r| ≤ R·√(N·T_c)``, ``√T/(d+T) ≤ 1/(2√d)``) gives::

      |Δθ_c| ≤ R·√N / (2√d_c) + |θ_c|·min(1, N·C²/d_c)

  Centred (Chan's pooled update: the burst's own centred sums plus its mean's offset, weighted
  by ``κ = n'N/(n'+N) ≤ N``), with ``U_c = C + |x̄_c|`` bounding ``|x_c − x̄_c|``::

      |Δθ_c| ≤ (√5/2)·R·√(N/d_c) + |θ_c|·min(1, N·U_c²/d_c)
      |Δx̄_c| ≤ N·U_c/(n'+N)          |Δ(Σr/n')| ≤ 2R·N/(n'+N)

  A single large context cannot move ``θ_c`` far: it pulls it toward ``v/u ≈ 0`` (the
  ``min(1, ·)`` term) while ``d_c`` grows. What it *can* move, unclipped, is the item's mean
  context ``x̄`` (and, past ~1e154, the sums overflow to ``inf``: issue 17's NaN scores).
* **Served mean score** ``m(q) = Σr/n' + Σ_c θ_c (q_c − x̄_c)`` (uncentred ``Σ_c θ_c q_c``), for a
  query ``q`` (serving refuses ``‖q‖ > serve.max_context_norm``): :func:`mean_shift_bound`::

      |Δm| ≤ 2R·N/(n'+N) + Σ_c [ |Δθ_c|·(|q_c| + |x̄_c| + |Δx̄_c|) + |θ_c|·|Δx̄_c| ]

  (uncentred: ``Σ_c |q_c|·|Δθ_c|``), every quantity read from the statistics before the burst.
  It grows like ``√N`` through the slopes and saturates in ``x̄``; by Cauchy–Schwarz,
  ``Σ_c |q_c|·a_c ≤ ‖q‖·‖a‖`` turns it into one number for every ``‖q‖ ≤ Q``.
* **Exploration scale** (the UCB bonus and the Thompson-sampling spread use the score variance
  ``1/n' + Σ_c (q_c − x̄_c)²/d_c``; uncentred ``Σ_c q_c²/d_c``): ``n'`` and ``d`` only grow and
  ``|x̄_c|`` stays below ``max(|x̄_c|, C)``, so no burst raises it above :func:`variance_bound`.
  A burst can *lower* it: one clipped event adds up to ``C²`` to a ``d_c``, as much as
  ``C²/E[x_c²]`` ordinary events, so set ``context_clip_norm`` near the norm of real contexts
  (a few times the typical one), not far above it.

Graph statistics clip the cluster-weight vector the same way (soft memberships that sum to one
have norm ≤ 1 and are never clipped); each edge sum then moves by at most ``C²`` (``C`` with
linear weighting), ``C·R`` and 1 per event.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from numpy.typing import NDArray

from recsys.validation import message

DEFAULT_CLIP_NORM = 1000.0
"""The statistics' default ``clip_norm`` (``stream.context_clip_norm``'s default too)."""
MAX_CLIP_NORM = 1e100
"""The largest clip norm: its square (one event's ``Σx²``) stays far from overflowing float64."""
_FLOAT_MAX = sys.float_info.max


class NonFiniteError(ValueError):
    """Statistics that would hold NaN or infinity (a delta with such entries, or one whose sum
    with the statistics overflows): refused, nothing is merged."""


def check_clip_norm(value: object, name: str = "clip_norm") -> float:
    """A clip norm in (0, :data:`MAX_CLIP_NORM`]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(message(name, "a number in (0, 1e100]", repr(value)))
    c = float(value)
    if not (0.0 < c <= MAX_CLIP_NORM):
        raise ValueError(message(name, "a number in (0, 1e100]", repr(value),
                                 "it bounds one event's context norm; pick a few times the "
                                 "norm of real contexts"))
    return c


def row_norms(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Euclidean norm of each row of finite ``x`` [b, d], computed without overflow in the
    squares (the result is ``inf`` only where the norm itself exceeds the float range)."""
    big = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0])
    safe = np.where(big > 0, big, 1.0)
    unit = x / safe[:, None]
    with np.errstate(over="ignore"):
        return big * np.sqrt(np.einsum("ij,ij->i", unit, unit))


def clip_rows(x: NDArray[np.float64], clip_norm: float) -> NDArray[np.float64]:
    """``x`` [b, d] (finite) with every row of norm above ``clip_norm`` scaled down to it; rows
    within the bound are untouched (and ``x`` itself is returned when none is above it)."""
    if not x.size:
        return x
    big = np.abs(x).max(axis=1)
    with np.errstate(over="ignore"):
        if float(big.max()) * math.sqrt(x.shape[1]) <= clip_norm:  # ‖x‖ ≤ √d·max|x_c|
            return x
    safe = np.where(big > 0, big, 1.0)
    unit = x / safe[:, None]  # entries in [-1, 1]: the squares cannot overflow
    unit_norm = np.sqrt(np.einsum("ij,ij->i", unit, unit))  # in [1, √d] where big > 0
    over = big > clip_norm / np.where(unit_norm > 0, unit_norm, 1.0)  # ‖x‖ = big·unit_norm > C
    if not over.any():
        return x
    out = x.copy()
    out[over] = unit[over] * (clip_norm / unit_norm[over])[:, None]
    return out


def clip_one(x: NDArray[np.float64], clip_norm: float) -> NDArray[np.float64]:
    """:func:`clip_rows` for one context [d] (the single-event fast path: one dot product)."""
    with np.errstate(over="ignore"):
        if float(x @ x) <= clip_norm * clip_norm:
            return x
    return clip_rows(x[None, :], clip_norm)[0]


def check_products(x: NDArray[np.float64], r: NDArray[np.float64], clip_norm: float,
                   *, name: str = "rewards") -> None:
    """Raise unless every ``x[i]·r[i]`` is finite (``x`` already clipped to ``clip_norm``)."""
    if not r.size:
        return
    with np.errstate(over="ignore"):
        if float(np.abs(r).max()) * clip_norm <= _FLOAT_MAX:  # |x_c| ≤ ‖x‖ ≤ C
            return
        bad = ~np.isfinite(np.abs(r) * np.abs(x).max(axis=1))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(message(
            name, "rewards whose products with the (clipped) context are finite",
            f"reward at index {i} = {r[i]:.3g} times a context entry of "
            f"{float(np.abs(x[i]).max()):.3g}, which overflows",
            "bound the rewards (reward_range) or lower the statistics' clip_norm"))


def _dense_parts(stats) -> tuple[NDArray[np.float64], ...]:
    """(θ, d, x̄, n') of dense statistics, in float64 (``x̄ = 0`` uncentred)."""
    if getattr(stats, "layout", None) != "dense":
        raise TypeError(message("stats", "dense statistics", getattr(stats, "layout", stats)))
    theta, inv_d = (np.asarray(a, dtype=np.float64) for a in stats.posterior())
    d = 1.0 / inv_d
    n_prime = np.asarray(stats.count, dtype=np.float64) + stats.lam
    if stats.centred:
        xbar = np.asarray(stats.sx, dtype=np.float64) / n_prime[:, None]
    else:
        xbar = np.zeros_like(theta)
    return theta, d, xbar, n_prime


def _mean_context_reach(stats, xbar: NDArray[np.float64], n_prime: NDArray[np.float64],
                        n_events: int | None) -> NDArray[np.float64]:
    """A bound on ``|x̄_c|`` after ``n_events`` events (None: any number), [items, d]."""
    c = float(stats.clip_norm)
    cap = np.maximum(np.abs(xbar), c)
    if n_events is None or not stats.centred:
        return cap if stats.centred else np.zeros_like(xbar)
    n = float(n_events)
    return np.minimum(cap, np.abs(xbar) + n * (c + np.abs(xbar)) / (n_prime + n)[:, None])


def mean_shift_bound(stats, queries: NDArray[np.float64], n_events: int,
                     reward_bound: float) -> NDArray[np.float64]:
    """How far a burst of ``n_events`` events (contexts clipped to ``stats.clip_norm``, rewards
    and every past reward in ``[-reward_bound, reward_bound]``) can move each item's mean score
    at each query: [queries, items]. Dense statistics only; derivation in the module docs."""
    theta, d, xbar, n_prime = _dense_parts(stats)
    q = np.abs(np.atleast_2d(np.asarray(queries, dtype=np.float64)))
    n, big_r, c = float(n_events), float(reward_bound), float(stats.clip_norm)
    size = np.abs(theta)
    if not stats.centred:
        d_theta = big_r * np.sqrt(n) / (2.0 * np.sqrt(d)) + size * np.minimum(1.0, n * c * c / d)
        return q @ d_theta.T
    step = c + np.abs(xbar)  # |x_c − x̄_c| of any clipped event
    d_theta = (math.sqrt(5.0) / 2.0) * big_r * np.sqrt(n / d) \
        + size * np.minimum(1.0, n * step * step / d)
    d_xbar = n * step / (n_prime + n)[:, None]
    constant = (2.0 * big_r * n / (n_prime + n)
                + (d_theta * (np.abs(xbar) + d_xbar) + size * d_xbar).sum(axis=1))
    return q @ d_theta.T + constant[None, :]


def variance_bound(stats, queries: NDArray[np.float64],
                   n_events: int | None = None) -> NDArray[np.float64]:
    """An upper bound on each item's score variance at each query after a burst of
    ``n_events`` events (None: any number) with contexts clipped to ``stats.clip_norm``:
    [queries, items] (dense statistics; module docs). The UCB bonus and the Thompson-sampling
    spread scale with its square root."""
    _, d, xbar, n_prime = _dense_parts(stats)
    q = np.abs(np.atleast_2d(np.asarray(queries, dtype=np.float64)))
    inv_d = 1.0 / d
    if not stats.centred:
        return (q * q) @ inv_d.T
    reach = _mean_context_reach(stats, xbar, n_prime, n_events)
    # Σ_c (|q_c| + X_c)²/d_c = q²·inv_d + 2 q·(X inv_d) + Σ X² inv_d
    return ((q * q) @ inv_d.T + 2.0 * q @ (reach * inv_d).T
            + ((reach * reach) * inv_d).sum(axis=1)[None, :] + (1.0 / n_prime)[None, :])
