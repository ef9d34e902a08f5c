"""Bandit policies on additive sufficient statistics (Diag-LinUCB, Thompson sampling, references).

A policy is statistics + a scoring rule. The statistics (:class:`DenseStats` for a user embedding
as context, :class:`GraphStats` for Online Matching's cluster→item graph) are plain sums that
merge in any order, so learners on many workers compute deltas with ``delta_from_batch`` and
parameter shards ``merge`` them; the policies only read them.

Example::

    policy = DiagLinUCB(alpha=1.0, epsilon=0.05, random_state=0).init(item_ids, dim=32)
    slate = policy.recommend(contexts, k=10)      # items, propensities (+ standard errors)
    policy.learn(contexts, slate.items[:, 0], rewards)
    delta = policy.stats_.delta_from_batch(contexts, shown_items, rewards)  # on a worker
    owner = shard_of(delta.item_ids, n_shards)                              # route by item
    shards[s].merge_inplace(delta.select(delta.item_ids[owner == s]))       # on shard s
    arrays, meta = shards[s].to_arrays()        # Ray object store / checkpoint / mlflow artifact

Every layout implements :class:`Statistics` (``recsys.bandits.protocol``): callers never need
``isinstance``; ``snapshot_id`` names a snapshot's content; ``merge_parts`` puts shards back
together; parameter shards publish a :class:`Publication`. Policies sample slates through an
array backend (``recsys.bandits.arrays``): numpy here, torch in the serving app.

Policies are scikit-learn estimators (``get_params``/``set_params``/``clone``); ``action_dist``
gives Open Bandit Pipeline's ``(n_rounds, n_items, k)`` distribution for ``recsys.ope``; and
``policy_spec``/``policy_from_spec`` store a policy's class and hyperparameters as JSON.
"""

from recsys.bandits.arrays import ArrayBackend
from recsys.bandits.base import BasePolicy
from recsys.bandits.baselines import EpsilonGreedy, Greedy, SquareCB
from recsys.bandits.clustering import ClusterGraph, build_cluster_graph
from recsys.bandits.contexts import ContextError
from recsys.bandits.dense import DenseStats
from recsys.bandits.full import FullStats
from recsys.bandits.graph import GraphStats, SoftContexts
from recsys.bandits.influence import NonFiniteError
from recsys.bandits.protocol import (
    ItemSummary,
    Statistics,
    load_stats,
    merge_parts,
    shard_of,
    stats_for_stream,
    stats_from_arrays,
)
from recsys.bandits.publication import Publication, Publisher
from recsys.bandits.slates import Slate
from recsys.bandits.spec import POLICY_CLASSES, policy_from_spec, policy_spec
from recsys.bandits.thompson import DiagLinTS, InSlateTS, LinTS
from recsys.bandits.ucb import DiagLinUCB, LinUCB
from recsys.bandits.validation import UnknownItemError

__all__ = [
    "POLICY_CLASSES",
    "ArrayBackend",
    "BasePolicy",
    "ClusterGraph",
    "ContextError",
    "DenseStats",
    "DiagLinTS",
    "DiagLinUCB",
    "EpsilonGreedy",
    "FullStats",
    "GraphStats",
    "Greedy",
    "InSlateTS",
    "ItemSummary",
    "LinTS",
    "LinUCB",
    "NonFiniteError",
    "Publication",
    "Publisher",
    "Slate",
    "SoftContexts",
    "SquareCB",
    "Statistics",
    "UnknownItemError",
    "build_cluster_graph",
    "load_stats",
    "merge_parts",
    "policy_from_spec",
    "policy_spec",
    "shard_of",
    "stats_for_stream",
    "stats_from_arrays",
]
