"""The streaming pipeline: joiners, learners, parameter shards and lake writers on Ray, composed.

This module only wires the actors of ``streaming.joiner``, ``streaming.learner``,
``streaming.shards`` and ``streaming.lake_writer`` together, drives them in slices from the
driver, and lets ``streaming.coordinator`` checkpoint them at an interval. Partition ``p`` of
impressions, feedback and rewards goes to reader ``p % n`` of each role (co-partitioned: a
request's impression and feedback always meet in the same joiner and learner). In
``stream.update_mode = "window"`` the learners read their share of ``recsys.rewards`` (the
joiners' output, ``read_committed``) instead of impressions and feedback, and checkpoints drain
them to the rewards end offsets taken after the joiners committed.

Supervision (``streaming.supervisor``): ``step``, ``run_for``, ``run_to_end`` and ``checkpoint``
never raise for a transient failure. Every wait on an actor has a deadline
(``stream.actor_call_timeout_s``; a frozen actor is killed and replaced); a reader whose positions
stand still for ``stream.stuck_reader_s`` while its partitions hold unread records is replaced (new
Kafka clients); Kafka errors, on the driver or inside an actor, are retried with backoff
(``stream.recovery_backoff_s`` doubling to ``recovery_backoff_max_s``) for up to
``stream.kafka_outage_budget_s``, and so is a recovery that fails (a second death, Kafka down
while restoring). Past the budget: ``PipelineFailed``. An exception inside an actor that is not a
Kafka error is a bug and is raised. ``hooks`` reports every phase (``PipelineEvent``);
``health()`` sums it up.

Local recovery: a failed joiner or lake writer is replaced and restored alone (the checkpoint's
offsets and state, from driver memory: ``CheckpointCoordinator.cut``). A failed learner or shard
rolls back the group {every learner, every shard}: dead ones are rebuilt (a shard from the cut's
statistics in Ray's object store), healthy shards return to their in-memory copy
(``ParameterShard.rollback``), healthy learners wait for their deltas in flight and restore the
cut's offsets and state. Storage is read only by ``start`` (a process restart). The replay from
the cut's offsets reproduces the same state, so nothing is lost or counted twice.

Kafka output: every reader produces through a transactional producer whose id is
``f"{stream.transactional_id_prefix}.{impressions topic}.{role}-{index}"`` (role joiner, learner
or lake), so a replacement fences its predecessor and aborts its open transaction. Each
undecodable record is dead-lettered once, by its topic's owner: impressions and feedback by the
joiners; rewards by the lake writers when the lake is on, else by window-mode learners.

Healthy learners are settled (``Learner.settle``) and given rebuilt shards
(``Learner.use_shards``), so only the dead actors are rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import ray
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaTimeoutError

from recsys.bandits import merge_parts, stats_from_arrays
from recsys.bandits.protocol import Statistics
from recsys.checkpoint import Checkpoint, CheckpointStore
from recsys.config import StreamSettings
from recsys.events import Feedback, Impression, Reward
from recsys.kafka_clients import kafka_python_options
from recsys.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, REWARDS
from streaming.broker import metadata_available
from streaming.coordinator import CheckpointCoordinator, CheckpointReport, PipelineActors
from streaming.joiner import JoinerActor
from streaming.lake_writer import LakeWriterActor
from streaming.learner import LearnerActor
from streaming.registrar import RegistrationSchedule
from streaming.shards import start_shard, start_shards
from streaming.supervisor import (
    ActorCalls,
    ActorsFailed,
    Backoff,
    Hooks,
    OutageClock,
    PipelineFailed,
    is_transient,
)
from streaming.topics import cluster_layout

Offsets = dict[tuple[str, int], int]
T = TypeVar("T")
log = logging.getLogger(__name__)
DEATH_PING_TIMEOUT_S = 2.0
"""How long a recovery waits for the other actors' pings (``_dead_among_the_rest``)."""
KAFKA_PROBE_TIMEOUT_S = 3.0
"""How long the driver's probe of Kafka may take (a call that missed its deadline, a death)."""


