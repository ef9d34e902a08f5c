"""Top-k slates with random tie-breaking and per-(item, position) propensities.

Every function works on a batch of requests at once: ``scores`` is ``[batch, n_items]`` with
``-inf`` for items that are not eligible for a request. Propensities follow Open Bandit Pipeline's
``pscore`` convention: the probability that the logging policy shows *this* item at *this* position
for *this* request.

Randomisation is what makes logs usable for off-policy evaluation, so every slate policy here is a
mixture whose probabilities can be written down (ε-mixes with a uniformly random slate, inverse-gap
weighting) or, for Thompson sampling, estimated by Monte Carlo with a reported standard error
(conditional Monte Carlo for top-k slates: each replay contributes an exact conditional
probability, not a 0/1 hit, so a few replays reach the precision of many plain ones).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

_MC_CHUNK_ELEMENTS = 4_000_000
"""Upper bound on the elements of one Monte Carlo draw block (keeps memory flat)."""


@dataclass(frozen=True, eq=False)
class Slate:
    """Recommendations for a batch of requests.

    ``items[b, p]`` is the item id shown at position ``p`` to request ``b``; ``propensities[b, p]``
    is P(policy shows that item at that position | request); ``propensity_se`` is the standard
    error of a Monte Carlo estimate (0 where the propensity is exact); ``scores`` is the policy's
    score of each shown item (the sampled value for Thompson sampling).
    """

    items: NDArray[np.int64]
    propensities: NDArray[np.float64]
    propensity_se: NDArray[np.float64]
    scores: NDArray[np.float64]

    @property
    def positions(self) -> NDArray[np.int64]:
        """Position index of every entry, [batch, k]."""
        return np.broadcast_to(np.arange(self.items.shape[1]), self.items.shape)


def eligible_counts(scores: NDArray[np.float64], k: int) -> NDArray[np.int64]:
    """Eligible items per request; raises when a request has fewer than ``k``."""
    n_elig = np.isfinite(scores).sum(axis=1)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if (n_elig < k).any():
        b = int(np.argmax(n_elig < k))
        raise ValueError(
            f"request {b} has only {int(n_elig[b])} eligible item(s) but k={k} were asked for; "
            "lower k or widen the candidate set"
        )
    return n_elig


def _rows_index(batch: int) -> NDArray[np.intp]:
    return np.arange(batch)[:, None]


_BLOCK = 128
"""Block width of the two-stage selection used for long rows."""


def _k_largest(scores: NDArray[np.float64], k: int) -> NDArray[np.intp]:
    """Columns of some k largest values per row (unordered; which of tied values is arbitrary).

    Long rows use two stages: the k blocks of ``_BLOCK`` columns with the largest maxima hold every
    value above the k-th largest (there are fewer than k such values, each raising its block's
    max), so one pass of block maxima and a partition of k·_BLOCK candidates replace a partition
    of the whole row.
    """
    batch, n = scores.shape
    n_blocks = -(-n // _BLOCK)
    if n < 4096 or n_blocks <= 4 * k:
        return np.argpartition(scores, n - k, axis=1)[:, n - k:]
    pad = n_blocks * _BLOCK - n
    padded = scores if pad == 0 else np.concatenate(
        [scores, np.full((batch, pad), -np.inf)], axis=1)
    maxima = padded.reshape(batch, n_blocks, _BLOCK).max(axis=2)
    blocks = np.argpartition(maxima, n_blocks - k, axis=1)[:, n_blocks - k:]
    cols = (blocks[:, :, None] * _BLOCK + np.arange(_BLOCK)).reshape(batch, -1)
    rows = _rows_index(batch)
    values = padded[rows, cols]
    chosen = cols[rows, np.argpartition(values, values.shape[1] - k, axis=1)[:, -k:]]
    outside = np.flatnonzero((chosen >= n).any(axis=1))  # padding tied with -inf scores
    if outside.size:
        chosen[outside] = np.argpartition(scores[outside], n - k, axis=1)[:, n - k:]
    return chosen


def top_k(
    scores: NDArray[np.float64], k: int, rng: np.random.Generator
) -> NDArray[np.intp]:
    """Column indices of the k best scores per row, best first, ties broken uniformly at random."""
    batch, n = scores.shape
    if k == 1:  # the common single-slot case: argmax, re-drawn only where the max is tied
        best = scores.max(axis=1, keepdims=True)
        at_max = scores == best
        chosen = np.argmax(at_max, axis=1)[:, None]
        tied = np.flatnonzero(at_max.sum(axis=1) > 1)
        if tied.size:
            key = np.where(at_max[tied], rng.random((tied.size, n)), -1.0)
            chosen[tied, 0] = np.argmax(key, axis=1)
        return chosen
    rows = _rows_index(batch)
    if k >= n:
        chosen = np.broadcast_to(np.arange(n), (batch, n)).copy()
    else:
        chosen = _k_largest(scores, k)
        kth = scores[rows, chosen].min(axis=1)
        n_ge = (scores >= kth[:, None]).sum(axis=1)
        tied = np.flatnonzero(n_ge > k)  # ties straddle the cut: pick among them at random
        if tied.size:
            s = scores[tied]
            t = kth[tied, None]
            key = np.where(s > t, 2.0, np.where(s == t, rng.random(s.shape), -1.0))
            chosen[tied] = np.argpartition(-key, k - 1, axis=1)[:, :k]
    values = scores[rows, chosen]
    order = np.lexsort((rng.random(values.shape), -values), axis=1)
    return chosen[rows, order]


def _tie_groups(
    scores: NDArray[np.float64], top: NDArray[np.float64], v: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    """Where greedy-with-random-ties can put items of value ``v[b, i]``, given ``top``.

    ``top`` holds each row's best values in descending order. An item tied with ``m`` items and
    with ``g`` items strictly above it lands uniformly on ranks ``g .. g+m-1``. Everything
    strictly above the last value of ``top`` is inside ``top``, so the counts come from ``top``
    plus one pass for the ties at that value. Returns ``g``, ``m`` and whether ``v`` reaches
    ``top`` at all (items below it rank after every rank ``top`` covers).
    """
    last = top[:, -1:]
    above = (top[:, None, :] > v[:, :, None]).sum(axis=2)
    ties = np.where(v > last, (top[:, None, :] == v[:, :, None]).sum(axis=2),
                    (scores == last).sum(axis=1, keepdims=True))
    return above, ties, v >= last


def _rank_probabilities(
    scores: NDArray[np.float64],
    top: NDArray[np.float64],
    cols: NDArray[np.intp],
    ranks: NDArray[np.intp],
) -> NDArray[np.float64]:
    """P(greedy-with-random-ties puts column ``cols[b, i]`` at rank ``ranks[i]``), [batch, m].

    ``top``: each row's best values, descending, at least ``max(ranks) + 1`` of them.
    """
    above, ties, reach = _tie_groups(scores, top, scores[_rows_index(scores.shape[0]), cols])
    hit = reach & (above <= ranks) & (ranks < above + ties)
    return np.where(hit, 1.0 / np.maximum(ties, 1), 0.0)


def greedy_marginals(
    scores: NDArray[np.float64], shown: NDArray[np.intp], greedy: NDArray[np.intp]
) -> NDArray[np.float64]:
    """P(greedy-with-random-ties puts column ``shown[b, p]`` at position ``p``), [batch, k].

    ``greedy`` is the greedy top-k (best first) of the same scores; see
    :func:`_rank_probabilities`. Cost O(batch·(n + k²)), not O(batch·n·k).
    """
    rows = _rows_index(scores.shape[0])
    if shown.shape[1] == 1:  # one slot: 1/(number of items tied at the max) for a max item
        best = scores[rows, greedy]
        v = scores[rows, shown]
        return np.where(v == best, 1.0 / (scores == best).sum(axis=1, keepdims=True), 0.0)
    return _rank_probabilities(scores, scores[rows, greedy], shown, np.arange(shown.shape[1]))


def _best_values(scores: NDArray[np.float64], n_ranks: int) -> NDArray[np.float64]:
    """The ``n_ranks`` largest values of every row, in descending order."""
    n = scores.shape[1]
    best = np.partition(scores, n - n_ranks, axis=1)[:, n - n_ranks:]
    return -np.sort(-best, axis=1)


def rank_marginals(scores: NDArray[np.float64], n_ranks: int) -> NDArray[np.float64]:
    """P(greedy-with-random-ties puts item j at rank r) for every item, [batch, n_items, n_ranks].

    The greedy policy's ``action_dist``: exact, tied items share their ranks equally, and
    ineligible (``-inf``) items get 0 as long as every row has ``n_ranks`` eligible items.
    """
    if n_ranks == 1:  # the single slot: shared by the items tied at the max
        at_max = scores == scores.max(axis=1, keepdims=True)
        return (at_max / at_max.sum(axis=1, keepdims=True))[:, :, None]
    above, ties, reach = _tie_groups(scores, _best_values(scores, n_ranks), scores)
    ranks = np.arange(n_ranks)
    hit = reach[:, :, None] & (above[:, :, None] <= ranks) & (ranks < (above + ties)[:, :, None])
    return np.where(hit, 1.0 / np.maximum(ties, 1)[:, :, None], 0.0)


def uniform_marginals(scores: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """``action_dist`` of a uniformly random slate: 1/n_eligible for every eligible item and
    position, [batch, n_items, k] (a read-only broadcast view)."""
    elig = np.isfinite(scores)
    per_row = elig / elig.sum(axis=1, keepdims=True)
    return np.broadcast_to(per_row[:, :, None], (*per_row.shape, k))


def uniform_slate(
    scores: NDArray[np.float64], k: int, rng: np.random.Generator
) -> NDArray[np.intp]:
    """A uniformly random ordered k-subset of each row's eligible items.

    When every item is eligible and k ≪ n, draws 4k ids with replacement and keeps the first k
    distinct ones in draw order (the same distribution as sampling without replacement), which
    costs O(k) instead of a random key per item; rows that come up short use random keys.
    """
    batch, n = scores.shape
    elig = np.isfinite(scores)
    if n >= 64 * k and elig.all():
        draws = rng.integers(0, n, (batch, 4 * k))
        order = np.argsort(draws, axis=1, kind="stable")
        ranked = np.take_along_axis(draws, order, axis=1)
        repeat = np.zeros(draws.shape, dtype=bool)
        repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]  # later copies of an id (stable sort)
        first = np.empty_like(repeat)
        np.put_along_axis(first, order, ~repeat, axis=1)
        position = np.cumsum(first, axis=1)
        if (position[:, -1] >= k).all():
            keep = first & (position <= k)
            return draws[keep].reshape(batch, k).astype(np.intp)
    key = np.where(elig, rng.random(scores.shape), -1.0)
    return top_k(key, k, rng)


def mix_with_uniform(
    shown: NDArray[np.intp],
    scores: NDArray[np.float64],
    epsilon: float,
    rng: np.random.Generator,
) -> tuple[NDArray[np.intp], NDArray[np.bool_]]:
    """Replace each request's slate, with probability ε, by a uniformly random one.

    Returns the slates and which requests explored.
    """
    explore = rng.random(shown.shape[0]) < epsilon
    rows = np.flatnonzero(explore)
    if rows.size:
        shown = shown.copy()
        shown[rows] = uniform_slate(scores[rows], shown.shape[1], rng)
    return shown, explore


def igw_probabilities(
    scores: NDArray[np.float64], gamma: float
) -> NDArray[np.float64]:
    """SquareCB inverse-gap weights over each row's eligible items, [batch, n_items].

    ``p_a = 1 / (A + γ·(ŷ* − ŷ_a))`` for non-best a; the best item(s) share the remaining mass.
    """
    elig = np.isfinite(scores)
    n_elig = elig.sum(axis=1, keepdims=True)
    best = np.max(scores, axis=1, keepdims=True)
    gap = np.where(elig, best - scores, np.inf)
    is_best = elig & (gap == 0.0)
    p = np.where(elig & ~is_best, 1.0 / (n_elig + gamma * gap), 0.0)
    rest = 1.0 - p.sum(axis=1, keepdims=True)
    p = np.where(is_best, rest / is_best.sum(axis=1, keepdims=True), p)
    return p


def igw_slate(
    scores: NDArray[np.float64], k: int, gamma: float, rng: np.random.Generator
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.intp]]:
    """Lead slot drawn by inverse-gap weighting, the remaining slots in greedy order.

    Returns the shown columns, the lead-slot probabilities [batch, n_items] and the greedy order
    used (ties broken at random, independently of the draw), for :func:`igw_marginals`.
    """
    probs = igw_probabilities(scores, gamma)
    batch, n = scores.shape
    greedy = top_k(scores, min(k + 1, n), rng)
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((batch, 1)) * cdf[:, -1:]
    lead = np.minimum((cdf < u).sum(axis=1), n - 1)
    # drop the lead item from the greedy order, keep the first k-1 of the rest
    rest_order = np.argsort(greedy == lead[:, None], axis=1, kind="stable")
    rest = np.take_along_axis(greedy, rest_order, axis=1)[:, : k - 1]
    return np.concatenate([lead[:, None], rest], axis=1), probs, greedy


def igw_marginals(
    scores: NDArray[np.float64],
    probs: NDArray[np.float64],
    greedy: NDArray[np.intp],
    shown: NDArray[np.intp],
) -> NDArray[np.float64]:
    """Exact P(column ``shown[b, p]`` at position p) under :func:`igw_slate`.

    With ``g`` the greedy order and ``a`` the drawn lead item, position ``p ≥ 1`` shows ``g[p-1]``
    when ``a`` is not among ``g[0..p-1]`` and ``g[p]`` otherwise. Tied items have equal lead
    probabilities, so the lead mass ``S_p = Σ_{q<p} π(g[q])`` does not depend on how ties were
    broken, and P(j at p) = P(g[p-1] = j)·(1 − S_p) + P(g[p] = j)·S_p with the greedy rank
    probabilities of :func:`_rank_probabilities`: exact over the tie-break draw too, so the logged
    value equals :func:`igw_action_dist`'s.
    """
    rows = _rows_index(scores.shape[0])
    k = shown.shape[1]
    prop = np.zeros(shown.shape)
    prop[:, 0] = np.take_along_axis(probs, shown[:, :1], axis=1)[:, 0]
    if k == 1:
        return prop
    top = scores[rows, greedy]
    mass_before = np.cumsum(probs[rows, greedy], axis=1)
    positions = np.arange(1, k)
    cols = shown[:, 1:]
    at_previous_rank = _rank_probabilities(scores, top, cols, positions - 1)
    at_own_rank = _rank_probabilities(scores, top, cols, positions)
    above = mass_before[:, : k - 1]
    prop[:, 1:] = at_previous_rank * (1.0 - above) + at_own_rank * above
    return np.clip(prop, 0.0, 1.0)


def igw_action_dist(
    scores: NDArray[np.float64], k: int, gamma: float
) -> NDArray[np.float64]:
    """``action_dist`` of :func:`igw_slate` for every item, [batch, n_items, k] (exact)."""
    probs = igw_probabilities(scores, gamma)
    n_ranks = min(k + 1, scores.shape[1])
    ranks = rank_marginals(scores, n_ranks)
    dist = np.empty((*scores.shape, k))
    dist[:, :, 0] = probs
    if k > 1:
        # the lead mass of the best p items, whatever the tie-break: sort π by score
        best = _k_largest(scores, k - 1)
        rows = _rows_index(scores.shape[0])
        best = best[rows, np.argsort(-scores[rows, best], axis=1)]
        above = np.cumsum(probs[rows, best], axis=1)[:, None, :]
        dist[:, :, 1:] = ranks[:, :, : k - 1] * (1.0 - above) + ranks[:, :, 1:k] * above
    return np.clip(dist, 0.0, 1.0)


def thompson_select(
    mean: NDArray[np.float64],
    scale: NDArray[np.float64],
    k: int,
    rng: np.random.Generator,
    *,
    per_slot: bool,
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    """One Thompson-sampling slate per request from independent Gaussian item scores.

    ``per_slot=False``: one draw for the whole slate, top-k of it. ``per_slot=True`` (in-slate TS):
    a fresh draw per slot; slot p gets the best item of draw p not already shown. Ineligible items
    have ``mean = -inf``. Returns chosen columns and their sampled scores.
    """
    batch, n = mean.shape
    if not per_slot:
        sampled = mean + scale * rng.standard_normal((batch, n))
        shown = top_k(sampled, k, rng)
        return shown, np.take_along_axis(sampled, shown, axis=1)
    taken = np.zeros((batch, n), dtype=bool)
    shown = np.empty((batch, k), dtype=np.intp)
    values = np.empty((batch, k))
    rows = np.arange(batch)
    for p in range(k):  # loop over slots, vectorised over requests and items
        sampled = mean + scale * rng.standard_normal((batch, n))
        sampled[taken] = -np.inf
        best = np.argmax(sampled, axis=1)
        shown[:, p] = best
        values[:, p] = sampled[rows, best]
        taken[rows, best] = True
    return shown, values


def _replays(
    mean: NDArray[np.float64], scale: NDArray[np.float64], k: int, n_draws: int,
    rng: np.random.Generator, *, per_slot: bool,
) -> Iterator[tuple[int, NDArray[np.intp]]]:
    """``n_draws`` replays of :func:`thompson_select` per request, in blocks of ``m`` draws that
    keep memory flat: yields ``(m, columns)`` with columns ``[batch·m, k]``, request-major."""
    batch, n = mean.shape
    per_draw = n * (k if per_slot else 1)
    chunk = max(1, min(n_draws, _MC_CHUNK_ELEMENTS // max(1, batch * per_draw)))
    done = 0
    while done < n_draws:  # loop over blocks of draws, vectorised over requests and draws
        m = min(chunk, n_draws - done)
        # named, so the blocks live until the next one replaces them: freeing them at once
        # lets the allocator hand their pages back and fault them in again every block
        mean_rep, scale_rep = np.repeat(mean, m, axis=0), np.repeat(scale, m, axis=0)
        replay, _ = thompson_select(mean_rep, scale_rep, k, rng, per_slot=per_slot)
        yield m, replay
        done += m


def thompson_action_dist(
    mean: NDArray[np.float64],
    scale: NDArray[np.float64],
    k: int,
    n_draws: int,
    rng: np.random.Generator,
    *,
    per_slot: bool,
) -> NDArray[np.float64]:
    """Monte Carlo ``action_dist`` of Thompson sampling, [batch, n_items, k].

    Replays :func:`thompson_select` ``n_draws`` times per request and counts how often each item
    lands at each position; each entry's standard error is ``sqrt(p(1−p)/n_draws)``.
    """
    batch, n = mean.shape
    hits = np.zeros(batch * n * k)
    for m, replay in _replays(mean, scale, k, n_draws, rng, per_slot=per_slot):
        request = np.repeat(np.arange(batch), m)[:, None]
        cell = (request * n + replay) * k + np.arange(k)
        hits += np.bincount(cell.ravel(), minlength=hits.size)
    return (hits / n_draws).reshape(batch, n, k)


PRUNE_SIGMAS = 6.0
"""Items whose score cannot reach a slate except with probability below ~1e-9 per draw (their
mean + 6σ is under the k-th best mean − 6σ) are left out of the Monte Carlo replays."""


def contenders(mean: NDArray[np.float64], scale: NDArray[np.float64], k: int,
               shown: NDArray[np.intp], sigmas: float = PRUNE_SIGMAS) -> NDArray[np.intp]:
    """Columns that can enter a top-k (or in-slate) slate of some request in the batch: an item
    whose ``mean + sigmas·scale`` is below the k-th largest ``mean − sigmas·scale`` of its row is
    beaten by at least k items in all but a ~1e-9 share of draws, at every position; the shown
    columns are always kept. Sorted, so the replays see items in their original order."""
    n = mean.shape[1]
    if n <= 4 * k:
        return np.arange(n)
    lower = mean - sigmas * scale
    kth = np.partition(lower, n - k, axis=1)[:, n - k][:, None]
    keep = (mean + sigmas * scale >= kth).any(axis=0)
    keep[shown.ravel()] = True
    return np.flatnonzero(keep)


def monte_carlo_se(p_hat: NDArray[np.float64], n_draws: int) -> NDArray[np.float64]:
    """Standard error of propensities estimated as the share ``p_hat`` of ``n_draws`` replays.

    Never 0: an estimate of 0 or 1 (no replay, or every replay, showed the item there) is still an
    estimate, so the binomial formula uses ``(hits + 1/2) / (n_draws + 1)``. Logs then mark every
    Monte Carlo propensity as one (``propensity_se > 0``) and off-policy evaluation can tell them
    from exact ones (``recsys.comparison.logs``); it stays ≤ ``0.5 / sqrt(n_draws)``.
    """
    shrunk = (np.asarray(p_hat) * n_draws + 0.5) / (n_draws + 1)
    return np.sqrt(shrunk * (1.0 - shrunk) / n_draws)


RB_MIN_REPLAYS = 32
"""Replays every request gets before its conditional Monte Carlo estimate may stop (fewer leave
the sample standard error itself too noisy to be honest)."""


def _between(mu: NDArray[np.float64], sd: NDArray[np.float64], lo: NDArray[np.float64],
             up: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(lo < N(mu, sd²) < up), accurate in both tails (differences of the nearer tail)."""
    from scipy.special import ndtr

    with np.errstate(invalid="ignore", divide="ignore"):
        a, b = (lo - mu) / sd, (up - mu) / sd
        upper = ndtr(-a) - ndtr(-b)
        lower = ndtr(b) - ndtr(a)
    return np.clip(np.where(a > 0, upper, lower), 0.0, 1.0)


