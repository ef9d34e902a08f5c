"""Off-policy estimators with Open Bandit Pipeline's names, arguments, shapes and numbers.

A user of ``obp.ope`` can swap the import: class names, constructor hyperparameters
(``lambda_``, ``estimator_name``, ``use_estimated_pscore``), method signatures
(``estimate_policy_value``, ``estimate_interval``) and the interval dictionary keys are OBP 0.5's,
and on the same inputs the point estimates are the same floats and the bootstrap intervals use the
same resampling stream (see ``recsys.ope.bootstrap``). Differences: inputs are validated more
strictly (NaN, propensities above one, negative probabilities are rejected, naming the argument),
and ``estimate_round_rewards`` is public so several estimators can share one bootstrap.

Notation: ``action_dist[i, a, k]`` is π_e(a | x_i, k); ``pscore[i]`` is π_b(a_i | x_i, k_i);
``w_i = action_dist[i, a_i, k_i] / pscore[i]`` is the importance weight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.ope.bootstrap import check_interval_arguments, estimate_confidence_interval_by_bootstrap
from recsys.ope.scan import scan
from recsys.ope.validation import check_ope_inputs, check_pscore, check_scalar
from recsys.validation import message

__all__ = [
    "BaseOffPolicyEstimator",
    "DirectMethod",
    "DoublyRobust",
    "DoublyRobustWithShrinkage",
    "InverseProbabilityWeighting",
    "ReplayMethod",
    "SelfNormalizedDoublyRobust",
    "SelfNormalizedInverseProbabilityWeighting",
    "SwitchDoublyRobust",
]


def _with_scan(arrays: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """Add the per-round quantities of one validating pass over the 3-D arrays."""
    scanned = scan(
        arrays["action_dist"],
        arrays["position"],
        arrays.get("action"),
        arrays.get("estimated_rewards_by_reg_model"),
    )
    out = {k: v for k, v in arrays.items() if v is not None}
    out.update({k: v for k, v in vars(scanned).items() if v is not None})
    return out


class BaseOffPolicyEstimator(ABC):
    """Common machinery: validate, compute per-round estimates, average or bootstrap them."""

    estimator_name: str
    requires_pscore: bool = True
    requires_reward_model: bool = False
    use_estimated_pscore: bool = False

    def _inputs(
        self,
        action_dist: Any,
        reward: Any = None,
        action: Any = None,
        pscore: Any = None,
        position: Any = None,
        estimated_rewards_by_reg_model: Any = None,
        estimated_pscore: Any = None,
    ) -> dict[str, np.ndarray]:
        if self.requires_reward_model and estimated_rewards_by_reg_model is None:
            raise ValueError(
                message(
                    "estimated_rewards_by_reg_model",
                    f"an array (required by {type(self).__name__})",
                    "None",
                    "fit a RegressionModel and pass its predictions",
                )
            )
        if self.requires_pscore:
            if reward is None or action is None:
                missing = "reward" if reward is None else "action"
                raise ValueError(
                    message(missing, f"an array (required by {type(self).__name__})", "None")
                )
            if self.use_estimated_pscore:
                if estimated_pscore is None:
                    raise ValueError(
                        message(
                            "estimated_pscore",
                            "an array (required when use_estimated_pscore=True)",
                            "None",
                        )
                    )
                pscore = check_pscore(estimated_pscore, len(action), "estimated_pscore")
            elif pscore is None:
                raise ValueError(
                    message("pscore", f"an array (required by {type(self).__name__})", "None")
                )
        arrays = check_ope_inputs(
            action_dist=action_dist,
            position=position,
            action=action,
            reward=reward,
            pscore=pscore,
            estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
        )
        return _with_scan(arrays)

    @abstractmethod
    def _round_rewards(self, **arrays: np.ndarray) -> np.ndarray:
        """Per-round estimates whose mean is the policy value estimate."""

    def estimate_round_rewards(self, **kwargs: Any) -> np.ndarray:
        """Validated per-round estimates (same arguments as ``estimate_policy_value``)."""
        return self._round_rewards(**self._inputs(**kwargs))

    def estimate_policy_value(self, **kwargs: Any) -> float:
        """Estimated value of the evaluation policy ``action_dist``."""
        return float(self.estimate_round_rewards(**kwargs).mean())

    def _interval(
        self,
        alpha: float = 0.05,
        n_bootstrap_samples: int = 10000,
        random_state: int | np.random.RandomState | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Nonparametric bootstrap interval of the policy value: ``{"mean", "95.0% CI (lower)",
        "95.0% CI (upper)"}`` for ``alpha=0.05``."""
        check_interval_arguments(alpha, n_bootstrap_samples, random_state)
        return estimate_confidence_interval_by_bootstrap(
            samples=self.estimate_round_rewards(**kwargs),
            alpha=alpha,
            n_bootstrap_samples=n_bootstrap_samples,
            random_state=random_state,
        )


