"""Bulk decoding (``recsys.events.decode_batch``, the readers' hot path) accepts and rejects
exactly what decoding one record at a time does, with the same reasons, on valid, mixed and
malformed batches."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.events import (
    TOMBSTONE,
    Context,
    EventValidationError,
    Feedback,
    Impression,
    Reward,
    SlateEntry,
    decode,
    decode_batch,
    encode,
)
from simulators.synthetic_traffic import generate_traffic

_raw = msgspec.msgpack.Encoder()


def _impression(**changes: object) -> dict:
    """An impression as a plain map, so that tests can break any field on the wire."""
    record = {
        "type": "impression", "schema_version": 1, "request_id": "r1", "event_time_ms": 5,
        "user_id": "u1", "context": {"dense": [0.5, -1.0]}, "policy_name": "p",
        "policy_version": 3,
        "slate": [{"item_id": 7, "position": 0, "score": 0.1, "propensity": 0.5},
                  {"item_id": 8, "position": 1, "score": 0.2, "propensity": 0.25}],
    }
    return {**record, **changes}


def _feedback(**changes: object) -> dict:
    record = {"type": "feedback", "schema_version": 1, "request_id": "r1", "event_time_ms": 9,
              "user_id": "u1", "item_id": 7, "position": 0, "event_type": "click"}
    return {**record, **changes}


VALID = [
    _raw.encode(_impression()),
    _raw.encode(_feedback()),
    encode(Reward(request_id="r", event_time_ms=1, user_id="u", context=Context(dense=(1.0,)),
                  item_id=2, position=0, reward=1.0, propensity=0.5, policy_name="p",
                  policy_version=1)),
    _raw.encode(_impression(context={"cluster_ids": [1, 4], "cluster_weights": [0.5, 0.5]})),
]
BAD = {
    "not msgpack": b"\xc1",
    "truncated": b"\x82\xa4type",
    "not a map": _raw.encode([1, 2, 3]),
    "unknown type": _raw.encode({"type": "bad"}),
    "future schema": _raw.encode(_impression(schema_version=99)),
    "empty slate": _raw.encode(_impression(slate=[])),
    "item shown twice": _raw.encode(_impression(slate=[
        {"item_id": 7, "position": 0, "score": 0.1, "propensity": 0.5},
        {"item_id": 7, "position": 1, "score": 0.2, "propensity": 0.5}])),
    "positions repeat": _raw.encode(_impression(slate=[
        {"item_id": 7, "position": 0, "score": 0.1, "propensity": 0.5},
        {"item_id": 8, "position": 0, "score": 0.2, "propensity": 0.5}])),
    "propensity above 1": _raw.encode(_impression(slate=[
        {"item_id": 7, "position": 0, "score": 0.1, "propensity": 2.0}])),
    "NaN context": _raw.encode(_impression(context={"dense": [0.5, math.nan]})),
    "infinite weight": _raw.encode(_impression(
        context={"cluster_ids": [1], "cluster_weights": [math.inf]})),
    "negative weight": _raw.encode(_impression(
        context={"cluster_ids": [1], "cluster_weights": [-0.5]})),
    "unpaired clusters": _raw.encode(_impression(
        context={"cluster_ids": [1, 2], "cluster_weights": [0.5]})),
    "NaN feedback value": _raw.encode(_feedback(value=math.nan)),
    "unknown feedback type": _raw.encode(_feedback(event_type="like")),
    "negative item": _raw.encode(_feedback(item_id=-1)),
    "empty request id": _raw.encode(_feedback(request_id="")),
    "tombstone": None,
}


def one_by_one(values: list[bytes | None]) -> tuple[list, list[tuple[int, str]]]:
    """The reference: ``decode`` per record, a tombstone rejected with ``TOMBSTONE``."""
    events, errors = [], []
    for index, value in enumerate(values):
        try:
            if value is None:
                raise EventValidationError(TOMBSTONE)
            events.append(decode(value))
        except EventValidationError as exc:
            events.append(None)
            errors.append((index, str(exc)))
    return events, errors


def same_as_one_by_one(values: list[bytes | None]) -> None:
    events, errors = decode_batch(values)
    expected_events, expected_errors = one_by_one(values)
    assert events == expected_events
    assert [type(e) for e in events] == [type(e) for e in expected_events]
    assert [(i, str(exc)) for i, exc in errors] == expected_errors
    assert all(isinstance(exc, EventValidationError) for _, exc in errors)


def test_a_valid_batch_decodes_in_one_pass_to_the_same_events() -> None:
    traffic = generate_traffic(500, n_items=50, dim=4, seed=3)
    values = [encode(e) for e in traffic.interleaved()]
    events, errors = decode_batch(values)
    assert errors == [] and events == traffic.interleaved()
    same_as_one_by_one(values + VALID)


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_record_is_found_with_its_reason_among_good_ones(name: str) -> None:
    values = [*VALID, BAD[name], *VALID]
    events, errors = decode_batch(values)
    assert [i for i, _ in errors] == [len(VALID)] and events[len(VALID)] is None
    same_as_one_by_one(values)


def test_a_batch_of_only_bad_records_and_an_empty_batch() -> None:
    values = list(BAD.values())
    events, errors = decode_batch(values)
    assert events == [None] * len(values) and [i for i, _ in errors] == list(range(len(values)))
    same_as_one_by_one(values)
    assert decode_batch([]) == ([], [])


def test_a_bug_is_not_taken_for_a_bad_record() -> None:
    """Only bad input is returned as an error; a value that is not bytes at all is a caller's
    bug and raises, as ``decode`` does."""
    with pytest.raises(TypeError):
        decode_batch([VALID[0], "not bytes"])  # type: ignore[list-item]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(VALID), st.sampled_from(list(BAD.values())),
                          st.binary(max_size=40)), max_size=30))
def test_any_mix_matches_one_by_one(values: list[bytes | None]) -> None:
    same_as_one_by_one(values)


def test_the_contract_objects_are_unchanged() -> None:
    """The decoded objects are the contract's classes, equal to those built in code."""
    events, _ = decode_batch(VALID[:2])
    assert isinstance(events[0], Impression) and isinstance(events[1], Feedback)
    assert events[0].slate[1] == SlateEntry(item_id=8, position=1, score=0.2, propensity=0.25)
    assert events[0].context == Context(dense=(0.5, -1.0))
