"""The event-time joiner's rules on a generated log with known truth, each edge case with its
reason, and the two properties exactly-once recovery stands on: a joiner restored from its state
arrays at any cut emits what an undisturbed one emits, and the outcome does not depend on how the
partitions and the two streams interleave."""

from __future__ import annotations

import io
import itertools
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.events import Context, Feedback, Impression, SlateEntry, validate
from streaming.join import (
    DEFAULT_REWARD_MAPPING,
    EventTimeJoiner,
    JoinOutput,
    Reason,
    Rejected,
)
from tests.streaming.event_log import (
    LATENESS,
    MAPPING,
    WINDOW,
    generate_log,
    round_robin_batches,
)

# -- builders ------------------------------------------------------------------------------


def impression(rid: str, t: int, items: tuple[int, ...] = (10, 11, 12), user: str = "u1",
               dense: tuple[float, ...] = (0.25, -1.5)) -> Impression:
    return Impression(
        request_id=rid,
        event_time_ms=t,
        user_id=user,
        context=Context(dense=dense, cluster_ids=(3, 7), cluster_weights=(0.6, 0.4)),
        policy_name="ts",
        policy_version=4,
        slate=tuple(
            SlateEntry(item_id=item, position=k, score=1.0 - 0.1 * k, propensity=0.5 / (k + 1),
                       propensity_se=0.01 * k)
            for k, item in enumerate(items)
        ),
    )


def feedback(rid: str, t: int, item: int = 10, kind: str = "click", position: int | None = None,
             user: str = "u1", value: float = 1.0) -> Feedback:
    return Feedback(
        request_id=rid,
        event_time_ms=t,
        user_id=user,
        item_id=item,
        position=item - 10 if position is None else position,
        event_type=kind,
        value=value,
    )


def joiner(**kwargs) -> EventTimeJoiner:
    kwargs.setdefault("reward_mapping", MAPPING)
    return EventTimeJoiner(WINDOW, LATENESS, **kwargs)


def rewards_by_key(rewards) -> dict[tuple[str, int], float]:
    keyed = {(r.request_id, r.item_id): r.reward for r in rewards}
    assert len(keyed) == len(rewards), "a (request, item) was emitted twice"
    return keyed


def one_rejection(rejected: list[Rejected], category: str, pattern: str) -> Rejected:
    assert len(rejected) == 1, rejected
    assert rejected[0].category == category
    assert re.search(pattern, rejected[0].reason), rejected[0].reason
    return rejected[0]


# -- a generated log with known truth ------------------------------------------------------


def run(j: EventTimeJoiner, batches: list[tuple[int, list]], flush: bool = True
        ) -> list[JoinOutput]:
    """Feed (partition, events) batches, advancing after each; with ``flush`` the last output is
    a flush."""
    outputs = []
    for partition, events in batches:
        rejected = j.add(events, partition)
        out = j.advance()
        outputs.append(JoinOutput(out.rewards, rejected + out.rejected))
    if flush:
        outputs.append(j.flush())
    return outputs


def cut(events: list, points: list[int]) -> list[list]:
    bounds = sorted({min(max(p, 0), len(events)) for p in points} | {0, len(events)})
    return [events[a:b] for a, b in itertools.pairwise(bounds)]


# -- known truth ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 7, 500])
def test_every_shown_item_gets_exactly_one_reward_with_its_true_value(seed, batch):
    log = generate_log(seed, n_requests=300, partitions=3)
    j = joiner()
    outputs = run(j, round_robin_batches(log, batch))
    rewards = [r for out in outputs for r in out.rewards]
    assert rewards_by_key(rewards) == log.truth
    assert [x for out in outputs for x in out.rejected] == []
    assert j.open_impressions == 0 and j.held_feedback == 0
    n_feedback = sum(map(len, log.feedback.values()))
    assert j.counts["joined_feedback"] == n_feedback
    assert j.counts["rewards"] == len(log.truth)
    # Out of order within the lateness: some feedback did arrive before its impression.
    if batch == 1:
        assert j.counts["held_feedback"] > 0


def test_most_rewards_come_out_before_the_flush_as_the_watermark_advances():
    log = generate_log(3, n_requests=400, partitions=2)
    outputs = run(joiner(), round_robin_batches(log, 50))
    before_flush = sum(len(out.rewards) for out in outputs[:-1])
    assert before_flush > 0.8 * len(log.truth)


