"""Slate off-policy estimators: independent-position IPS and the pseudo-inverse estimator.

Both take OBP's long format: one entry per (slate, position) with ``slate_id``, per-slot
``reward`` and ``position``. The policy value is the expected *sum* of slot rewards per slate.

- ``SlateIndependentIPS`` (OBP's name and formula): Σ_k r_k π_e(a_k at k) / π_b(a_k at k).
  Unbiased when each slot's reward depends only on the item shown there.
- ``SlatePseudoInverse`` (Swaminathan et al. 2017): r · θ_eᵀ Γ⁺ 1_s, with Γ = E_μ[1_s 1_sᵀ] the
  logging policy's pairwise slot-marginals and θ_e the evaluation policy's slot-marginals.
  Unbiased when the slate reward is additive over slots (each slot may have its own effect), even
  if only the slate total is observed; Γ here is context-free (one logging distribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.ope.bootstrap import check_interval_arguments, estimate_confidence_interval_by_bootstrap
from recsys.ope.validation import as_array, check_pscore
from recsys.validation import check_finite, check_index, message

_CHUNK_CELLS = 2**23


def _slate_groups(slate_id: Any, n: int) -> tuple[np.ndarray, int]:
    slate_id = as_array(slate_id, "slate_id", 1)
    if slate_id.shape[0] != n:
        raise ValueError(message("slate_id", f"{n} entries like reward", slate_id.shape[0]))
    _, inverse = np.unique(slate_id, return_inverse=True)
    inverse = inverse.ravel()
    return inverse, int(inverse.max()) + 1 if n else 0


def _check_long(reward: Any, position: Any) -> tuple[np.ndarray, np.ndarray]:
    reward = as_array(reward, "reward", 1).astype(float, copy=False)
    position = as_array(position, "position", 1)
    if position.shape[0] != reward.shape[0]:
        raise ValueError(
            message("position", f"{reward.size} entries like reward", position.shape[0])
        )
    if not np.issubdtype(position.dtype, np.integer):
        raise ValueError(message("position", "non-negative integers", f"dtype {position.dtype}"))
    if position.size and position.min() < 0:
        raise ValueError(message("position", "non-negative integers", f"{position.min()}"))
    check_finite(reward, "reward")
    return reward, position


@dataclass
class SlateIndependentIPS:
    """Independent-position IPS (Li et al. 2018), OBP's ``SlateIndependentIPS``.

    ``len_list`` is optional (OBP requires it): when given, positions at or beyond it are
    rejected; when None the slate length is read from the positions.
    """

    len_list: int | None = None
    estimator_name: str = "iips"

    def estimate_round_rewards(
        self,
        slate_id: Any,
        reward: Any,
        position: Any,
        pscore_item_position: Any,
        evaluation_policy_pscore_item_position: Any,
    ) -> np.ndarray:
        """Per-slate estimates (ordered by sorted slate id, as OBP orders them)."""
        reward, position = _check_long(reward, position)
        if self.len_list is not None and position.size and position.max() >= self.len_list:
            raise ValueError(message("position", f"integers in [0, len_list={self.len_list})",
                                     f"{int(position.max())}"))
        n = reward.shape[0]
        pscore = check_pscore(pscore_item_position, n, "pscore_item_position")
        target = as_array(
            evaluation_policy_pscore_item_position, "evaluation_policy_pscore_item_position", 1
        ).astype(float, copy=False)
        if target.shape[0] != n or (target.size and (target.min() < 0 or target.max() > 1)):
            raise ValueError(
                message(
                    "evaluation_policy_pscore_item_position",
                    f"{n} probabilities in [0, 1]",
                    f"{target.shape[0]} values in [{target.min():.6g}, {target.max():.6g}]",
                )
            )
        groups, n_slates = _slate_groups(slate_id, n)
        return np.bincount(groups, weights=reward * target / pscore, minlength=n_slates)

    def estimate_policy_value(
        self,
        slate_id: Any,
        reward: Any,
        position: Any,
        pscore_item_position: Any,
        evaluation_policy_pscore_item_position: Any,
        **kwargs: Any,
    ) -> float:
        """Estimated expected sum of slot rewards per slate under the evaluation policy."""
        return float(
            self.estimate_round_rewards(
                slate_id,
                reward,
                position,
                pscore_item_position,
                evaluation_policy_pscore_item_position,
            ).mean()
        )

    def estimate_interval(
        self,
        slate_id: Any,
        reward: Any,
        position: Any,
        pscore_item_position: Any,
        evaluation_policy_pscore_item_position: Any,
        alpha: float = 0.05,
        n_bootstrap_samples: int = 10000,
        random_state: int | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Bootstrap over slates (not slots), as OBP does."""
        check_interval_arguments(alpha, n_bootstrap_samples, random_state)
        rewards = self.estimate_round_rewards(
            slate_id,
            reward,
            position,
            pscore_item_position,
            evaluation_policy_pscore_item_position,
        )
        return estimate_confidence_interval_by_bootstrap(
            rewards, alpha, n_bootstrap_samples, random_state
        )


