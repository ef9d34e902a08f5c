"""The fault-injection harness: seeded traffic produced at a pace while faults are injected at
seeded random wall-clock moments, the undisturbed reference, and the three end checks.

A check's pipeline runs on its own restartable broker (``RestartableBroker``, which the tests may
kill) and the session's Ray. The test only produces traffic, injects faults and waits: nothing
outside the pipeline restarts an actor or retries a call. At the end it must hold that

1. the shards' statistics equal the undisturbed run's (``assert_statistics_equal``, 1e-9
   relative),
2. every Kafka record of impressions, feedback and rewards landed in the lake exactly once
   (``assert_lake_exactly_once``: each (topic, partition, offset) once, with all its rows), and
3. ``recsys.rewards`` read ``read_committed`` holds each (request_id, item_id) once, the same set
   as the undisturbed run (``assert_rewards_exactly_once``).

The traffic is ``tests.streaming.event_log.generate_log`` (messy: duplicates, late, unmapped,
not-in-slate and orphan events), cut into parts by arrival time, so the concatenated parts are
exactly the log's per-(stream, partition) sequences, which is all the join's result depends on
(README, "Determinism"): the undisturbed reference equals ``truth_stats`` of the log, wherever
batches were cut and whenever the parts arrived.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import random
import signal
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from recsys.bandits import merge_parts
from recsys.config import StreamSettings
from recsys.events import Reward, decode
from recsys.lake import scan_lake
from recsys.producer import IDEMPOTENT_SETTINGS
from streaming.broker import EmbeddedKafka
from streaming.pipeline import StreamPipeline, Topics
from streaming.topics import ensure_topics
from tests.streaming.event_log import (
    LATENESS,
    WINDOW,
    Log,
    dense_contexts,
    generate_log,
    truth_stats,
)

PARTITIONS = 2
N_ITEMS, DIM, SLATE = 50, 3, 4
SEED = 1818
N_REQUESTS = 3000
N_PARTS = 12

SETTINGS = StreamSettings(
    learners=2, shards=2, joiners=1, batch_size=500, window_ms=WINDOW,
    allowed_lateness_ms=LATENESS, reward_mapping="add_to_cart=0.5,click=1,purchase=1,skip=0",
    n_items=N_ITEMS, dim=DIM, checkpoint_interval_s=1.0, checkpoints_keep=3,
    # Small deadlines, so a frozen actor or a stuck reader is found within a check's minute.
    actor_call_timeout_s=5.0, stuck_reader_s=5.0, kafka_outage_budget_s=180.0,
    recovery_backoff_s=0.2, recovery_backoff_max_s=2.0,
)
"""Two learners and two shards (a kill leaves healthy peers to roll back), one joiner and one lake
writer (learners, joiners and lake writers take half a CPU each: with the session Ray's 2 CPUs a
second joiner and lake writer could not be scheduled), checkpoints every second."""

_STREAM_KEYS = ("learners", "shards", "joiners", "batch_size", "window_ms", "allowed_lateness_ms",
                "reward_mapping", "n_items", "dim", "checkpoint_interval_s",
                "actor_call_timeout_s", "stuck_reader_s", "kafka_outage_budget_s",
                "recovery_backoff_s", "recovery_backoff_max_s")
SETTINGS_TOML = "[stream]\n" + "".join(
    f"{key} = {json.dumps(getattr(SETTINGS, key))}\n" for key in _STREAM_KEYS)
"""The same settings for ``recsys stream`` (a config file)."""


def template() -> Any:
    """The empty statistics ``recsys stream`` builds from ``SETTINGS`` (one template for all)."""
    from recsys.bandits import stats_for_stream

    return stats_for_stream(SETTINGS)


# ---------------------------------------------------------------------------- traffic


def traffic_log() -> Log:
    return generate_log(SEED, n_requests=N_REQUESTS, partitions=PARTITIONS, slate_size=SLATE,
                        n_items=N_ITEMS, messy=True)


def cut(log: Log, parts: int) -> list[Log]:
    """``log`` in ``parts`` by arrival time: each part's per-(stream, partition) sequences follow
    the previous part's, so producing the parts in turn produces exactly ``log``."""
    keys = sorted(k for streams in (log.impressions, log.feedback)
                  for keyed in streams.values() for k, _ in keyed)
    bounds = [keys[len(keys) * i // parts] for i in range(1, parts)] + [float("inf")]
    out = []
    low = float("-inf")
    for high in bounds:
        part = Log({p: [] for p in log.impressions}, {p: [] for p in log.feedback})
        for source, target in ((log.impressions, part.impressions),
                               (log.feedback, part.feedback)):
            for p, keyed in source.items():
                target[p] = [(k, e) for k, e in keyed if low <= k < high]
        out.append(part)
        low = high
    return out


def fresh_topics(bootstrap: str) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"f.imps.{suffix}", f"f.fbs.{suffix}", f"f.rewards.{suffix}",
                    f"f.dead.{suffix}")
    ensure_topics(bootstrap, {topics.impressions: PARTITIONS, topics.feedback: PARTITIONS,
                              topics.rewards: PARTITIONS, topics.dead_letter: 1})
    return topics


def _traffic_producer(bootstrap: str) -> KafkaProducer:
    """Idempotent, and patient enough to ride out the checks' broker outages in order."""
    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, delivery_timeout_ms=300_000,
                         request_timeout_ms=10_000, max_block_ms=300_000, **IDEMPOTENT_SETTINGS)


