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

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import confluent_kafka
from kafka.errors import KafkaError as KafkaPythonError

from recsys.validation import message

CLIENTS = ("kafka-python", "confluent")
DEFAULT_CLIENT = "kafka-python"
# librdkafka's log lines (connection failures and the like) go to Python logging, not stderr
LIBRDKAFKA_LOG = logging.getLogger("recsys.kafka.librdkafka")

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
    """The client library the options select (``"client"`` key; :data:`DEFAULT_CLIENT` when
    absent)."""
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


def is_fenced(exc: BaseException) -> bool:
    """Whether ``exc`` (or its explicit cause) says a successor with the same transactional id
    took over: this producer's actor must be replaced, never retried."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ in _FENCED_NAMES:
            return True
        error = _confluent_error(current)
        if error is not None and error is not _UNKNOWN and error.code() in _confluent_fenced():
            return True
        current = current.__cause__
    return False


def _confluent_fenced() -> set[int]:
    names = ("_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "FENCED_INSTANCE_ID",
             "TRANSACTION_COORDINATOR_FENCED")
    return {getattr(confluent_kafka.KafkaError, n) for n in names
            if hasattr(confluent_kafka.KafkaError, n)}


class LibrdkafkaError(KafkaPythonError):
    """A librdkafka error with no kafka-python counterpart; ``retriable`` says whether a retry can
    cure it (``is_transient_kafka_error`` reads it)."""

    def __init__(self, text: str, retriable: bool = False, code: str = "") -> None:
        super().__init__(text, retriable, code)
        self.text, self.retriable, self.code = text, retriable, code

    def __str__(self) -> str:
        return f"{self.code}: {self.text}" if self.code else self.text


def kafka_python_error(error: Any) -> KafkaPythonError:
    """The kafka-python exception for a confluent ``KafkaError``: one vocabulary whichever
    library runs (serving catches ``kafka.errors.KafkaError``; a fenced producer raises
    ``ProducerFencedError``), and one that crosses process boundaries (Ray pickles an actor's
    exception with its cause; confluent's C exception types do not always survive that)."""
    import kafka.errors as kerr

    code, text = error.code(), f"{error.name()}: {error.str()}"
    if code in _confluent_fenced():
        return kerr.ProducerFencedError(text)
    if error.fatal() or error.txn_requires_abort():  # whatever its code: no retry cures it
        return LibrdkafkaError(text, False, error.name())
    if code > 0:  # a broker's error: the protocol's code, which kafka-python maps to its class
        cls = kerr.for_code(code)
        if cls is not kerr.UnknownError:
            return cls(text)
    K = confluent_kafka.KafkaError
    if code in (K._TIMED_OUT, K._MSG_TIMED_OUT, K._TIMED_OUT_QUEUE):
        return kerr.KafkaTimeoutError(text)
    if code in (K._TRANSPORT, K._ALL_BROKERS_DOWN, K._RESOLVE):
        return kerr.KafkaConnectionError(text)
    return LibrdkafkaError(text, _confluent_transient(error), error.name())


F = TypeVar("F", bound=Callable[..., Any])


def _kafka_python_errors(method: F) -> F:
    """Raise a confluent ``KafkaException`` from ``method`` as its kafka-python counterpart."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except confluent_kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not isinstance(error, confluent_kafka.KafkaError):
                raise LibrdkafkaError(str(exc)) from exc
            raise kafka_python_error(error) from exc

    return wrapper  # type: ignore[return-value]


# -- consumers ----------------------------------------------------------------------------------

TP = tuple[str, int]
# librdkafka's "no offset yet" (a partition's position before its first record is consumed)
_OFFSET_INVALID = confluent_kafka.OFFSET_INVALID


@dataclass(slots=True)
class PartitionRecords:
    """One partition's records from one poll, in offset order, as columns (bulk decoders take
    ``values`` whole)."""

    topic: str
    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]
    timestamps: list[int]

    def __len__(self) -> int:
        return len(self.offsets)

    def head(self, n: int) -> PartitionRecords:
        """The first ``n`` records."""
        return PartitionRecords(self.topic, self.partition, self.offsets[:n], self.keys[:n],
                                self.values[:n], self.timestamps[:n])


def by_partition(tps: list[TP], offsets: list[int], keys: list[bytes | None],
                 values: list[bytes | None], timestamps: list[int]) -> list[PartitionRecords]:
    """Cut record columns into one ``PartitionRecords`` per partition, keeping each partition's
    order; cheap when a partition's records come in long runs (as librdkafka delivers them)."""
    out: dict[TP, PartitionRecords] = {}
    start = 0
    for tp, run in itertools.groupby(tps):
        end = start + len(list(run))
        batch = out.get(tp)
        if batch is None:
            out[tp] = PartitionRecords(tp[0], tp[1], offsets[start:end], keys[start:end],
                                       values[start:end], timestamps[start:end])
        else:  # a partition's second run: its records follow the first run's
            batch.offsets += offsets[start:end]
            batch.keys += keys[start:end]
            batch.values += values[start:end]
            batch.timestamps += timestamps[start:end]
        start = end
    return list(out.values())