def uniform_slate_gamma(n_actions: int, len_list: int) -> np.ndarray:
    """Γ for uniformly random ordered slates of distinct items: P(a at j) = 1/m and
    P(a at j, b at l) = 1/(m(m−1)) for a ≠ b, j ≠ l. Index a * len_list + j."""
    m, k = n_actions, len_list
    if m < k:
        raise ValueError(message("n_actions", f"at least len_list={k}", m))
    pair = 1.0 / (m * (m - 1)) if m > 1 else 0.0
    gamma = np.full((m, k, m, k), pair)
    a = np.arange(m)
    gamma[a, :, a, :] = 0.0  # the same item cannot fill two positions
    j = np.arange(k)
    gamma[:, j, :, j] = 0.0  # one item per position
    gamma[a[:, None], j[None, :], a[:, None], j[None, :]] = 1.0 / m
    return gamma.reshape(m * k, m * k)


def empirical_slate_gamma(slates: Any, n_actions: int) -> np.ndarray:
    """Γ estimated from logged slates (n, len_list) as the mean of 1_s 1_sᵀ."""
    slates = as_array(slates, "slates", 2)
    n, k = slates.shape
    idx = slates * k + np.arange(k)
    onehot = np.zeros((n, n_actions * k))
    onehot[np.arange(n)[:, None], idx] = 1.0
    return onehot.T @ onehot / n


@dataclass
class SlatePseudoInverse:
    """The pseudo-inverse estimator (Swaminathan et al. 2017) for additive slate rewards.

    ``estimate_policy_value(slate_id, reward, position, action, evaluation_policy_action_dist,
    behavior_slate_gamma)``: long-format logged slates, the evaluation policy's slot-marginals
    per slate (n_slates, n_actions, len_list) in sorted-slate-id order, and the logging policy's
    Γ of shape (n_actions·len_list,)² (see ``uniform_slate_gamma``, ``empirical_slate_gamma``).
    """

    rcond: float = 1e-10
    estimator_name: str = "pi"

    def estimate_round_rewards(
        self,
        slate_id: Any,
        reward: Any,
        position: Any,
        action: Any,
        evaluation_policy_action_dist: Any,
        behavior_slate_gamma: Any,
    ) -> np.ndarray:
        """Per-slate estimates r_i · θ_iᵀ Γ⁺ 1_{s_i}."""
        reward, position = _check_long(reward, position)
        n = reward.shape[0]
        action = as_array(action, "action", 1)
        dist = as_array(evaluation_policy_action_dist, "evaluation_policy_action_dist", 3)
        n_slates_dist, m, k = dist.shape
        if action.shape[0] != n:
            raise ValueError(message("action", f"{n} entries like reward", action.shape[0]))
        check_index(action, "action", m, "evaluation_policy_action_dist.shape[1]")
        check_index(position, "position", k, "evaluation_policy_action_dist.shape[2]")
        gamma = as_array(behavior_slate_gamma, "behavior_slate_gamma", 2)
        if gamma.shape != (m * k, m * k):
            raise ValueError(
                message("behavior_slate_gamma", f"shape {(m * k, m * k)}", f"shape {gamma.shape}")
            )
        groups, n_slates = _slate_groups(slate_id, n)
        if n_slates != n_slates_dist:
            raise ValueError(
                message(
                    "evaluation_policy_action_dist",
                    f"one row per logged slate ({n_slates})",
                    f"{n_slates_dist} rows",
                )
            )
        slate_reward = np.bincount(groups, weights=reward, minlength=n_slates)
        g_plus = np.linalg.pinv(gamma, rcond=self.rcond, hermitian=True)
        theta = dist.reshape(n_slates, m * k)
        # θ_iᵀ Γ⁺ 1_{s_i} = Σ over the slate's (item, slot) cells c of (θ_i Γ⁺)[c]; each logged
        # cell contributes to its slate's sum.
        cell = action * k + position
        weight = np.zeros(n_slates)
        step = max(1, _CHUNK_CELLS // (m * k))
        for start in range(0, n, step):
            rows = slice(start, start + step)
            contrib = np.einsum("nj,nj->n", theta[groups[rows]], g_plus[cell[rows]])
            weight += np.bincount(groups[rows], weights=contrib, minlength=n_slates)
        return slate_reward * weight

    def estimate_policy_value(
        self,
        slate_id: Any,
        reward: Any,
        position: Any,
        action: Any,
        evaluation_policy_action_dist: Any,
        behavior_slate_gamma: Any,
        **kwargs: Any,
    ) -> float:
        """Estimated expected slate reward under the evaluation policy."""
        return float(
            self.estimate_round_rewards(
                slate_id,
                reward,
                position,
                action,
                evaluation_policy_action_dist,
                behavior_slate_gamma,
            ).mean()
        )

    def estimate_interval(
        self,
        slate_id: Any,
        reward: Any,
        position: Any,
        action: Any,
        evaluation_policy_action_dist: Any,
        behavior_slate_gamma: Any,
        alpha: float = 0.05,
        n_bootstrap_samples: int = 10000,
        random_state: int | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Bootstrap over slates."""
        check_interval_arguments(alpha, n_bootstrap_samples, random_state)
        rewards = self.estimate_round_rewards(
            slate_id,
            reward,
            position,
            action,
            evaluation_policy_action_dist,
            behavior_slate_gamma,
        )
        return estimate_confidence_interval_by_bootstrap(
            rewards, alpha, n_bootstrap_samples, random_state
        )
