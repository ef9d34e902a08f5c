"""Off-policy evaluation: OBP-compatible estimators, reward models, slate estimators, adapters."""

from recsys.ope.bootstrap import bootstrap_means, estimate_confidence_interval_by_bootstrap
from recsys.ope.dataframe import BanditFeedback, bandit_feedback_from_frame
from recsys.ope.diagnostics import OverlapDiagnostics, overlap_diagnostics
from recsys.ope.estimators import (
    BaseOffPolicyEstimator,
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    ReplayMethod,
    SelfNormalizedDoublyRobust,
    SelfNormalizedInverseProbabilityWeighting,
    SwitchDoublyRobust,
)
from recsys.ope.reward_model import RegressionModel
from recsys.ope.slate import (
    SlateIndependentIPS,
    SlatePseudoInverse,
    empirical_slate_gamma,
    uniform_slate_gamma,
)

__all__ = [
    "BanditFeedback",
    "BaseOffPolicyEstimator",
    "DirectMethod",
    "DoublyRobust",
    "DoublyRobustWithShrinkage",
    "InverseProbabilityWeighting",
    "OverlapDiagnostics",
    "RegressionModel",
    "ReplayMethod",
    "SelfNormalizedDoublyRobust",
    "SelfNormalizedInverseProbabilityWeighting",
    "SlateIndependentIPS",
    "SlatePseudoInverse",
    "SwitchDoublyRobust",
    "bandit_feedback_from_frame",
    "bootstrap_means",
    "empirical_slate_gamma",
    "estimate_confidence_interval_by_bootstrap",
    "overlap_diagnostics",
    "uniform_slate_gamma",
]
