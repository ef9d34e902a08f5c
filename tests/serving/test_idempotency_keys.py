"""What a replica remembers to answer retries once (``recsys.serving.idempotency``), without
Kafka: the key store's window and bound, all-or-nothing batches, request-id replays."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.serving.idempotency import (
    FeedbackOnce,
    NoRoom,
    PartlyQueued,
    RecentKeys,
    Repeated,
    SlateReplays,
    feedback_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(steps=st.lists(st.tuples(st.integers(0, 30), st.floats(0, 7)), max_size=200))
def test_keys_are_remembered_for_the_window_and_forgotten_after_two(steps) -> None:
    """A key added at t is known until at least t + window and unknown from t + 2·window on."""
    clock, window = Clock(), 5.0
    keys = RecentKeys(window, max_keys=10_000, clock=clock)
    added: dict[int, float] = {}
    for key, dt in steps:
        clock.now += dt
        for k, t in added.items():
            age = clock.now - t
            if age < window:
                assert k in keys, (k, age)
            elif age >= 2 * window:
                assert k not in keys, (k, age)
        if key not in keys:
            keys.set(key)
            added[key] = clock.now
    assert keys.forgotten_early == 0


def test_a_flood_of_keys_is_bounded_and_counted() -> None:
    keys = RecentKeys(600.0, max_keys=100, clock=Clock())
    for k in range(10_000):
        keys.set(k)
        assert len(keys) <= 100
    assert keys.forgotten_early >= 10_000 - 100
    assert 9_999 in keys and 0 not in keys  # the newest stay, the oldest go


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="window_s: expected a number > 0"):
        RecentKeys(0, 10)
    with pytest.raises(ValueError, match="max_keys: expected an integer >= 1"):
        RecentKeys(1.0, 0)


def event(**fields):
    base = dict(request_id="r1", user_id="u1", item_id=3, position=0, event_type="click",
                value=1.0, event_time_ms=None)
    return SimpleNamespace(**{**base, **fields})


def test_the_feedback_key_is_every_field_as_sent() -> None:
    assert feedback_key(event()) == feedback_key(event())
    assert feedback_key(event(value=1)) == feedback_key(event(value=1.0))
    for change in ({"request_id": "r2"}, {"user_id": "u2"}, {"item_id": 4}, {"position": 1},
                   {"event_type": "purchase"}, {"value": 0.5}, {"event_time_ms": 0},
                   {"event_time_ms": 1}):
        assert feedback_key(event(**change)) != feedback_key(event()), change
    # no separator ambiguity between neighbouring strings
    assert feedback_key(event(request_id="a", user_id="bc")) != feedback_key(
        event(request_id="ab", user_id="c"))


def test_a_batch_is_queued_once_per_key() -> None:
    once, sent = FeedbackOnce(600.0, 1000, clock=Clock()), []
    fresh = once.queue([1, 2, 1, 3], lambda: 10, sent.append)
    assert fresh == sent == [0, 1, 3]  # the repeat within the batch is not queued
    sent.clear()
    assert once.queue([3, 2, 4], lambda: 10, sent.append) == sent == [2]  # a retry queues 4


def test_a_batch_without_room_queues_nothing_and_remembers_nothing() -> None:
    once, sent = FeedbackOnce(600.0, 1000, clock=Clock()), []
    once.queue([1], lambda: 10, sent.append)
    with pytest.raises(NoRoom) as caught:
        once.queue([1, 2, 3, 4], lambda: 2, sent.append)  # 3 new, room for 2
    assert (caught.value.needed, caught.value.room) == (3, 2)
    assert sent == [0]
    assert once.queue([1, 2, 3, 4], lambda: 3, sent.append) == [1, 2, 3]  # fits: 1 is known


def test_a_send_that_fails_midway_remembers_what_was_queued() -> None:
    once, sent = FeedbackOnce(600.0, 1000, clock=Clock()), []

    def flaky(i: int) -> None:
        if i == 2:
            raise ConnectionError("Kafka is gone")
        sent.append(i)

    with pytest.raises(PartlyQueued) as caught:
        once.queue([10, 11, 12, 13], lambda: 10, flaky)
    assert (caught.value.queued, caught.value.new) == (2, 4)
    assert isinstance(caught.value.__cause__, ConnectionError)
    # the client retries the whole batch: only the rest is queued, so each event once
    assert once.queue([10, 11, 12, 13], lambda: 10, sent.append) == [2, 3]
    assert sent == [0, 1, 2, 3]


def test_a_request_id_is_served_once_and_replayed() -> None:
    clock = Clock()
    replays = SlateReplays(10.0, 1000, clock=clock)
    assert replays.begin("r1", body=7) is None
    with pytest.raises(Repeated, match="still being served"):
        replays.begin("r1", body=7)
    replays.finish("r1", b'{"items": [1]}')
    assert replays.begin("r1", body=7) == b'{"items": [1]}'
    with pytest.raises(Repeated, match="already served for another body"):
        replays.begin("r1", body=8)
    clock.now += 20.0  # two windows later it is forgotten: a new request
    assert replays.begin("r1", body=8) is None


def test_an_unserved_request_id_can_be_retried() -> None:
    replays = SlateReplays(10.0, 1000, clock=Clock())
    assert replays.begin("r1", body=7) is None
    replays.abandon("r1")  # a 503 or a 422: nothing was logged
    assert replays.begin("r1", body=8) is None


def test_kept_answers_are_bounded_in_bytes() -> None:
    replays = SlateReplays(10.0, 1000, max_bytes=250, clock=Clock())
    for i in range(5):
        assert replays.begin(f"r{i}", body=i) is None
        replays.finish(f"r{i}", bytes(100))
        assert replays.kept_bytes <= 250
    assert replays.begin("r4", body=4) == bytes(100)
    with pytest.raises(Repeated, match="no longer kept"):
        replays.begin("r0", body=0)