@dataclass
class ReplayMethod(BaseOffPolicyEstimator):
    """Replay (Li et al. 2011): the mean reward of rounds where a deterministic evaluation policy
    picks the logged action. Unbiased when the logs are uniformly random."""

    estimator_name: str = "rm"

    def estimate_policy_value(  # type: ignore[override]
        self, reward: Any, action: Any, action_dist: Any, position: Any = None, **kwargs: Any
    ) -> float:
        return super().estimate_policy_value(
            reward=reward, action=action, action_dist=action_dist, position=position
        )

    def estimate_interval(
        self,
        reward: Any,
        action: Any,
        action_dist: Any,
        position: Any = None,
        alpha: float = 0.05,
        n_bootstrap_samples: int = 10000,
        random_state: int | np.random.RandomState | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Bootstrap interval; OBP's argument order."""
        return self._interval(
            alpha,
            n_bootstrap_samples,
            random_state,
            reward=reward,
            action=action,
            action_dist=action_dist,
            position=position,
        )

    def _inputs(
        self,
        action_dist: Any,
        reward: Any = None,
        action: Any = None,
        position: Any = None,
        **_: Any,
    ) -> dict[str, np.ndarray]:
        if reward is None or action is None:
            raise ValueError(
                message("reward and action", "arrays (required by ReplayMethod)", "None")
            )
        return _with_scan(
            check_ope_inputs(
                action_dist=action_dist, position=position, action=action, reward=reward
            )
        )

    def _round_rewards(self, reward, pi_factual, **_):  # type: ignore[override]
        match = (pi_factual == 1).astype(float)
        if match.sum() == 0:
            return np.zeros_like(match)
        return match * reward / match.mean()


@dataclass
class InverseProbabilityWeighting(BaseOffPolicyEstimator):
    """IPW: mean of min(w, lambda_) · r. Unbiased for lambda_ = inf (the default); a finite
    ``lambda_`` clips large weights, trading bias for variance."""

    lambda_: float = np.inf
    use_estimated_pscore: bool = False
    estimator_name: str = "ipw"

    def __post_init__(self) -> None:
        self.lambda_ = check_scalar(self.lambda_, "lambda_", 0.0)
        if not isinstance(self.use_estimated_pscore, bool):
            raise TypeError(
                message("use_estimated_pscore", "a bool", repr(self.use_estimated_pscore))
            )

    def estimate_policy_value(  # type: ignore[override]
        self,
        reward: Any,
        action: Any,
        action_dist: Any,
        pscore: Any = None,
        position: Any = None,
        estimated_pscore: Any = None,
        **kwargs: Any,
    ) -> float:
        return super().estimate_policy_value(
            reward=reward,
            action=action,
            action_dist=action_dist,
            pscore=pscore,
            position=position,
            estimated_pscore=estimated_pscore,
        )

    def estimate_interval(
        self,
        reward: Any,
        action: Any,
        action_dist: Any,
        pscore: Any = None,
        position: Any = None,
        estimated_pscore: Any = None,
        alpha: float = 0.05,
        n_bootstrap_samples: int = 10000,
        random_state: int | np.random.RandomState | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Bootstrap interval; OBP's argument order."""
        return self._interval(
            alpha,
            n_bootstrap_samples,
            random_state,
            reward=reward,
            action=action,
            action_dist=action_dist,
            pscore=pscore,
            position=position,
            estimated_pscore=estimated_pscore,
        )

    def importance_weights(self, pi_factual: np.ndarray, pscore: np.ndarray) -> np.ndarray:
        """Weights π_e(a_i | x_i, k_i) / π_b(a_i | x_i, k_i), clipped at ``lambda_``."""
        return np.minimum(pi_factual / pscore, self.lambda_)

    def _round_rewards(self, reward, pi_factual, pscore, **_):  # type: ignore[override]
        return reward * self.importance_weights(pi_factual, pscore)


@dataclass
class SelfNormalizedInverseProbabilityWeighting(InverseProbabilityWeighting):
    """SNIPW: Σ w r / Σ w. Slightly biased, consistent, bounded by the reward range, and
    invariant to rescaling the weights (so a constant error in the propensities cancels).

    Deliberate difference from OBP 0.5.7: its SNIPW accepts ``lambda_`` and ignores it; here the
    weights are clipped at ``lambda_`` before normalising, as the argument says. With the
    default ``lambda_=inf`` both give the same numbers (``tests/benchmarks/bench_obp_parity.py``
    checks both facts).
    """

    estimator_name: str = "snipw"

    def _round_rewards(self, reward, pi_factual, pscore, **_):  # type: ignore[override]
        iw = self.importance_weights(pi_factual, pscore)
        return reward * iw / iw.mean()


@dataclass
class DirectMethod(BaseOffPolicyEstimator):
    """DM: mean over rounds of Σ_a π_e(a | x_i, k_i) q̂(x_i, a, k_i). Low variance; biased
    whenever the reward model is."""

    estimator_name: str = "dm"
    requires_pscore = False
    requires_reward_model = True

    def estimate_policy_value(  # type: ignore[override]
        self,
        action_dist: Any,
        estimated_rewards_by_reg_model: Any,
        position: Any = None,
        **kwargs: Any,
    ) -> float:
        return super().estimate_policy_value(
            action_dist=action_dist,
            estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
            position=position,
        )

    def estimate_interval(
        self,
        action_dist: Any,
        estimated_rewards_by_reg_model: Any,
        position: Any = None,
        alpha: float = 0.05,
        n_bootstrap_samples: int = 10000,
        random_state: int | np.random.RandomState | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Bootstrap interval; OBP's argument order."""
        return self._interval(
            alpha,
            n_bootstrap_samples,
            random_state,
            action_dist=action_dist,
            estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
            position=position,
        )

    def _inputs(
        self,
        action_dist: Any,
        estimated_rewards_by_reg_model: Any = None,
        position: Any = None,
        **_: Any,
    ) -> dict[str, np.ndarray]:
        return super()._inputs(
            action_dist=action_dist,
            estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
            position=position,
        )

    def _round_rewards(self, q_expected, **_):  # type: ignore[override]
        return q_expected


@dataclass
class DoublyRobust(BaseOffPolicyEstimator):
    """DR: q̂(x_i, π_e) + ŵ_i (r_i − q̂(x_i, a_i, k_i)). Unbiased when the propensities are right,
    whatever the reward model; ``lambda_`` clips the weights as in IPW."""

    lambda_: float = np.inf
    use_estimated_pscore: bool = False
    estimator_name: str = "dr"
    requires_reward_model = True

    def __post_init__(self) -> None:
        self.lambda_ = check_scalar(self.lambda_, "lambda_", 0.0)
        if not isinstance(self.use_estimated_pscore, bool):
            raise TypeError(
                message("use_estimated_pscore", "a bool", repr(self.use_estimated_pscore))
            )

    def estimate_policy_value(  # type: ignore[override]
        self,
        reward: Any,
        action: Any,
        action_dist: Any,
        estimated_rewards_by_reg_model: Any,
        pscore: Any = None,
        position: Any = None,
        estimated_pscore: Any = None,
        **kwargs: Any,
    ) -> float:
        return super().estimate_policy_value(
            reward=reward,
            action=action,
            action_dist=action_dist,
            estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
            pscore=pscore,
            position=position,
            estimated_pscore=estimated_pscore,
        )

    def estimate_interval(
        self,
        reward: Any,
        action: Any,
        action_dist: Any,
        estimated_rewards_by_reg_model: Any,
        pscore: Any = None,
        position: Any = None,
        estimated_pscore: Any = None,
        alpha: float = 0.05,
        n_bootstrap_samples: int = 10000,
        random_state: int | np.random.RandomState | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Bootstrap interval; OBP's argument order."""
        return self._interval(
            alpha,
            n_bootstrap_samples,
            random_state,
            reward=reward,
            action=action,
            action_dist=action_dist,
            estimated_rewards_by_reg_model=estimated_rewards_by_reg_model,
            pscore=pscore,
            position=position,
            estimated_pscore=estimated_pscore,
        )

    def _shrink(self, iw: np.ndarray) -> np.ndarray:
        """The weight applied to the residual; plain DR clips at ``lambda_``."""
        return np.minimum(iw, self.lambda_)

    def _round_rewards(self, reward, pscore, pi_factual, q_factual, q_expected, **_):  # type: ignore[override]
        iw = pi_factual / pscore
        return q_expected + self._correction(iw, reward - q_factual)

    def _correction(self, iw: np.ndarray, residual: np.ndarray) -> np.ndarray:
        return self._shrink(iw) * residual


@dataclass
class SelfNormalizedDoublyRobust(DoublyRobust):
    """SNDR: DR with the residual term divided by the mean weight."""

    estimator_name: str = "sndr"

    def _correction(self, iw: np.ndarray, residual: np.ndarray) -> np.ndarray:
        # OBP's SNDR ignores lambda_ (no clipping); kept identical.
        return iw * residual / iw.mean()


@dataclass
class SwitchDoublyRobust(DoublyRobust):
    """Switch-DR: DR where w ≤ lambda_, DM where the weight is larger (Wang et al. 2017)."""

    estimator_name: str = "switch-dr"

    def _shrink(self, iw: np.ndarray) -> np.ndarray:
        return iw * (iw <= self.lambda_)


@dataclass
class DoublyRobustWithShrinkage(DoublyRobust):
    """DRos: DR with weights shrunk to λw / (w² + λ) (Su et al. 2020). ``lambda_ = 0`` gives DM;
    ``lambda_ = inf`` gives DR."""

    lambda_: float = 0.0
    estimator_name: str = "dr-os"

    def _shrink(self, iw: np.ndarray) -> np.ndarray:
        if self.lambda_ < np.inf:
            return (self.lambda_ * iw) / (iw**2 + self.lambda_)
        return iw
