"""The streaming pipeline: joiners, learners, parameter shards and lake writers on Ray, composed.

This module only wires the actors of ``streaming.joiner``, ``streaming.learner``,
``streaming.shards`` and ``streaming.lake_writer`` together, drives them in slices from the
driver, and lets ``streaming.coordinator`` checkpoint them at an interval. Partition ``p`` of
impressions, feedback and rewards goes to reader ``p % n`` of each role (co-partitioned: a
request's impression and feedback always meet in the same joiner and learner).

Failures: if any actor dies, the pipeline rebuilds every actor and restores the newest
checkpoint into them (a global rollback, as Flink does); the replay from the checkpoint's offsets
reproduces the same state, so nothing is lost or counted twice. An exception *inside* an actor is a
bug and is raised, not retried.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from kafka import KafkaConsumer, TopicPartition

from recsys.bandits import merge_parts, stats_from_arrays
from recsys.bandits.protocol import Statistics
from recsys.checkpoint import Checkpoint, CheckpointStore
from recsys.config import StreamSettings
from recsys.events import Feedback, Impression
from recsys.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, REWARDS
from streaming.coordinator import CheckpointCoordinator, CheckpointReport, PipelineActors
from streaming.joiner import JoinerActor
from streaming.lake_writer import LakeWriterActor
from streaming.learner import LearnerActor
from streaming.registrar import RegistrationSchedule
from streaming.shards import start_shards
from streaming.topics import cluster_layout

Offsets = dict[tuple[str, int], int]


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


class StreamPipeline:
    """Builds, drives, checkpoints and recovers one streaming pipeline (see module docs).

    ``template`` is the empty (or warm-started) statistics over the whole catalogue: it is split
    into ``settings.shards`` shards and tells learners the layout. ``lake_uri`` None runs without
    the Parquet lake. ``policy_spec`` (the policy serving learns with, when known) is stored in
    every checkpoint's ``meta["policy"]``; ``registrar`` (``streaming.registrar``) is handed each
    checkpoint and registers one as a model version every ``stream.register_every_s``.
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
        layout = self._layout()
        self.partitions = layout.partitions[topics.impressions]
        if layout.partitions[topics.feedback] != self.partitions:
            raise ValueError(f"{topics.impressions} and {topics.feedback} must have the same "
                             "partition count (they are co-partitioned by request id)")
        self.store = CheckpointStore(checkpoint_uri, keep=settings.checkpoints_keep)
        self.coordinator = CheckpointCoordinator(
            self.store, self._cluster, input_topics=[topics.impressions, topics.feedback],
            rewards_topic=topics.rewards if lake_uri else None,
        )
        self.actors: PipelineActors | None = None
        self.restored: Checkpoint | None = None
        self.recoveries = 0
        self._last_checkpoint = time.monotonic()

    # ------------------------------------------------------------------ cluster facts
    def _layout(self) -> Any:
        names = [self.topics.impressions, self.topics.feedback, self.topics.rewards]
        return cluster_layout(self.bootstrap, names, **self.client_options)

    def _cluster(self) -> tuple[str, dict[str, int]]:
        layout = self._layout()
        return layout.cluster_id, dict(layout.partitions)

    def _beginning_offsets(self, topics: list[str]) -> Offsets:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, **self.client_options)
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(self.partitions)]
            return {(tp.topic, tp.partition): int(o)
                    for tp, o in consumer.beginning_offsets(tps).items()}
        finally:
            consumer.close()

    # ------------------------------------------------------------------ actors
    def _build(self) -> PipelineActors:
        s, t = self.settings, self.topics
        options = {"client_options": self.client_options}
        shards = start_shards(self.template, s.shards, names=self.shard_names() or None)
        template = self._learner_template()
        expected = {t.impressions: Impression, t.feedback: Feedback}
        learners = [
            LearnerActor.remote(
                self.bootstrap,
                [(topic, p) for p in share(self.partitions, s.learners, i)
                 for topic in (t.impressions, t.feedback)],
                shards, template, mode=s.update_mode, window_ms=s.window_ms,
                allowed_lateness_ms=s.allowed_lateness_ms, reward_mapping=s.rewards(),
                dead_letter_topic=t.dead_letter, expected_types=expected, **options,
            )
            for i in range(s.learners)
        ]
        joiners = [
            JoinerActor.remote(
                self.bootstrap, share(self.partitions, s.joiners, i), s.window_ms,
                s.allowed_lateness_ms, s.rewards(), impressions_topic=t.impressions,
                feedback_topic=t.feedback, rewards_topic=t.rewards,
                dead_letter_topic=t.dead_letter, **options,
            )
            for i in range(s.joiners)
        ]
        lake_writers = []
        if self.lake_uri:
            lake_writers = [
                LakeWriterActor.remote(
                    self.bootstrap, self.lake_uri, share(self.partitions, s.joiners, i),
                    impressions_topic=t.impressions, feedback_topic=t.feedback,
                    rewards_topic=t.rewards, dead_letter_topic=t.dead_letter, **options,
                )
                for i in range(s.joiners)
            ]
        return PipelineActors(shards, learners, joiners, lake_writers)

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
        return self.template.delta_template().to_arrays()

    def start(self) -> Checkpoint | None:
        """Create the actors and restore the newest checkpoint (or start at the beginning)."""
        self.actors = self._build()
        topics = [self.topics.impressions, self.topics.feedback]
        if self.lake_uri:
            topics.append(self.topics.rewards)
        self.restored = self.coordinator.restore(self.actors, self._beginning_offsets(topics))
        self._last_checkpoint = time.monotonic()
        return self.restored

    def _readers(self) -> list[Any]:
        assert self.actors is not None, "call start() first"
        return [actor for _, actor in self.actors.readers()]

    # ------------------------------------------------------------------ running
    def step(self) -> int:
        """One slice: every reader polls one batch; a checkpoint when the interval has passed.

        Returns the records read. A dead actor triggers a global rollback to the last checkpoint.
        """
        try:
            n = sum(ray.get([a.step.remote(self.settings.batch_size) for a in self._readers()]))
            if time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_interval_s:
                self.checkpoint()
            return n
        except ray.exceptions.RayActorError:
            self.recover()
            return 0

    def run_for(self, seconds: float) -> int:
        """Run slices for ``seconds``; returns the records read."""
        started, total = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            total += self.step()
        return total

    def run_to_end(self, timeout_s: float = 120.0) -> None:
        """Process everything in the input topics now, then checkpoint (a bounded replay).

        Survives actor deaths like :meth:`step`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.checkpoint()
                return
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                self.recover()

    def checkpoint(self) -> CheckpointReport:
        """Take a consistent checkpoint now (see ``streaming.coordinator``)."""
        assert self.actors is not None, "call start() first"
        meta = None if self.policy_spec is None else {"policy": self.policy_spec}
        report = self.coordinator.checkpoint(self.actors, meta)
        self._last_checkpoint = time.monotonic()
        if self.registrar is not None:  # hands the id over, never waits for mlflow
            self.registrar.after_checkpoint(report.checkpoint_id)
        return report

    def recover(self) -> Checkpoint | None:
        """Global rollback: kill every actor, build new ones, restore the newest checkpoint."""
        self.recoveries += 1
        self._kill()
        return self.start()

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
        return sum(ray.get([getattr(s, method).remote(ids) for s in self.actors.shards]))

    # ------------------------------------------------------------------ reading the state
    def statistics(self) -> Statistics:
        """The shards' current statistics merged into one object (tests, reports)."""
        assert self.actors is not None, "call start() first"
        return merge_parts([stats_from_arrays(*p) for p in
                            ray.get([s.checkpoint.remote() for s in self.actors.shards])])

    def lag(self) -> int:
        """Records in the input topics the learners have not read yet (end offsets − positions)."""
        assert self.actors is not None, "call start() first"
        learners = self.actors.learners
        ends = ray.get([a.end_offsets.remote() for a in learners])
        positions = ray.get([a.positions.remote() for a in learners])
        return sum(max(0, end[tp] - pos.get(tp, 0))
                   for end, pos in zip(ends, positions, strict=True) for tp in end)

    @property
    def checkpoint_age_s(self) -> float | None:
        """Seconds since this pipeline's last checkpoint (None before the first)."""
        if self.coordinator.last is None:
            return None
        return time.monotonic() - self._last_checkpoint

    def counters(self) -> dict[str, Any]:
        """Every actor's counters by name, plus recoveries and the last checkpoint."""
        assert self.actors is not None, "call start() first"
        named = self.actors.readers()
        report = dict(zip([n for n, _ in named],
                          ray.get([a.counters.remote() for _, a in named]), strict=True))
        report["recoveries"] = self.recoveries
        last = self.coordinator.last
        report["last_checkpoint"] = None if last is None else last.checkpoint_id
        if self.registrar is not None:
            report["registrations"] = self.registrar.counters()
        return report

    # ------------------------------------------------------------------ stopping
    def stop(self, checkpoint: bool = True) -> None:
        """Checkpoint (by default), close the Kafka clients and end every actor; a registration
        in progress is waited for (bounded) before the registrar ends."""
        if self.actors is None:
            return
        try:
            if checkpoint:
                self.checkpoint()
            ray.get([a.close.remote() for a in self._readers()])
        finally:
            try:
                self._kill()
            finally:
                if self.registrar is not None:
                    self.registrar.close()

    def _kill(self) -> None:
        if self.actors is None:
            return
        for actor in [*self._readers(), *self.actors.shards]:
            ray.kill(actor, no_restart=True)
        self.actors = None