def test_the_messy_log_still_gives_the_truth_and_rejects_exactly_the_bad_events():
    log = generate_log(4, n_requests=600, partitions=2, messy=True)
    j = joiner()
    outputs = run(j, round_robin_batches(log, 64))
    keyed = rewards_by_key([r for out in outputs for r in out.rewards])
    assert keyed == log.truth
    rejected = [x for out in outputs for x in out.rejected]
    assert len(rejected) == log.bad > 0
    categories = {x.category for x in rejected}
    assert categories == {Reason.UNMAPPED_TYPE, Reason.NOT_IN_SLATE, Reason.NO_IMPRESSION,
                          Reason.LATE_FEEDBACK, Reason.LATE_IMPRESSION}
    assert j.counts["duplicate_feedback"] > 0


def test_rewards_carry_the_impression_context_propensity_and_policy():
    imp = impression("r", 5_000)
    j = joiner()
    j.add([imp, feedback("r", 5_100, item=11)])
    out = j.flush()
    assert [(r.item_id, r.position, r.reward) for r in out.rewards] == [
        (10, 0, 0.0), (11, 1, 1.0), (12, 2, 0.0)]
    for reward, entry in zip(out.rewards, imp.slate, strict=True):
        assert validate(reward) == reward
        assert reward.context == imp.context
        assert (reward.propensity, reward.propensity_se) == (entry.propensity,
                                                             entry.propensity_se)
        assert (reward.event_time_ms, reward.user_id) == (imp.event_time_ms, imp.user_id)
        assert (reward.policy_name, reward.policy_version) == ("ts", 4)
        assert reward.key == b"r"


def test_several_feedback_types_combine_by_the_max_of_their_mapped_rewards():
    j = EventTimeJoiner(WINDOW, 0, {"click": 1.0, "add_to_cart": 0.5, "skip": -1.0})
    j.add([impression("r", 0, items=(10, 11, 12, 13))])
    j.add([feedback("r", 10, item=10, kind="skip"), feedback("r", 20, item=10, kind="click"),
           feedback("r", 30, item=11, kind="add_to_cart"), feedback("r", 40, item=11, kind="skip"),
           feedback("r", 50, item=12, kind="skip")])
    out = j.flush()
    assert [r.reward for r in out.rewards] == [1.0, 0.5, -1.0, 0.0]


# -- windows and watermarks ----------------------------------------------------------------


def test_a_window_closes_only_when_the_feedback_watermark_reaches_its_end():
    j = joiner()
    j.add([impression("r", 1_000)])
    end = 1_000 + WINDOW
    # Feedback time end + LATENESS - 1 puts the watermark one short of the window's end.
    j.add([feedback("other", end + LATENESS - 1, item=99)])
    assert j.advance().rewards == []
    # On-time feedback inside the window is still accepted, out of order by the lateness.
    assert j.add([feedback("r", end - 1, item=12, kind="purchase")]) == []
    assert j.advance().rewards == []
    j.add([feedback("other", end + LATENESS, item=99)])
    out = j.advance()
    assert rewards_by_key(out.rewards) == {("r", 10): 0.0, ("r", 11): 0.0, ("r", 12): 1.0}
    assert j.watermarks() == {0: (1_000 - LATENESS, end)}


def test_feedback_after_the_window_closed_is_late_counted_and_rejected_with_the_reason():
    j = joiner()
    j.add([impression("r", 1_000), feedback("x", 1_000 + WINDOW + LATENESS, item=99)])
    assert len(j.advance().rewards) == 3
    rejected = j.add([feedback("r", 1_500)])
    one_rejection(rejected, Reason.LATE_FEEDBACK,
                  r"^late feedback: event time 1500 is below the feedback watermark 2000 of "
                  r"partition 0 \(allowed lateness 200 ms\)")
    assert j.counts[Reason.LATE_FEEDBACK] == 1
    assert j.flush().rewards == []  # the closed request is not emitted again


def test_feedback_outside_the_window_or_before_the_impression_is_rejected():
    j = joiner()
    j.add([impression("r", 1_000)])
    one_rejection(j.add([feedback("r", 999)]), Reason.BEFORE_IMPRESSION,
                  r"event time 999 precedes the impression's 1000")
    one_rejection(j.add([feedback("r", 1_000 + WINDOW)]), Reason.OUTSIDE_WINDOW,
                  r"event time 2000 is at or after the window end 2000 \(window 1000 ms\)")
    assert all(r.reward == 0.0 for r in j.flush().rewards)