def _send(producer: KafkaProducer, part: Log, topics: Topics) -> None:
    for topic, streams in ((topics.impressions, part.impressions),
                           (topics.feedback, part.feedback)):
        for p, keyed in streams.items():
            for _, event in keyed:
                producer.send(topic, key=event.key, value=msgspec.msgpack.encode(event),
                              partition=p)


def produce_all(bootstrap: str, log: Log, topics: Topics) -> None:
    producer = _traffic_producer(bootstrap)
    try:
        _send(producer, log, topics)
        producer.flush()
    finally:
        producer.close()


class PacedTraffic:
    """Produces ``parts`` one every ``interval_s`` from a thread (with one idempotent producer,
    so retries through a broker outage neither duplicate nor reorder); ``done`` once all are
    acknowledged, ``error`` if producing failed."""

    def __init__(self, bootstrap: str, topics: Topics, parts: list[Log],
                 interval_s: float) -> None:
        self.bootstrap, self.topics, self.parts = bootstrap, topics, parts
        self.interval_s = interval_s
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="paced-traffic", daemon=True)

    def start(self) -> PacedTraffic:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            producer = _traffic_producer(self.bootstrap)
            try:
                for i, part in enumerate(self.parts):
                    wait = self.started_at + i * self.interval_s - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    _send(producer, part, self.topics)
                producer.flush(timeout=300)
            finally:
                producer.close(timeout=10)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the traffic could not be produced: {self.error!r}")


# ---------------------------------------------------------------------------- the broker


class RestartableBroker:
    """An embedded broker on a data directory of its own that the checks may kill and restart.

    Every start runs on one long-lived owner thread: the JVM is started with PR_SET_PDEATHSIG,
    which kills it when the *thread* that started it ends, so a restart from a short-lived
    fault thread would die with that thread.
    """

    def __init__(self, data_dir: Path) -> None:
        self.kafka = EmbeddedKafka(data_dir=data_dir, startup_timeout_s=120)
        self._calls: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = (
            queue.Queue())
        self._owner = threading.Thread(target=self._serve, name="broker-owner", daemon=True)
        self._owner.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, reply = call
            try:
                reply.put((True, fn()))
            except BaseException as exc:
                reply.put((False, exc))

    def _on_owner(self, fn: Callable[[], Any]) -> Any:
        reply: queue.Queue[Any] = queue.Queue()
        self._calls.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    def start(self) -> None:
        self._on_owner(self.kafka.start)

    def kill(self) -> None:
        self.kafka.kill()

    def ensure_running(self) -> None:
        if not self.kafka.is_running():
            self.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._on_owner(self.kafka.stop)
        self._calls.put(None)
        self._owner.join(timeout=30)


# ---------------------------------------------------------------------------- observing


@dataclass
class HookLog:
    """Every ``PipelineEvent`` the pipeline's hooks deliver (kind, seconds since ``t0``,
    detail), for assertions and for the findings when a check fails."""

    t0: float = field(default_factory=time.monotonic)
    events: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    callbacks: list[Callable[[Any], None]] = field(default_factory=list)

    def __call__(self, event: Any) -> None:
        self.events.append((event.kind, event.at_s - self.t0, dict(event.detail)))
        for callback in list(self.callbacks):
            callback(event)

    def kinds(self) -> Counter[str]:
        return Counter(kind for kind, _, _ in self.events)

    def describe(self, t0: float | None = None) -> str:
        """The events, timed from ``t0`` (monotonic; default: this log's creation)."""
        shift = 0.0 if t0 is None else t0 - self.t0
        return "\n".join(f"  {at - shift:8.2f}s {kind} {detail}"
                         for kind, at, detail in self.events)