class ConsumerClient(Protocol):
    """What ``streaming.consumer.EventConsumer`` needs from a Kafka library: explicit assignment
    (made at construction), offsets the caller controls, columnar polls, pause/resume.

    ``end_offsets`` are what this consumer can reach: with read_committed the last stable offset
    (both libraries ask the broker with the consumer's isolation level), and ``position`` moves past
    commit markers and aborted records, so a reader at the end has ``position == end``.
    """

    library: str

    def seek(self, tp: TP, offset: int) -> None: ...
    def seek_to_beginning(self, tps: list[TP]) -> None: ...
    def seek_to_end(self, tps: list[TP]) -> None: ...
    def position(self, tp: TP) -> int: ...
    def end_offsets(self, tps: list[TP]) -> dict[TP, int]: ...
    def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]: ...
    def poll(self, timeout_ms: int, max_records: int) -> list[PartitionRecords]: ...
    def pause(self, tps: list[TP]) -> None: ...
    def resume(self, tps: list[TP]) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class FetchSettings:
    """How much a consumer asks the broker for per fetch (the same meaning for both libraries)."""

    max_partition_fetch_bytes: int = 8 * 1024 * 1024
    fetch_max_bytes: int = 64 * 1024 * 1024
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 500
    # verify each record batch's CRC32C (kafka-python's default; librdkafka's is off)
    check_crcs: bool = True


def make_consumer(
    bootstrap: str,
    partitions: list[TP],
    options: Mapping[str, object] | None = None,
    *,
    isolation_level: str = "read_committed",
    fetch: FetchSettings | None = None,
) -> ConsumerClient:
    """A consumer of the library ``options["client"]`` names, assigned ``partitions``; each starts
    at its beginning offset until sought (there is no consumer group and no committed offset)."""
    if isolation_level not in ("read_committed", "read_uncommitted"):
        raise ValueError(message("isolation_level", "read_committed or read_uncommitted",
                                 repr(isolation_level)))
    fetch = fetch or FetchSettings()
    if client_name(options) == "confluent":
        return ConfluentConsumer(bootstrap, partitions, options, isolation_level, fetch)
    return KafkaPythonConsumer(bootstrap, partitions, options, isolation_level, fetch)


class KafkaPythonConsumer:
    """kafka-python's ``KafkaConsumer`` (pure Python), assigned explicitly."""

    library = "kafka-python"

    def __init__(self, bootstrap: str, partitions: list[TP], options: Mapping[str, object] | None,
                 isolation_level: str, fetch: FetchSettings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._tp = TopicPartition
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level=isolation_level,
            max_partition_fetch_bytes=fetch.max_partition_fetch_bytes,
            fetch_max_bytes=fetch.fetch_max_bytes, fetch_min_bytes=fetch.fetch_min_bytes,
            fetch_max_wait_ms=fetch.fetch_max_wait_ms, check_crcs=fetch.check_crcs,
            **kafka_python_options(options),
        )
        self.consumer.assign([TopicPartition(t, p) for t, p in partitions])

    def _tps(self, tps: list[TP]) -> list[Any]:
        return [self._tp(t, p) for t, p in tps]

    def seek(self, tp: TP, offset: int) -> None:
        self.consumer.seek(self._tp(*tp), offset)

    def seek_to_beginning(self, tps: list[TP]) -> None:
        self.consumer.seek_to_beginning(*self._tps(tps))

    def seek_to_end(self, tps: list[TP]) -> None:
        self.consumer.seek_to_end(*self._tps(tps))

    def position(self, tp: TP) -> int:
        return int(self.consumer.position(self._tp(*tp)))

    def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        ends = self.consumer.end_offsets(self._tps(tps))
        return {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}

    def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]:
        starts = self.consumer.beginning_offsets(self._tps(tps))
        return {(tp.topic, tp.partition): int(o) for tp, o in starts.items()}

    def poll(self, timeout_ms: int, max_records: int) -> list[PartitionRecords]:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [
            PartitionRecords(tp.topic, tp.partition, [r.offset for r in records],
                             [r.key for r in records], [r.value for r in records],
                             [r.timestamp for r in records])
            for tp, records in batches.items() if records
        ]

    def pause(self, tps: list[TP]) -> None:
        self.consumer.pause(*self._tps(tps))

    def resume(self, tps: list[TP]) -> None:
        self.consumer.resume(*self._tps(tps))

    def close(self) -> None:
        self.consumer.close()