def _conditional_replays(
    mean: NDArray[np.float64], scale: NDArray[np.float64], shown: NDArray[np.intp], m: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """``m`` replays of one Thompson draw per request; for each, the exact probability that
    ``shown[b, p]`` lands at position p given every *other* item's draw, ``[batch, m, k]``.

    With the others' order statistics T₁ ≥ T₂ ≥ … (T₀ = +∞), item j is at position p exactly
    when T_{p+1} < X_j < T_p, so the conditional probability is a difference of normal tails.
    """
    batch, n = mean.shape
    k = shown.shape[1]
    kk = min(k + 1, n)
    draws = (np.repeat(mean, m, axis=0)
             + np.repeat(scale, m, axis=0) * rng.standard_normal((batch * m, n)))
    cols = _k_largest(draws, kk) if kk < n else np.broadcast_to(np.arange(n), draws.shape)
    r = _rows_index(batch * m)
    vals = draws[r, cols]
    order = np.argsort(-vals, axis=1)
    vals = vals[r, order].reshape(batch, m, kk)
    cols = cols[r, order].reshape(batch, m, kk)
    if kk < k + 1:  # the catalogue holds only k items: nothing below the last one
        vals = np.concatenate([vals, np.full((batch, m, k + 1 - kk), -np.inf)], axis=2)
        cols = np.concatenate([cols, np.full((batch, m, k + 1 - kk), -1)], axis=2)
    hit = cols[:, :, None, :] == shown[:, None, :, None]  # [batch, m, k shown, k + 1]
    own = np.where(hit.any(axis=3), hit.argmax(axis=3), k + 1)  # j's rank in the replay
    p = np.arange(k)
    # the others' p-th and (p+1)-th largest: skip j's own entry when it ranks above them
    up = np.take_along_axis(vals, np.maximum(p - 1 + (own < p), 0), axis=2)
    up = np.where(p == 0, np.inf, up)
    lo = np.take_along_axis(vals, p + (own <= p), axis=2)
    rows = _rows_index(batch)
    return _between(mean[rows, shown][:, None, :], scale[rows, shown][:, None, :], lo, up)


def _exchangeable_rows(mean: NDArray[np.float64], scale: NDArray[np.float64]
                       ) -> NDArray[np.bool_]:
    """Requests whose eligible items all share one (mean, scale): every item is equally likely
    at every position, 1/n_eligible exactly (cold start, never-learned catalogues)."""
    elig = np.isfinite(mean)
    big = np.where(elig, mean, -np.inf).max(axis=1, keepdims=True)
    small = np.where(elig, mean, np.inf).min(axis=1, keepdims=True)
    s_big = np.where(elig, scale, -np.inf).max(axis=1, keepdims=True)
    s_small = np.where(elig, scale, np.inf).min(axis=1, keepdims=True)
    return ((big == small) & (s_big == s_small))[:, 0]


def conditional_propensities(
    mean: NDArray[np.float64], scale: NDArray[np.float64], shown: NDArray[np.intp],
    n_draws: int, rng: np.random.Generator, *, min_replays: int = RB_MIN_REPLAYS,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """P(shown[b, p] at position p) for top-k Thompson sampling by conditional (Rao-Blackwellised)
    Monte Carlo, with a standard error: each replay contributes the exact probability given the
    other items' draws (:func:`_conditional_replays`) instead of a 0/1 hit.

    Its variance never exceeds that of plain replays (Var E[1|others] ≤ p(1−p)), and is usually
    far smaller, so ``n_draws`` is a precision target, not a count: every request gets
    ``min_replays`` replays, then rows whose standard error is above what ``n_draws`` plain
    replays would report (:func:`monte_carlo_se` at the estimate) get more, doubling, up to
    ``n_draws``. Standard error: the sample standard deviation over √replays, with one extra
    pseudo-replay as far from the mean as the farthest seen (the values are right-skewed) and
    widened to the Student-t level of its degrees of freedom; where every replay gave the same
    value (nothing to estimate a spread from) it is :func:`monte_carlo_se`, as for plain
    replays.
    """
    batch = mean.shape[0]
    k = shown.shape[1]
    from scipy.stats import t as student

    total = np.zeros((batch, k))
    square = np.zeros((batch, k))
    high = np.zeros((batch, k))
    low = np.ones((batch, k))
    done = np.zeros(batch, dtype=np.int64)
    active = np.arange(batch)
    per_row = mean.shape[1] * (k + 2)
    step = max(1, min(n_draws, min_replays))
    p_hat = se = np.zeros((batch, k))
    while active.size:
        chunk = max(1, min(step, _MC_CHUNK_ELEMENTS // max(1, active.size * per_row)))
        for start in range(0, step, chunk):  # blocks of replays keep memory flat
            m = min(chunk, step - start)
            c = _conditional_replays(mean[active], scale[active], shown[active], m, rng)
            total[active] += c.sum(axis=1)
            square[active] += (c * c).sum(axis=1)
            high[active] = np.maximum(high[active], c.max(axis=1))
            low[active] = np.minimum(low[active], c.min(axis=1))
        done[active] += step
        r = done[:, None].astype(np.float64)
        p_hat = total / r
        # one more replay as far out as the farthest seen: the values are skewed (rare replays
        # where the others draw low give large ones), and the sample spread alone understates
        reach = np.maximum(high - p_hat, p_hat - low) ** 2
        var = (np.maximum(square - r * p_hat**2, 0.0) + reach) / np.maximum(r - 1.0, 1.0)
        widen = student.ppf(0.975, np.maximum(r - 1.0, 1.0)) / 1.959963984540054
        se = np.where(var > 0, np.sqrt(var / r) * widen, monte_carlo_se(p_hat, done[:, None]))
        target = monte_carlo_se(p_hat, n_draws)
        unmet = (se > target).any(axis=1) & (done < n_draws)
        active = np.flatnonzero(unmet)
        step = int(min(done[active].min(), n_draws - done[active].max())) if active.size else 0
        if active.size and step <= 0:
            break
    return np.clip(p_hat, 0.0, 1.0), se


QUAD_NODES = 65
"""Nodes of the common grid on which :func:`quadrature_propensities` integrates (odd: the
error estimate compares with the rule on every other node)."""

QUAD_HEAD = 16
"""Other items whose count :func:`quadrature_propensities` adds one by one (the largest upper
quantiles); the rest are summed by (mean, scale) bins through their power sums."""

_BIN_MEANS, _BIN_SCALES = 48, 8
"""(mean, scale) bins of the items beyond the head: their cost per node is the number of
bins, not of items."""

QUAD_REFINE_SHARE = 0.2
"""Requests whose error estimate exceeds this share of ``n_draws`` plain replays' standard error
are integrated again on four times the nodes."""

QUAD_MIN_ERROR = 1e-12
"""The smallest error logged for a quadrature propensity: it is an estimate, never exact."""

_SQRT_2PI = 2.5066282746310002


def _tail_bins(mean: NDArray[np.float64], scale: NDArray[np.float64], tail: NDArray[np.bool_]
               ) -> tuple[NDArray[np.float64], ...]:
    """Per-request (mean, scale) bins of the ``tail`` items: request, count, centroid and
    within-bin (co)variances of every non-empty bin, requests in order."""
    batch = mean.shape[0]
    mu = np.where(tail, mean, 0.0)
    sd = np.where(tail, scale, 0.0)

    def span(v: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        lo = np.where(tail, v, np.inf).min(axis=1, keepdims=True)
        hi = np.where(tail, v, -np.inf).max(axis=1, keepdims=True)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        return lo, np.maximum(np.where(np.isfinite(hi), hi, 0.0) - lo, 1e-300)

    lo_m, w_m = span(mu)
    lo_s, w_s = span(sd)
    im = np.clip(np.floor((mu - lo_m) / w_m * _BIN_MEANS), 0, _BIN_MEANS - 1).astype(np.int64)
    js = np.clip(np.floor((sd - lo_s) / w_s * _BIN_SCALES), 0, _BIN_SCALES - 1).astype(np.int64)
    per_row = _BIN_MEANS * _BIN_SCALES
    cell = (np.arange(batch)[:, None] * per_row + im * _BIN_SCALES + js)[tail]
    m, s = mean[tail], scale[tail]
    size = batch * per_row
    count = np.bincount(cell, minlength=size)
    used = np.flatnonzero(count)
    c = count[used].astype(np.float64)

    def avg(w: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.bincount(cell, weights=w, minlength=size)[used] / c

    cm, cs = avg(m), avg(s)
    vm = np.maximum(avg(m * m) - cm * cm, 0.0)
    vs = np.maximum(avg(s * s) - cs * cs, 0.0)
    cv = avg(m * s) - cm * cs
    return used // per_row, c, cm, cs, vm, vs, cv


def _tail_sums(bins: tuple[NDArray[np.float64], ...], x: NDArray[np.float64], k: int
               ) -> tuple[NDArray[np.float64], ...]:
    """At nodes ``x`` [batch, G], over the binned items: Σ log(1 − q_i), the power sums
    Σ r_i^m (r = q/(1 − q), m = 1..k−1) [batch, G, k−1], an estimate of the binning's error
    in the rate (Σ q), and Σ r. Each bin counts as items at its centroid's q plus the
    second-order correction for the spread of (mean, scale) inside it; the error estimate is
    the size of that correction plus the spread of q inside the bins."""
    from scipy.special import ndtr

    batch, g = x.shape
    row, c, cm, cs, vm, vs, cv = bins
    log0, err, r_sum = (np.zeros((batch, g)) for _ in range(3))
    power = np.zeros((batch, g, max(k - 1, 0)))
    if row.size == 0:
        return log0, power, err, r_sum
    w = (cm[:, None] - x[row]) / cs[:, None]
    q = ndtr(w)
    phi = np.exp(-0.5 * w * w) / (_SQRT_2PI * cs[:, None])  # ∂q/∂μ
    # ½·Hessian of Φ((μ−x)/s) in (μ, s) against the within-bin covariance, and the variance of q
    corr = 0.5 * phi / cs[:, None] * (-w * vm[:, None] + 2.0 * (w * w - 1.0) * cv[:, None]
                                      + w * (2.0 - w * w) * vs[:, None])
    spread = phi**2 * np.maximum(vm[:, None] - 2.0 * w * cv[:, None] + w * w * vs[:, None], 0.0)
    qc = np.clip(q + corr, 0.0, 0.999)
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    rows = row[starts]
    cc = c[:, None]
    log0[rows] = np.add.reduceat(cc * np.log1p(-qc), starts, axis=0)
    err[rows] = np.add.reduceat(cc * (np.abs(corr) + spread), starts, axis=0)
    r = qc / (1.0 - qc)
    rm = cc * r
    r_sum[rows] = np.add.reduceat(rm, starts, axis=0)
    for m in range(k - 1):
        power[rows, :, m] = r_sum[rows] if m == 0 else np.add.reduceat(rm, starts, axis=0)
        rm = rm * r
    return log0, power, err, r_sum


def _tail_rate(bins: tuple[NDArray[np.float64], ...], x: NDArray[np.float64]
               ) -> NDArray[np.float64]:
    """Σ P(X_i > x) over the binned items at nodes ``x`` [batch, G], each bin at its centroid
    (no correction: for placing the grid, not for the count law)."""
    from scipy.special import ndtr

    row, c, cm, cs = bins[:4]
    rate = np.zeros(x.shape)
    if row.size:
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        q = ndtr((cm[:, None] - x[row]) / cs[:, None])
        rate[row[starts]] = np.add.reduceat(c[:, None] * q, starts, axis=0)
    return rate


def _count_law(log0: NDArray[np.float64], power: NDArray[np.float64], k: int
               ) -> NDArray[np.float64]:
    """P(N = c), c = 0..k−1, of a Poisson-binomial count from Σ log(1 − q) and the power sums
    of r = q/(1 − q): the generating function is exp(log0 + Σ_m (−1)^{m+1} P_m z^m / m), and
    its first k coefficients follow from Newton's identities (exact, stable while r < 1)."""
    e = np.empty((*log0.shape, k))
    e[..., 0] = 1.0
    for c in range(1, k):
        acc = np.zeros(log0.shape)
        for m in range(1, c + 1):
            acc += (1.0 if m % 2 else -1.0) * power[..., m - 1] * e[..., c - m]
        e[..., c] = acc / c
    return np.maximum(e, 0.0) * np.exp(log0)[..., None]


QUAD_SINGLE_NODES = 25
"""Nodes of the single-slot rule (:func:`_single_slot_propensities`): the shown item's ±6σ in
steps of σ/2 (odd: the error estimate uses every other node)."""

QUAD_DIRECT_ITEMS = 256
"""Largest catalogue for which the single-slot rule multiplies every other item's cdf directly."""


@functools.cache
def _single_slot_rule(nodes: int) -> tuple[NDArray[np.float64], ...]:
    """Nodes over ±6σ and the trapezoid weights times the normal density, on every node and on
    every other node (zero weight between)."""
    t = np.linspace(-6.0, 6.0, nodes)
    dens = np.exp(-0.5 * t * t) / _SQRT_2PI
    fine = np.full(nodes, t[1] - t[0])
    fine[[0, -1]] *= 0.5
    rough = np.zeros(nodes)
    rough[::2] = 2.0 * (t[1] - t[0])
    rough[[0, -1]] *= 0.5
    return t, dens * fine, dens * rough


def _single_slot_propensities(
    mean: NDArray[np.float64], scale: NDArray[np.float64], shown: NDArray[np.intp],
    nodes: int = QUAD_SINGLE_NODES,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """P(shown[b, 0] is the top draw) = E[Π_{i≠j} Φ((X_j − μ_i)/s_i)], X_j ~ N(μ_j, s_j²): the
    trapezoid rule over X_j's ±6σ, the error estimated by the rule on every other node plus
    the mass beyond ±6σ. Items whose cdf is 1 to rounding at every node (far below) are left
    out of the product, the rest of each request's items gathered to a common width."""
    from scipy.special import ndtr

    batch, n = mean.shape
    rows = _rows_index(batch)
    t, fine_w, rough_w = _single_slot_rule(nodes)
    mu_j, sd_j = mean[rows, shown], scale[rows, shown]
    others = np.isfinite(mean)
    others[rows, shown] = False
    reach = np.where(others, mean + 8.5 * np.where(others, scale, 0.0), -np.inf)
    needed = reach > mu_j - 6.0 * sd_j
    width = int(needed.sum(axis=1).max())
    if 0 < width < n:
        cols = _k_largest(reach, width)
        mu, sd, ok = mean[rows, cols], scale[rows, cols], needed[rows, cols]
    else:
        mu, sd, ok = mean, scale, needed
    x = mu_j + sd_j * t  # [batch, G]
    z = (x[:, None, :] - np.where(ok, mu, 0.0)[:, :, None]) / np.where(ok, sd, 1.0)[:, :, None]
    g = np.where(ok[:, :, None], ndtr(z), 1.0).prod(axis=1)  # [batch, G]
    fine = g @ fine_w
    rough = g @ rough_w
    return np.clip(fine, 0.0, 1.0)[:, None], (np.abs(fine - rough) + 2e-9)[:, None]


def quadrature_propensities(
    mean: NDArray[np.float64], scale: NDArray[np.float64], shown: NDArray[np.intp],
    *, n_draws: int = 100, nodes: int = QUAD_NODES, head: int = QUAD_HEAD,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """P(shown[b, p] at position p) for top-k Thompson sampling by quadrature, an error
    estimate, and which requests it covers: P(j at p) = ∫ f_j(x)·P(exactly p others above x) dx
    for independent Gaussian scores.

    The count of others above x is exact up to k: one by one over the other shown items and the
    ``head`` items with the largest upper quantiles, through power sums (:func:`_count_law`)
    over (mean, scale) bins of the rest (:func:`_tail_sums`). The integral is the trapezoid rule
    on ``nodes`` common nodes spanning where any integrand lives (exponentially accurate for
    these smooth integrands that vanish at both ends). The error estimate adds the difference
    from the rule on every other node, the binning's estimated error, and bounds on the mass
    left outside the grid; requests whose estimate exceeds :data:`QUAD_REFINE_SHARE` of
    ``n_draws`` plain replays' standard error are integrated again on four times the nodes.
    One slot over at most :data:`QUAD_DIRECT_ITEMS` items uses the direct single-slot rule
    (:func:`_single_slot_propensities`). A request is not covered (use conditional Monte
    Carlo) where the power-sum recurrence could lose precision (binned items likely above a
    node). Requires finite positive scales for eligible items (``mean = -inf`` marks the others).
    """
    batch, n = mean.shape
    k = shown.shape[1]
    if k == 1 and n <= QUAD_DIRECT_ITEMS:
        p_hat, err = _single_slot_propensities(mean, scale, shown)
        rough = np.flatnonzero(err[:, 0] > QUAD_REFINE_SHARE * monte_carlo_se(p_hat[:, 0],
                                                                             n_draws))
        if rough.size:  # others far sharper than j: 4× the nodes
            p_hat[rough], err[rough] = _single_slot_propensities(
                mean[rough], scale[rough], shown[rough], 4 * QUAD_SINGLE_NODES - 3)
        return p_hat, err, np.ones(batch, dtype=bool)
    p_hat, err, covered = _slate_quadrature(mean, scale, shown, nodes, head)
    rough = np.flatnonzero(covered & (err > QUAD_REFINE_SHARE * monte_carlo_se(
        p_hat, n_draws)).any(axis=1))
    if rough.size:  # others far sharper than the shown items: 4× the nodes
        p_hat[rough], err[rough], covered[rough] = _slate_quadrature(
            mean[rough], scale[rough], shown[rough], 4 * nodes - 3, head)
    return p_hat, err, covered


def _slate_quadrature(
    mean: NDArray[np.float64], scale: NDArray[np.float64], shown: NDArray[np.intp],
    nodes: int, head: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """The k-slot rule of :func:`quadrature_propensities` on ``nodes`` nodes."""
    from scipy.special import ndtr

    batch, n = mean.shape
    k = shown.shape[1]
    rows = _rows_index(batch)
    elig = np.isfinite(mean)
    mu_s, sd_s = mean[rows, shown], scale[rows, shown]
    others = elig.copy()
    others[rows, shown] = False
    n_head = n - k if n - k <= 4 * head else head  # small catalogues: every count exact
    if n_head < n - k:
        key = np.where(others, mean + 3.0 * np.where(elig, scale, 0.0), -np.inf)
        head_cols = _k_largest(key, n_head)
    else:  # every other item
        head_cols = np.argsort(~others, axis=1, kind="stable")[:, :n_head]
    head_ok = others[rows, head_cols]
    tail = others.copy()
    tail[rows, head_cols] = False
    bins = _tail_bins(mean, scale, tail)
    mu_h = np.where(head_ok, mean[rows, head_cols], 0.0)
    sd_h = np.where(head_ok, scale[rows, head_cols], 1.0)

    def above(mu: NDArray[np.float64], sd: NDArray[np.float64], ok: NDArray[np.bool_],
              x: NDArray[np.float64]) -> NDArray[np.float64]:  # P(X > x) [batch, items, G]
        return np.where(ok[:, :, None],
                        ndtr((mu[:, :, None] - x[:, None, :]) / sd[:, :, None]), 0.0)

    def count_law(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        log0, power, err, r_sum = _tail_sums(bins, x, k)
        dist = _count_law(log0, power, k)  # [batch, G, k]
        # rounding in Newton's recurrence grows like (Σ r)^c / c!: where it could reach 1e−12
        # the request is left to conditional Monte Carlo
        rounding = 1e-16 * np.exp(log0 + (k - 1) * np.log1p(r_sum) - math.lgamma(k))
        q_h = above(mu_h, sd_h, head_ok, x)
        for t in range(n_head):  # the head's items, vectorised over requests and nodes
            qt = q_h[:, t, :, None]
            dist[..., 1:] = dist[..., 1:] * (1.0 - qt) + dist[..., :-1] * qt
            dist[..., :1] *= 1.0 - qt
        return dist, err, rounding

    # the grid: the shown items' ±7σ, trimmed below where k others are above with certainty
    lo0 = (mu_s - 7.0 * sd_s).min(axis=1)
    hi0 = (mu_s + 7.0 * sd_s).max(axis=1)
    n_coarse = 33
    coarse = lo0[:, None] + (hi0 - lo0)[:, None] * np.linspace(0.0, 1.0, n_coarse)
    # half the binned rate: far more than the binning could be off by, so λ stays a lower bound
    lam = 0.5 * _tail_rate(bins, coarse) + above(mu_h, sd_h, head_ok, coarse).sum(axis=1)
    c = k - 1  # Chernoff: P(N ≤ c) ≤ e^−λ·(eλ/c)^c for λ > c (any sum of independent bits)
    with np.errstate(divide="ignore"):
        log_chernoff = -lam + (c * (1.0 + np.log(lam / c)) if c else 0.0)
    low = (lam > c) & (log_chernoff < -30.0)  # fewer than k others above: no place left
    lo_idx = np.where(low.any(axis=1), n_coarse - 1 - np.argmax(low[:, ::-1], axis=1), 0)
    lo_idx = np.minimum(lo_idx, n_coarse - 2)
    x_lo = coarse[np.arange(batch), lo_idx]
    x = x_lo[:, None] + (hi0 - x_lo)[:, None] * np.linspace(0.0, 1.0, nodes)
    h = (hi0 - x_lo) / (nodes - 1)

    dist, bin_err, rounding = count_law(x)
    q_s = ndtr((mu_s[:, :, None] - x[:, None, :]) / sd_s[:, :, None])  # [batch, k, G]
    dj = np.repeat(dist[:, None], k, axis=1)  # [batch, k (j), G, k counts]
    for i in range(k):  # add each other shown item
        qi = q_s[:, i][:, None, :, None]
        shifted = np.concatenate([np.zeros((batch, k, nodes, 1)), dj[..., :-1]], axis=3)
        dj = np.where((np.arange(k) != i)[None, :, None, None], dj * (1.0 - qi) + shifted * qi,
                      dj)
    at_p = np.take_along_axis(dj, np.broadcast_to(np.arange(k)[None, :, None, None],
                                                  (batch, k, nodes, 1)), axis=3)[..., 0]
    z = (x[:, None, :] - mu_s[:, :, None]) / sd_s[:, :, None]
    dens = np.exp(-0.5 * z * z) / (_SQRT_2PI * sd_s[:, :, None])  # f_j at the nodes
    weight = np.ones(nodes)
    weight[[0, -1]] = 0.5
    fine = (dens * at_p * weight).sum(axis=2) * h[:, None]
    half = weight[::2].copy()
    half[[0, -1]] = 0.5
    rough = (dens[..., ::2] * at_p[..., ::2] * half).sum(axis=2) * (2.0 * h[:, None])
    # an error δ in the binned rate moves P(N = p) by about δ·|P(N = p−1) − P(N = p)| (and
    # the spread of q inside bins by its second difference): twice δ times the largest nearby
    near = np.take_along_axis(dj, np.broadcast_to(
        np.maximum(np.arange(k)[:, None] - np.arange(3), 0)[None, :, None, :],
        (batch, k, nodes, 3)), axis=3).max(axis=3)
    binned = (dens * np.minimum(2.0 * bin_err[:, None, :] * near, 1.0) * weight).sum(
        axis=2) * h[:, None]
    # outside the grid: below it j lands at p only if fewer than k others are above x_lo
    below = ndtr(-(mu_s - x_lo[:, None]) / sd_s) * np.minimum(
        np.cumsum(dj[:, :, 0, :], axis=2)[:, :, -1] * (1.0 + 2.0 * bin_err[:, None, 0]), 1.0)
    beyond = ndtr(-(hi0[:, None] - mu_s) / sd_s)
    bound = np.abs(fine - rough) + binned + below + beyond
    covered = (rounding < 1e-12).all(axis=1)
    return np.clip(fine, 0.0, 1.0), bound, covered


def thompson_propensities(
    mean: NDArray[np.float64],
    scale: NDArray[np.float64],
    shown: NDArray[np.intp],
    n_draws: int,
    rng: np.random.Generator,
    *,
    per_slot: bool,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """P(item shown[b, p] at position p) with its standard error.

    Top-k Thompson sampling (``per_slot=False``): exact ``1/n_eligible`` (standard error 0) where
    every eligible item has the same posterior (cold start); elsewhere
    :func:`quadrature_propensities`, whose "standard error" is its error estimate (deterministic:
    quadrature, binning and truncation, not sampling); requests it does not cover or whose
    error estimate exceeds what ``n_draws`` plain replays would give fall back to
    :func:`conditional_propensities` (a sampling standard error, at most that). Requests with a
    zero or non-finite scale (a degenerate posterior: ties decide) and in-slate TS
    (``per_slot=True``) replay the sampler ``n_draws`` times with fresh noise, independently of
    the draw that produced ``shown``, and count how often each shown item lands at its position
    (standard error :func:`monte_carlo_se`). Only the :func:`contenders` take part in the
    replays (the others cannot reach the slate, or the order statistics next to it, except with
    negligible probability), which makes a replay over a large catalogue cheap.
    """
    mean = np.asarray(mean, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    batch, k = mean.shape[0], shown.shape[1]
    p_hat = np.zeros((batch, k))
    se = np.zeros((batch, k))
    replay = np.ones(batch, dtype=bool)
    if not per_slot:
        exact = _exchangeable_rows(mean, scale)
        p_hat[exact] = 1.0 / np.isfinite(mean[exact]).sum(axis=1, keepdims=True)
        elig = np.isfinite(mean)
        smooth = ~exact & (np.where(elig, scale, 1.0) > 0).all(axis=1) & np.isfinite(
            np.where(elig, scale, 1.0)).all(axis=1)
        rows = np.flatnonzero(smooth)
        if rows.size:
            m, s, sh = _pruned(mean[rows], scale[rows], shown[rows], k + 1)
            q_hat, q_err, covered = quadrature_propensities(m, s, sh, n_draws=n_draws)
            p_hat[rows], se[rows] = q_hat, np.maximum(q_err, QUAD_MIN_ERROR)
            # requests the quadrature does not cover or not to n_draws' precision: Monte Carlo
            short = ~covered | (q_err > monte_carlo_se(q_hat, n_draws)).any(axis=1)
            if short.any():
                p_hat[rows[short]], se[rows[short]] = conditional_propensities(
                    m[short], s[short], sh[short], n_draws, rng)
        replay = ~exact & ~smooth
    rows = np.flatnonzero(replay)
    if rows.size:
        p_hat[rows], se[rows] = _replayed_propensities(mean[rows], scale[rows], shown[rows],
                                                       n_draws, rng, per_slot=per_slot)
    return p_hat, se


def _pruned(mean: NDArray[np.float64], scale: NDArray[np.float64], shown: NDArray[np.intp],
            depth: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.intp]]:
    """The :func:`contenders` for the ``depth`` best places only, with ``shown`` re-indexed."""
    keep = contenders(mean, scale, depth, shown)
    if keep.size < mean.shape[1]:
        return mean[:, keep], scale[:, keep], np.searchsorted(keep, shown)
    return mean, scale, shown


def _replayed_propensities(
    mean: NDArray[np.float64],
    scale: NDArray[np.float64],
    shown: NDArray[np.intp],
    n_draws: int,
    rng: np.random.Generator,
    *,
    per_slot: bool,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Plain replays: the share of ``n_draws`` replays that put ``shown[b, p]`` at p."""
    k = shown.shape[1]
    mean, scale, shown = _pruned(mean, scale, shown, k)
    batch = mean.shape[0]
    hits = np.zeros((batch, k))
    for m, replay in _replays(mean, scale, k, n_draws, rng, per_slot=per_slot):
        hits += (replay.reshape(batch, m, k) == shown[:, None, :]).sum(axis=1)
    p_hat = hits / n_draws
    return p_hat, monte_carlo_se(p_hat, n_draws)
