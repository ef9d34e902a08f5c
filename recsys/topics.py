"""The Kafka topic names of the event contract, in one place.

Topic names are part of the contract (DESIGN.md, "Events"): the event types, producers, consumers,
the lake sink and the configuration defaults all take them from here. Creating topics and checking
their partition layout on a cluster is Kafka administration and lives in ``streaming.topics``.
"""

from __future__ import annotations

__all__ = ["CONTRACT_TOPICS", "DEAD_LETTER", "FEEDBACK", "IMPRESSIONS", "REWARDS"]

IMPRESSIONS = "recsys.impressions"
"""Served slates with their propensities (key ``request_id``)."""

FEEDBACK = "recsys.feedback"
"""User actions on shown items (key ``request_id``)."""

REWARDS = "recsys.rewards"
"""Joined examples: one per shown item once its attribution window has closed."""

DEAD_LETTER = "recsys.dead-letter"
"""The raw bytes of records that failed to decode or validate, with the reason."""

CONTRACT_TOPICS = (IMPRESSIONS, FEEDBACK, REWARDS, DEAD_LETTER)