class ConfluentConsumer:
    """confluent-kafka's ``Consumer`` (librdkafka), assigned explicitly.

    librdkafka reports no position for a partition before its first record after an assignment
    or a seek (OFFSET_INVALID, set by the seek itself, never a stale one); this class then answers
    with the offset it was sought to, or the partition's beginning offset, as kafka-python does.
    Once set, librdkafka's position also moves past transaction markers and aborted records.
    A seek on a partition whose fetcher has not started yet is refused by librdkafka ("Erroneous
    state"); it is then made by re-assigning that partition at the offset.
    """

    library = "confluent"

    def __init__(self, bootstrap: str, partitions: list[TP], options: Mapping[str, object] | None,
                 isolation_level: str, fetch: FetchSettings, timeout_s: float = 10.0) -> None:
        config = {
            "bootstrap.servers": bootstrap,
            # required by the library although nothing joins a group or commits offsets
            "group.id": "recsys-explicit-assignment",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation_level,
            "enable.partition.eof": False,
            "max.partition.fetch.bytes": fetch.max_partition_fetch_bytes,
            "fetch.max.bytes": fetch.fetch_max_bytes,
            "receive.message.max.bytes": fetch.fetch_max_bytes + 1024 * 1024,
            "fetch.min.bytes": fetch.fetch_min_bytes,
            "fetch.wait.max.ms": fetch.fetch_max_wait_ms,
            "check.crcs": fetch.check_crcs,
            **confluent_config(options),
        }
        self.consumer = confluent_kafka.Consumer(config, logger=LIBRDKAFKA_LOG)
        self.timeout_s = timeout_s  # for one offsets query over all the partitions asked
        self._sought: dict[TP, int] = {}  # where a partition was sought to, until it yields
        self._paused: set[TP] = set()
        self.consumer.assign([confluent_kafka.TopicPartition(t, p, confluent_kafka.OFFSET_BEGINNING)
                              for t, p in partitions])

    @_kafka_python_errors
    def seek(self, tp: TP, offset: int) -> None:
        target = confluent_kafka.TopicPartition(tp[0], tp[1], offset)
        try:
            self.consumer.seek(target)
        except confluent_kafka.KafkaException as exc:
            if exc.args[0].code() != confluent_kafka.KafkaError._STATE:
                raise
            self.consumer.incremental_unassign([confluent_kafka.TopicPartition(*tp)])
            self.consumer.incremental_assign([target])
            if tp in self._paused:
                self.consumer.pause([confluent_kafka.TopicPartition(*tp)])
        self._sought[tp] = offset

    @_kafka_python_errors
    def seek_to_beginning(self, tps: list[TP]) -> None:
        for tp, offset in self.beginning_offsets(tps).items():
            self.seek(tp, offset)

    @_kafka_python_errors
    def seek_to_end(self, tps: list[TP]) -> None:
        for tp, offset in self.end_offsets(tps).items():
            self.seek(tp, offset)

    @_kafka_python_errors
    def position(self, tp: TP) -> int:
        (reported,) = self.consumer.position([confluent_kafka.TopicPartition(*tp)])
        if reported.offset >= 0:
            return int(reported.offset)
        if tp not in self._sought:  # never read nor sought: where the fetcher starts (asked once)
            self._sought[tp] = self.beginning_offsets([tp])[tp]
        return self._sought[tp]

    def _watermarks(self, tps: list[TP]) -> dict[TP, tuple[int, int]]:
        """(low, high) of each partition, all within ``timeout_s``; with
        isolation.level=read_committed librdkafka's high is the last stable offset."""
        deadline = time.monotonic() + self.timeout_s
        out = {}
        for tp in tps:
            while True:  # kafka-python retries a stale leader within its timeout; so does this
                try:
                    low, high = self.consumer.get_watermark_offsets(
                        confluent_kafka.TopicPartition(*tp), cached=False,
                        timeout=max(0.1, deadline - time.monotonic()))
                    break
                except confluent_kafka.KafkaException as exc:
                    error = exc.args[0]
                    if (time.monotonic() >= deadline or error.fatal()
                            or not _confluent_transient(error)):
                        raise
                    time.sleep(0.1)
            out[tp] = (int(low), int(high))
        return out

    @_kafka_python_errors
    def end_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: high for tp, (_, high) in self._watermarks(tps).items()}

    @_kafka_python_errors
    def beginning_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return {tp: low for tp, (low, _) in self._watermarks(tps).items()}

    @_kafka_python_errors
    def poll(self, timeout_ms: int, max_records: int) -> list[PartitionRecords]:
        messages = self.consumer.consume(num_messages=max_records, timeout=timeout_ms / 1000)
        if not messages:
            return []
        if any(m.error() is not None for m in messages):
            messages = self._without_errors(messages)
        # Columns in C-level comprehensions, then cut into runs of one partition (librdkafka
        # hands over each fetched batch whole, so runs are long): a per-record Python loop cost
        # as much as librdkafka's own work.
        batches = by_partition([(m.topic(), m.partition()) for m in messages],
                               [m.offset() for m in messages], [m.key() for m in messages],
                               [m.value() for m in messages],
                               [m.timestamp()[1] for m in messages])
        for batch in batches:
            self._sought.pop((batch.topic, batch.partition), None)
        return batches

    @staticmethod
    def _without_errors(messages: list[Any]) -> list[Any]:
        """The records among ``messages``; raises on an error a retry cannot cure (librdkafka
        retries transport errors itself, so those are skipped)."""
        for msg in messages:
            error = msg.error()
            if error is not None and (error.fatal() or not _confluent_transient(error)):
                raise confluent_kafka.KafkaException(error)
        return [m for m in messages if m.error() is None]

    @_kafka_python_errors
    def pause(self, tps: list[TP]) -> None:
        self._paused.update(tps)
        self.consumer.pause([confluent_kafka.TopicPartition(t, p) for t, p in tps])

    @_kafka_python_errors
    def resume(self, tps: list[TP]) -> None:
        self._paused.difference_update(tps)
        self.consumer.resume([confluent_kafka.TopicPartition(t, p) for t, p in tps])

    @_kafka_python_errors
    def close(self) -> None:
        self.consumer.close()


