"""Closed-loop regret harness: any policy against any environment with known expected rewards.

The environment is a protocol, so this module never imports the simulators; the caller passes
one in (``simulators.linear_logistic.LinearLogisticEnv`` or the full user simulator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from recsys.bandits.base import BasePolicy


class Environment(Protocol):
    """What the harness needs: fresh contexts, expected rewards, and sampled rewards."""

    n_actions: int
    dim: int

    def contexts(self, n: int) -> NDArray[np.float64]: ...

    def expected_rewards(self, contexts: NDArray[np.float64]) -> NDArray[np.float64]: ...

    def sample_rewards(
        self, contexts: NDArray[np.float64], actions: NDArray[np.int64]
    ) -> NDArray[np.float64]: ...


@dataclass(frozen=True, eq=False)
class RegretCurve:
    """Cumulative pseudo-regret (Σ best expected reward − chosen expected reward) per round."""

    cumulative_regret: NDArray[np.float64]
    mean_reward: float

    @property
    def total(self) -> float:
        return float(self.cumulative_regret[-1])

    def window_rate(self, start: float, stop: float) -> float:
        """Average per-round regret between two fractions of the horizon."""
        n = self.cumulative_regret.size
        i, j = int(start * n), int(stop * n)
        before = self.cumulative_regret[i - 1] if i > 0 else 0.0
        return float((self.cumulative_regret[j - 1] - before) / max(j - i, 1))


def run_regret(
    policy: BasePolicy, env: Environment, n_rounds: int, *, batch_size: int = 1000
) -> RegretCurve:
    """Serve ``n_rounds`` requests in batches (recommend k=1, observe, learn) and track regret.

    Parameters are refreshed once per batch, as a streaming deployment would; the policy must
    have been initialised over items ``0 .. n_actions-1`` with dimension ``env.dim``.
    """
    regret = np.empty(n_rounds)
    rewards = 0.0
    done = 0
    while done < n_rounds:  # loop over batches of requests
        m = min(batch_size, n_rounds - done)
        x = env.contexts(m)
        mu = env.expected_rewards(x)
        actions = policy.recommend(x, k=1).items[:, 0]
        r = env.sample_rewards(x, actions)
        policy.learn(x, actions, r)
        regret[done:done + m] = mu.max(axis=1) - mu[np.arange(m), actions]
        rewards += float(r.sum())
        done += m
    return RegretCurve(np.cumsum(regret), rewards / n_rounds)
