"""The joiner as a Ray actor: reads co-partitioned impressions and feedback from Kafka, joins them
in event time (``streaming.join.EventTimeJoiner``, the join rules the learners use too) and writes
rewards and dead letters.

``Joiner`` owns partitions ``p`` of both ``recsys.impressions`` and ``recsys.feedback`` for each
``p`` it is given (explicit assignment, no consumer group), so every event of a request reaches the
same joiner. ``step`` reads one batch, feeds each partition's events to the core in partition
order, advances the watermarks and sends the closed windows' rewards (key = request id) with the
idempotent ``EventProducer``; records that fail to decode, and events the join rejects, go to the
dead-letter topic with their reason. Nothing is buffered between calls: after ``step`` returns,
the core's state reflects exactly the records before ``positions()``.

Checkpoint hooks: ``pause`` stops reading, makes every reward and dead letter sent so far durable
and returns ``(offsets, state arrays)``, a consistent cut to store in a ``Checkpoint`` (offsets
in ``offsets``, arrays under ``state[<joiner name>]``); ``restore`` seeks to the offsets and
rebuilds the core; ``resume`` reads on. After a crash, restoring the last checkpoint re-sends the
rewards produced since it: the same records (the core is deterministic), which consumers
de-duplicate on ``(request_id, item_id)``.

Idle feedback partitions: with ``idle_timeout_s``, a feedback partition from which nothing has
arrived for that long *and* which has nothing left to read lets its watermark follow the
impression watermark (``EventTimeJoiner.mark_feedback_idle``). This is the one use of wall time:
without it a partition with no clicks never closes its windows; with it, feedback that arrives
after the idle mark and below the raised watermark is late.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import ray
from numpy.typing import NDArray

from recsys.events import Feedback, Impression, encode
from recsys.producer import EventProducer
from recsys.topics import DEAD_LETTER, FEEDBACK, IMPRESSIONS, REWARDS
from streaming.consumer import ConsumedEvent, EventConsumer
from streaming.join import EventTimeJoiner, Rejected
from streaming.reading import ConsumingActor, Offsets

StateArrays = dict[str, NDArray[Any]]


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
    ) -> None:
        self._partitions = sorted({int(p) for p in partitions})
        if not self._partitions:
            raise ValueError("partitions: give at least one co-partition index to join")
        self.core = EventTimeJoiner(window_ms, allowed_lateness_ms, reward_mapping)
        self._topics = {Impression: impressions_topic, Feedback: feedback_topic}
        self._rewards_topic = rewards_topic
        self._dead_letter_topic = dead_letter_topic
        self._idle_timeout_s = idle_timeout_s
        options = dict(client_options or {})
        self._producer = EventProducer(bootstrap, transactional_id=transactional_id, **options)
        # both topics of each co-partition
        self._assignment = [(topic, p) for p in self._partitions for topic in self._topics.values()]
        self._consumer = EventConsumer(
            bootstrap,
            self._assignment,
            dead_letter_topic=dead_letter_topic,
            expected_types={impressions_topic: Impression, feedback_topic: Feedback},
            dead_letter_producer=self._producer,
            **options,
        )
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
        out = self.core.advance()
        self._send(out.rewards, rejected + out.rejected)

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

    def _send(self, rewards: list, rejected: list[Rejected]) -> None:
        for reward in rewards:
            self._producer.send(reward, self._rewards_topic)
        self.produced["rewards"] += len(rewards)
        for item in rejected:
            self._producer.send_dead_letter(
                self._dead_letter_topic, source_topic=self._topics[type(item.event)],
                partition=item.partition, offset=item.offset, key=item.event.key,
                value=encode(item.event), reason=item.reason)
        self.produced["dead_letters"] += len(rejected)

    def flush_windows(self) -> int:
        """Close every window and expire held feedback (end of a bounded replay); returns the
        rewards sent. Durable once ``pause`` or ``close`` returns."""
        out = self.core.flush()
        self._send(out.rewards, out.rejected)
        return len(out.rewards)

    # -- checkpoint hooks --------------------------------------------------------------------

    def pause(self) -> tuple[Offsets, StateArrays]:
        """Stop reading; returns the offsets and the core's state arrays, with every reward and
        dead letter for the records before those offsets acknowledged by the broker."""
        self._paused = True
        self._commit_output()
        return self.positions(), self.core.state_arrays()

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
        self._begin_output()

    def counters(self) -> dict[str, int]:
        """Counters: the core's (events, joins, rejections by reason), records sent, records
        that failed to decode, and the state held now."""
        return {
            **self.core.counts,
            **{f"sent_{k}": v for k, v in self.produced.items()},
            "undecodable": self._consumer.dead_lettered,
            "open_impressions": self.core.open_impressions,
            "held_feedback": self.core.held_feedback,
        }

    def close(self) -> None:
        """Make everything sent durable and close the Kafka clients."""
        try:
            self._close_output()
        finally:
            self._consumer.close()
            self._producer.close()


JoinerActor = ray.remote(num_cpus=0.5)(Joiner)
