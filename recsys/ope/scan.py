"""One cache-blocked pass over the (n, n_actions, len_list) arrays: validate and extract.

Estimators only need, per round, the evaluation policy's probability of the logged action at the
logged position, and for DM/DR the reward model's value there and its expectation under π_e at
that position. On a million rounds × 100 actions × 3 positions each array is 2.4 GB, so reading
it once (in blocks that stay in cache while they are checked and gathered) instead of once per
check and once per gather is what keeps a point estimate under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BLOCK_CELLS = 2**18  # cells per block of one array: ~2 MB, an L2's worth


@dataclass(frozen=True, eq=False)
class PolicyScan:
    """What estimators use from ``action_dist`` and ``estimated_rewards_by_reg_model``."""

    pi_factual: np.ndarray | None  # π_e(a_i | x_i, k_i), when actions are given
    q_factual: np.ndarray | None  # q̂(x_i, a_i, k_i)
    q_expected: np.ndarray | None  # Σ_a π_e(a | x_i, k_i) q̂(x_i, a, k_i) / Σ_a π_e(a | x_i, k_i)


def scan(
    action_dist: np.ndarray,
    position: np.ndarray,
    action: np.ndarray | None = None,
    q_hat: np.ndarray | None = None,
) -> PolicyScan:
    """Check ``action_dist`` (non-negative, sums to 1 over actions, for every round and position)
    and ``q_hat`` (finite) block by block, and gather the per-round quantities."""
    n, n_actions, len_list = action_dist.shape
    step = max(1, _BLOCK_CELLS // max(n_actions * len_list, 1))
    pi_factual = np.empty(n) if action is not None else None
    q_factual = np.empty(n) if (q_hat is not None and action is not None) else None
    q_expected = np.empty(n) if q_hat is not None else None
    # Sums over actions as one matrix product per block: (m, A·K) @ (A·K, K) indicator. numpy's
    # own sum over the middle axis walks the tiny last axis and is several times slower.
    by_position = np.zeros((n_actions * len_list, len_list))
    by_position[np.arange(n_actions * len_list), np.tile(np.arange(len_list), n_actions)] = 1.0
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = action_dist[start:stop]
        rows = np.arange(stop - start)
        pos = position[start:stop]
        sums = block.reshape(stop - start, -1) @ by_position
        # np.allclose's tolerance; NaN or inf anywhere makes the comparison fail.
        if not np.abs(sums - 1.0).max() <= 1e-5 + 1e-8:
            bad = start + int(np.flatnonzero(~np.isclose(sums, 1.0).all(axis=1))[0])
            raise ValueError(
                "action_dist: expected a probability distribution over actions (axis 1 sums to 1 "
                f"for every round and position), got round {bad} summing to "
                f"{action_dist[bad].sum(0)}"
            )
        if block.min() < 0:
            raise ValueError(
                f"action_dist: expected non-negative probabilities, got a minimum of {block.min()}"
            )
        if action is not None:
            pi_factual[start:stop] = block[rows, action[start:stop], pos]
        if q_hat is None:
            continue
        q_block = q_hat[start:stop]
        if not np.isfinite(q_block.sum()) and not np.isfinite(q_block).all():
            raise ValueError(
                "estimated_rewards_by_reg_model: expected finite values, got NaN or infinity"
            )
        pi_k = block[rows, :, pos]
        q_k = q_block[rows, :, pos]
        q_expected[start:stop] = np.einsum("ij,ij->i", q_k, pi_k) / pi_k.sum(axis=1)
        if action is not None:
            q_factual[start:stop] = q_k[rows, action[start:stop]]
    return PolicyScan(pi_factual, q_factual, q_expected)
