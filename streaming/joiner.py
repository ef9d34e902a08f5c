"""The joiner as a Ray actor: reads co-partitioned impressions and feedback from Kafka, joins them
in event time (``streaming.join.EventTimeJoiner``, the join rules the learners use too) and writes
rewards and dead letters.

``Joiner`` owns partitions ``p`` of both ``recsys.impressions`` and ``recsys.feedback`` for each
``p`` it is given (explicit assignment, no consumer group), so every event of a request reaches the
same joiner. ``step`` reads one batch, feeds each partition's events to the core in partition
order, advances the watermarks and sends the closed windows' rewards (key = request id) to the
partition of their impression (the rewards topic has the impressions' partition count, checked),
so rewards partition ``p`` is written by joiner of ``p`` alone; records that fail to decode
(of the topics it owns the dead letters of, ``dead_letter_topics``), and events the join rejects,
go to the dead-letter topic with their reason. Nothing is buffered between calls: after ``step``
returns, the core's state reflects exactly the records before ``positions()``.

Checkpoint hooks: ``pause`` stops reading, makes every reward and dead letter sent so far durable
and returns ``(offsets, state arrays)``, a consistent cut to store in a ``Checkpoint`` (offsets
in ``offsets``, arrays under ``state[<joiner name>]``); ``restore`` seeks to the offsets and
rebuilds the core; ``resume`` reads on.

Exactly once in Kafka (with a ``transactional_id``; ``streaming.reading`` has the transaction
life cycle): rewards and dead letters are written in a transaction that ``pause`` commits, so
``read_committed`` readers see them only once the checkpoint's cut covers them, and what a crashed
joiner produced after its last pause is aborted by its successor. The one gap, a crash after the
commit but before the checkpoint's manifest, is closed by read-back: ``pause`` records the rewards
partitions' end offsets after its commit in the state arrays; ``restore`` reads the committed
rewards after them and does not produce those ``(request_id, item_id)`` again while it replays
(``suppressed_replays``; the keys are dropped at the next pause). Without an id, restoring the last
checkpoint re-sends the rewards produced since it: the same records (the core is deterministic),
which consumers de-duplicate on ``(request_id, item_id)``.

Idle feedback partitions: with ``idle_timeout_s``, a feedback partition from which nothing has
arrived for that long *and* which has nothing left to read lets its watermark follow the
impression watermark (``EventTimeJoiner.mark_feedback_idle``). This is the one use of wall time:
without it a partition with no clicks never closes its windows; with it, feedback that arrives
after the idle mark and below the raised watermark is late.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import ray
from kafka.errors import KafkaTimeoutError
from numpy.typing import NDArray

from recsys.events import Feedback, Impression, Reward, encode
from recsys.kafka_clients import kafka_python_options
from recsys.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, REWARDS
from streaming.consumer import ConsumedEvent, EventConsumer
from streaming.join import EventTimeJoiner, JoinOutput, Rejected
from streaming.reading import ConsumingActor, Offsets, dead_letter_choice, output_producer
from streaming.topics import check_co_partitioned, cluster_layout

StateArrays = dict[str, NDArray[Any]]
# Read-back (module docs): the joiner's rewards partitions and their end offsets after its commit
# at the pause, kept beside the core's arrays in the checkpoint state.
READ_BACK_PARTITIONS = "rewards_partitions"
READ_BACK_OFFSETS = "rewards_offsets"
READ_BACK_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 30.0
"""How long a pause or restore waits for its rewards transactions' markers (``_settled_ends``)."""


