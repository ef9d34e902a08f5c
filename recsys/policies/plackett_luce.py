"""Plackett–Luce (softmax without replacement) slates: draws and position marginals.

A Plackett–Luce slate over first-pick probabilities ``p`` (a softmax of scores) fills position 0
by a draw from ``p`` and every next position by a draw from ``p`` renormalised over the items not
yet shown. Adding Gumbel noise to the logits and taking the top k is the same distribution
(:func:`sample_slates`). The probability of an item at a position (the propensity a log needs)
is exact here for the first three positions (:func:`plackett_luce_marginals`); beyond, it is
estimated by replaying the draw (:func:`monte_carlo_marginals`,
:func:`monte_carlo_propensities`), with a binomial standard error.

Everything works on blocks of requests, so memory stays bounded on large catalogues.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.slates import monte_carlo_se, top_k
from recsys.policies.blocks import CHUNK_CELLS, row_blocks
from recsys.validation import message

EXACT_MAX_SLATE = 3
"""Positions whose marginals have a closed form here."""

EXACT_THIRD_MAX_ITEMS = 2000
"""Largest catalogue whose exact third-position marginals are computed (they cost O(n_items²)
per request); larger ones use Monte Carlo."""


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise softmax, [n, m]."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p


def _rest(probs: NDArray[np.float64]) -> NDArray[np.float64]:
    """``1 − p`` per entry, with the row's largest entry's complement summed from the other
    entries (``1 − p`` loses every digit when one item takes almost all the mass)."""
    rest = 1.0 - probs
    n, m = probs.shape
    if m > 1:
        top = np.argmax(probs, axis=1)
        rows = np.arange(n)
        others = probs.copy()
        others[rows, top] = 0.0
        rest[rows, top] = others.sum(axis=1)
    return np.maximum(rest, 1e-300)


def plackett_luce_marginals(probs: NDArray[np.float64], slate_size: int) -> NDArray[np.float64]:
    """Exact P(item at position k) for a Plackett–Luce draw without replacement, k ≤ 3.

    probs: (n, m) first-pick probabilities. Position 1: p_i Σ_{j≠i} p_j / (1 − p_j); position 2:
    p_i Σ_{j≠l, both ≠ i} p_j p_l / ((1 − p_j)(1 − p_j − p_l)), computed as a total minus the
    row and column that involve i (O(m²) per row, in blocks). Returns (n, m, slate_size).
    """
    if slate_size > EXACT_MAX_SLATE:
        raise ValueError(message("slate_size", f"at most {EXACT_MAX_SLATE} (exact Plackett–Luce "
                                 "marginals)", slate_size,
                                 "use monte_carlo_marginals for longer slates"))
    n, m = probs.shape
    out = np.empty((n, m, slate_size))
    out[:, :, 0] = probs
    if slate_size >= 2:
        rest = _rest(probs)
        ratio = probs / rest
        top = np.argmax(ratio, axis=1)
        total = ratio.sum(axis=1, keepdims=True)
        out[:, :, 1] = probs * (total - ratio)
        if m > 1:  # the largest ratio's complement, summed (total − ratio cancels there)
            rows = np.arange(n)
            others = ratio.copy()
            others[rows, top] = 0.0
            out[rows, top, 1] = probs[rows, top] * others.sum(axis=1)
    if slate_size >= 3:
        for rows in row_blocks(n, 4 * m * m):
            out[rows, :, 2] = _third_position(probs[rows])
    return np.clip(out, 0.0, 1.0, out=out)


def _third_position(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(item at position 2) for a block of rows, ``p_i Σ_{j≠l, both ≠ i} pair_jl`` with
    ``pair_jl = p_j p_l / ((1 − p_j)(1 − p_j − p_l))``.

    The complements are summed from the items they leave (``1 − p_j − p_l`` = the mass of the
    others, with the two largest items added back), and the two items with the largest mass get
    their sums without the subtraction ``total − row − column``: both would otherwise cancel
    when one or two items take almost all the mass (a low temperature).
    """
    b, m = p.shape
    rows = np.arange(b)
    top = np.argsort(-p, axis=1, kind="stable")[:, :2]
    first, second = top[:, 0], top[:, 1]
    is_first = np.zeros((b, m), dtype=bool)
    is_first[rows, first] = True
    is_second = np.zeros((b, m), dtype=bool)
    is_second[rows, second] = True
    small = np.where(is_first | is_second, 0.0, p)  # the mass outside the two largest
    others = small.sum(axis=1)[:, None, None]
    p_first = p[rows, first][:, None, None]
    p_second = p[rows, second][:, None, None]
    keeps_first = ~(is_first[:, :, None] | is_first[:, None, :])
    keeps_second = ~(is_second[:, :, None] | is_second[:, None, :])
    rest2 = (p_first * keeps_first + p_second * keeps_second) + (
        (others - small[:, :, None]) - small[:, None, :])
    pair = p[:, :, None] * p[:, None, :] / (_rest(p)[:, :, None] * np.maximum(rest2, 1e-300))
    idx = np.arange(m)
    pair[:, idx, idx] = 0.0
    total = pair.sum(axis=(1, 2))
    third = p * (total[:, None] - pair.sum(axis=2) - pair.sum(axis=1))
    for col in (first, second):  # the largest items: the sum without them, directly
        masked = pair.copy()
        masked[rows, col, :] = 0.0
        masked[rows, :, col] = 0.0
        third[rows, col] = p[rows, col] * masked.sum(axis=(1, 2))
    return third


