"""The Kafka client layer: error classification and option translation (unit), and on the real
broker, for both clients: transactions (commit, abort, fencing), read_committed end offsets, and
murmur2 key placement that agrees across clients."""

from __future__ import annotations

import contextlib
import time

import confluent_kafka
import kafka.errors as kerr
import pytest

from recsys.config import Settings
from recsys.kafka_clients import (
    DEFAULT_CLIENT,
    LibrdkafkaError,
    by_partition,
    client_name,
    confluent_config,
    is_fenced,
    is_transient_kafka_error,
    kafka_python_error,
    kafka_python_options,
    make_consumer,
)
from recsys.producer import EventProducer


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
    assert client_name({"client": "kafka-python"}) == "kafka-python"
    assert client_name({}) == DEFAULT_CLIENT == Settings().kafka.client
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


# -- the real broker, each client -----------------------------------------------------------------

CLIENTS = ["kafka-python", "confluent"]


def _records(bootstrap: str, topic: str, partitions: int, client: str) -> list[tuple]:
    """(partition, offset, key, value) of every record a read_committed reader of ``client``
    reaches, read to the end offsets it sees."""
    consumer = make_consumer(bootstrap, [(topic, p) for p in range(partitions)],
                             {"client": client})
    try:
        ends = consumer.end_offsets([(topic, p) for p in range(partitions)])
        out: list[tuple] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, f"{client} did not reach {ends}"
            for batch in consumer.poll(timeout_ms=200, max_records=1000):
                out += [(batch.partition, o, k, v) for o, k, v in
                        zip(batch.offsets, batch.keys, batch.values, strict=True)]
        assert {tp: consumer.position(tp) for tp in ends} == ends
        return out
    finally:
        consumer.close()


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_transactions_commit_abort_and_read_committed(kafka_bootstrap, unique_topics, client):
    topic = unique_topics({"t": 2})["t"]
    producer = EventProducer(kafka_bootstrap, transactional_id=f"test.{topic}", client=client)
    try:
        producer.begin()
        for i in range(10):
            producer.send_raw(topic, b"c%d" % i, b"committed", partition=i % 2)
        producer.commit()
        producer.begin()
        for i in range(5):
            producer.send_raw(topic, b"a%d" % i, b"aborted", partition=i % 2)
        producer.flush()  # on the log, then aborted: read_committed readers skip them
        producer.send_raw(topic, b"a-queued", b"aborted", partition=0)  # maybe never sent
        producer.abort()  # what it discards is no delivery failure: the next commit succeeds
        producer.begin()
        for i in range(3):
            producer.send_raw(topic, b"o%d" % i, b"open", partition=i % 2)
        producer.flush()  # on the log but not committed: the last stable offset stays before it
        for reader in CLIENTS:  # each library's read_committed reader, whoever wrote
            seen = _records(kafka_bootstrap, topic, 2, reader)
            assert sorted(k for _, _, k, _ in seen) == sorted(b"c%d" % i for i in range(10)), reader
        producer.commit()
        for reader in CLIENTS:
            values = [v for _, _, _, v in _records(kafka_bootstrap, topic, 2, reader)]
            assert sorted(values) == sorted([b"committed"] * 10 + [b"open"] * 3), reader
    finally:
        producer.close()


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Producer abort_transaction failed during close")
@pytest.mark.parametrize("client", CLIENTS)
def test_a_successor_fences_its_predecessor(kafka_bootstrap, unique_topics, client):
    topic = unique_topics({"t": 1})["t"]
    tid = f"test.fence.{topic}"
    zombie = EventProducer(kafka_bootstrap, transactional_id=tid, client=client)
    zombie.begin()
    zombie.send_raw(topic, b"z", b"zombie")
    zombie.flush()
    successor = EventProducer(kafka_bootstrap, transactional_id=tid, client=client)
    try:
        with pytest.raises(Exception) as raised:  # each library has its own type
            zombie.commit()
        assert is_fenced(raised.value), raised.value
        assert not is_transient_kafka_error(raised.value), raised.value
        successor.begin()
        successor.send_raw(topic, b"s", b"successor")
        successor.commit()
        assert [v for *_, v in _records(kafka_bootstrap, topic, 1, client)] == [b"successor"]
    finally:
        successor.close()
        with contextlib.suppress(Exception):
            zombie.close(timeout_s=5)


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_writable_asks_the_brokers(kafka_bootstrap, unique_topics, client):
    topic = unique_topics({"t": 2})["t"]
    with EventProducer(kafka_bootstrap, client=client) as producer:
        producer.warm([topic])  # as serving does: kafka-python asks only about topics it knows
        assert producer.writable([topic], timeout_s=10) is None
        assert producer.writable([topic, "test.missing.y"], timeout_s=10) == (
            "topic 'test.missing.y' is not known to the brokers")


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_a_record_the_library_refuses_raises_a_kafka_error(kafka_bootstrap, unique_topics, client):
    topic = unique_topics({"t": 1})["t"]
    with EventProducer(kafka_bootstrap, client=client) as producer:
        with pytest.raises(kerr.KafkaError):  # what serving catches to answer 503
            producer.send_raw(topic, b"k", b"x" * (20 * 1024 * 1024))
        assert not is_transient_kafka_error(kerr.MessageSizeTooLargeError())