def subscribe(pipeline: StreamPipeline, log: HookLog) -> Callable[[], None]:
    """Subscribe ``log`` to the pipeline's hooks (a no-op before the supervisor has them)."""
    hooks = getattr(pipeline, "hooks", None)
    if hooks is None:
        return lambda: None
    return hooks.subscribe(log)


def moments(seed: int, n: int, low_s: float, high_s: float) -> list[float]:
    """``n`` seeded random wall-clock moments (seconds after a start) in [low_s, high_s],
    sorted."""
    rng = random.Random(seed)
    return sorted(rng.uniform(low_s, high_s) for _ in range(n))


class Faults:
    """Runs fault actions on a thread at wall-clock moments after ``start``; records what it
    did (and any error) so a failing check can say which fault came when."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.done: list[tuple[float, float, str]] = []  # (started, finished, what)
        self.errors: list[str] = []
        self._plan: list[tuple[float, str, Callable[[], None]]] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def at(self, moment_s: float, what: str, action: Callable[[], None]) -> Faults:
        self._plan.append((moment_s, what, action))
        return self

    def later(self, delay_s: float, what: str, action: Callable[[], None]) -> None:
        """Run ``action`` ``delay_s`` from now, on a thread of its own (from a hook callback)."""
        thread = threading.Thread(target=self._run, args=([(0.0, what, action)],
                                                          time.monotonic() + delay_s),
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def start(self, t0: float | None = None) -> Faults:
        self.t0 = time.monotonic() if t0 is None else t0
        plan = sorted(self._plan, key=lambda x: x[0])
        thread = threading.Thread(target=self._run, args=(plan, self.t0), daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def _run(self, plan: list[tuple[float, str, Callable[[], None]]], t0: float) -> None:
        for moment, what, action in plan:
            wait = t0 + moment - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            began = time.monotonic() - self.t0
            try:
                action()
                self.done.append((began, time.monotonic() - self.t0, what))
            except BaseException:
                self.errors.append(f"{what}: {traceback.format_exc()}")

    def finished(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def join(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self.join(30.0)

    def describe(self) -> str:
        return "\n".join(f"  {began:8.2f}s-{ended:.2f}s {what}" for began, ended, what in self.done)


def actor_pid(actor: Any) -> int:
    """The OS process id of a Ray actor."""
    import ray

    return int(ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


def sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- running


def make_pipeline(bootstrap: str, topics: Topics, root: Path,
                  settings: StreamSettings = SETTINGS) -> StreamPipeline:
    return StreamPipeline(bootstrap, settings, template(), str(root / "checkpoints"),
                          lake_uri=str(root / "lake"), topics=topics)


def drive(pipeline: StreamPipeline, traffic: PacedTraffic, faults: Faults,
          timeout_s: float = 240.0) -> None:
    """Step the pipeline (its own ``run_for``) until the traffic is produced and every fault
    injected, then ``run_to_end``. The only thing this does to the pipeline is run it."""
    deadline = time.monotonic() + timeout_s
    while not (traffic.done.is_set() and faults.finished()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the traffic or the faults did not finish in {timeout_s:.0f}s")
        pipeline.run_for(0.5)
    traffic.check()
    pipeline.run_to_end(timeout_s=max(60.0, deadline - time.monotonic()))


@dataclass
class EndState:
    """What the end checks compare: statistics, the rewards' keys, the lake's offsets."""

    stats: Any
    rewards: Counter[tuple[str, int]]
    lake: dict[str, Counter[tuple[int, int]]]


# ---------------------------------------------------------------------------- end checks


def assert_statistics_equal(actual: Any, expected: Any, what: str = "statistics") -> None:
    if not actual.allclose(expected, rtol=1e-9, atol=1e-12):
        worst: dict[str, float] | str = {}
        try:
            for name, value in expected._sums().items():
                other = actual._sums()[name]
                worst[name] = float(np.max(np.abs(np.asarray(other) - np.asarray(value))))
        except Exception as exc:
            worst = f"(not comparable sum by sum: {exc})"
        raise AssertionError(f"the {what} differ from the undisturbed run's; largest absolute "
                             f"difference per sum: {worst}")


def read_committed(bootstrap: str, topic: str, timeout_s: float = 60.0
                   ) -> list[tuple[int, int, bytes]]:
    """Every committed record of ``topic`` as (partition, offset, value), read like a downstream
    consumer (kcat, another team) would: ``isolation_level="read_committed"``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                             enable_auto_commit=False, max_poll_records=10_000)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout_s:.0f}s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                out += [(tp.partition, r.offset, r.value) for r in records]
        return out
    finally:
        consumer.close()


