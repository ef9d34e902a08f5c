"""Two Kafka client libraries behind one small interface for the hot readers and producers.

``kafka.client`` picks the library: "kafka-python" (pure Python) or "confluent" (confluent-kafka,
librdkafka in C). It travels in the client options mapping under the key ``"client"``
(``KafkaSettings.client_options()``); admin and metadata calls always use kafka-python and strip
the key with :func:`kafka_python_options`. The streaming consumer and ``recsys.producer`` build
their clients with :func:`make_consumer` and :func:`make_producer`, so the rest of the project
sees one behaviour: explicit assignment, offsets the caller controls, read_committed end offsets
that stop at the last stable offset, idempotent and transactional sends, and murmur2 key placement
(a key lands on the same partition whichever client sent it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import confluent_kafka
from kafka.errors import KafkaError as KafkaPythonError

from recsys.validation import message

CLIENTS = ("kafka-python", "confluent")
DEFAULT_CLIENT = "kafka-python"

# The project's kafka-python-style security options and their librdkafka names.
CONFLUENT_NAMES: dict[str, str] = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}

# Fencing: another producer with the same transactional id took over. No retry cures it; the actor
# holding the fenced producer must be replaced (its successor's fencing aborted its transaction).
_FENCED_NAMES = frozenset({
    "ProducerFencedError", "InvalidProducerEpochError", "TransactionCoordinatorFencedError",
    "FencedInstanceIdError",
})
# kafka-python errors that are transient although kafka-python does not mark them retriable, and
# one that older kafka-python versions raise when no bootstrap server answers.
_TRANSIENT_NAMES = frozenset({"BrokerNotAvailableError", "NoBrokersAvailable"})


def client_name(options: Mapping[str, object] | None) -> str:
    """The client library the options select (``"client"`` key; kafka-python when absent)."""
    name = (options or {}).get("client", DEFAULT_CLIENT)
    if name not in CLIENTS:
        raise ValueError(message("kafka.client", f"one of {', '.join(CLIENTS)}", repr(name)))
    return str(name)


def kafka_python_options(options: Mapping[str, object] | None) -> dict[str, Any]:
    """The options without the ``"client"`` key: what a kafka-python class accepts (admin and
    metadata clients always use kafka-python, whichever client the hot path uses)."""
    return {k: v for k, v in (options or {}).items() if k != "client"}


def confluent_config(options: Mapping[str, object] | None) -> dict[str, Any]:
    """librdkafka configuration for the project's kafka-python-style security options.

    An option with no translation raises a ValueError naming it, so a setting is never silently
    dropped when the client changes.
    """
    config: dict[str, Any] = {}
    for key, value in kafka_python_options(options).items():
        if value is None:
            continue
        name = CONFLUENT_NAMES.get(key)
        if name is None:
            raise ValueError(
                f"client option {key}={value!r} has no confluent-kafka translation (known: "
                f"{', '.join(sorted(CONFLUENT_NAMES))}); remove it or set kafka.client = "
                "\"kafka-python\""
            )
        config[name] = value
    return config


def is_transient_kafka_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a Kafka or connection error that a retry (with backoff) can cure.

    True: timeouts, no reachable broker, disconnects, unknown or moved leaders, coordinators not
    available yet, confluent errors that librdkafka marks retriable or that are transport/timeout
    codes. False: fencing (the actor must be replaced), fatal or abortable transaction states
    (recovery cures them, not a retry), configuration errors, and everything that is not Kafka's
    (bugs). Follows an explicit ``raise ... from`` cause, so a wrapper around a transient error is
    transient.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _transient_one(current)
        if verdict is not None:
            return verdict
        current = current.__cause__
    return False


def _transient_one(exc: BaseException) -> bool | None:
    """True/False when ``exc`` itself decides; None to look at its cause."""
    name = type(exc).__name__
    if name in _FENCED_NAMES:
        return False
    kafka_error = _confluent_error(exc)
    if kafka_error is not None:
        return _confluent_transient(kafka_error)
    if isinstance(exc, KafkaPythonError):
        return bool(getattr(exc, "retriable", False)) or name in _TRANSIENT_NAMES
    if name in _TRANSIENT_NAMES:
        return True
    if isinstance(exc, ConnectionError):  # refused, reset, broken pipe: the broker went away
        return True
    return None


def _confluent_error(exc: BaseException) -> Any:
    """The confluent ``KafkaError`` inside ``exc``, or None when it is not a confluent error."""
    if isinstance(exc, confluent_kafka.KafkaException):
        error = exc.args[0] if exc.args else None
        return error if isinstance(error, confluent_kafka.KafkaError) else _UNKNOWN
    return None


class _Unknown:
    """A confluent KafkaException without a KafkaError inside: not transient."""

    def fatal(self) -> bool:
        return True


_UNKNOWN = _Unknown()


def _confluent_transient(error: Any) -> bool:
    KafkaError = confluent_kafka.KafkaError

    if error is _UNKNOWN or error.fatal() or error.txn_requires_abort():
        return False
    code = error.code()
    fenced = {getattr(KafkaError, n, None) for n in
              ("_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "FENCED_INSTANCE_ID",
               "TRANSACTION_COORDINATOR_FENCED")}
    if code in fenced:
        return False
    if error.retriable():
        return True
    transient = {getattr(KafkaError, n, None) for n in (
        "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_MSG_TIMED_OUT", "_TIMED_OUT_QUEUE",
        "_RESOLVE", "_WAIT_COORD", "_RETRY", "_NODE_UPDATE", "_UNKNOWN_PARTITION",
        "_QUEUE_FULL", "_PREV_IN_PROGRESS", "_IN_PROGRESS", "_WAIT_CACHE",
        "REQUEST_TIMED_OUT", "NETWORK_EXCEPTION", "BROKER_NOT_AVAILABLE", "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_FOR_PARTITION", "NOT_LEADER_OR_FOLLOWER", "UNKNOWN_TOPIC_OR_PART",
        "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "NOT_COORDINATOR",
        "COORDINATOR_NOT_AVAILABLE", "COORDINATOR_LOAD_IN_PROGRESS", "CONCURRENT_TRANSACTIONS",
        "KAFKA_STORAGE_ERROR", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
        "OFFSET_NOT_AVAILABLE", "PREFERRED_LEADER_NOT_AVAILABLE",
    )}
    transient.discard(None)
    return code in transient