@dataclass(frozen=True)
class Topics:
    """The topic names the pipeline reads and writes (tests use unique ones)."""

    impressions: str = IMPRESSIONS
    feedback: str = FEEDBACK
    rewards: str = REWARDS
    dead_letter: str = DEAD_LETTER


def share(partitions: int, readers: int, reader: int) -> list[int]:
    """Reader ``reader``'s partition numbers out of ``partitions``: ``p % readers == reader``."""
    return [p for p in range(partitions) if p % readers == reader]


def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):  # already gone
        ray.kill(actor, no_restart=True)


class StreamPipeline:
    """Builds, drives, checkpoints and recovers one streaming pipeline (see module docs).

    ``template`` is the empty (or warm-started) statistics over the whole catalogue: it is split
    into ``settings.shards`` shards and tells learners the layout. ``lake_uri`` None runs without
    the Parquet lake. ``policy_spec`` (the policy serving learns with, when known) is stored in
    every checkpoint's ``meta["policy"]``; ``registrar`` (``streaming.registrar``) is handed each
    checkpoint and registers one as a model version every ``stream.register_every_s``.
    ``hooks`` (a ``streaming.supervisor.Hooks``; a new one when not given) receives the
    supervisor's events.
    """

    def __init__(
        self,
        bootstrap: str,
        settings: StreamSettings,
        template: Statistics,
        checkpoint_uri: str,
        *,
        lake_uri: str | None = None,
        topics: Topics = Topics(),
        client_options: Mapping[str, object] | None = None,
        shard_name_prefix: str | None = None,
        policy_spec: Mapping[str, Any] | None = None,
        registrar: RegistrationSchedule | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        if template.clip_norm != settings.context_clip_norm:  # one event's influence bound
            template = template.copy().set_clip_norm(settings.context_clip_norm)
        self.template = template
        self.lake_uri = lake_uri
        self.topics = topics
        self.client_options = dict(client_options or {})
        self.shard_name_prefix = shard_name_prefix
        self.policy_spec = None if policy_spec is None else dict(policy_spec)
        self.registrar = registrar
        self.window = settings.update_mode == "window"
        self.hooks = hooks or Hooks()
        self.calls = ActorCalls(settings.actor_call_timeout_s, self.hooks,
                                kafka_down=self._kafka_down)
        self.outage = OutageClock(settings.kafka_outage_budget_s)
        self.backoff = Backoff(settings.recovery_backoff_s, settings.recovery_backoff_max_s)
        self.recoveries = 0
        self.failed_recoveries = 0
        self.stuck_readers = 0
        self._recovering = False
        self._failed: set[str] = set()
        layout = self._kafka(self._layout)
        self.partitions = layout.partitions[topics.impressions]
        for topic in (topics.feedback, topics.rewards):
            if layout.partitions[topic] != self.partitions:
                raise ValueError(f"{topics.impressions}, {topics.feedback} and {topics.rewards} "
                                 "must have the same partition count (they are co-partitioned "
                                 f"by request id); {topic} has {layout.partitions[topic]}, "
                                 f"{topics.impressions} {self.partitions}")
        self.store = CheckpointStore(checkpoint_uri, keep=settings.checkpoints_keep)
        self.coordinator = CheckpointCoordinator(
            self.store, self._cluster, input_topics=[topics.impressions, topics.feedback],
            rewards_topic=topics.rewards if (lake_uri or self.window) else None,
            window_learners=self.window, stall_timeout_s=settings.stuck_reader_s,
            calls=self.calls,
        )
        self._learner_template_arrays = self.template.delta_template().to_arrays()
        self.actors: PipelineActors | None = None
        self.restored: Checkpoint | None = None
        self._last_checkpoint = time.monotonic()
        self._next_checkpoint = self._last_checkpoint + settings.checkpoint_interval_s
        self._stuck_every_s = max(0.5, min(5.0, settings.stuck_reader_s / 3))
        self._next_stuck_check = self._last_checkpoint + self._stuck_every_s
        self._watch: dict[str, tuple[Offsets, float]] = {}
        self._next_probe = 0.0
        self._next_recovery = 0.0
        self._incident: tuple[float, str, OutageClock] | None = None
        self._attempt = 0

    # ------------------------------------------------------------------ cluster facts
    def _layout(self) -> Any:
        names = [self.topics.impressions, self.topics.feedback, self.topics.rewards]
        return cluster_layout(self.bootstrap, names, **self.client_options)

    def _cluster(self) -> tuple[str, dict[str, int]]:
        layout = self._layout()
        return layout.cluster_id, dict(layout.partitions)

    def _beginning_offsets(self, topics: list[str]) -> Offsets:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap,
                                 **kafka_python_options(self.client_options))
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(self.partitions)]
            return {(tp.topic, tp.partition): int(o)
                    for tp, o in consumer.beginning_offsets(tps).items()}
        finally:
            consumer.close()

    def _kafka(self, call: Callable[[], T]) -> T:
        """``call()`` (a driver-side Kafka request), retried with backoff while Kafka errors
        are transient, within ``stream.kafka_outage_budget_s``."""
        while True:
            try:
                result = call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._kafka_failing(exc)
                time.sleep(self.backoff.next())
                continue
            self._kafka_ok()
            return result

    def _kafka_down(self) -> BaseException | None:
        """Why the driver cannot reach Kafka now (a quick metadata request), or None."""
        try:
            reachable = metadata_available(self.bootstrap, timeout_s=KAFKA_PROBE_TIMEOUT_S,
                                           **self.client_options)
        except Exception as exc:  # a configuration mistake: not an outage
            log.warning("the Kafka probe failed: %s", exc)
            return None
        return None if reachable else KafkaTimeoutError(
            f"no broker of {self.bootstrap} answered a metadata request within "
            f"{KAFKA_PROBE_TIMEOUT_S:g} s")

    def _kafka_failing(self, exc: BaseException) -> None:
        if not self.outage.running:
            self.hooks.emit("kafka.unreachable", error=f"{type(exc).__name__}: {exc}",
                            budget_s=self.outage.budget_s)
        self.outage.failing(exc, "Kafka")

    def _kafka_ok(self) -> None:
        outage = self.outage.ok()
        if outage is not None:
            self.backoff.reset()
            self.hooks.emit("kafka.reachable", outage_s=outage)

    # ------------------------------------------------------------------ actors
    def _transactional_id(self, role: str, index: int) -> str:
        return f"{self.settings.transactional_id_prefix}.{self.topics.impressions}.{role}-{index}"

    def _learner(self, i: int, shards: list[Any]) -> Any:
        s, t = self.settings, self.topics
        if self.window:
            assignment = [(t.rewards, p) for p in share(self.partitions, s.learners, i)]
            expected: dict[str, type] = {t.rewards: Reward}
            # rewards' dead letters: the lake writers' when the lake is on, else the learners'
            owned = [] if self.lake_uri else [t.rewards]
        else:
            assignment = [(topic, p) for p in share(self.partitions, s.learners, i)
                          for topic in (t.impressions, t.feedback)]
            expected = {t.impressions: Impression, t.feedback: Feedback}
            owned = []  # the joiners dead-letter impressions and feedback
        return LearnerActor.remote(
            self.bootstrap, assignment, shards, self._learner_template_arrays,
            mode=s.update_mode, window_ms=s.window_ms,
            allowed_lateness_ms=s.allowed_lateness_ms, reward_mapping=s.rewards(),
            dead_letter_topic=t.dead_letter, expected_types=expected,
            client_options=self.client_options,
            transactional_id=self._transactional_id("learner", i), dead_letter_topics=owned,
        )

    def _joiner(self, i: int) -> Any:
        s, t = self.settings, self.topics
        return JoinerActor.remote(
            self.bootstrap, share(self.partitions, s.joiners, i), s.window_ms,
            s.allowed_lateness_ms, s.rewards(), impressions_topic=t.impressions,
            feedback_topic=t.feedback, rewards_topic=t.rewards,
            dead_letter_topic=t.dead_letter, client_options=self.client_options,
            transactional_id=self._transactional_id("joiner", i),
            dead_letter_topics=[t.impressions, t.feedback],
        )

    def _lake_writer(self, i: int) -> Any:
        s, t = self.settings, self.topics
        assert self.lake_uri is not None
        return LakeWriterActor.remote(
            self.bootstrap, self.lake_uri, share(self.partitions, s.joiners, i),
            impressions_topic=t.impressions, feedback_topic=t.feedback,
            rewards_topic=t.rewards, dead_letter_topic=t.dead_letter,
            client_options=self.client_options,
            transactional_id=self._transactional_id("lake", i),
            dead_letter_topics=[t.rewards],  # the joiners own impressions' and feedback's
        )

    def _build(self) -> PipelineActors:
        s = self.settings
        shards = start_shards(self.template, s.shards, names=self.shard_names() or None)
        actors = PipelineActors(
            shards, [self._learner(i, shards) for i in range(s.learners)],
            [self._joiner(i) for i in range(s.joiners)],
            [self._lake_writer(i) for i in range(s.joiners)] if self.lake_uri else [])
        self.calls.started([a for _, a in actors.all()])
        return actors

    def _rebuild(self, name: str) -> Any:
        """A new actor in place of ``name`` (a shard from the in-memory cut's statistics)."""
        assert self.actors is not None and self.coordinator.cut is not None
        role, index = name.rsplit("-", 1)
        i = int(index)
        if role == "shard":
            arrays, meta = self.coordinator.cut.shard_arrays[i]
            names = self.shard_names()
            actor = start_shard(i, self.settings.shards, arrays, meta,
                                name=names[i] if names else None)
        elif role == "learner":
            actor = self._learner(i, self.actors.shards)
        elif role == "joiner":
            actor = self._joiner(i)
        else:
            actor = self._lake_writer(i)
        self.actors.replace(name, actor)
        self.calls.started([actor])
        return actor

    def shard_names(self) -> list[str]:
        """The Ray names of the shard actors (``shard_name_prefix``), in shard order: serving
        replicas look the shards up by these names, so they find the rebuilt shards after a
        recovery. Empty when the shards are unnamed."""
        if self.shard_name_prefix is None:
            return []
        return [f"{self.shard_name_prefix}{i}" for i in range(self.settings.shards)]

    def _learner_template(self) -> Any:
        """What learners compute deltas against (``Statistics.delta_template``): an open
        catalogue for dense statistics, the whole graph for graph statistics."""
        return self._learner_template_arrays

    def _start_offsets(self) -> Offsets:
        topics = [self.topics.impressions, self.topics.feedback]
        if self.lake_uri or self.window:
            topics.append(self.topics.rewards)
        return self._kafka(lambda: self._beginning_offsets(topics))

    def start(self) -> Checkpoint | None:
        """Create the actors and restore the newest checkpoint from storage (or start at the
        beginning). Failures while starting (Kafka down, an actor dying) are retried with
        backoff within ``stream.kafka_outage_budget_s``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                self.actors = self._build()
                self.restored = self.coordinator.restore(self.actors, self._start_offsets())
                break
            except Exception as exc:
                if not (isinstance(exc, ActorsFailed | ray.exceptions.RayActorError)
                        or is_transient(exc)):
                    raise
                self._kill()
                wait = self.backoff.next()
                self.hooks.emit("recovery.failed", error=f"{type(exc).__name__}: {exc}",
                                attempt=attempt, backoff_s=wait)
                self.outage.failing(exc, "starting the pipeline")
                time.sleep(wait)
        self._kafka_ok()
        self.backoff.reset()
        self._last_checkpoint = time.monotonic()
        self._next_checkpoint = self._last_checkpoint + self.settings.checkpoint_interval_s
        self._watch.clear()
        return self.restored

    def _readers(self) -> list[Any]:
        assert self.actors is not None, "call start() first"
        return [actor for _, actor in self.actors.readers()]

    # ------------------------------------------------------------------ running
    def step(self) -> int:
        """One slice: every reader polls one batch (and every shard is pinged); a checkpoint
        when the interval has passed; a stuck-reader check every few seconds. Returns the
        records read (0 while recovering).

        Never raises for a transient failure (module docs); ``PipelineFailed`` past the budget.
        """
        assert self.actors is not None, "call start() first"
        try:
            if not self._heal():  # one probe or recovery attempt when due; never blocks long
                time.sleep(min(0.2, max(0.0, self._next_attempt() - time.monotonic())))
                return 0
            readers = self.actors.readers()
            calls = [(n, a, a.step.remote(self.settings.batch_size)) for n, a in readers]
            # shards are not called by a step: a ping finds a dead or frozen one at once
            calls += [(n, a, a.__ray_ready__.remote()) for n, a in self.actors.named_shards()]
            n = sum(self.calls.get("step", calls)[:len(readers)])
            now = time.monotonic()
            if not self.outage.running:
                if now >= self._next_checkpoint:
                    self._checkpoint_once()
                elif now >= self._next_stuck_check:
                    self._check_stuck()
            return n
        except Exception as exc:
            self._absorb(exc)
            self._heal()
            return 0

    def _heal(self) -> bool:
        """One step of healing when one is due: while Kafka is unreachable, a probe; then a
        recovery attempt for the failed actors. Returns whether the pipeline is healthy now
        (``PipelineFailed`` once a failure outlasts the budget)."""
        now = time.monotonic()
        if self.outage.running:
            if now < self._next_probe:
                return False
            self._probe()
            if self.outage.running:
                return False
        if self._failed:
            if now < self._next_recovery:
                return False
            self._recover_once()
        return not self._failed and not self.outage.running

    def _next_attempt(self) -> float:
        """When the next probe or recovery attempt is due (monotonic seconds)."""
        return self._next_probe if self.outage.running else self._next_recovery

    def _heal_blocking(self) -> None:
        """Heal until healthy (probes and recovery attempts at their backoff), or
        ``PipelineFailed`` past the budget."""
        while not self._heal():
            time.sleep(max(0.0, self._next_attempt() - time.monotonic()))

    def _absorb(self, exc: Exception) -> None:
        """Classify a failure: actors to replace, or a Kafka outage; anything else raises."""
        if isinstance(exc, ActorsFailed):
            self._failed |= set(exc.actors)
            # rebuild them once the driver reaches Kafka again: a Kafka error, or a death (an
            # actor's constructor cannot reach the brokers either) while Kafka is unreachable
            down = exc if exc.kafka else self._kafka_down()
            if down is not None:
                if not self.outage.running:
                    self._next_probe = time.monotonic()
                self._kafka_failing(down)
        elif isinstance(exc, ray.exceptions.RayActorError):  # an actor we cannot name: all
            assert self.actors is not None
            self._failed |= {n for n, _ in self.actors.all()}
        elif is_transient(exc):  # driver side: back off the next checkpoint and probe
            self._kafka_failing(exc)
            wait = self.backoff.next()
            self._next_checkpoint = time.monotonic() + wait
            self._next_probe = time.monotonic() + wait
        else:
            raise exc

    def _probe(self) -> None:
        """During an outage: is Kafka back? (a metadata request from the driver)"""
        try:
            self._layout()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._kafka_failing(exc)
            self._next_probe = time.monotonic() + self.backoff.next()
            return
        self._kafka_ok()
        self._next_checkpoint = time.monotonic()  # a checkpoint proves every reader is back

    def _check_stuck(self) -> None:
        """Readers whose positions stood still for ``stream.stuck_reader_s`` while their
        partitions hold unread records are failed (``reader.stuck``; rebuilt with new
        clients)."""
        assert self.actors is not None
        readers = self.actors.readers()
        positions = self.calls.call("positions", readers)
        ends = self.calls.call("end_offsets", readers)
        now = time.monotonic()
        self._next_stuck_check = now + self._stuck_every_s
        stuck = []
        for (name, _), pos, end in zip(readers, positions, ends, strict=True):
            waiting = any(int(o) > int(pos.get(tp, 0)) for tp, o in end.items())
            seen = self._watch.get(name)
            if not waiting or seen is None or seen[0] != pos:
                self._watch[name] = (pos, now)
                continue
            if now - seen[1] >= self.settings.stuck_reader_s:
                stuck.append(name)
                self.hooks.emit("reader.stuck", actor=name,
                                positions={f"{t}:{p}": int(o) for (t, p), o in pos.items()},
                                ends={f"{t}:{p}": int(o) for (t, p), o in end.items()})
        if stuck:
            self.stuck_readers += len(stuck)
            raise ActorsFailed(stuck, f"stood still for {self.settings.stuck_reader_s:g} s "
                               "while records waited")

    def run_for(self, seconds: float) -> int:
        """Run slices for ``seconds``; returns the records read."""
        started, total = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            total += self.step()
        return total

    def run_to_end(self, timeout_s: float = 120.0) -> CheckpointReport:
        """Process everything in the input topics now, then checkpoint (a bounded replay).

        Keeps going through failures (recoveries, Kafka outages) until it has checkpointed at
        the end offsets it took last; ``PipelineFailed`` when that has not happened within
        ``timeout_s`` (checked between attempts: one recovery or Kafka retry may overrun it,
        bounded by ``stream.kafka_outage_budget_s``) or a failure outlasts the budget.
        """
        return self.checkpoint(timeout_s=timeout_s)

    def checkpoint(self, timeout_s: float | None = None) -> CheckpointReport:
        """Take a consistent checkpoint now (see ``streaming.coordinator``), recovering and
        retrying through transient failures (bounded by ``timeout_s`` when given, else by
        ``stream.kafka_outage_budget_s``)."""
        assert self.actors is not None, "call start() first"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: Exception | None = None
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise PipelineFailed(
                    f"no checkpoint at the end offsets within {timeout_s:g} s; last failure: "
                    f"{type(last).__name__}: {last}")
            try:
                if not self._heal():
                    time.sleep(max(0.0, self._next_attempt() - time.monotonic()))
                    continue
                return self._checkpoint_once()
            except Exception as exc:
                last = exc
                self._absorb(exc)
                if not self._failed and not self.outage.running:  # wait before the next try
                    time.sleep(max(0.0, self._next_checkpoint - time.monotonic()))

    def _checkpoint_once(self) -> CheckpointReport:
        assert self.actors is not None
        self.hooks.emit("checkpoint.started")
        meta = None if self.policy_spec is None else {"policy": self.policy_spec}
        try:
            report = self.coordinator.checkpoint(self.actors, meta)
        except Exception as exc:
            self.hooks.emit("checkpoint.failed", error=f"{type(exc).__name__}: {exc}")
            raise
        self._kafka_ok()
        self._last_checkpoint = time.monotonic()
        self._next_checkpoint = self._last_checkpoint + self.settings.checkpoint_interval_s
        self.hooks.emit("checkpoint.completed", checkpoint_id=report.checkpoint_id,
                        duration_s=report.duration_s)
        if self.registrar is not None:  # hands the id over, never waits for mlflow
            self.registrar.after_checkpoint(report.checkpoint_id)
        return report

    # ------------------------------------------------------------------ recovering
    def recover(self, actors: Iterable[str] | None = None) -> None:
        """Replace the named actors (``"learner-0"``, ``"shard-1"``…; None: every actor) and
        roll their unit back to the last cut in memory (module docs), retrying with backoff."""
        assert self.actors is not None, "call start() first"
        self._failed |= set(actors) if actors is not None else {n for n, _ in self.actors.all()}
        self._next_recovery = time.monotonic()
        self._heal_blocking()

    def _dead_among_the_rest(self) -> set[str]:
        """The actors not yet known to have failed that are dead too (a lost node takes several
        with it): one ping each, so a recovery takes them all in at once instead of finding them
        one attempt at a time. An actor that does not answer the ping in time is not judged."""
        assert self.actors is not None
        rest = [(n, a) for n, a in self.actors.all() if n not in self._failed]
        pings = [(n, a.__ray_ready__.remote()) for n, a in rest]
        ray.wait([ref for _, ref in pings], num_returns=len(pings),
                 timeout=min(DEATH_PING_TIMEOUT_S, self.settings.actor_call_timeout_s))
        dead = set()
        for name, ref in pings:
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                dead.add(name)
            except Exception:  # not answered yet (busy or frozen): the deadlines judge it
                continue
        return dead

    def _scope(self, failed: Collection[str]) -> set[str]:
        """The actors a recovery of ``failed`` restores: a learner or shard takes the group of
        every learner and shard with it; joiners and lake writers go alone."""
        assert self.actors is not None
        scope = set(failed)
        if any(n.startswith(("learner-", "shard-")) for n in failed):
            scope |= {n for n, _ in self.actors.all() if n.startswith(("learner-", "shard-"))}
        return scope

    def _recover_once(self) -> None:
        """One recovery attempt of ``self._failed`` (module docs). A failure widens the set,
        counts against the budget from the first attempt and schedules the next after a
        backoff (``recovery.failed``); success ends the incident (``recovery.completed``)."""
        assert self.actors is not None
        now = time.monotonic()
        if self._incident is None:
            self._incident = (now, ", ".join(sorted(self._failed)),
                              OutageClock(self.settings.kafka_outage_budget_s))
        started, cause, clock = self._incident
        self._attempt += 1
        self._failed |= self._dead_among_the_rest()
        failed = set(self._failed)
        scope = self._scope(failed)
        kind = "global" if scope >= {n for n, _ in self.actors.all()} else "local"
        self.hooks.emit("recovery.started", cause=cause, actors=sorted(scope),
                        attempt=self._attempt, scope=kind)
        self._recovering = True
        try:
            self._restore_scope(failed, scope)
        except Exception as exc:
            self._absorb(exc)  # widens self._failed, notes an outage, or raises a bug
            self.failed_recoveries += 1
            wait = self.backoff.next()
            self._next_recovery = time.monotonic() + wait
            self.hooks.emit("recovery.failed", error=f"{type(exc).__name__}: {exc}",
                            attempt=self._attempt, backoff_s=wait)
            clock.failing(exc, f"recovery of {', '.join(sorted(self._failed))}")
            return
        finally:
            self._recovering = False
        self._failed.clear()
        self._watch.clear()
        self._incident, self._attempt = None, 0
        self.recoveries += 1
        self.backoff.reset()
        self.hooks.emit("recovery.completed", duration_s=time.monotonic() - started,
                        scope=kind, actors=sorted(scope))

    def _restore_scope(self, dead: set[str], scope: set[str]) -> None:
        """One recovery attempt: kill ``dead``, settle and roll back the healthy rest of
        ``scope``, rebuild the dead from the cut in memory, restore and resume the readers."""
        actors = self.actors
        assert actors is not None and self.coordinator.cut is not None
        for name in dead:
            _kill(actors.get(name))
        healthy = scope - dead
        learners = sorted(n for n in healthy if n.startswith("learner-"))
        shards = sorted(n for n in healthy if n.startswith("shard-"))
        if learners:
            self.calls.get("settle", [(n, actors.get(n), actors.get(n).settle.remote())
                                      for n in learners])
        if shards:
            self.coordinator.rollback_shards(actors, [int(n.rsplit("-", 1)[1]) for n in shards])
        rebuilt_shards = sorted(n for n in dead if n.startswith("shard-"))
        for name in rebuilt_shards:
            self._rebuild(name)
        if rebuilt_shards:  # built from the cut: a constructor that fails fails this attempt
            self.calls.get("start", [(n, actors.get(n), actors.get(n).__ray_ready__.remote())
                                     for n in rebuilt_shards])
        if rebuilt_shards and learners:
            self.calls.get("use_shards", [(n, actors.get(n), actors.get(n).use_shards.remote(
                actors.shards)) for n in learners])
        for name in sorted(dead - set(rebuilt_shards)):
            self._rebuild(name)
        self.coordinator.restore_readers(actors, [n for n, _ in actors.readers() if n in scope])

    def health(self) -> dict[str, Any]:
        """The supervisor's state for the status line and metrics: ``state`` (running,
        recovering or kafka_unreachable), recoveries, failed recoveries, deadline kills, stuck
        readers, and how long Kafka has been unreachable (of the budget)."""
        state = ("recovering" if self._recovering or self._failed
                 else "kafka_unreachable" if self.outage.running else "running")
        return {"state": state, "recoveries": self.recoveries,
                "failed_recoveries": self.failed_recoveries,
                "deadline_kills": self.calls.deadline_kills, "stuck_readers": self.stuck_readers,
                "kafka_outage_s": self.outage.elapsed(),
                "kafka_outage_budget_s": self.outage.budget_s}

    # ------------------------------------------------------------------ the catalogue
    def add_items(self, items: Any) -> int:
        """Add items (zero statistics) while running: each shard takes the ones it owns.

        Dense layout only (graph items come with their edges: rebuild the graph and restart).
        Events for an item before it is added are dropped by the shards and counted.
        """
        return self._catalogue_change("add_items", items)

    def retire_items(self, items: Any) -> int:
        """Drop items and their statistics while running (dense layout only)."""
        return self._catalogue_change("retire_items", items)

    def _catalogue_change(self, method: str, items: Any) -> int:
        assert self.actors is not None, "call start() first"
        if self.template.delta_template().n_items:  # the learners hold a fixed catalogue
            raise ValueError(f"{method}: {self.template.layout} statistics do not change their "
                             "catalogue while running (learners compute deltas on a fixed "
                             "one); rebuild the catalogue and restart the pipeline")
        ids = np.asarray(items, dtype=np.int64).ravel()
        return sum(self.calls.call(method, self.actors.named_shards(), ids))

    # ------------------------------------------------------------------ reading the state
    def statistics(self) -> Statistics:
        """The shards' current statistics merged into one object (tests, reports)."""
        assert self.actors is not None, "call start() first"
        parts = self.calls.call("statistics", self.actors.named_shards())
        return merge_parts([stats_from_arrays(*p) for p in parts])

    def lag(self) -> int:
        """Records in the input topics the learners have not read yet (end offsets − positions)."""
        assert self.actors is not None, "call start() first"
        learners = [(f"learner-{i}", a) for i, a in enumerate(self.actors.learners)]
        ends = self.calls.call("end_offsets", learners)
        positions = self.calls.call("positions", learners)
        return sum(max(0, end[tp] - pos.get(tp, 0))
                   for end, pos in zip(ends, positions, strict=True) for tp in end)

    @property
    def checkpoint_age_s(self) -> float | None:
        """Seconds since this pipeline's last checkpoint (None before the first)."""
        if self.coordinator.last is None:
            return None
        return time.monotonic() - self._last_checkpoint

    def counters(self) -> dict[str, Any]:
        """Every actor's counters by name, plus the supervisor's (``health``) and the last
        checkpoint."""
        assert self.actors is not None, "call start() first"
        named = self.actors.readers()
        report = dict(zip([n for n, _ in named], self.calls.call("counters", named),
                          strict=True))
        report["recoveries"] = self.recoveries
        report["supervisor"] = self.health()
        last = self.coordinator.last
        report["last_checkpoint"] = None if last is None else last.checkpoint_id
        if self.registrar is not None:
            report["registrations"] = self.registrar.counters()
        return report

    # ------------------------------------------------------------------ stopping
    def stop(self, checkpoint: bool = True) -> None:
        """Checkpoint (by default), close the Kafka clients and end every actor; a registration
        in progress is waited for (bounded) before the registrar ends. Actors that died or do
        not answer are killed without closing."""
        if self.actors is None:
            return
        try:
            if checkpoint:
                self.checkpoint()
            with contextlib.suppress(ActorsFailed):
                self.calls.call("close", self.actors.readers())
        finally:
            try:
                self._kill()
            finally:
                if self.registrar is not None:
                    self.registrar.close()

    def _kill(self) -> None:
        if self.actors is None:
            return
        for _, actor in self.actors.all():
            _kill(actor)
        self.actors = None
