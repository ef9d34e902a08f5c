"""Policies beyond the bandits (scored offline models, baselines) and the request batch every
registered policy reads its contexts from."""

from recsys.policies.batch import CONTEXT_COLUMNS, RequestBatch

__all__ = ["CONTEXT_COLUMNS", "RequestBatch"]
