"""Policies beyond the bandits (scored offline models, baselines) and the request batch every
registered policy reads its contexts from."""

from recsys.policies.baselines import popularity_policy, uniform_policy
from recsys.policies.batch import CONTEXT_COLUMNS, RequestBatch
from recsys.policies.linear import LinearScorePolicy

__all__ = [
    "CONTEXT_COLUMNS",
    "LinearScorePolicy",
    "RequestBatch",
    "popularity_policy",
    "uniform_policy",
]
