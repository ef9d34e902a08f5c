"""A minimal seeded linear-logistic contextual bandit for regret experiments.

Rewards are Bernoulli with ``P(r = 1 | x, a) = sigmoid(x·θ_a)``. Two kinds of context:

* ``"gaussian"``: dense Gaussian features with a constant first feature (so linear policies can
  learn each action's base rate) and an optional equicorrelation ρ between the other features;
* ``"segments"``: one-hot user segments (``dim`` of them, uniformly likely), the Online Matching
  K = 1 case in which Diag-LinUCB is exactly LinUCB.
 It exposes the environment interface that
``recsys.bandits.regret`` expects (``n_actions``, ``dim``, ``contexts``, ``expected_rewards``,
``sample_rewards``) and is deliberately small: the full user simulator lives elsewhere in
``simulators``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from recsys.validation import check_scalar, message


class LinearLogisticEnv:
    """Seeded environment: ``n_actions`` arms, ``dim``-dimensional contexts (feature 0 is 1)."""

    def __init__(
        self,
        n_actions: int = 50,
        dim: int = 32,
        *,
        context: Literal["gaussian", "segments"] = "gaussian",
        correlation: float = 0.0,
        base_logit: float = -1.0,
        signal: float = 1.0,
        seed: int = 0,
    ) -> None:
        for name, value in (("n_actions", n_actions), ("dim", dim)):
            if value < 2:
                raise ValueError(message(name, "an integer >= 2", value))
        check_scalar(correlation, "correlation", 0.0, 1.0, high_open=True)
        if context not in ("gaussian", "segments"):
            raise ValueError(message("context", "'gaussian' or 'segments'", repr(context)))
        self.context = context
        self.n_actions = n_actions
        self.dim = dim
        self.correlation = correlation
        rng = np.random.default_rng(seed)
        theta = rng.normal(0.0, signal / np.sqrt(dim - 1), size=(n_actions, dim))
        theta[:, 0] = base_logit + 0.5 * rng.standard_normal(n_actions)
        if context == "segments":
            theta = base_logit + signal * rng.standard_normal((n_actions, dim))
        self.theta: NDArray[np.float64] = theta
        cov = (1.0 - correlation) * np.eye(dim - 1) + correlation
        self._chol = np.linalg.cholesky(cov)
        self._rng = np.random.default_rng(seed + 1)

    def contexts(self, n: int) -> NDArray[np.float64]:
        """``n`` fresh contexts, [n, dim]."""
        if self.context == "segments":
            return np.eye(self.dim)[self._rng.integers(0, self.dim, n)]
        z = self._rng.standard_normal((n, self.dim - 1)) @ self._chol.T
        return np.concatenate([np.ones((n, 1)), z], axis=1)

    def expected_rewards(self, contexts: NDArray[np.float64]) -> NDArray[np.float64]:
        """P(reward = 1) for every action, [n, n_actions]."""
        return 1.0 / (1.0 + np.exp(-(contexts @ self.theta.T)))

    def sample_rewards(
        self, contexts: NDArray[np.float64], actions: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """Bernoulli rewards for the chosen actions, [n]."""
        p = self.expected_rewards(contexts)[np.arange(contexts.shape[0]), actions]
        return (self._rng.random(p.shape) < p).astype(np.float64)