@pytest.mark.integration
def test_a_key_lands_on_the_same_partition_with_either_client(kafka_bootstrap, unique_topics):
    from kafka.partitioner.default import murmur2

    partitions = 5
    placed: dict[str, dict[bytes, int]] = {}
    for client in CLIENTS:
        topic = unique_topics({"t": partitions})["t"]
        with EventProducer(kafka_bootstrap, client=client) as producer:
            for i in range(200):
                producer.send_raw(topic, f"req-{i}".encode(), b"x")
        placed[client] = {k: p for p, _, k, _ in
                          _records(kafka_bootstrap, topic, partitions, "kafka-python")}
    java_rule = {f"req-{i}".encode(): (murmur2(f"req-{i}".encode()) & 0x7FFFFFFF) % partitions
                 for i in range(200)}
    assert placed["kafka-python"] == java_rule
    assert placed["confluent"] == java_rule
    assert len(set(java_rule.values())) == partitions  # the check can tell partitions apart


@pytest.mark.integration
@pytest.mark.parametrize("client", CLIENTS)
def test_a_seek_before_the_first_poll_is_where_reading_starts(
    kafka_bootstrap, unique_topics, client
):
    topic = unique_topics({"t": 2})["t"]
    with EventProducer(kafka_bootstrap, client=client) as producer:
        for i in range(20):
            producer.send_raw(topic, b"k", b"%d" % i, partition=i % 2)
    consumer = make_consumer(kafka_bootstrap, [(topic, 0), (topic, 1)], {"client": client})
    try:
        assert consumer.position((topic, 1)) == 0  # no record read yet: the beginning
        consumer.seek((topic, 0), 7)
        assert consumer.position((topic, 0)) == 7
        consumer.pause([(topic, 1)])
        got: list[int] = []
        deadline = time.monotonic() + 30
        while consumer.position((topic, 0)) < 10:
            assert time.monotonic() < deadline
            for batch in consumer.poll(timeout_ms=200, max_records=100):
                assert batch.partition == 0, "a paused partition yielded records"
                got += batch.offsets
        assert got == [7, 8, 9]
        assert consumer.position((topic, 1)) == 0
        assert consumer.beginning_offsets([(topic, 0)]) == {(topic, 0): 0}
    finally:
        consumer.close()


def test_records_are_cut_into_one_batch_per_partition_in_order() -> None:
    a, b = ("t", 0), ("u", 0)
    batches = by_partition([a, a, b, a, b], [1, 2, 7, 3, 8], [b"k1", b"k2", None, b"k3", None],
                           [b"1", b"2", b"7", b"3", b"8"], [10, 20, 70, 30, 80])
    assert [(x.topic, x.partition, x.offsets, x.keys, x.values, x.timestamps) for x in batches] == [
        ("t", 0, [1, 2, 3], [b"k1", b"k2", b"k3"], [b"1", b"2", b"3"], [10, 20, 30]),
        ("u", 0, [7, 8], [None, None], [b"7", b"8"], [70, 80]),
    ]
    assert by_partition([], [], [], [], []) == []
    assert len(batches[0].head(2)) == 2 and batches[0].head(2).offsets == [1, 2]


@pytest.mark.parametrize(("error", "expected", "transient"), [
    (confluent_kafka.KafkaError(E.NOT_LEADER_FOR_PARTITION), kerr.NotLeaderForPartitionError, True),
    (confluent_kafka.KafkaError(E._TIMED_OUT), kerr.KafkaTimeoutError, True),
    (confluent_kafka.KafkaError(E._ALL_BROKERS_DOWN), kerr.KafkaConnectionError, True),
    (confluent_kafka.KafkaError(E._WAIT_COORD), LibrdkafkaError, True),
    (confluent_kafka.KafkaError(E._FENCED, fatal=True), kerr.ProducerFencedError, False),
    (confluent_kafka.KafkaError(E.PRODUCER_FENCED), kerr.ProducerFencedError, False),
    (confluent_kafka.KafkaError(E._TIMED_OUT, fatal=True), LibrdkafkaError, False),
    (confluent_kafka.KafkaError(E._INVALID_ARG), LibrdkafkaError, False),
    (confluent_kafka.KafkaError(E.MSG_SIZE_TOO_LARGE), kerr.MessageSizeTooLargeError, False),
], ids=lambda x: getattr(x, "name", lambda: x)() if hasattr(x, "name") else str(x))
def test_confluent_errors_become_kafka_python_errors(error, expected, transient) -> None:
    import pickle

    translated = kafka_python_error(error)
    assert type(translated) is expected
    assert is_transient_kafka_error(translated) is transient
    # an actor's exception crosses to the driver pickled: the verdict must survive that
    again = pickle.loads(pickle.dumps(translated))
    assert type(again) is expected and is_transient_kafka_error(again) is transient
    assert error.name() in str(again)