def rewards_in_kafka(bootstrap: str, topic: str) -> tuple[Counter[tuple[str, int]],
                                                           set[tuple[int, int]]]:
    """The (request_id, item_id) keys of the committed rewards, counted, and their offsets."""
    keys: Counter[tuple[str, int]] = Counter()
    offsets = set()
    for partition, offset, value in read_committed(bootstrap, topic):
        reward = decode(value)
        assert isinstance(reward, Reward), f"{topic}[{partition}]@{offset} is not a Reward"
        keys[(reward.request_id, reward.item_id)] += 1
        offsets.add((partition, offset))
    return keys, offsets


def assert_rewards_exactly_once(keys: Counter[tuple[str, int]],
                                expected: Counter[tuple[str, int]]) -> None:
    twice = {k: n for k, n in keys.items() if n > 1}
    assert not twice, (f"{len(twice)} (request_id, item_id) appear more than once in the "
                       f"read_committed rewards ({sum(keys.values())} records for {len(keys)} "
                       f"keys), e.g. {list(twice.items())[:3]}")
    missing, extra = set(expected) - set(keys), set(keys) - set(expected)
    assert not missing and not extra, (
        f"the committed rewards differ from the undisturbed run's: {len(missing)} missing "
        f"(e.g. {sorted(missing)[:3]}), {len(extra)} extra (e.g. {sorted(extra)[:3]})")


def lake_offsets(root: Path) -> dict[str, Counter[tuple[int, int]]]:
    """Rows per (kafka_partition, kafka_offset) of each lake table, without de-duplication."""
    out = {}
    for table in ("impressions", "feedback", "rewards"):
        frame = scan_lake(root, table, deduplicate=False).select(
            "kafka_partition", "kafka_offset").collect()
        out[table] = Counter(zip(frame["kafka_partition"].to_list(),
                                 frame["kafka_offset"].to_list(), strict=True))
    return out


def input_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: int(o) for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def assert_lake_exactly_once(lake: Mapping[str, Counter[tuple[int, int]]], bootstrap: str,
                             topics: Topics, reward_offsets: set[tuple[int, int]]) -> None:
    """Each Kafka record of the inputs (every offset: they are produced without transactions)
    and each committed reward is in the lake once: an impression as its ``SLATE`` rows, any
    other record as one row; and nothing else is."""
    for table, topic, rows in (("impressions", topics.impressions, SLATE),
                               ("feedback", topics.feedback, 1)):
        ends = input_offsets(bootstrap, topic)
        expected = {(p, o) for p, end in ends.items() for o in range(end)}
        held = lake[table]
        wrong = {k: n for k, n in held.items() if n != rows}
        assert not wrong, (f"lake table {table}: records with other than {rows} row(s) (written "
                           f"twice, or cut): {len(wrong)}, e.g. {list(wrong.items())[:3]}")
        assert set(held) == expected, (
            f"lake table {table}: {len(expected - set(held))} records of {topic} missing "
            f"(e.g. {sorted(expected - set(held))[:3]}), {len(set(held) - expected)} not in it")
    held = lake["rewards"]
    wrong = {k: n for k, n in held.items() if n != 1}
    assert not wrong, f"lake table rewards: offsets written twice: {list(wrong.items())[:3]}"
    extra = set(held) - reward_offsets
    assert not extra, (f"lake table rewards: {len(extra)} rows of records that are not committed "
                       f"rewards (aborted or never written), e.g. {sorted(extra)[:3]}")
    missing = reward_offsets - set(held)
    assert not missing, (
        f"lake table rewards: {len(missing)} of {len(reward_offsets)} committed rewards missing "
        f"(e.g. {sorted(missing)[:3]}); see /tmp/h18/FAULTS_findings.md F1 if they are the last "
        "cut's")


