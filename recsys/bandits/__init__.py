"""Bandit policies on additive sufficient statistics (Diag-LinUCB, Thompson sampling, references).

A policy is statistics + a scoring rule. The statistics (:class:`DenseStats`, :class:`GraphStats`)
are plain sums that merge in any order, so learners on many workers compute deltas with
``delta_from_batch`` and parameter shards ``merge`` them.
"""

from recsys.bandits.base import BasePolicy
from recsys.bandits.baselines import EpsilonGreedy, Greedy, SquareCB
from recsys.bandits.dense import DenseStats
from recsys.bandits.full import FullStats
from recsys.bandits.slates import Slate
from recsys.bandits.thompson import DiagLinTS, InSlateTS, LinTS
from recsys.bandits.ucb import DiagLinUCB, LinUCB
from recsys.bandits.validation import UnknownItemError

__all__ = [
    "BasePolicy",
    "DenseStats",
    "DiagLinTS",
    "DiagLinUCB",
    "EpsilonGreedy",
    "FullStats",
    "Greedy",
    "InSlateTS",
    "LinTS",
    "LinUCB",
    "Slate",
    "SquareCB",
    "UnknownItemError",
]