# -- producers ----------------------------------------------------------------------------------

class ProducerClient(Protocol):
    """What ``recsys.producer.EventProducer`` needs from a Kafka library: idempotent keyed sends
    placed by murmur2 (as the Java client and kafka-python place them), delivery callbacks,
    a flush that raises on a timeout, and transactions."""

    library: str
    raw: Any

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None) -> None: ...
    def flush(self, timeout_s: float | None) -> None: ...
    def serve_deliveries(self) -> None: ...
    def partitions_for(self, topic: str) -> set[int]: ...
    def writable(self, topics: list[str], timeout_s: float) -> str | None: ...
    def init_transactions(self) -> None: ...
    def begin_transaction(self) -> None: ...
    def commit_transaction(self) -> None: ...
    def abort_transaction(self) -> None: ...
    def close(self, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class ProducerSettings:
    """How a producer batches and waits (the same meaning for both libraries)."""

    compression: str = "lz4"
    linger_ms: int = 5
    batch_size: int = 256 * 1024
    delivery_timeout_ms: int = 120_000
    max_block_ms: int = 60_000  # how long a send waits for room in a full buffer
    transaction_timeout_ms: int = 600_000


def make_producer(
    bootstrap: str,
    options: Mapping[str, object] | None = None,
    *,
    settings: ProducerSettings | None = None,
    transactional_id: str | None = None,
    on_ack: Callable[[], None] = lambda: None,
    on_error: Callable[[BaseException], None] = lambda exc: None,
) -> ProducerClient:
    """An idempotent producer of the library ``options["client"]`` names (transactional when
    ``transactional_id`` is given; call ``init_transactions`` before the first transaction).
    ``on_ack`` / ``on_error`` are called once per record when it is acknowledged / fails."""
    settings = settings or ProducerSettings()
    cls = ConfluentProducer if client_name(options) == "confluent" else KafkaPythonProducer
    return cls(bootstrap, options, settings, transactional_id, on_ack, on_error)


# What idempotence stands on (kafka-python 3.x, KIP-679): the broker assigns the producer an id and
# epoch and de-duplicates retried batches by per-partition sequence numbers, which needs acks from
# every in-sync replica, retries, and at most 5 requests in flight per connection (beyond 5 the
# broker cannot keep the order of retried batches). With enable_idempotence=True stated explicitly,
# kafka-python raises on a conflicting setting instead of silently falling back to at-least-once;
# librdkafka's enable.idempotence implies the same settings and refuses conflicting ones.
IDEMPOTENT_SETTINGS: dict[str, object] = {
    "enable_idempotence": True,
    "acks": "all",
    "retries": float("inf"),  # bounded in time by delivery_timeout_ms, not by a count
    "max_in_flight_requests_per_connection": 5,
}


class KafkaPythonProducer:
    """kafka-python's ``KafkaProducer``, idempotent (``IDEMPOTENT_SETTINGS``)."""

    library = "kafka-python"

    def __init__(self, bootstrap: str, options: Mapping[str, object] | None,
                 settings: ProducerSettings, transactional_id: str | None,
                 on_ack: Callable[[], None], on_error: Callable[[BaseException], None]) -> None:
        from kafka import KafkaProducer

        self._on_ack = lambda _metadata: on_ack()
        self._on_error = on_error

        self.raw = KafkaProducer(
            bootstrap_servers=bootstrap,
            compression_type=None if settings.compression == "none" else settings.compression,
            linger_ms=settings.linger_ms, batch_size=settings.batch_size,
            delivery_timeout_ms=settings.delivery_timeout_ms, max_block_ms=settings.max_block_ms,
            **IDEMPOTENT_SETTINGS,
            **({} if transactional_id is None else {
                "transactional_id": transactional_id,
                "transaction_timeout_ms": settings.transaction_timeout_ms}),
            **kafka_python_options(options),
        )

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None) -> None:
        future = self.raw.send(topic, key=key, value=value, partition=partition)
        future.add_callback(self._on_ack)
        future.add_errback(self._on_error)

    def flush(self, timeout_s: float | None) -> None:
        self.raw.flush(timeout=timeout_s)

    def serve_deliveries(self) -> None:
        """Nothing to do: kafka-python's sender thread runs the delivery callbacks."""

    def partitions_for(self, topic: str) -> set[int]:
        return set(self.raw.partitions_for(topic) or ())

    def writable(self, topics: list[str], timeout_s: float) -> str | None:
        """None when the brokers answer a fresh metadata request over this producer's own
        connections within ``timeout_s`` with a leader for every partition of ``topics``; else
        why not. (``partitions_for`` answers from a cache, so this takes the steps it takes on a
        cache miss: ``_metadata.request_update``, wake the sender.)"""
        answered = threading.Event()
        future = self.raw._metadata.request_update()
        future.add_both(lambda *_: answered.set())
        self.raw._sender.wakeup()
        if not answered.wait(timeout_s):
            return f"the brokers did not answer a metadata request within {timeout_s:g} s"
        if future.failed():
            error = future.exception
            return f"the metadata request failed: {type(error).__name__}: {error}"
        cluster = self.raw._metadata
        for topic in topics:
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                return f"topic {topic!r} is not known to the brokers"
            leaderless = sorted(partitions - (cluster.available_partitions_for_topic(topic)
                                              or set()))
            if leaderless:
                return f"topic {topic!r} has partitions without a leader: {leaderless}"
        return None

    def init_transactions(self) -> None:
        self.raw.init_transactions()

    def begin_transaction(self) -> None:
        self.raw.begin_transaction()

    def commit_transaction(self) -> None:
        self.raw.commit_transaction()

    def abort_transaction(self) -> None:
        self.raw.abort_transaction()

    def close(self, timeout_s: float) -> None:
        self.raw.close(timeout=timeout_s)