@dataclass
class Reference:
    """The undisturbed run on the same traffic: what every check must end with."""

    stats: Any
    rewards: Counter[tuple[str, int]]
    seconds: float


def end_checks(pipeline: StreamPipeline, reference: Reference, bootstrap: str, topics: Topics,
               lake_root: Path, *, context: str = "") -> None:
    """The three end checks; ``context`` (faults and hook events) goes into any failure."""
    try:
        assert_statistics_equal(pipeline.statistics(), reference.stats)
        check_outputs(reference, bootstrap, topics, lake_root)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{context}") from None


def check_outputs(reference: Reference, bootstrap: str, topics: Topics, lake_root: Path) -> None:
    keys, offsets = rewards_in_kafka(bootstrap, topics.rewards)
    assert_rewards_exactly_once(keys, reference.rewards)
    assert_lake_exactly_once(lake_offsets(lake_root), bootstrap, topics, offsets)


def checkpoint_statistics(checkpoint_uri: str) -> Any:
    """The statistics of the newest checkpoint in ``checkpoint_uri``, merged."""
    from recsys.checkpoint import CheckpointStore

    store = CheckpointStore(checkpoint_uri)
    newest = store.read(store.list()[-1])
    return merge_parts(list(newest.stats.values()))


def compute_reference(broker: RestartableBroker, root: Path) -> Reference:
    """The undisturbed run: the whole log produced first, run to its end; its statistics are
    checked against the log's truth (so the reference itself is right) and its rewards must be
    unique (``test_undisturbed`` runs the full end checks on an undisturbed paced run)."""
    log = traffic_log()
    topics = fresh_topics(broker.bootstrap)
    produce_all(broker.bootstrap, log, topics)
    pipeline = make_pipeline(broker.bootstrap, topics, root)
    started = time.monotonic()
    try:
        pipeline.start()
        pipeline.run_to_end()
        seconds = time.monotonic() - started
        stats = pipeline.statistics()
    finally:
        pipeline.stop(checkpoint=False)
    truth = truth_stats(template(), log, dense_contexts)
    assert_statistics_equal(stats, truth, "undisturbed run's statistics (against the log's truth)")
    keys, _ = rewards_in_kafka(broker.bootstrap, topics.rewards)
    assert keys and max(keys.values()) == 1, "the undisturbed run produced duplicate rewards"
    return Reference(stats=stats, rewards=keys, seconds=seconds)


@contextlib.contextmanager
def faulted_run(broker: RestartableBroker, root: Path, *, interval_s: float = 0.8
                ) -> Iterator[tuple[StreamPipeline, PacedTraffic, Faults, HookLog, Topics]]:
    """A pipeline on fresh topics with the traffic paced over ``N_PARTS × interval_s`` seconds;
    the caller plans faults, then drives. The pipeline is stopped (no checkpoint) at the end."""
    topics = fresh_topics(broker.bootstrap)
    pipeline = make_pipeline(broker.bootstrap, topics, root)
    hooks = HookLog()
    faults = Faults()
    traffic = PacedTraffic(broker.bootstrap, topics, cut(traffic_log(), N_PARTS), interval_s)
    unsubscribe = subscribe(pipeline, hooks)
    try:
        pipeline.start()
        yield pipeline, traffic, faults, hooks, topics
    finally:
        faults.stop()
        unsubscribe()
        with contextlib.suppress(Exception):
            pipeline.stop(checkpoint=False)


def report(faults: Faults, hooks: HookLog, pipeline: StreamPipeline | None = None) -> str:
    """What happened, for an assertion message: faults injected, hook events, counters."""
    text = (f"(times in seconds from the traffic's start)\nfaults:\n{faults.describe()}\n"
            f"hook events:\n{hooks.describe(faults.t0)}")
    if faults.errors:
        text += "\nfault errors:\n" + "\n".join(faults.errors)
    if pipeline is not None:
        health = getattr(pipeline, "health", None)
        if callable(health):
            with contextlib.suppress(Exception):
                text += f"\nhealth: {health()}"
        text += f"\nrecoveries: {pipeline.recoveries}"
    return text


def settings_with(**changes: Any) -> StreamSettings:
    return dataclasses.replace(SETTINGS, **changes)