class Joiner(ConsumingActor):
    """Joins impressions and feedback of the given co-partitions into rewards on Kafka."""

    role = "joiner"

    def __init__(
        self,
        bootstrap: str,
        partitions: Iterable[int],
        window_ms: int,
        allowed_lateness_ms: int = 0,
        reward_mapping: Mapping[str, float] | None = None,
        *,
        impressions_topic: str = IMPRESSIONS,
        feedback_topic: str = FEEDBACK,
        rewards_topic: str = REWARDS,
        dead_letter_topic: str = DEAD_LETTER,
        idle_timeout_s: float | None = None,
        client_options: Mapping[str, object] | None = None,
        transactional_id: str | None = None,
        dead_letter_topics: Collection[str] | None = None,
    ) -> None:
        """``transactional_id``: write rewards and dead letters in transactions committed by
        ``pause`` (module docs); ``dead_letter_topics``: the input topics whose undecodable
        records this joiner dead-letters (None: impressions and feedback, which joiners own)."""
        self._partitions = sorted({int(p) for p in partitions})
        if not self._partitions:
            raise ValueError("partitions: give at least one co-partition index to join")
        self.core = EventTimeJoiner(window_ms, allowed_lateness_ms, reward_mapping)
        self._topics = {Impression: impressions_topic, Feedback: feedback_topic}
        self._rewards_topic = rewards_topic
        self._dead_letter_topic = dead_letter_topic
        self._idle_timeout_s = idle_timeout_s
        options = dict(client_options or {})
        _check_layout(bootstrap, impressions_topic, feedback_topic, rewards_topic, options)
        self._producer = output_producer(bootstrap, transactional_id, options)
        # both topics of each co-partition
        self._assignment = [(topic, p) for p in self._partitions for topic in self._topics.values()]
        self._consumer = EventConsumer(
            bootstrap,
            self._assignment,
            dead_letter_topic=dead_letter_topic,
            expected_types={impressions_topic: Impression, feedback_topic: Feedback},
            dead_letter_producer=self._producer,
            dead_letter=dead_letter_choice(dead_letter_topics, self._topics.values(), self.role),
            **options,
        )
        # the committed rewards of its partitions, read back on restore (module docs)
        self._rewards_reader = None if transactional_id is None else EventConsumer(
            bootstrap, [(rewards_topic, p) for p in self._partitions],
            expected_types={rewards_topic: Reward}, dead_letter_producer=self._producer,
            dead_letter=False, **options)
        # the same partitions' high watermarks: what the committed rewards will reach
        self._rewards_watermarks = None if transactional_id is None else EventConsumer(
            bootstrap, [(rewards_topic, p) for p in self._partitions],
            expected_types={rewards_topic: Reward}, dead_letter_producer=self._producer,
            dead_letter=False, isolation_level="read_uncommitted", **options)
        self._replayed: set[tuple[str, int]] = set()
        self.suppressed_replays = 0
        self._paused = False
        self._last_feedback = dict.fromkeys(self._partitions, time.monotonic())
        self.produced: Counter[str] = Counter()

    # -- reading and joining (``step`` and ``drain`` come from ConsumingActor) -----------------

    def _handle(self, batch: list[ConsumedEvent]) -> None:
        self._join(batch)

    def _join(self, batch: list[ConsumedEvent]) -> None:
        by_partition: dict[int, list[ConsumedEvent]] = defaultdict(list)
        for consumed in batch:
            by_partition[consumed.partition].append(consumed)
        rejected: list[Rejected] = []
        now = time.monotonic()
        for partition in sorted(by_partition):
            records = by_partition[partition]
            rejected += self.core.add(
                [c.event for c in records], partition, [c.offset for c in records]
            )
            if any(isinstance(c.event, Feedback) for c in records):
                self._last_feedback[partition] = now
        self._mark_idle(now)
        out, partitions = self._close(final=False)
        self._send(out.rewards, partitions, rejected + out.rejected)

    def _close(self, final: bool) -> tuple[JoinOutput, list[int]]:
        """``core.advance()`` (``core.flush()`` when ``final``), with the partition of each
        reward's impression: where the reward is produced."""
        closed = self.core.join.close(final=final)
        out = self.core._output(closed)
        windows = closed.windows
        widths = [len(imp.slate) for imp in windows["event"].tolist()]
        partitions = np.repeat(np.asarray(windows["partition"], np.int64), widths).tolist()
        if len(partitions) != len(out.rewards):
            raise RuntimeError(f"joiner: {len(out.rewards)} rewards for {len(partitions)} "
                               "slate entries of the closed windows (a bug)")
        return out, partitions

    def _mark_idle(self, now: float) -> None:
        if self._idle_timeout_s is None:
            return
        quiet = [p for p, t in self._last_feedback.items() if now - t >= self._idle_timeout_s]
        if not quiet:
            return
        ends, positions = self._consumer.end_offsets(), self._consumer.positions()
        feedback_topic = self._topics[Feedback]
        for p in quiet:
            if positions[(feedback_topic, p)] >= ends[(feedback_topic, p)]:
                self.core.mark_feedback_idle(p)
                self._last_feedback[p] = now

    def _send(self, rewards: list[Reward], partitions: list[int],
              rejected: list[Rejected]) -> None:
        self._begin_output()
        replayed, topic, send = self._replayed, self._rewards_topic, self._producer.send_raw
        sent = 0
        for reward, partition in zip(rewards, partitions, strict=True):
            if replayed and (reward.request_id, reward.item_id) in replayed:
                continue  # committed before the crash (read-back, module docs)
            send(topic, reward.key, encode(reward), partition)
            sent += 1
        self.suppressed_replays += len(rewards) - sent
        self.produced["rewards"] += sent
        for item in rejected:
            self._producer.send_dead_letter(
                self._dead_letter_topic, source_topic=self._topics[type(item.event)],
                partition=item.partition, offset=item.offset, key=item.event.key,
                value=encode(item.event), reason=item.reason)
        self.produced["dead_letters"] += len(rejected)

    def flush_windows(self) -> int:
        """Close every window and expire held feedback (end of a bounded replay); returns the
        rewards sent. Durable once ``pause`` returns (or ``close``, without a transactional id)."""
        out, partitions = self._close(final=True)
        self._send(out.rewards, partitions, out.rejected)
        return len(out.rewards)

    # -- checkpoint hooks --------------------------------------------------------------------

    def pause(self) -> tuple[Offsets, StateArrays]:
        """Stop reading; returns the offsets and the core's state arrays, with every reward and
        dead letter for the records before those offsets acknowledged by the broker (committed,
        with a transactional id; the state then also holds the rewards partitions' end offsets
        after the commit, for read-back)."""
        self._paused = True
        self._commit_output()
        self._replayed = set()  # the replay has passed the cut those keys were committed before
        state = self.core.state_arrays()
        if self._rewards_reader is not None:
            ends = self._settled_ends()
            state[READ_BACK_PARTITIONS] = np.array(self._partitions, np.int64)
            state[READ_BACK_OFFSETS] = np.array(
                [ends[(self._rewards_topic, p)] for p in self._partitions], np.int64)
        return self.positions(), state

    def restore(self, offsets: Mapping[tuple[str, int], int],
                state: StateArrays | None = None) -> None:
        """Seek every assigned partition to a checkpoint's offsets and rebuild the join state
        (``state`` None: a first start at ``offsets``, with an empty join state)."""
        mine = set(self.assignment())
        if set(offsets) != mine:
            raise ValueError(
                f"restore: the checkpoint's partitions {sorted(offsets)} do not match this "
                f"joiner's assignment {sorted(mine)}; restore with the assignment it was taken "
                "with"
            )
        core = self.core if state is None else EventTimeJoiner.from_state_arrays(state)
        self._abort_output()
        self._consumer.seek(offsets)
        self.core = core
        self._replayed = self._read_back(state)
        self._begin_output()

    def _read_back(self, state: StateArrays | None) -> set[tuple[str, int]]:
        """The ``(request_id, item_id)`` of the rewards committed on this joiner's partitions
        after the offsets its pause recorded in ``state`` (module docs); none without a
        transactional id or such a record. Runs after this producer's init (or abort), so no
        transaction of a predecessor is still open."""
        if (self._rewards_reader is None or state is None
                or READ_BACK_OFFSETS not in state or READ_BACK_PARTITIONS not in state):
            return set()
        recorded = dict(zip(np.asarray(state[READ_BACK_PARTITIONS]).tolist(),
                            np.asarray(state[READ_BACK_OFFSETS]).tolist(), strict=True))
        if set(recorded) != set(self._partitions):
            raise ValueError(
                f"restore: the state's rewards partitions {sorted(recorded)} are not this "
                f"joiner's partitions {self._partitions}; restore with the assignment it was "
                "taken with")
        since = {(self._rewards_topic, p): int(o) for p, o in recorded.items()}
        self._rewards_reader.seek(since)
        ends = self._settled_ends()
        committed = self._rewards_reader.read_until(ends, timeout_s=READ_BACK_TIMEOUT_S)
        return {(c.event.request_id, c.event.item_id) for c in committed}

    def _settled_ends(self) -> Offsets:
        """The rewards partitions' end offsets once every transaction on them is settled.

        A commit (or a fencing abort) returns when the transaction coordinator has logged it;
        the markers reach the partitions afterwards, and until then the last stable offset (what
        read_committed readers reach) stays below the committed records. Waiting until it meets
        the high watermark makes the offsets recorded for read-back, and the lake's targets the
        coordinator reads next, include everything committed."""
        assert self._rewards_reader is not None and self._rewards_watermarks is not None
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            stable = self._rewards_reader.end_offsets()
            high = self._rewards_watermarks.end_offsets()
            if all(stable[tp] >= high[tp] for tp in high):
                return stable
            if time.monotonic() > deadline:
                raise KafkaTimeoutError(
                    f"joiner: the rewards transactions on {sorted(high)} did not settle in "
                    f"{SETTLE_TIMEOUT_S:g} s (last stable offsets {stable}, high watermarks "
                    f"{high}); is a foreign transactional producer writing to the rewards topic?")
            time.sleep(0.02)

    def counters(self) -> dict[str, int]:
        """Counters: the core's (events, joins, rejections by reason), records sent, records
        that failed to decode, and the state held now."""
        return {
            **self.core.counts,
            **{f"sent_{k}": v for k, v in self.produced.items()},
            "undecodable": self._consumer.dead_lettered,
            "sent_undecodable": self._consumer.dead_letters_sent,
            "suppressed_replays": self.suppressed_replays,
            "open_impressions": self.core.open_impressions,
            "held_feedback": self.core.held_feedback,
        }

    def close(self) -> None:
        """Make everything sent durable (with a transactional id: commit if paused, else abort;
        ``streaming.reading``) and close the Kafka clients."""
        try:
            self._close_output()
        finally:
            try:
                self._consumer.close()
                if self._rewards_reader is not None:
                    self._rewards_reader.close()
                if self._rewards_watermarks is not None:
                    self._rewards_watermarks.close()
            finally:
                self._producer.close()


def _check_layout(bootstrap: str, impressions: str, feedback: str, rewards: str,
                  options: Mapping[str, object]) -> None:
    """Refuse topics whose partition counts differ: the joiner reads co-partitions of impressions
    and feedback and writes each reward to its impression's partition of ``rewards``."""
    layout = cluster_layout(bootstrap, [impressions, feedback, rewards],
                            **kafka_python_options(options))
    check_co_partitioned(layout.partitions, [(impressions, feedback, rewards)])


JoinerActor = ray.remote(num_cpus=0.5)(Joiner)

