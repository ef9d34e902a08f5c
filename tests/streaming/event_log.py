"""A generated impression/feedback log with known truth, shared by the streaming tests and
benchmarks: per partition, both streams in arrival order (out of order within the allowed
lateness, feedback before its impression included, optionally with events that must be rejected),
the true reward of every shown (request, item), and helpers to produce it to Kafka and to compute
the statistics the truth implies."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np

from recsys.events import Context, Feedback, Impression, SlateEntry
from recsys.producer import EventProducer

WINDOW = 1_000
LATENESS = 200
MAPPING = {"click": 1.0, "purchase": 1.0, "add_to_cart": 0.5, "skip": 0.0}


@dataclass
class Log:
    """Per partition: impression and feedback streams in arrival order (with their arrival keys,
    for the canonical merge), and the true reward of every shown (request, item)."""

    impressions: dict[int, list[tuple[float, Impression]]] = field(default_factory=dict)
    feedback: dict[int, list[tuple[float, Feedback]]] = field(default_factory=dict)
    truth: dict[tuple[str, int], float] = field(default_factory=dict)
    bad: int = 0  # feedback or impressions that must be rejected

    def merged(self, partition: int) -> list[Impression | Feedback]:
        """The partition's two streams merged by arrival key (ties: impression first)."""
        keyed = [(k, 0, i, e) for i, (k, e) in enumerate(self.impressions[partition])]
        keyed += [(k, 1, i, e) for i, (k, e) in enumerate(self.feedback[partition])]
        return [e for *_, e in sorted(keyed, key=lambda x: x[:3])]

    @property
    def n_events(self) -> int:
        return sum(map(len, self.impressions.values())) + sum(map(len, self.feedback.values()))


