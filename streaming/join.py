"""Event-time join of impressions and feedback into rewards: pure logic, no Kafka, no Ray.

``EventTimeJoiner`` turns a stream of ``Impression`` and ``Feedback`` events into exactly one
``Reward`` per shown item, emitted when that item's attribution window has closed. The Ray actor
in ``streaming.joiner`` feeds it from Kafka; everything that decides *what* is emitted lives here.

Design decisions
----------------
* **Attribution window.** Feedback counts for a shown item when its event time lies in
  ``[impression time, impression time + window_ms)``. The reward is the **max** of the mapped
  values of the item's feedback (``reward_mapping``: event type -> reward, e.g. click 1, purchase 1,
  skip 0), or 0 when none came. Max is order-independent and idempotent, so neither arrival order
  nor a duplicated record can change a reward. ``Feedback.value`` is not used: rewards come from
  the mapping alone. A reward's event time is its impression's event time.
* **Watermarks per input partition and stream.** Impressions and feedback are co-partitioned by
  request id, so impressions of partition ``p`` can only be joined with feedback of partition
  ``p``. The joiner keeps, per ``p``, the largest event time seen on each stream; a stream's
  watermark is that minus ``allowed_lateness_ms``. An event whose time is below its own stream's
  watermark on arrival is **late**. An impression's window closes when the *feedback* watermark of
  its partition reaches the window's end (no on-time feedback inside the window can come any
  more); other partitions cannot stall it (unlike a global minimum, as Flink takes, which an idle
  partition holds back).
* **Determinism.** Every decision depends only on the order of events within each (stream,
  partition), which Kafka fixes, never on how the partitions or the two streams interleave, nor on
  where ``add`` batches are cut or when ``advance`` runs: on-time feedback inside its window always
  finds its impression's window open, and held feedback only expires once no on-time impression
  can match it. A replay after a crash therefore produces the same records. Within one
  ``advance`` rewards are ordered by (event time, request id, position). A reward's Kafka key is
  its request id (the contract); ``(request_id, item_id)`` identifies it, and downstream consumers
  de-duplicate on that pair (a replay re-sends the same records).

Edge cases (each rejected event comes back as a ``Rejected`` with a reason whose prefix, before the
first colon, is one of ``Reason``'s values; the actor sends it to the dead-letter topic):

* feedback before its impression arrives: held, and joined when the impression arrives; once the
  impression watermark of its partition has passed the feedback's event time no on-time impression
  can match it, and it is rejected (``no impression``);
* duplicate feedback (same item, type, event time and value): counted in
  ``counts["duplicate_feedback"]`` and otherwise ignored; any repeat is harmless anyway under max;
* feedback for an item not in the slate, or at another position than shown: ``item not in the
  slate``; from another user than the impression's: ``user mismatch``;
* feedback before the impression's event time or at/after the window's end: ``feedback before its
  impression`` / ``feedback outside the attribution window``;
* late feedback (below its partition's feedback watermark; its window may have closed): ``late
  feedback``, counted in ``counts["late feedback"]``;
* feedback of a type the mapping does not name: ``unmapped feedback type`` (a mapping that forgets
  a type shows up at once instead of silently turning those events into zeros). ``dwell`` and
  ``rating`` are unmapped by default: their reward depends on the value, which the mapping does
  not express;
* late impressions: ``late impression`` (no training example; the learners skip them too, so
  the bandit statistics stay equal to learning the joined examples);
* an impression repeated while its request is open: identical ->
  ``counts["duplicate_impressions"]``; different -> ``conflicting impression``. A repeat arriving
  after the window closed opens the request again and re-emits its rewards (same keys;
  downstream de-duplication drops them).

An idle feedback partition holds its windows open; ``mark_feedback_idle`` lets its watermark follow
the impression watermark (the actor calls it on processing time, the one place where wall time,
and with it non-determinism, enters). ``flush`` closes everything at the end of a bounded replay.

The state (open impressions, collected feedback, held feedback, clocks, counters) round-trips
through plain numpy arrays (``state_arrays`` / ``from_state_arrays``) for a checkpoint's ``.npz``.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np
from numpy.typing import NDArray

from recsys.events import Context, Feedback, FeedbackType, Impression, Reward, SlateEntry

FEEDBACK_TYPES: frozenset[str] = frozenset(get_args(FeedbackType))
DEFAULT_REWARD_MAPPING: dict[str, float] = {
    "click": 1.0,
    "add_to_cart": 1.0,
    "purchase": 1.0,
    "skip": 0.0,
}
STATE_FORMAT = "recsys.joiner.state/1"
NO_TIME = -(2**62)  # "nothing seen yet" for a clock; far below any event time, no overflow


class Reason:
    """Why an event was rejected: the prefix of ``Rejected.reason`` and a dead-letter counter."""

    LATE_FEEDBACK = "late feedback"
    LATE_IMPRESSION = "late impression"
    NO_IMPRESSION = "no impression"
    BEFORE_IMPRESSION = "feedback before its impression"
    OUTSIDE_WINDOW = "feedback outside the attribution window"
    NOT_IN_SLATE = "item not in the slate"
    USER_MISMATCH = "user mismatch"
    UNMAPPED_TYPE = "unmapped feedback type"
    CONFLICTING_IMPRESSION = "conflicting impression"


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event the join refused, where it came from, and why (``category: detail``)."""

    event: Impression | Feedback
    partition: int
    offset: int
    reason: str

    @property
    def category(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class JoinOutput:
    """What one ``advance`` produced: closed windows' rewards and expired held feedback."""

    rewards: list[Reward] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(slots=True)
class _Clock:
    """Largest event time seen per stream of one partition."""

    impression_max: int = NO_TIME
    feedback_max: int = NO_TIME


@dataclass(slots=True)
class _Open:
    """An impression whose window is open: its rewards so far (None: no feedback yet)."""

    impression: Impression
    partition: int
    offset: int
    rewards: list[float | None]
    seen: set[tuple[int, str, int, float]]
    items: list[int] | None = None  # slate item ids, built on the first feedback


_Held = tuple[Feedback, int, int]  # feedback, partition, offset


class EventTimeJoiner:
    """Joins impressions and feedback in event time; see the module docstring for the rules.

    ``add(events, partition, offsets)`` takes a batch read from one partition (impressions and
    feedback mixed, in partition order) and returns the events rejected on arrival;
    ``advance()`` returns the rewards whose windows have closed and the held feedback that expired.
    """

    def __init__(
        self,
        window_ms: int,
        allowed_lateness_ms: int = 0,
        reward_mapping: Mapping[str, float] | None = None,
    ) -> None:
        self.window_ms = _non_negative_int("window_ms", window_ms, positive=True)
        self.allowed_lateness_ms = _non_negative_int("allowed_lateness_ms", allowed_lateness_ms)
        self.reward_mapping = _check_mapping(
            DEFAULT_REWARD_MAPPING if reward_mapping is None else reward_mapping
        )
        self.counts: Counter[str] = Counter()
        self._clocks: dict[int, _Clock] = {}
        self._open: dict[str, _Open] = {}
        self._held: dict[str, list[_Held]] = {}
        self._closing: dict[int, list[tuple[int, str]]] = {}  # per partition: (window end, rid)
        self._expiring: dict[int, list[tuple[int, str]]] = {}  # per partition: (time, rid)

    # -- introspection ---------------------------------------------------------------------

    @property
    def open_impressions(self) -> int:
        return len(self._open)

    @property
    def held_feedback(self) -> int:
        return sum(len(held) for held in self._held.values())

    def watermarks(self) -> dict[int, tuple[int | None, int | None]]:
        """Per partition: (impression watermark, feedback watermark), None before any event."""
        lateness = self.allowed_lateness_ms
        return {
            p: (
                None if c.impression_max == NO_TIME else c.impression_max - lateness,
                None if c.feedback_max == NO_TIME else c.feedback_max - lateness,
            )
            for p, c in sorted(self._clocks.items())
        }

    # -- input -----------------------------------------------------------------------------

    def add(
        self,
        events: Iterable[Impression | Feedback],
        partition: int = 0,
        offsets: Sequence[int] | None = None,
    ) -> list[Rejected]:
        """Take a batch of one partition's events, in partition order; returns those rejected.

        ``offsets`` (one per event) are carried into ``Rejected`` for dead letters; -1 without.
        """
        events = list(events)
        if offsets is None:
            offsets = [-1] * len(events)
        elif len(offsets) != len(events):
            raise ValueError(f"offsets: got {len(offsets)} for {len(events)} events; give one "
                             "per event, or none")
        partition = int(partition)
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self._clocks[partition] = _Clock()
            self._closing[partition] = []
            self._expiring[partition] = []
        rejected: list[Rejected] = []
        for event, offset in zip(events, offsets, strict=True):
            if isinstance(event, Feedback):
                self._add_feedback(event, partition, int(offset), clock, rejected)
            elif isinstance(event, Impression):
                self._add_impression(event, partition, int(offset), clock, rejected)
            else:
                raise TypeError(
                    f"add: expected Impression or Feedback events, got {type(event).__name__}"
                )
        return rejected

    def _add_impression(
        self, imp: Impression, partition: int, offset: int, clock: _Clock, out: list[Rejected]
    ) -> None:
        self.counts["impressions"] += 1
        time = imp.event_time_ms
        watermark = clock.impression_max - self.allowed_lateness_ms
        if time < watermark:
            self._reject(out, imp, partition, offset, Reason.LATE_IMPRESSION,
                         f"event time {time} is below the impression watermark {watermark} of "
                         f"partition {partition} (allowed lateness {self.allowed_lateness_ms} ms)")
            return
        if time > clock.impression_max:
            clock.impression_max = time
        rid = imp.request_id
        existing = self._open.get(rid)
        if existing is not None:
            if existing.impression == imp:
                self.counts["duplicate_impressions"] += 1
            else:
                self._reject(out, imp, partition, offset, Reason.CONFLICTING_IMPRESSION,
                             f"request {rid!r} is already open with a different impression")
            return
        opened = _Open(imp, partition, offset, [None] * len(imp.slate), set())
        self._open[rid] = opened
        heapq.heappush(self._closing[partition], (time + self.window_ms, rid))
        held = self._held.pop(rid, None)
        if held:
            for feedback, fb_partition, fb_offset in held:
                self._attribute(opened, feedback, fb_partition, fb_offset, out)

    def _add_feedback(
        self, fb: Feedback, partition: int, offset: int, clock: _Clock, out: list[Rejected]
    ) -> None:
        self.counts["feedback"] += 1
        time = fb.event_time_ms
        watermark = clock.feedback_max - self.allowed_lateness_ms
        if time > clock.feedback_max:
            clock.feedback_max = time
        if fb.event_type not in self.reward_mapping:
            self._reject(out, fb, partition, offset, Reason.UNMAPPED_TYPE,
                         f"event type {fb.event_type!r} has no reward in the mapping "
                         f"{sorted(self.reward_mapping)}; add it to reward_mapping")
            return
        if time < watermark:
            self._reject(out, fb, partition, offset, Reason.LATE_FEEDBACK,
                         f"event time {time} is below the feedback watermark {watermark} of "
                         f"partition {partition} (allowed lateness {self.allowed_lateness_ms} ms);"
                         " its attribution window may have closed")
            return
        opened = self._open.get(fb.request_id)
        if opened is None:
            self._held.setdefault(fb.request_id, []).append((fb, partition, offset))
            heapq.heappush(self._expiring[partition], (time, fb.request_id))
            self.counts["held_feedback"] += 1
            return
        self._attribute(opened, fb, partition, offset, out)

    def _attribute(
        self, opened: _Open, fb: Feedback, partition: int, offset: int, out: list[Rejected]
    ) -> None:
        imp = opened.impression
        time, start = fb.event_time_ms, imp.event_time_ms
        if time < start:
            self._reject(out, fb, partition, offset, Reason.BEFORE_IMPRESSION,
                         f"event time {time} precedes the impression's {start}")
            return
        if time >= start + self.window_ms:
            self._reject(out, fb, partition, offset, Reason.OUTSIDE_WINDOW,
                         f"event time {time} is at or after the window end "
                         f"{start + self.window_ms} (window {self.window_ms} ms)")
            return
        if fb.user_id != imp.user_id:
            self._reject(out, fb, partition, offset, Reason.USER_MISMATCH,
                         f"feedback from user {fb.user_id!r}, impression for {imp.user_id!r}")
            return
        if opened.items is None:
            opened.items = [entry.item_id for entry in imp.slate]
        index = opened.items.index(fb.item_id) if fb.item_id in opened.items else -1
        if index < 0:
            self._reject(out, fb, partition, offset, Reason.NOT_IN_SLATE,
                         f"item {fb.item_id} was not shown in request {fb.request_id!r}")
            return
        entry = imp.slate[index]
        if entry.position != fb.position:
            self._reject(out, fb, partition, offset, Reason.NOT_IN_SLATE,
                         f"item {fb.item_id} was shown at position {entry.position}, the "
                         f"feedback says {fb.position}")
            return
        key = (fb.item_id, fb.event_type, time, fb.value)
        if key in opened.seen:
            self.counts["duplicate_feedback"] += 1
            return
        opened.seen.add(key)
        value = self.reward_mapping[fb.event_type]
        current = opened.rewards[index]
        opened.rewards[index] = value if current is None or value > current else current
        self.counts["joined_feedback"] += 1

    def _reject(
        self,
        out: list[Rejected],
        event: Impression | Feedback,
        partition: int,
        offset: int,
        category: str,
        detail: str,
    ) -> None:
        self.counts[category] += 1
        out.append(Rejected(event, partition, offset, f"{category}: {detail}"))

    def mark_feedback_idle(self, partition: int) -> None:
        """Partition ``partition``'s feedback stream is idle: raise its feedback clock to its
        impression clock, so windows can close. Feedback arriving later below the raised
        watermark is late. Uses no wall time itself; the caller decides when a stream is idle."""
        clock = self._clocks.get(int(partition))
        if clock is not None and clock.impression_max > clock.feedback_max:
            clock.feedback_max = clock.impression_max

    # -- output ----------------------------------------------------------------------------

    def advance(self) -> JoinOutput:
        """Rewards of every window the watermarks have closed, and held feedback that no on-time
        impression can match any more (rejected, ``no impression``)."""
        return self._advance(final=False)

    def flush(self) -> JoinOutput:
        """Close every window and reject all held feedback: the end of a bounded replay."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> JoinOutput:
        lateness = self.allowed_lateness_ms
        closed: list[_Open] = []
        expired: list[_Held] = []
        for partition, clock in self._clocks.items():
            closing = self._closing[partition]
            feedback_watermark = clock.feedback_max - lateness
            while closing and (final or closing[0][0] <= feedback_watermark):
                _, rid = heapq.heappop(closing)
                closed.append(self._open.pop(rid))
            expiring = self._expiring[partition]
            impression_watermark = clock.impression_max - lateness
            while expiring and (final or expiring[0][0] < impression_watermark):
                _, rid = heapq.heappop(expiring)
                held = self._held.get(rid)
                if not held:
                    continue  # joined when its impression came, or expired with an earlier entry
                gone = [h for h in held if final or h[0].event_time_ms < impression_watermark]
                kept = [h for h in held if not (final or h[0].event_time_ms < impression_watermark)]
                expired += gone
                if kept:
                    self._held[rid] = kept
                else:
                    del self._held[rid]
        closed.sort(key=lambda o: (o.impression.event_time_ms, o.impression.request_id))
        rewards = [reward for opened in closed for reward in _rewards_of(opened)]
        self.counts["rewards"] += len(rewards)
        expired.sort(key=lambda h: (h[0].event_time_ms, h[0].request_id, h[1], h[2]))
        rejected: list[Rejected] = []
        for feedback, partition, offset in expired:
            self._reject(rejected, feedback, partition, offset, Reason.NO_IMPRESSION,
                         f"no on-time impression of request {feedback.request_id!r} arrived "
                         "(never served, rejected, already closed, or later than the allowed "
                         "lateness)")
        return JoinOutput(rewards, rejected)

    # -- checkpoint state ------------------------------------------------------------------

    def state_arrays(self) -> dict[str, NDArray[Any]]:
        """Everything the joiner holds, as plain numpy arrays (no objects; ``.npz``-safe)."""
        opened = list(self._open.values())
        imps = [o.impression for o in opened]
        slates = [imp.slate for imp in imps]
        contexts = [imp.context for imp in imps]
        held = [h for group in self._held.values() for h in group]
        seen = [(owner, *key) for owner, o in enumerate(opened) for key in sorted(o.seen)]
        clocks = sorted(self._clocks.items())
        counts = sorted(self.counts.items())
        return {
            "format": np.array(STATE_FORMAT),
            "window_ms": np.array(self.window_ms, dtype=np.int64),
            "allowed_lateness_ms": np.array(self.allowed_lateness_ms, dtype=np.int64),
            "mapping_types": _strings(list(self.reward_mapping)),
            "mapping_values": np.array(list(self.reward_mapping.values()), dtype=np.float64),
            "count_names": _strings([name for name, _ in counts]),
            "count_values": np.array([v for _, v in counts], dtype=np.int64),
            "clock_partition": np.array([p for p, _ in clocks], dtype=np.int64),
            "clock_impression_max": np.array([c.impression_max for _, c in clocks], np.int64),
            "clock_feedback_max": np.array([c.feedback_max for _, c in clocks], np.int64),
            # open impressions, one row each
            "open_request_id": _strings([imp.request_id for imp in imps]),
            "open_user_id": _strings([imp.user_id for imp in imps]),
            "open_policy_name": _strings([imp.policy_name for imp in imps]),
            "open_policy_version": np.array([imp.policy_version for imp in imps], np.int64),
            "open_event_time_ms": np.array([imp.event_time_ms for imp in imps], np.int64),
            "open_schema_version": np.array([imp.schema_version for imp in imps], np.int64),
            "open_partition": np.array([o.partition for o in opened], np.int64),
            "open_offset": np.array([o.offset for o in opened], np.int64),
            "dense_offsets": _offsets(len(c.dense) for c in contexts),
            "dense": _floats(v for c in contexts for v in c.dense),
            "cluster_offsets": _offsets(len(c.cluster_ids) for c in contexts),
            "cluster_ids": np.array([v for c in contexts for v in c.cluster_ids], np.int64),
            "cluster_weights": _floats(v for c in contexts for v in c.cluster_weights),
            # slates, one row per shown item; reward NaN = no feedback yet
            "slate_offsets": _offsets(len(s) for s in slates),
            "slate_item_id": np.array([e.item_id for s in slates for e in s], np.int64),
            "slate_position": np.array([e.position for s in slates for e in s], np.int64),
            "slate_score": _floats(e.score for s in slates for e in s),
            "slate_propensity": _floats(e.propensity for s in slates for e in s),
            "slate_reward": _floats(
                np.nan if r is None else r for o in opened for r in o.rewards
            ),
            # feedback already counted per open impression (duplicate detection)
            "seen_owner": np.array([s[0] for s in seen], np.int64),
            "seen_item_id": np.array([s[1] for s in seen], np.int64),
            "seen_event_type": _strings([s[2] for s in seen]),
            "seen_event_time_ms": np.array([s[3] for s in seen], np.int64),
            "seen_value": _floats(s[4] for s in seen),
            # feedback held for an impression that has not arrived
            "held_request_id": _strings([f.request_id for f, _, _ in held]),
            "held_user_id": _strings([f.user_id for f, _, _ in held]),
            "held_item_id": np.array([f.item_id for f, _, _ in held], np.int64),
            "held_position": np.array([f.position for f, _, _ in held], np.int64),
            "held_event_type": _strings([f.event_type for f, _, _ in held]),
            "held_event_time_ms": np.array([f.event_time_ms for f, _, _ in held], np.int64),
            "held_value": _floats(f.value for f, _, _ in held),
            "held_schema_version": np.array([f.schema_version for f, _, _ in held], np.int64),
            "held_partition": np.array([p for _, p, _ in held], np.int64),
            "held_offset": np.array([o for _, _, o in held], np.int64),
        }

    @classmethod
    def from_state_arrays(cls, arrays: Mapping[str, NDArray[Any]]) -> EventTimeJoiner:
        """Rebuild a joiner from ``state_arrays`` (e.g. a checkpoint's ``.npz``): fed the events
        after the checkpoint's offsets, it emits what an undisturbed joiner would."""
        missing = sorted(set(_STATE_KEYS) - set(arrays))
        if missing:
            raise ValueError(f"joiner state: missing arrays {missing}; is this a joiner's state?")
        if str(arrays["format"]) != STATE_FORMAT:
            raise ValueError(f"joiner state: format {str(arrays['format'])!r}, this build reads "
                             f"{STATE_FORMAT!r}")
        a = {k: np.asarray(arrays[k]) for k in _STATE_KEYS}
        mapping = dict(zip(a["mapping_types"].tolist(), a["mapping_values"].tolist(), strict=True))
        joiner = cls(int(a["window_ms"]), int(a["allowed_lateness_ms"]), mapping)
        joiner.counts.update(
            dict(zip(a["count_names"].tolist(), a["count_values"].tolist(), strict=True))
        )
        for p, imp_max, fb_max in zip(a["clock_partition"].tolist(),
                                      a["clock_impression_max"].tolist(),
                                      a["clock_feedback_max"].tolist(), strict=True):
            joiner._clocks[p] = _Clock(imp_max, fb_max)
            joiner._closing[p] = []
            joiner._expiring[p] = []
        n_open = len(a["open_request_id"])
        for name in ("dense_offsets", "cluster_offsets", "slate_offsets"):
            if len(a[name]) != n_open + 1:
                raise ValueError(f"joiner state: {name} has {len(a[name])} entries for "
                                 f"{n_open} open impressions (expected {n_open + 1})")
        dense, d_off = a["dense"].tolist(), a["dense_offsets"].tolist()
        cids, cws, c_off = a["cluster_ids"].tolist(), a["cluster_weights"].tolist(), \
            a["cluster_offsets"].tolist()
        slate_cols = [a[f"slate_{c}"].tolist()
                      for c in ("item_id", "position", "score", "propensity", "reward")]
        s_off = a["slate_offsets"].tolist()
        opened: list[_Open] = []
        for i, (rid, user, policy, version, time, schema, p, offset) in enumerate(zip(
            a["open_request_id"].tolist(), a["open_user_id"].tolist(),
            a["open_policy_name"].tolist(), a["open_policy_version"].tolist(),
            a["open_event_time_ms"].tolist(), a["open_schema_version"].tolist(),
            a["open_partition"].tolist(), a["open_offset"].tolist(), strict=True,
        )):
            lo, hi = s_off[i], s_off[i + 1]
            columns = (col[lo:hi] for col in slate_cols[:4])
            slate = tuple(
                SlateEntry(item_id=item, position=pos, score=score, propensity=prop)
                for item, pos, score, prop in zip(*columns, strict=True)
            )
            context = Context(
                dense=tuple(dense[d_off[i]:d_off[i + 1]]),
                cluster_ids=tuple(cids[c_off[i]:c_off[i + 1]]),
                cluster_weights=tuple(cws[c_off[i]:c_off[i + 1]]),
            )
            imp = Impression(
                schema_version=schema, request_id=rid, event_time_ms=time, user_id=user,
                context=context, policy_name=policy, policy_version=version, slate=slate,
            )
            rewards = [None if r != r else r for r in slate_cols[4][lo:hi]]  # NaN: none yet
            entry = _Open(imp, p, offset, rewards, set())
            opened.append(entry)
            joiner._open[rid] = entry
            joiner._closing.setdefault(p, []).append((time + joiner.window_ms, rid))
        for owner, item, kind, time, value in zip(
            a["seen_owner"].tolist(), a["seen_item_id"].tolist(),
            a["seen_event_type"].tolist(), a["seen_event_time_ms"].tolist(),
            a["seen_value"].tolist(), strict=True,
        ):
            opened[owner].seen.add((item, kind, time, value))
        for rid, user, item, pos, kind, time, value, schema, p, offset in zip(
            *(a[f"held_{c}"].tolist() for c in (
                "request_id", "user_id", "item_id", "position", "event_type", "event_time_ms",
                "value", "schema_version", "partition", "offset")), strict=True,
        ):
            fb = Feedback(schema_version=schema, request_id=rid, event_time_ms=time,
                          user_id=user, item_id=item, position=pos, event_type=kind, value=value)
            joiner._held.setdefault(rid, []).append((fb, p, offset))
            joiner._expiring.setdefault(p, []).append((time, rid))
        for heap in (*joiner._closing.values(), *joiner._expiring.values()):
            heapq.heapify(heap)
        return joiner


def _rewards_of(opened: _Open) -> list[Reward]:
    """One reward per shown item, in position order (0 where no feedback came)."""
    imp = opened.impression
    order = sorted(range(len(imp.slate)), key=lambda k: imp.slate[k].position)
    return [
        Reward(
            request_id=imp.request_id,
            event_time_ms=imp.event_time_ms,
            user_id=imp.user_id,
            context=imp.context,
            item_id=imp.slate[k].item_id,
            position=imp.slate[k].position,
            reward=0.0 if opened.rewards[k] is None else opened.rewards[k],
            propensity=imp.slate[k].propensity,
            policy_name=imp.policy_name,
            policy_version=imp.policy_version,
        )
        for k in order
    ]


def _strings(values: list[str]) -> NDArray[np.str_]:
    return np.array(values, dtype=np.str_) if values else np.zeros(0, dtype="<U1")


def _floats(values: Iterable[float]) -> NDArray[np.float64]:
    return np.fromiter(values, dtype=np.float64)


def _offsets(lengths: Iterable[int]) -> NDArray[np.int64]:
    sizes = np.fromiter(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _non_negative_int(name: str, value: object, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer number of milliseconds, got {value!r}")
    if value < (1 if positive else 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} ms, got {value}")
    return int(value)


def _check_mapping(mapping: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError("reward_mapping: give a non-empty mapping of feedback type -> reward, "
                         f"e.g. {DEFAULT_REWARD_MAPPING}")
    unknown = sorted(set(mapping) - FEEDBACK_TYPES)
    if unknown:
        raise ValueError(f"reward_mapping: {unknown} are not feedback types; the contract knows "
                         f"{sorted(FEEDBACK_TYPES)}")
    out: dict[str, float] = {}
    for kind, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"reward_mapping[{kind!r}] must be a number, got {value!r}")
        if not np.isfinite(value):
            raise ValueError(f"reward_mapping[{kind!r}] must be finite, got {value}")
        out[str(kind)] = float(value)
    return out


_STATE_KEYS = tuple(EventTimeJoiner(1).state_arrays())
