"""Kafka administration of the contract topics (``recsys.topics`` names them): idempotent topic
creation, the check that co-partitioned topics agree, and the cluster layout a checkpoint
records."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from recsys.kafka_clients import kafka_python_options
from recsys.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, REWARDS
from recsys.validation import message

# Impressions and feedback are keyed by request id and joined partition by partition: partition p
# of one must hold the same requests as partition p of the other, so their counts must be equal.
# The joiner of partition p writes its rewards to partition p of rewards (read back after a crash).
CO_PARTITIONED: tuple[tuple[str, ...], ...] = ((IMPRESSIONS, FEEDBACK, REWARDS),)


class TopicLayoutError(RuntimeError):
    """The topics on the cluster do not have the layout the system relies on."""


def standard_topics(partitions: int) -> dict[str, int]:
    """The system's topics with their partition counts; the dead-letter topic needs only one."""
    return {IMPRESSIONS: partitions, FEEDBACK: partitions, REWARDS: partitions, DEAD_LETTER: 1}


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication_factor: int = 1,
    co_partitioned: Iterable[Collection[str]] = CO_PARTITIONED,
    **client_options: object,
) -> dict[str, int]:
    """Create the topics that do not exist yet; returns every topic's actual partition count.

    Safe to call any number of times and from several processes at once. An existing topic keeps
    its partition count (changing it would move keys between partitions): callers read the
    returned counts rather than assuming. Raises ``TopicLayoutError`` when a group of
    ``co_partitioned`` topics that are all among ``topics`` ends up with different counts.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="recsys-admin",
        **kafka_python_options(client_options),
    )
    try:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            if partitions < 1:
                raise ValueError(message(f"topics[{name!r}]", "a partition count >= 1", partitions))
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
        # A topic another process is creating right now may take a moment to show partitions.
        deadline = time.monotonic() + 30
        described = admin.describe_topics(list(topics))
        while time.monotonic() < deadline and any(not d["partitions"] for d in described):
            time.sleep(0.2)
            described = admin.describe_topics(list(topics))
    finally:
        admin.close()
    counts = _partition_counts(described, bootstrap)
    check_co_partitioned(counts, co_partitioned)
    return counts


def check_co_partitioned(
    counts: Mapping[str, int], groups: Iterable[Collection[str]] = CO_PARTITIONED
) -> None:
    """Raise ``TopicLayoutError`` if the topics of a group that are present in ``counts`` differ
    in partition count (topics missing from ``counts`` are not checked)."""
    for group in groups:
        present = [topic for topic in group if topic in counts]
        if len({counts[topic] for topic in present}) > 1:
            found = ", ".join(f"{topic} has {counts[topic]}" for topic in present)
            raise TopicLayoutError(
                f"topics {' and '.join(present)} must have the same number of partitions (they are "
                f"keyed by request id and joined partition by partition), but {found}. Recreate "
                "them with one partition count (kafka.partitions), or raise the smaller to match "
                "with kafka-topics.sh --alter --partitions N before any events are written "
                "(adding partitions later moves request ids to other partitions)."
            )


@dataclass(frozen=True)
class ClusterLayout:
    """Which Kafka cluster this is and how its topics are partitioned: what a checkpoint records
    beside its offsets, so that restoring onto another cluster or partition count is refused."""

    cluster_id: str
    partitions: dict[str, int]


def cluster_layout(
    bootstrap: str, topics: Iterable[str], **client_options: object
) -> ClusterLayout:
    """The cluster id and the partition count of each of ``topics`` (which must exist)."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="recsys-admin",
        **kafka_python_options(client_options),
    )
    try:
        cluster_id = admin.describe_cluster()["cluster_id"]
        described = admin.describe_topics(list(topics))
    finally:
        admin.close()
    if not cluster_id:
        raise TopicLayoutError(
            f"the cluster at {bootstrap} reports no cluster id (a broker older than Kafka 0.10.1?)"
        )
    return ClusterLayout(cluster_id, _partition_counts(described, bootstrap))


def _partition_counts(described: list[dict], bootstrap: str) -> dict[str, int]:
    """Partition counts from ``describe_topics``, refusing topics the cluster does not have."""
    missing = [d["name"] for d in described if d.get("error_code") or not d["partitions"]]
    if missing:
        raise TopicLayoutError(
            f"topic {', '.join(missing)} does not exist on {bootstrap}; create it first "
            "(ensure_topics) or check the topic name"
        )
    return {d["name"]: len(d["partitions"]) for d in described}
