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

Learners in window mode read ``recsys.rewards`` instead of the inputs: like the lake writers they
are drained to the rewards end offsets taken after the joiners paused (``window_learners``).

Restoring: at start :meth:`CheckpointCoordinator.restore` loads the newest complete checkpoint
from storage into fresh actors — statistics into shards, states into learners and joiners, and
every reader seeks to the checkpoint's offsets (lake writers also delete files past them). The
coordinator keeps that cut in driver memory (:class:`Cut`: offsets, reader states, and each
shard's statistics as an object in Ray's store) and replaces it at every checkpoint, so a local
recovery (:meth:`CheckpointCoordinator.restore_readers`, ``streaming.pipeline``) restores the
actors of one failed unit without reading storage. Events after the cut are replayed;
deterministic processing makes the replay produce the same state. Rewards the joiners had
already produced after the checkpoint are produced again, identical; readers de-duplicate
``recsys.rewards`` by ``(request_id, item_id)`` (``streaming.join``, ``scan_lake``).

Every wait on an actor goes through ``streaming.supervisor.ActorCalls`` (a deadline per call);
a reader that makes no progress towards the targets for ``stall_timeout_s`` is reported as
``ActorsFailed`` (stood still), and a checkpoint that fails midway resumes every live actor
before the error propagates, so no actor is left paused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from recsys.bandits import stats_from_arrays
from recsys.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from streaming.supervisor import ActorCalls, ActorsFailed, Hooks

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

    def named_shards(self) -> list[tuple[str, Any]]:
        return [(f"shard-{i}", a) for i, a in enumerate(self.shards)]

    def all(self) -> list[tuple[str, Any]]:
        """Every actor, named."""
        return [*self.readers(), *self.named_shards()]

    def get(self, name: str) -> Any:
        role, index = name.rsplit("-", 1)
        group = {"joiner": self.joiners, "learner": self.learners, "lake": self.lake_writers,
                 "shard": self.shards}[role]
        return group[int(index)]

    def replace(self, name: str, actor: Any) -> None:
        role, index = name.rsplit("-", 1)
        group = {"joiner": self.joiners, "learner": self.learners, "lake": self.lake_writers,
                 "shard": self.shards}[role]
        group[int(index)] = actor