def exact_possible(n_items: int, k: int) -> bool:
    """Whether :func:`plackett_luce_marginals` covers slates of ``k`` over ``n_items`` items."""
    return k < EXACT_MAX_SLATE or (k == EXACT_MAX_SLATE and n_items <= EXACT_THIRD_MAX_ITEMS)


def sample_slates(logits: NDArray[np.float64], k: int, rng: np.random.Generator
                  ) -> NDArray[np.intp]:
    """One Plackett–Luce slate of ``k`` columns per row of ``logits`` (Gumbel top-k)."""
    gumbel = -np.log(-np.log(rng.random(logits.shape)))
    return top_k(logits + gumbel, k, rng)


def _replay_blocks(n_rows: int, m: int, n_draws: int) -> int:
    return max(1, min(n_draws, CHUNK_CELLS // max(1, n_rows * m)))


def monte_carlo_marginals(logits: NDArray[np.float64], k: int, n_draws: int,
                          rng: np.random.Generator) -> NDArray[np.float64]:
    """Monte Carlo P(item at position) from ``n_draws`` slates per row, [n, m, k].

    Each entry has standard error ``sqrt(p(1 − p)/n_draws)``; every position sums to 1.
    """
    n, m = logits.shape
    out = np.empty((n, m, k))
    for rows in row_blocks(n, m):  # loop over blocks of rows, and of draws inside
        block = logits[rows]
        b = block.shape[0]
        hits = np.zeros(b * m * k)
        step = _replay_blocks(b, m, n_draws)
        done = 0
        while done < n_draws:
            d = min(step, n_draws - done)
            replay = sample_slates(np.repeat(block, d, axis=0), k, rng)
            request = np.repeat(np.arange(b), d)[:, None]
            cell = (request * m + replay) * k + np.arange(k)
            hits += np.bincount(cell.ravel(), minlength=hits.size)
            done += d
        out[rows] = (hits / n_draws).reshape(b, m, k)
    return out


def monte_carlo_propensities(logits: NDArray[np.float64], shown: NDArray[np.intp], n_draws: int,
                             rng: np.random.Generator
                             ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Monte Carlo P(column ``shown[b, p]`` at position p) and its binomial standard error.

    The replays are independent of the draw that produced ``shown``.
    """
    n, m = logits.shape
    k = shown.shape[1]
    hits = np.zeros((n, k))
    for rows in row_blocks(n, m):
        block, target = logits[rows], shown[rows]
        b = block.shape[0]
        step = _replay_blocks(b, m, n_draws)
        done = 0
        while done < n_draws:
            d = min(step, n_draws - done)
            replay = sample_slates(np.repeat(block, d, axis=0), k, rng)
            hits[rows] += (replay.reshape(b, d, k) == target[:, None, :]).sum(axis=1)
            done += d
    p_hat = hits / n_draws
    return p_hat, monte_carlo_se(p_hat, n_draws)