def generate_log(seed: int, n_requests: int = 200, partitions: int = 2, slate_size: int = 4,
                 n_items: int = 50, feedback_rate: float = 0.3, messy: bool = False,
                 window: int = WINDOW, lateness: int = LATENESS, max_gap_ms: int = 20) -> Log:
    """Requests every ``max_gap_ms / 2`` ms on average; each shown item gets 0-3 mapped feedback
    events inside its window. Arrival order is event time plus a jitter below the allowed
    lateness, so nothing clean is late but plenty arrives out of order (feedback before its
    impression included). ``messy`` adds events that must be rejected (late, unmapped, not in
    slate, orphans, late impressions) and duplicates that must not change anything."""
    rng = np.random.default_rng(seed)
    log = Log({p: [] for p in range(partitions)}, {p: [] for p in range(partitions)})
    kinds = np.array(sorted(MAPPING))
    jitter = (lambda: rng.uniform(0, lateness)) if lateness else (lambda: 0.0)
    late_tail: dict[int, list[Feedback]] = {p: [] for p in range(partitions)}
    t = 1_000_000
    for r in range(n_requests):
        t += int(rng.integers(0, max_gap_ms))
        rid, user, p = f"req-{r:06d}", f"user-{r % 17}", r % partitions
        items = tuple(int(i) for i in rng.choice(n_items, slate_size, replace=False))
        imp = Impression(
            request_id=rid, event_time_ms=t, user_id=user,
            context=Context(dense=tuple(rng.normal(size=3).tolist())),
            policy_name="ts", policy_version=1,
            slate=tuple(
                SlateEntry(item_id=item, position=k, score=float(rng.normal()),
                           propensity=float(rng.uniform(0.05, 1.0)))
                for k, item in enumerate(items)
            ),
        )
        log.impressions[p].append((t + jitter(), imp))
        for k, item in enumerate(items):
            value = 0.0
            if rng.random() < feedback_rate:
                for _ in range(int(rng.integers(1, 4))):
                    kind = str(rng.choice(kinds))
                    ft = t + int(rng.integers(0, window))
                    fb = Feedback(request_id=rid, event_time_ms=ft, user_id=user, item_id=item,
                                  position=k, event_type=kind)
                    log.feedback[p].append((ft + jitter(), fb))
                    value = max(value, MAPPING[kind])
                    if messy and rng.random() < 0.2:  # a duplicate, a little later
                        log.feedback[p].append((ft + jitter(), fb))
            log.truth[(rid, item)] = value
        if messy:
            roll = rng.random()
            bad_time = t + int(rng.integers(0, window))
            if roll < 0.05:  # unmapped type
                bad = Feedback(request_id=rid, event_time_ms=bad_time, user_id=user,
                               item_id=items[0], position=0, event_type="dwell", value=3.0)
            elif roll < 0.10:  # not in the slate
                bad = Feedback(request_id=rid, event_time_ms=bad_time, user_id=user,
                               item_id=n_items + 1, position=0, event_type="click")
            elif roll < 0.15:  # an orphan: no impression ever
                bad = Feedback(request_id=f"orphan-{r}", event_time_ms=bad_time, user_id=user,
                               item_id=items[0], position=0, event_type="click")
            elif roll < 0.20:  # far beyond the allowed lateness: arrives at the very end
                late_tail[p].append(Feedback(request_id=rid, event_time_ms=t, user_id=user,
                                             item_id=items[0], position=0,
                                             event_type="purchase"))
                log.bad += 1
                bad = None
            else:
                bad = None
            if bad is not None:
                log.feedback[p].append((bad.event_time_ms + jitter(), bad))
                log.bad += 1
            if r >= 4 and rng.random() < 0.03:  # a late impression, and a click for it
                late_rid = f"late-{r}"
                late = Impression(request_id=late_rid, event_time_ms=t - 2 * window - lateness,
                                  user_id=user, context=imp.context, policy_name="ts",
                                  policy_version=1, slate=imp.slate)
                log.impressions[p].append((t + lateness + 1, late))
                click = Feedback(request_id=late_rid, event_time_ms=t, user_id=user,
                                 item_id=items[0], position=0, event_type="click")
                log.feedback[p].append((t + jitter(), click))
                log.bad += 2
    for streams in (log.impressions, log.feedback):
        for p in streams:
            streams[p].sort(key=lambda x: x[0])
    for p, tail in late_tail.items():
        if tail:  # an orphan far ahead moves the feedback clock, then the late ones arrive
            end = t + 10 * window
            clock = Feedback(request_id=f"clock-{p}", event_time_ms=end, user_id="u",
                             item_id=0, position=0, event_type="click")
            log.feedback[p] += [(end, clock)] + [(end + 1, fb) for fb in tail]
            log.bad += 1
    return log


def impressions_of(log: Log) -> dict[str, Impression]:
    return {e.request_id: e for keyed in log.impressions.values() for _, e in keyed}


def truth_stats(base, log: Log, contexts_of):
    """``learn(part="both")`` on the true joined examples: one row per shown (request, item)."""
    imps = impressions_of(log)
    keys = sorted(log.truth)
    events = [imps[rid] for rid, _ in keys]
    items = np.array([item for _, item in keys])
    rewards = np.array([log.truth[k] for k in keys])
    return base.copy().learn(contexts_of(events), items, rewards)


def dense_contexts(events) -> np.ndarray:
    return np.array([e.context.dense for e in events])


def produce_log(bootstrap: str, log: Log, topics: dict[str, str]) -> None:
    """Each stream's events in arrival order; the key puts them on the log's partition."""
    with EventProducer(bootstrap) as producer:
        for role, by_partition in (("imps", log.impressions), ("fbs", log.feedback)):
            for p, keyed in by_partition.items():
                for _, event in keyed:
                    producer.send_raw(topics[role], event.key, msgspec.msgpack.encode(event),
                                      partition=p)
        producer.flush()


def round_robin_batches(log: Log, batch: int) -> list[tuple[int, list]]:
    """(partition, events) batches: ``batch`` events of each partition's merged stream in turn."""
    merged = {p: log.merged(p) for p in log.impressions}
    out = []
    for start in range(0, max(map(len, merged.values())), batch):
        for p, events in merged.items():
            if events[start:start + batch]:
                out.append((p, events[start:start + batch]))
    return out