@dataclass
class Cut:
    """The last checkpoint (or the start) in driver memory: what a local recovery restores.

    ``offsets`` covers every partition a reader reads; ``states`` the reader states by name
    (absent: none); ``shard_arrays`` each shard's statistics arrays as an object in Ray's store
    (``ObjectRef``) with their meta, so a rebuilt shard is built from them without storage."""

    checkpoint_id: str | None
    offsets: Offsets
    states: dict[str, Any]
    shard_arrays: list[tuple[Any, dict[str, Any]]]


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
    ``rewards_topic`` is the joiners' output, read by the lake writers and, when
    ``window_learners``, by the learners; ``cluster`` returns the Kafka cluster id and the
    partition count of every topic (``streaming.topics.cluster_layout``). ``calls`` waits on
    actors with deadlines (a plain one with ``actor_call_timeout_s`` 30 s when not given).
    """

    def __init__(
        self,
        store: CheckpointStore,
        cluster: Callable[[], tuple[str, dict[str, int]]],
        *,
        input_topics: Sequence[str],
        rewards_topic: str | None = None,
        window_learners: bool = False,
        stall_timeout_s: float = 120.0,
        calls: ActorCalls | None = None,
    ) -> None:
        self.store = store
        self._cluster = cluster
        self.input_topics = list(input_topics)
        self.rewards_topic = rewards_topic
        self.window_learners = window_learners
        self.stall_timeout_s = float(stall_timeout_s)
        self.calls = calls or ActorCalls(30.0, Hooks())
        self.last: CheckpointReport | None = None
        self.cut: Cut | None = None

    # ------------------------------------------------------------------ taking
    def checkpoint(self, actors: PipelineActors, meta: Mapping[str, Any] | None = None
                   ) -> CheckpointReport:
        """Stop every reader at the same offsets, snapshot, write, resume (module docs)."""
        started = time.perf_counter()
        states: dict[str, Any] = {}
        try:
            targets = self._input_targets(actors)
            joined = self._drain_and_pause(actors.joiners, "joiner", targets)
            for i, (offsets, state) in enumerate(joined):
                self._check_positions(f"joiner-{i}", offsets, targets)
                states[f"joiner-{i}"] = state
            readers = [(f"lake-{i}", a) for i, a in enumerate(actors.lake_writers)]
            if self.window_learners:
                readers += [(f"learner-{i}", a) for i, a in enumerate(actors.learners)]
            if self.rewards_topic is not None and readers:
                targets |= self._end_offsets(readers, {self.rewards_topic})
            for i, offsets in enumerate(self._drain_and_pause(actors.learners, "learner",
                                                              targets)):
                self._check_positions(f"learner-{i}", offsets, targets)
            learners = [(f"learner-{i}", a) for i, a in enumerate(actors.learners)]
            states |= dict(zip([n for n, _ in learners],
                               self.calls.call("state_arrays", learners), strict=True))
            for i, offsets in enumerate(self._drain_and_pause(actors.lake_writers, "lake",
                                                              targets)):
                self._check_positions(f"lake-{i}", offsets, targets)
            drained = time.perf_counter()
            named = [(name, shard, ref) for name, shard in actors.named_shards()
                     for ref in shard.checkpoint.options(num_returns=2).remote()]
            flat = self.calls.get("checkpoint", named)
            refs = [ref for _, _, ref in named]
            parts = list(zip(flat[0::2], flat[1::2], strict=True))
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
        except BaseException:
            self._resume(actors, quiet=True)
            raise
        # The manifest is written: this cut is durable. The driver's copy and the shards' copies
        # (their rollback points; ordered before any later rollback, as calls from one caller to
        # an actor run in order) move to it together, before resuming: an actor that dies while
        # resuming must be recovered to this cut, not the previous one.
        written = time.perf_counter()
        offsets = {**(self.cut.offsets if self.cut else {}), **targets}
        self.cut = Cut(checkpoint_id, offsets, states,
                       [(refs[2 * i], dict(part[1])) for i, part in enumerate(parts)])
        self.last = CheckpointReport(checkpoint_id, dict(targets), drained - started,
                                     snapshotted - drained, written - snapshotted)
        for shard in actors.shards:
            shard.confirm_checkpoint.remote()
        self._resume(actors)
        return self.last

    def _input_targets(self, actors: PipelineActors) -> Offsets:
        readers = actors.readers()
        if not readers:
            raise CheckpointError("a checkpoint needs at least one actor that reads Kafka")
        return self._end_offsets(readers, set(self.input_topics))

    def _end_offsets(self, readers: Sequence[tuple[str, Any]], topics: set[str]) -> Offsets:
        ends: Offsets = {}
        for offsets in self.calls.call("end_offsets", readers):
            ends |= {tp: int(o) for tp, o in offsets.items() if tp[0] in topics}
        return ends

    def _drain_and_pause(self, group: Sequence[Any], role: str, targets: Offsets) -> list[Any]:
        """Let every actor of ``group`` read up to ``targets`` (in slices), then pause it.

        An actor whose drain makes no progress for ``stall_timeout_s`` is reported as
        :class:`ActorsFailed` (it stood still; the pipeline replaces it)."""
        if not group:
            return []
        named = [(f"{role}-{i}", a) for i, a in enumerate(group)]
        assignments = self.calls.call("assignment", named)
        mine = [{tp: targets[tp] for tp in assigned if tp in targets} for assigned in assignments]
        pending = list(range(len(group)))
        consumed: dict[int, int] = {}
        moved = dict.fromkeys(pending, time.monotonic())
        while pending:
            progress = self.calls.get("drain", [(named[i][0], group[i],
                                                 group[i].drain.remote(mine[i]))
                                                for i in pending])
            now = time.monotonic()
            for i, p in zip(pending, progress, strict=True):
                if consumed.get(i) != p.consumed:
                    consumed[i], moved[i] = p.consumed, now
            pending = [i for i, p in zip(pending, progress, strict=True) if not p.done]
            stalled = [named[i][0] for i in pending if now - moved[i] > self.stall_timeout_s]
            if stalled:
                raise ActorsFailed(stalled, f"stood still for {self.stall_timeout_s:g} s short "
                                   "of the checkpoint's target offsets", method="drain")
        return self.calls.call("pause", named)

    @staticmethod
    def _check_positions(name: str, positions: Mapping[tuple[str, int], int],
                         targets: Offsets) -> None:
        off = {tp: (int(o), targets[tp]) for tp, o in positions.items()
               if tp in targets and int(o) != targets[tp]}
        if off:
            raise CheckpointError(f"checkpoint refused: {name} stopped at offsets other than the "
                                  f"cut's (position, target): {off}")

    def _resume(self, actors: PipelineActors, quiet: bool = False) -> None:
        """Resume every reader; ``quiet`` (a checkpoint already failing): the calls are sent
        and not waited for — the live ones resume (after whatever they are still doing: calls
        from one caller run in order), the others are left to the supervisor, whose error is
        the one that counts."""
        if quiet:
            for _, actor in actors.readers():
                actor.resume.remote()
            return
        self.calls.call("resume", actors.readers())

    # ------------------------------------------------------------------ restoring
    def restore(self, actors: PipelineActors, start: Offsets) -> Checkpoint | None:
        """Load the newest compatible checkpoint from storage into fresh actors, or start them
        at ``start``; keeps the cut in memory (:attr:`cut`).

        ``start`` (the offsets to begin from without a checkpoint, usually the beginning of
        every partition) also names the partitions each reader must be given.
        """
        cluster_id, partitions = self._cluster()
        checkpoint = self.store.restore(cluster_id, partitions)
        offsets = dict(start) if checkpoint is None else {**start, **checkpoint.offsets}
        shard_arrays: list[tuple[Any, dict[str, Any]]] = []
        calls = []
        if checkpoint is not None:
            expected = {f"shard-{i}" for i in range(len(actors.shards))}
            if set(checkpoint.stats) != expected:
                raise CheckpointError(
                    f"checkpoint {checkpoint.checkpoint_id} holds {sorted(checkpoint.stats)}, "
                    f"this pipeline has {len(actors.shards)} shard(s): start with the same "
                    "number of shards, or from an empty checkpoint directory")
            for i, (name, shard) in enumerate(actors.named_shards()):
                arrays, meta = checkpoint.stats[f"shard-{i}"].to_arrays()
                ref = ray.put(arrays)
                shard_arrays.append((ref, meta))
                calls.append((name, shard, shard.restore.remote(ref, meta)))
        else:
            named = [(name, shard, ref) for name, shard in actors.named_shards()
                     for ref in shard.checkpoint.options(num_returns=2).remote()]
            flat = self.calls.get("checkpoint", named)
            shard_arrays = [(named[2 * i][2], dict(flat[2 * i + 1]))
                            for i in range(len(actors.shards))]
            self.calls.call("confirm_checkpoint", actors.named_shards())
        states = {} if checkpoint is None else dict(checkpoint.state)
        if checkpoint is None:  # the empty states healthy learners return to without a checkpoint
            learners = [(n, a) for n, a in actors.readers() if n.startswith("learner")]
            states |= dict(zip([n for n, _ in learners],
                               self.calls.call("state_arrays", learners), strict=True))
        self.calls.get("restore", calls)
        self.cut = Cut(None if checkpoint is None else checkpoint.checkpoint_id, offsets, states,
                       shard_arrays)
        self.restore_readers(actors, [n for n, _ in actors.readers()],
                             initial=checkpoint is None)
        return checkpoint

    def restore_readers(self, actors: PipelineActors, names: Collection[str], *,
                        initial: bool = False) -> None:
        """Seek the named readers to the in-memory cut's offsets, load their states, resume.

        Joiners and lake writers are only ever restored fresh (a joiner given no state keeps
        its own, empty one); learners get their state from the cut, the empty one included.
        """
        assert self.cut is not None, "restore() first"
        named = [(n, a) for n, a in actors.readers() if n in set(names)]
        assignments = self.calls.call("assignment", named)
        calls = []
        for (name, actor), assigned in zip(named, assignments, strict=True):
            mine = {tp: self.cut.offsets[tp] for tp in assigned}
            if name.startswith("lake"):
                ref = actor.restore.remote(mine)
            elif name.startswith("learner") and initial:
                ref = actor.restore.remote(mine)  # fresh learners: already empty
            else:
                ref = actor.restore.remote(mine, self.cut.states.get(name))
            calls.append((name, actor, ref))
        self.calls.get("restore", calls)
        self.calls.call("resume", named)

    def rollback_shards(self, actors: PipelineActors, indices: Collection[int]) -> None:
        """Return the given (healthy) shards to their in-memory copy of the cut."""
        named = [(f"shard-{i}", actors.shards[i]) for i in sorted(indices)]
        self.calls.call("rollback", named)