def test_out_of_order_events_within_the_lateness_are_joined():
    j = joiner()
    events = [feedback("b", 1_300, item=11), impression("a", 1_100), impression("b", 1_000),
              feedback("a", 1_150, item=12), feedback("b", 1_120, item=10, kind="skip")]
    assert j.add(events) == []
    keyed = rewards_by_key(j.flush().rewards)
    assert keyed == {("a", 10): 0.0, ("a", 11): 0.0, ("a", 12): 1.0,
                     ("b", 10): 0.0, ("b", 11): 1.0, ("b", 12): 0.0}


def test_rewards_of_one_advance_are_ordered_by_event_time_request_and_position():
    j = joiner()
    j.add([impression("b", 1_000, items=(12, 10, 11)), impression("a", 1_000),
           impression("c", 900)], partition=1)
    j.add([impression("d", 950)], partition=0)
    out = j.flush()
    keys = [(r.event_time_ms, r.request_id, r.position) for r in out.rewards]
    assert keys == sorted(keys)
    assert [r.request_id for r in out.rewards][::3] == ["c", "d", "a", "b"]


def test_partitions_keep_their_own_watermarks():
    j = joiner()
    j.add([impression("p0", 1_000)], partition=0)
    j.add([impression("p1", 1_000)], partition=1)
    j.add([feedback("x", 5_000, item=99)], partition=1)
    out = j.advance()
    # Partition 1's feedback clock closed its window; partition 0 has seen no feedback yet.
    assert {r.request_id for r in out.rewards} == {"p1"}
    assert j.open_impressions == 1
    # A late event is judged against its own partition's clock only.
    assert j.add([feedback("p0", 1_200)], partition=0) == []


def test_an_idle_feedback_partition_can_follow_the_impression_clock():
    j = joiner()
    j.add([impression("a", 1_000), impression("b", 3_000)])
    assert j.advance().rewards == []  # no feedback yet: windows stay open
    j.mark_feedback_idle(0)
    out = j.advance()
    assert {r.request_id for r in out.rewards} == {"a"}  # 1000 + 1000 <= 3000 - 200
    one_rejection(j.add([feedback("a", 1_500)]), Reason.LATE_FEEDBACK, "below the feedback "
                  "watermark 2800")


# -- held feedback -------------------------------------------------------------------------


def test_feedback_before_its_impression_is_held_then_joined():
    j = joiner()
    assert j.add([feedback("r", 1_050, item=11)]) == []
    assert j.held_feedback == 1 and j.counts["held_feedback"] == 1
    assert j.advance() == JoinOutput([], [])
    j.add([impression("r", 1_000)])
    assert j.held_feedback == 0
    assert rewards_by_key(j.flush().rewards)[("r", 11)] == 1.0


def test_held_feedback_expires_when_no_on_time_impression_can_match_it():
    j = joiner()
    j.add([feedback("ghost", 1_050, item=11)])
    j.add([impression("r", 1_250)])  # impression watermark 1050: an impression at 1050 may come
    assert j.advance().rejected == []
    j.add([impression("s", 1_251)])  # watermark 1051 > 1050: it can no longer come on time
    out = j.advance()
    one_rejection(out.rejected, Reason.NO_IMPRESSION,
                  r"^no impression: no on-time impression of request 'ghost' arrived")
    assert j.held_feedback == 0 and j.counts[Reason.NO_IMPRESSION] == 1


def test_flush_rejects_all_held_feedback():
    j = joiner()
    j.add([feedback("ghost", 1_050)], partition=3, offsets=[17])
    out = j.flush()
    rejected = one_rejection(out.rejected, Reason.NO_IMPRESSION, "'ghost'")
    assert (rejected.partition, rejected.offset) == (3, 17)


def test_held_feedback_is_checked_against_the_slate_when_the_impression_arrives():
    j = joiner()
    j.add([feedback("r", 1_050, item=77)], offsets=[5])
    rejected = j.add([impression("r", 1_000)], offsets=[6])
    shown = one_rejection(rejected, Reason.NOT_IN_SLATE,
                          r"^item not in the slate: item 77 was not shown in request 'r'")
    assert shown.offset == 5


# -- bad and repeated input ----------------------------------------------------------------


