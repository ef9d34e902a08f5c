"""Compare policies on the same logs: OPE estimates with bootstrap intervals, side by side.

``compare_policies(LoggedSlates.from_lake(root, start_ms, end_ms), {"champion": ..., ...})``
evaluates every candidate (anything with ``item_ids_`` and ``action_dist(batch, k)``, e.g. a
registered policy) with the same estimators, resamples and reward model, streaming over chunks of
requests, and returns a :class:`Comparison` (``table()``, ``to_dict()``).
"""

from recsys.comparison.engine import Candidate, compare_policies
from recsys.comparison.estimates import DEFAULT_ESTIMATORS, ESTIMATORS
from recsys.comparison.logs import LoggedSlates
from recsys.comparison.result import CandidateResult, Comparison, Estimate
from recsys.comparison.reward_model import ShrunkRateModel

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "Candidate",
    "CandidateResult",
    "Comparison",
    "Estimate",
    "LoggedSlates",
    "ShrunkRateModel",
    "compare_policies",
]