class ConfluentProducer:
    """confluent-kafka's ``Producer`` (librdkafka), idempotent, keys placed by murmur2.

    Delivery callbacks run inside ``poll``/``flush``; every send serves them (``poll(0)``), so the
    acknowledged and failed counts stay current. A send into a full local queue waits up to
    ``max_block_ms`` for room, then raises ``kafka.errors.KafkaTimeoutError`` as kafka-python
    does.
    """

    library = "confluent"

    def __init__(self, bootstrap: str, options: Mapping[str, object] | None,
                 settings: ProducerSettings, transactional_id: str | None,
                 on_ack: Callable[[], None], on_error: Callable[[BaseException], None],
                 timeout_s: float = 60.0) -> None:

        def delivered(error: Any, _message: Any) -> None:
            if error is None:
                on_ack()
            else:
                on_error(kafka_python_error(error))

        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "compression.type": settings.compression,
            "linger.ms": settings.linger_ms,
            "batch.size": settings.batch_size,
            "delivery.timeout.ms": settings.delivery_timeout_ms,
            # the Java client's and kafka-python's placement of keyed records (librdkafka's
            # default, consistent_random, is CRC32 and would split a request id across clients)
            "partitioner": "murmur2_random",
            "on_delivery": delivered,
            **confluent_config(options),
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
            config["transaction.timeout.ms"] = settings.transaction_timeout_ms
        self.raw = confluent_kafka.Producer(config, logger=LIBRDKAFKA_LOG)
        self.max_block_s = settings.max_block_ms / 1000
        self.timeout_s = timeout_s

    @_kafka_python_errors
    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value}
        if partition is not None:
            kwargs["partition"] = partition
        try:
            self.raw.produce(topic, **kwargs)
        except BufferError:
            self._wait_for_room(topic, kwargs)
        except confluent_kafka.KafkaException as exc:  # refused at once (e.g. too large)
            error = exc.args[0]
            raise (kafka_python_error(error) if error.code() > 0 else KafkaPythonError(
                f"the record was refused: {error.str()}")) from exc
        self.raw.poll(0)

    def _wait_for_room(self, topic: str, kwargs: dict[str, Any]) -> None:
        from kafka.errors import KafkaTimeoutError

        deadline = time.monotonic() + self.max_block_s
        while True:
            self.raw.poll(0.05)
            try:
                self.raw.produce(topic, **kwargs)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise KafkaTimeoutError(
                        f"the producer's queue stayed full for {self.max_block_s:g} s "
                        "(max_block_ms): Kafka is unreachable or slower than the sends"
                    ) from None

    def serve_deliveries(self) -> None:
        """Run the delivery callbacks of records acknowledged since the last send, so the
        acknowledged and failed counts are current when nothing is being sent (librdkafka runs
        them only inside ``poll``/``flush``)."""
        self.raw.poll(0)

    @_kafka_python_errors
    def flush(self, timeout_s: float | None) -> None:
        from kafka.errors import KafkaTimeoutError

        left = self.raw.flush(-1 if timeout_s is None else timeout_s)
        if left:
            raise KafkaTimeoutError(f"{left} records were not acknowledged within {timeout_s} s")

    @_kafka_python_errors
    def partitions_for(self, topic: str) -> set[int]:
        metadata = self.raw.list_topics(topic, timeout=self.max_block_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return set()
        return set(found.partitions)

    def writable(self, topics: list[str], timeout_s: float) -> str | None:
        """None when the brokers answer a metadata request within ``timeout_s`` with a leader
        for every partition of ``topics``; else why not."""
        try:
            metadata = self.raw.list_topics(timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            return f"the metadata request failed: {exc.args[0] if exc.args else exc}"
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                return f"topic {topic!r} is not known to the brokers"
            leaderless = sorted(p for p, meta in found.partitions.items()
                                if meta.leader < 0 or meta.error is not None)
            if leaderless:
                return f"topic {topic!r} has partitions without a leader: {leaderless}"
        return None

    @_kafka_python_errors
    def init_transactions(self) -> None:
        self.raw.init_transactions(self.timeout_s)

    @_kafka_python_errors
    def begin_transaction(self) -> None:
        self.raw.begin_transaction()

    @_kafka_python_errors
    def commit_transaction(self) -> None:
        self.raw.commit_transaction(self.timeout_s)

    @_kafka_python_errors
    def abort_transaction(self) -> None:
        self.raw.abort_transaction(self.timeout_s)
        self.raw.poll(0)  # serve the purged records' delivery reports now, inside the abort

    @_kafka_python_errors
    def close(self, timeout_s: float) -> None:
        raw = self.raw
        try:
            self.flush(timeout_s)
        finally:
            self.raw = _Closed()
            if len(raw):  # undelivered after the timeout: drop them (each counts as failed)
                raw.purge()
                raw.poll(0)
            raw.close()


class _Closed:
    """Stands in for a closed librdkafka producer: any use says so."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"{name}: the producer is closed")
