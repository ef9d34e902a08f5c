"""The event contracts: every type round-trips, and bad input is rejected with the field named."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.events import (
    SCHEMA_VERSION,
    Context,
    DeadLetter,
    EventValidationError,
    Feedback,
    Impression,
    Reward,
    SlateEntry,
    decode,
    decode_dead_letter,
    encode,
    encode_dead_letter,
    validate,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
propensity = st.floats(min_value=1e-6, max_value=1.0)


@st.composite
def contexts(draw) -> Context:
    n = draw(st.integers(0, 4))
    return Context(
        dense=tuple(draw(st.lists(finite, max_size=8))),
        cluster_ids=tuple(draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))),
        cluster_weights=tuple(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))),
    )


@st.composite
def impressions(draw) -> Impression:
    k = draw(st.integers(1, 6))
    items = draw(st.lists(st.integers(0, 10**9), min_size=k, max_size=k, unique=True))
    return Impression(
        request_id=draw(ids),
        event_time_ms=draw(st.integers(0, 2**50)),
        user_id=draw(ids),
        context=draw(contexts()),
        policy_name=draw(ids),
        policy_version=draw(st.integers(0, 99)),
        slate=tuple(
            SlateEntry(item_id=i, position=p, score=draw(finite), propensity=draw(propensity))
            for p, i in enumerate(items)
        ),
    )


@given(impressions())
def test_impression_round_trips(event: Impression) -> None:
    assert decode(encode(event)) == event


@given(
    ids,
    st.integers(0, 10**6),
    st.integers(0, 9),
    finite,
    st.sampled_from(["click", "purchase", "dwell"]),
)
def test_feedback_round_trips(request_id, item, position, value, kind) -> None:
    event = Feedback(
        request_id=request_id,
        event_time_ms=5,
        user_id="u",
        item_id=item,
        position=position,
        event_type=kind,
        value=value,
    )
    assert decode(encode(event)) == event


@given(contexts(), finite, propensity, st.floats(0, 1))
def test_reward_round_trips(context, reward, p, se) -> None:
    event = Reward(
        request_id="r",
        event_time_ms=1,
        user_id="u",
        context=context,
        item_id=3,
        position=1,
        reward=reward,
        propensity=p,
        policy_name="ts",
        policy_version=2,
        propensity_se=se,
    )
    assert decode(encode(event)) == event


def test_records_written_before_propensity_se_existed_decode_as_exact() -> None:
    entry = {"item_id": 3, "position": 0, "score": 1.0, "propensity": 0.5}
    context = {"dense": [0.5]}
    old_impression = {"type": "impression", "schema_version": SCHEMA_VERSION, "request_id": "r",
                      "event_time_ms": 1, "user_id": "u", "context": context,
                      "policy_name": "ts", "policy_version": 0, "slate": [entry]}
    old_reward = {"type": "reward", "schema_version": SCHEMA_VERSION, "request_id": "r",
                  "event_time_ms": 1, "user_id": "u", "context": context, "item_id": 3,
                  "position": 0, "reward": 1.0, "propensity": 0.5, "policy_name": "ts",
                  "policy_version": 0}
    impression = decode(msgspec.msgpack.encode(old_impression))
    assert isinstance(impression, Impression) and impression.slate[0].propensity_se == 0.0
    reward = decode(msgspec.msgpack.encode(old_reward))
    assert isinstance(reward, Reward) and reward.propensity_se == 0.0
    with pytest.raises(EventValidationError, match="propensity_se"):
        decode(msgspec.msgpack.encode({**old_reward, "propensity_se": -0.1}))


def test_every_record_carries_the_schema_version() -> None:
    event = Feedback(
        request_id="r", event_time_ms=1, user_id="u", item_id=1, position=0, event_type="click"
    )
    assert event.schema_version == SCHEMA_VERSION
    assert b"schema_version" in encode(event)


def _impression(**overrides) -> Impression:
    fields = dict(
        request_id="r",
        event_time_ms=1,
        user_id="u",
        context=Context(dense=(0.1,)),
        policy_name="p",
        policy_version=1,
        slate=(SlateEntry(item_id=1, position=0, score=0.5, propensity=0.2),),
    )
    fields.update(overrides)
    return Impression(**fields)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (
            lambda: _impression(
                slate=(SlateEntry(item_id=1, position=0, score=0, propensity=1.5),)
            ),
            "$.slate[0].propensity",
        ),
        (
            lambda: _impression(
                slate=(SlateEntry(item_id=1, position=0, score=0, propensity=0.0),)
            ),
            "$.slate[0].propensity",
        ),
        (
            lambda: _impression(
                slate=(SlateEntry(item_id=-4, position=0, score=0, propensity=0.5),)
            ),
            "$.slate[0].item_id",
        ),
        (lambda: _impression(request_id=""), "$.request_id"),
        (lambda: _impression(event_time_ms="yesterday"), "$.event_time_ms"),
        (lambda: _impression(user_id=7), "$.user_id"),
        (
            lambda: Feedback(
                request_id="r",
                event_time_ms=1,
                user_id="u",
                item_id=1,
                position=0,
                event_type="like",
            ),
            "$.event_type",
        ),
    ],
)
def test_invalid_fields_are_named(build, fragment) -> None:
    with pytest.raises(
        EventValidationError, match=fragment.replace("[", r"\[").replace("$", r"\$")
    ):
        decode(encode(build()))


def test_semantic_rules_say_what_is_wrong() -> None:
    twice = (
        SlateEntry(item_id=1, position=0, score=0, propensity=0.5),
        SlateEntry(item_id=1, position=1, score=0, propensity=0.5),
    )
    with pytest.raises(EventValidationError, match="shown twice"):
        decode(encode(_impression(slate=twice)))
    with pytest.raises(EventValidationError, match="at least one item"):
        decode(encode(_impression(slate=())))
    with pytest.raises(EventValidationError, match="NaN or infinity"):
        Context(dense=(math.nan,))
    with pytest.raises(EventValidationError, match="must pair up"):
        Context(cluster_ids=(1, 2), cluster_weights=(1.0,))
    with pytest.raises(EventValidationError, match="schema_version: 99"):
        decode(encode(_impression(schema_version=99)))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", r"^not a msgpack-encoded event: Input data was truncated"),
        (b"\xc1", r"^not a msgpack-encoded event: MessagePack data is malformed"),
        (b'{"type": "impression"}', r"^not a msgpack-encoded event record: Expected `object`"),
        (b"\x81\xa4type\xa3bad", r"^invalid event: Invalid value 'bad' - at `\$\.type`"),
    ],
)
def test_malformed_bytes_raise_validation_error(raw: bytes, reason: str) -> None:
    with pytest.raises(EventValidationError, match=reason):
        decode(raw)


def test_validate_checks_events_built_in_code() -> None:
    assert validate(_impression()) == _impression()
    with pytest.raises(
        EventValidationError, match=r"Expected `float` <= 1\.0 - at `\$\.slate\[0\]\.propensity`"
    ):
        validate(_impression(slate=(SlateEntry(item_id=1, position=0, score=0, propensity=2.0),)))


def test_dead_letter_keeps_raw_bytes() -> None:
    record = DeadLetter(
        source_topic="recsys.feedback",
        partition=3,
        offset=17,
        key=b"k",
        value=b"\x00\xff",
        reason="not msgpack",
        failed_at_ms=1,
    )
    assert decode_dead_letter(encode_dead_letter(record)) == record