def test_duplicate_feedback_is_idempotent_and_counted():
    j = joiner()
    j.add([impression("r", 1_000)])
    click = feedback("r", 1_100, item=10)
    assert j.add([click, click, feedback("r", 1_100, item=10, kind="skip")]) == []
    assert j.add([click]) == []
    assert j.counts["duplicate_feedback"] == 2
    assert j.counts["joined_feedback"] == 2
    assert rewards_by_key(j.flush().rewards)[("r", 10)] == 1.0


def test_feedback_for_an_item_not_in_the_slate_or_at_another_position_is_rejected():
    j = joiner()
    j.add([impression("r", 1_000)])
    one_rejection(j.add([feedback("r", 1_100, item=13)], offsets=[9]), Reason.NOT_IN_SLATE,
                  r"item 13 was not shown in request 'r'")
    one_rejection(j.add([feedback("r", 1_100, item=11, position=2)]), Reason.NOT_IN_SLATE,
                  r"item 11 was shown at position 1, the feedback says 2")
    one_rejection(j.add([feedback("r", 1_100, item=11, user="u2")]), Reason.USER_MISMATCH,
                  r"feedback from user 'u2', impression for 'u1'")
    assert j.counts[Reason.NOT_IN_SLATE] == 2
    assert all(r.reward == 0.0 for r in j.flush().rewards)


def test_unmapped_feedback_types_are_rejected_not_silently_zero():
    j = joiner()
    j.add([impression("r", 1_000)])
    rejected = j.add([feedback("r", 1_100, kind="dwell", value=12.0)])
    one_rejection(rejected, Reason.UNMAPPED_TYPE,
                  r"^unmapped feedback type: event type 'dwell' has no reward in the mapping")
    assert "dwell" not in DEFAULT_REWARD_MAPPING and "rating" not in DEFAULT_REWARD_MAPPING


def test_impressions_late_repeated_or_conflicting():
    j = joiner()
    imp = impression("r", 1_000)
    assert j.add([imp, imp]) == []
    assert j.counts["duplicate_impressions"] == 1
    one_rejection(j.add([impression("r", 1_000, items=(1, 2))]), Reason.CONFLICTING_IMPRESSION,
                  r"request 'r' is already open with a different impression")
    one_rejection(j.add([impression("old", 799)]), Reason.LATE_IMPRESSION,
                  r"event time 799 is below the impression watermark 800 of partition 0")
    assert len(j.flush().rewards) == 3


def test_an_impression_repeated_after_its_window_closed_is_still_a_repeat():
    j = joiner()
    imp = impression("r", 1_000)
    j.add([imp, feedback("r", 1_100, item=11), feedback("x", 1_000 + WINDOW + LATENESS, item=99)])
    assert len(j.advance().rewards) == 3
    # closed, but the impression watermark has not passed it: a repeat is recognised
    assert j.add([imp]) == []
    assert j.counts["duplicate_impressions"] == 1
    one_rejection(j.add([impression("r", 1_000, items=(1, 2))]), Reason.CONFLICTING_IMPRESSION,
                  "request 'r' is already open with a different impression")
    # once the impression watermark passes it the request is forgotten: a repeat is late
    j.add([impression("s", 1_000 + LATENESS + 1)])
    assert j.advance().rewards == []
    one_rejection(j.add([imp]), Reason.LATE_IMPRESSION, "below the impression watermark 1001")
    assert [r.request_id for r in j.flush().rewards] == ["s"] * 3


def test_bad_arguments_raise_clear_errors():
    cases = [
        (ValueError, r"^reward_mapping: expected feedback types .*, got \['dislike'\]",
         lambda: EventTimeJoiner(WINDOW, 0, {"click": 1.0, "dislike": 0.0})),
        (ValueError, r"^reward_mapping\['click'\]: expected a finite number, got nan",
         lambda: EventTimeJoiner(WINDOW, 0, {"click": float("nan")})),
        (TypeError, r"^reward_mapping\['click'\]: expected a finite number, got '1'",
         lambda: EventTimeJoiner(WINDOW, 0, {"click": "1"})),
        (ValueError, r"^reward_mapping: expected a non-empty mapping",
         lambda: EventTimeJoiner(WINDOW, 0, {})),
        (ValueError, r"^window_ms: expected an integer number of milliseconds > 0, got 0",
         lambda: EventTimeJoiner(0)),
        (TypeError, r"^allowed_lateness_ms: expected an integer .* >= 0, got 1.5",
         lambda: EventTimeJoiner(WINDOW, 1.5)),
        (ValueError, r"^offsets: expected one per event \(2\), or None, got 1",
         lambda: joiner().add([impression("a", 1), impression("b", 2)], offsets=[0])),
        (TypeError, r"^events: expected Impression or Feedback events, got a str",
         lambda: joiner().add(["not an event"])),
    ]
    for error, pattern, call in cases:
        with pytest.raises(error, match=pattern):
            call()


