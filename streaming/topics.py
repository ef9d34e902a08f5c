"""Topic names and idempotent topic creation."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from recsys.events import DEAD_LETTER_TOPIC, Feedback, Impression, Reward

IMPRESSIONS = Impression.topic
FEEDBACK = Feedback.topic
REWARDS = Reward.topic
DEAD_LETTER = DEAD_LETTER_TOPIC
ALL_TOPICS = (IMPRESSIONS, FEEDBACK, REWARDS, DEAD_LETTER)


def standard_topics(partitions: int) -> dict[str, int]:
    """The system's topics with their partition counts; the dead-letter topic needs only one."""
    return {IMPRESSIONS: partitions, FEEDBACK: partitions, REWARDS: partitions, DEAD_LETTER: 1}


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication_factor: int = 1,
    **client_options: object,
) -> dict[str, int]:
    """Create the topics that do not exist yet; returns every topic's actual partition count.

    Safe to call any number of times and from several processes at once. An existing topic keeps
    its partition count (changing it would move keys between partitions): callers read the
    returned counts rather than assuming.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="recsys-admin", **client_options
    )
    try:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            if partitions < 1:
                raise ValueError(f"topic {name}: partitions must be >= 1, got {partitions}")
            # Another process may create it at the same moment: that is the idempotent outcome.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    {
                        name: {
                            "num_partitions": partitions,
                            "replication_factor": replication_factor,
                        }
                    },
                    timeout_ms=30_000,
                    wait_for_metadata=True,
                )
        described = admin.describe_topics(list(topics))
        return {d["name"]: len(d["partitions"]) for d in described}
    finally:
        admin.close()
