"""Consistent checkpoints of the streaming actors: stop at known offsets, snapshot, resume.

The coordinator takes a checkpoint the way DESIGN's exactly-once contract asks, as an aligned
stop-the-world cut (simpler than Flink's barriers, and enough at checkpoint intervals of seconds):

1. **Targets.** Read the end offsets of the input partitions (impressions and feedback). Every
   reader can only be behind them, so "everyone exactly at the targets" is a cut all can reach.
2. **Joiners** read up to the targets and pause: their state (open impressions, held feedback)
   is taken and their reward producer is flushed, so ``recsys.rewards`` now holds every reward
   the cut implies. Its end offsets become the lake's targets on that topic.
3. **Learners** read up to the targets and pause: every delta they sent is merged by its shard
   before ``pause`` returns, and their state (context cache, running rewards) is taken.
4. **Lake writers** read up to the targets (inputs and rewards) and pause: everything below them
   is in Parquet files.
5. **Shards** snapshot their statistics.
6. The checkpoint (statistics by shard, states by actor, the offsets, the Kafka cluster id and
   partition counts) is written manifest-last by ``recsys.checkpoint.CheckpointStore``; then
   every actor resumes.

Every actor's reported positions must equal the targets on its partitions, or the checkpoint is
refused (an actor that skipped or re-read records would make the cut inconsistent).

Recovery is a global rollback (as Flink does): on any actor failure the pipeline rebuilds every
actor and :meth:`CheckpointCoordinator.restore` loads the newest complete checkpoint into them —
statistics into shards, states into learners and joiners, and every reader seeks to the
checkpoint's offsets (lake writers also delete files past them). Events after the checkpoint are
replayed; deterministic processing makes the replay produce the same state. Rewards the joiners
had already produced after the checkpoint are produced again, identical; readers de-duplicate
``recsys.rewards`` by ``(request_id, item_id)`` (``streaming.join``, ``scan_lake``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from recsys.bandits import stats_from_arrays
from recsys.checkpoint import Checkpoint, CheckpointError, CheckpointStore

Offsets = dict[tuple[str, int], int]


@dataclass
class PipelineActors:
    """The actor handles of one pipeline, by role (index i of a role is ``<role>-<i>``)."""

    shards: list[Any]
    learners: list[Any]
    joiners: list[Any] = field(default_factory=list)
    lake_writers: list[Any] = field(default_factory=list)

    def readers(self) -> list[tuple[str, Any]]:
        """Every actor that reads Kafka, named, in checkpoint order."""
        named = [(f"joiner-{i}", a) for i, a in enumerate(self.joiners)]
        named += [(f"learner-{i}", a) for i, a in enumerate(self.learners)]
        named += [(f"lake-{i}", a) for i, a in enumerate(self.lake_writers)]
        return named


@dataclass(frozen=True)
class CheckpointReport:
    """What one checkpoint took: its id, the offsets it stands at, and how long each phase ran."""

    checkpoint_id: str
    offsets: Offsets
    drain_s: float
    snapshot_s: float
    write_s: float

    @property
    def duration_s(self) -> float:
        return self.drain_s + self.snapshot_s + self.write_s


class CheckpointCoordinator:
    """Takes and restores consistent checkpoints of a :class:`PipelineActors` (see module docs).

    ``input_topics`` are the topics whose end offsets set the cut (impressions, feedback);
    ``rewards_topic`` is the joiners' output, read by the lake writers; ``cluster`` returns the
    Kafka cluster id and the partition count of every topic (``streaming.topics.cluster_layout``).
    """

    def __init__(
        self,
        store: CheckpointStore,
        cluster: Callable[[], tuple[str, dict[str, int]]],
        *,
        input_topics: Sequence[str],
        rewards_topic: str | None = None,
        drain_timeout_s: float = 120.0,
    ) -> None:
        self.store = store
        self._cluster = cluster
        self.input_topics = list(input_topics)
        self.rewards_topic = rewards_topic
        self.drain_timeout_s = float(drain_timeout_s)
        self.last: CheckpointReport | None = None

    # ------------------------------------------------------------------ taking
    def checkpoint(self, actors: PipelineActors, meta: Mapping[str, Any] | None = None
                   ) -> CheckpointReport:
        """Stop every reader at the same offsets, snapshot, write, resume (module docs)."""
        started = time.perf_counter()
        targets = self._input_targets(actors)
        states: dict[str, Any] = {}
        try:
            joined = self._drain_and_pause(actors.joiners, "joiner", targets)
            for i, (offsets, state) in enumerate(joined):
                self._check_positions(f"joiner-{i}", offsets, targets)
                states[f"joiner-{i}"] = state
            if self.rewards_topic is not None and actors.lake_writers:
                targets |= self._end_offsets(actors.lake_writers, {self.rewards_topic})
            for i, offsets in enumerate(self._drain_and_pause(actors.learners, "learner",
                                                              targets)):
                self._check_positions(f"learner-{i}", offsets, targets)
            states |= {f"learner-{i}": s for i, s in enumerate(
                ray.get([a.state_arrays.remote() for a in actors.learners]))}
            for i, offsets in enumerate(self._drain_and_pause(actors.lake_writers, "lake",
                                                              targets)):
                self._check_positions(f"lake-{i}", offsets, targets)
            drained = time.perf_counter()
            parts = ray.get([s.checkpoint.remote() for s in actors.shards])
            stats = {f"shard-{i}": stats_from_arrays(*part) for i, part in enumerate(parts)}
            snapshotted = time.perf_counter()
            cluster_id, partitions = self._cluster()
            used = {topic for topic, _ in targets}
            checkpoint = Checkpoint(
                stats=stats, offsets=dict(targets), cluster_id=cluster_id,
                partitions={t: n for t, n in partitions.items() if t in used},
                state={name: dict(arrays) for name, arrays in states.items()},
                meta=dict(meta or {}),
            )
            checkpoint_id = self.store.write(checkpoint)
        finally:
            self._resume(actors)
        written = time.perf_counter()
        self.last = CheckpointReport(checkpoint_id, dict(targets), drained - started,
                                     snapshotted - drained, written - snapshotted)
        return self.last

    def _input_targets(self, actors: PipelineActors) -> Offsets:
        readers = [a for _, a in actors.readers()]
        if not readers:
            raise CheckpointError("a checkpoint needs at least one actor that reads Kafka")
        return self._end_offsets(readers, set(self.input_topics))

    @staticmethod
    def _end_offsets(readers: Sequence[Any], topics: set[str]) -> Offsets:
        ends: Offsets = {}
        for offsets in ray.get([a.end_offsets.remote() for a in readers]):
            ends |= {tp: int(o) for tp, o in offsets.items() if tp[0] in topics}
        return ends

    def _drain_and_pause(self, group: Sequence[Any], role: str, targets: Offsets) -> list[Any]:
        """Let every actor of ``group`` read up to ``targets`` (in slices), then pause it."""
        if not group:
            return []
        assignments = ray.get([a.assignment.remote() for a in group])
        mine = [{tp: targets[tp] for tp in assigned if tp in targets} for assigned in assignments]
        pending = list(range(len(group)))
        deadline = time.monotonic() + self.drain_timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"checkpoint: {role} actor(s) {pending} did not reach the target offsets in "
                    f"{self.drain_timeout_s:.0f} s (is the cluster reachable?)")
            progress = ray.get([group[i].drain.remote(mine[i]) for i in pending])
            pending = [i for i, p in zip(pending, progress, strict=True) if not p.done]
        return ray.get([a.pause.remote() for a in group])

    @staticmethod
    def _check_positions(name: str, positions: Mapping[tuple[str, int], int],
                         targets: Offsets) -> None:
        off = {tp: (int(o), targets[tp]) for tp, o in positions.items()
               if tp in targets and int(o) != targets[tp]}
        if off:
            raise CheckpointError(f"checkpoint refused: {name} stopped at offsets other than the "
                                  f"cut's (position, target): {off}")

    @staticmethod
    def _resume(actors: PipelineActors) -> None:
        ray.get([a.resume.remote() for _, a in actors.readers()])

    # ------------------------------------------------------------------ restoring
    def restore(self, actors: PipelineActors, start: Offsets) -> Checkpoint | None:
        """Load the newest compatible checkpoint into fresh actors, or start them at ``start``.

        ``start`` (the offsets to begin from without a checkpoint, usually the beginning of
        every partition) also names the partitions each reader must be given.
        """
        cluster_id, partitions = self._cluster()
        checkpoint = self.store.restore(cluster_id, partitions)
        offsets = dict(start) if checkpoint is None else {**start, **checkpoint.offsets}
        calls = []
        if checkpoint is not None:
            expected = {f"shard-{i}" for i in range(len(actors.shards))}
            if set(checkpoint.stats) != expected:
                raise CheckpointError(
                    f"checkpoint {checkpoint.checkpoint_id} holds {sorted(checkpoint.stats)}, "
                    f"this pipeline has {len(actors.shards)} shard(s): start with the same "
                    "number of shards, or from an empty checkpoint directory")
            for i, shard in enumerate(actors.shards):
                arrays, meta = checkpoint.stats[f"shard-{i}"].to_arrays()
                calls.append(shard.restore.remote(arrays, meta))
        state = {} if checkpoint is None else checkpoint.state
        for name, actor in actors.readers():
            assigned = ray.get(actor.assignment.remote())
            mine = {tp: offsets[tp] for tp in assigned}
            if name.startswith("lake"):
                calls.append(actor.restore.remote(mine))
            else:
                calls.append(actor.restore.remote(mine, state.get(name)))
        ray.get(calls)
        return checkpoint