# -- checkpoint state ----------------------------------------------------------------------


def npz_round_trip(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a checkpoint does with the arrays: an .npz written and read without pickle."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return {k: loaded[k] for k in loaded.files}


def test_state_arrays_are_plain_numpy_and_restore_the_same_state():
    j = joiner()
    j.add([impression("r", 1_000), feedback("r", 1_100, item=11), feedback("h", 1_200)],
          partition=2, offsets=[4, 5, 6])
    arrays = j.state_arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    restored = EventTimeJoiner.from_state_arrays(npz_round_trip(arrays))
    assert restored.counts == j.counts
    assert restored.watermarks() == j.watermarks()
    assert (restored.open_impressions, restored.held_feedback) == (1, 1)
    assert (restored.window_ms, restored.allowed_lateness_ms, restored.reward_mapping) == (
        WINDOW, LATENESS, MAPPING)
    assert restored.flush() == j.flush()


def test_restoring_from_foreign_arrays_fails_clearly():
    arrays = joiner().state_arrays()
    with pytest.raises(ValueError, match=r"missing arrays \['feedback_clock'\]"):
        EventTimeJoiner.from_state_arrays(
            {k: v for k, v in arrays.items() if k != "feedback_clock"})
    with pytest.raises(ValueError, match=r"format 'other/1', this build reads"):
        EventTimeJoiner.from_state_arrays({**arrays, "format": np.array("other/1")})
    with pytest.raises(ValueError, match=r"slate_offsets has 2 entries for 0 open impressions"):
        EventTimeJoiner.from_state_arrays({**arrays, "slate_offsets": np.array([0, 1])})


@given(
    seed=st.integers(0, 2**31),
    points=st.lists(st.integers(0, 2_000), max_size=6),
    restore_at=st.integers(0, 10),
)
def test_a_joiner_restored_at_any_cut_emits_what_an_undisturbed_one_emits(seed, points,
                                                                          restore_at):
    log = generate_log(seed, n_requests=80, partitions=2, messy=True, max_gap_ms=150)
    batches = [(p, chunk) for p in (0, 1) for chunk in cut(log.merged(p), points)]
    undisturbed = run(joiner(), batches)
    restore_at = min(restore_at, len(batches))
    first = joiner()
    before = run(first, batches[:restore_at], flush=False)
    restored = EventTimeJoiner.from_state_arrays(npz_round_trip(first.state_arrays()))
    after = run(restored, batches[restore_at:])
    assert before + after == undisturbed
    assert restored.counts == run_counts(batches)


def run_counts(batches):
    j = joiner()
    run(j, batches)
    return j.counts


@given(seed=st.integers(0, 2**31), order_seed=st.integers(0, 2**31),
       batch=st.integers(1, 40))
def test_the_outcome_does_not_depend_on_how_streams_and_partitions_interleave(
    seed, order_seed, batch
):
    """Kafka fixes the order within each (stream, partition) only: any merge of the streams,
    any batch cuts and any advance points give the same rewards and reject the same events."""
    log = generate_log(seed, n_requests=120, partitions=2, messy=True, max_gap_ms=150)
    canonical = run(joiner(), [(p, log.merged(p)) for p in (0, 1)])
    rng = np.random.default_rng(order_seed)
    queues = [(p, [e for _, e in stream])
              for p in (0, 1) for stream in (log.impressions[p], log.feedback[p])]
    batches = []
    while any(q for _, q in queues):
        p, queue = queues[int(rng.choice([i for i, (_, q) in enumerate(queues) if q]))]
        take = int(rng.integers(1, batch + 1))
        batches.append((p, queue[:take]))
        del queue[:take]
    shuffled = run(joiner(), batches)

    def outcome(outputs):
        rewards = sorted((r.request_id, r.item_id, r.reward, r.position, r.event_time_ms)
                         for out in outputs for r in out.rewards)
        rejected = sorted((type(x.event).__name__, x.partition, repr(x.event))
                          for out in outputs for x in out.rejected)
        return rewards, rejected

    assert outcome(shuffled) == outcome(canonical)
    assert rewards_by_key([r for out in shuffled for r in out.rewards]) == log.truth
