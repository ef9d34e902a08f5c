"""The Kafka client layer: error classification and option translation (unit), and on the real
broker, for both clients: transactions (commit, abort, fencing), read_committed end offsets, and
murmur2 key placement that agrees across clients."""

from __future__ import annotations

import confluent_kafka
import kafka.errors as kerr
import pytest

from recsys.kafka_clients import (
    client_name,
    confluent_config,
    is_transient_kafka_error,
    kafka_python_options,
)


def _confluent(code: int, *, fatal: bool = False, retriable: bool = False,
               txn_requires_abort: bool = False) -> confluent_kafka.KafkaException:
    return confluent_kafka.KafkaException(confluent_kafka.KafkaError(
        code, "test", fatal=fatal, retriable=retriable, txn_requires_abort=txn_requires_abort))


E = confluent_kafka.KafkaError


@pytest.mark.parametrize("exc", [
    kerr.KafkaTimeoutError("Unable to bootstrap from localhost:9092"),
    kerr.KafkaTimeoutError("Failed to get offsets by timestamps in 30000 ms"),
    kerr.KafkaConnectionError("socket disconnected"),
    kerr.NodeNotReadyError(1),
    kerr.RequestTimedOutError(),
    kerr.NotLeaderForPartitionError(),
    kerr.LeaderNotAvailableError(),
    kerr.NetworkExceptionError(),
    kerr.BrokerNotAvailableError(),
    kerr.CoordinatorNotAvailableError(),
    ConnectionRefusedError(111, "refused"),
    ConnectionResetError(),
    _confluent(E._TRANSPORT),
    _confluent(E._ALL_BROKERS_DOWN),
    _confluent(E._TIMED_OUT),
    _confluent(E._MSG_TIMED_OUT),
    _confluent(E.NOT_LEADER_FOR_PARTITION),
    _confluent(E.UNKNOWN_TOPIC_OR_PART, retriable=True),
    _confluent(E.COORDINATOR_LOAD_IN_PROGRESS, retriable=True),
], ids=lambda e: f"{type(e).__name__}:{e}")
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert is_transient_kafka_error(exc)


@pytest.mark.parametrize("exc", [
    kerr.ProducerFencedError(),
    kerr.InvalidProducerEpochError(),
    kerr.TransactionAbortableError(),
    kerr.IllegalStateError("not in a transaction"),
    kerr.KafkaConfigurationError("bad option"),
    kerr.CorruptRecordError(),
    ValueError("a bug"),
    KeyError("a bug"),
    TimeoutError("did not reach offsets"),
    _confluent(E._FENCED),
    _confluent(E.PRODUCER_FENCED),
    _confluent(E._TRANSPORT, fatal=True),
    _confluent(E._TIMED_OUT, txn_requires_abort=True),
    _confluent(E.INVALID_CONFIG),
    _confluent(E._INVALID_ARG),
    confluent_kafka.KafkaException("no KafkaError inside"),
], ids=lambda e: f"{type(e).__name__}:{e}")
def test_bugs_and_fencing_are_not_transient(exc: BaseException) -> None:
    assert not is_transient_kafka_error(exc)


def test_a_wrapper_is_judged_by_its_cause() -> None:
    try:
        try:
            raise kerr.KafkaTimeoutError("flush timed out")
        except kerr.KafkaError as inner:
            raise RuntimeError("3 records were not delivered") from inner
    except RuntimeError as outer:
        assert is_transient_kafka_error(outer)
    try:
        try:
            raise kerr.ProducerFencedError()
        except kerr.KafkaError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert not is_transient_kafka_error(outer)


def test_options_strip_and_translate() -> None:
    options = {"client": "confluent", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
               "sasl_plain_username": "u", "sasl_plain_password": "p", "ssl_cafile": "/ca.pem",
               "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"}
    assert client_name(options) == "confluent"
    assert client_name({}) == "kafka-python"
    stripped = kafka_python_options(options)
    assert "client" not in stripped and stripped["sasl_mechanism"] == "PLAIN"
    assert confluent_config(options) == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u",
        "sasl.password": "p", "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem"}


def test_an_untranslatable_option_names_itself() -> None:
    with pytest.raises(ValueError, match=r"ssl_check_hostname.*kafka-python"):
        confluent_config({"client": "confluent", "ssl_check_hostname": False})
    with pytest.raises(ValueError, match=r"kafka\.client"):
        client_name({"client": "librdkafka"})
