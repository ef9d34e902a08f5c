"""Event contracts for the Kafka topics: impressions, feedback, joined rewards, dead letters.

Records are msgspec structs encoded as msgpack: compact, and decoding checks every field's type and
range in the same pass, so a bad record is rejected with the path of the offending field
(``$.slate[2].propensity``) and what was expected. Every record carries ``schema_version``.

Item ids are integers (they index bandit statistics); user and request ids are strings.
Times are event times in milliseconds since the Unix epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

import msgspec

from recsys import topics

SCHEMA_VERSION = 1
"""Bumped on any incompatible change; decoders reject versions they do not know."""

SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
_isfinite = math.isfinite

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Probability = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
StandardError = Annotated[float, msgspec.Meta(ge=0.0)]
FeedbackType = Literal["click", "add_to_cart", "purchase", "dwell", "rating", "skip"]


class EventValidationError(ValueError):
    """A record that decoded but breaks the contract; the message names the field."""


# gc=False on the event structs: frozen trees of strings, numbers and tuples cannot form reference
# cycles, so the garbage collector need not track the many thousands a reader holds per batch.


class Context(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The context actually used for scoring.

    ``dense`` is a user embedding (dense mode); ``cluster_ids``/``cluster_weights`` are sparse soft
    memberships over user clusters (graph mode, Online Matching). Either or both may be present.
    """

    dense: tuple[float, ...] = ()
    cluster_ids: tuple[NonNegativeInt, ...] = ()
    cluster_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        # Runs for every decoded record (the streaming hot path): the common case, valid dense
        # features only, costs two truth tests and one C-level sum; the checks and their order
        # (pairing, dense, weights' finiteness, weights' sign) are those of the contract.
        ids, weights = self.cluster_ids, self.cluster_weights
        if (ids or weights) and len(ids) != len(weights):
            raise EventValidationError(
                f"context: cluster_ids has {len(ids)} entries but cluster_weights has "
                f"{len(weights)}; they must pair up"
            )
        # A finite sum means finite values; only then check element by element (an overflowing
        # sum of finite values is fine).
        dense = self.dense
        if dense and not _isfinite(sum(dense)) and not all(map(_isfinite, dense)):
            raise EventValidationError("context.dense: contains NaN or infinity")
        if weights:
            if not _isfinite(sum(weights)) and not all(map(_isfinite, weights)):
                raise EventValidationError("context.cluster_weights: contains NaN or infinity")
            if min(weights) < 0:
                raise EventValidationError("context.cluster_weights: weights must be >= 0")


class SlateEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One shown item: where it was shown, its score, and P(logging policy shows it there).

    ``propensity_se`` is the standard error of a Monte Carlo propensity (Thompson sampling), 0
    (and omitted on the wire) when the propensity is exact; records without it decode as 0.
    """

    item_id: NonNegativeInt
    position: NonNegativeInt
    score: float
    propensity: Probability
    propensity_se: StandardError = 0.0


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    schema_version: int = SCHEMA_VERSION
    topic: ClassVar[str]

    def __post_init__(self) -> None:
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise EventValidationError(
                f"schema_version: {self.schema_version} is not supported "
                f"(this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
            )

    @property
    def key(self) -> bytes:
        """The Kafka record key: events of one request land on one partition, in order."""
        return self.request_id.encode()  # type: ignore[attr-defined]


class Impression(_Event, tag="impression", gc=False):
    """A served slate (topic ``recsys.impressions``, key ``request_id``)."""

    topic: ClassVar[str] = topics.IMPRESSIONS
    request_id: NonEmptyStr
    event_time_ms: NonNegativeInt
    user_id: NonEmptyStr
    context: Context
    policy_name: NonEmptyStr
    policy_version: NonNegativeInt
    slate: tuple[SlateEntry, ...]

    def __post_init__(self) -> None:
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            super().__post_init__()  # raises, with the message
        slate = self.slate
        n = len(slate)
        if not n:
            raise EventValidationError("slate: an impression must show at least one item")
        if n > 1 and len({entry.position for entry in slate}) != n:
            positions = [entry.position for entry in slate]
            raise EventValidationError(f"slate: positions must be distinct, got {positions}")
        if n > 1 and len({entry.item_id for entry in slate}) != n:
            items = [entry.item_id for entry in slate]
            raise EventValidationError(f"slate: an item is shown twice, item ids {items}")


class Feedback(_Event, tag="feedback", gc=False):
    """A user action on a shown item (topic ``recsys.feedback``, key ``request_id``)."""

    topic: ClassVar[str] = topics.FEEDBACK
    request_id: NonEmptyStr
    event_time_ms: NonNegativeInt
    user_id: NonEmptyStr
    item_id: NonNegativeInt
    position: NonNegativeInt
    event_type: FeedbackType
    value: float = 1.0

    def __post_init__(self) -> None:
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            super().__post_init__()  # raises, with the message
        if not _isfinite(self.value):
            raise EventValidationError(f"value: must be finite, got {self.value}")


class Reward(_Event, tag="reward", gc=False):
    """A joined example, emitted once the attribution window of a shown item has closed
    (topic ``recsys.rewards``): reward 0 when nothing happened. ``propensity`` and
    ``propensity_se`` are the shown item's slate entry's; records without ``propensity_se`` decode
    as 0 (exact)."""

    topic: ClassVar[str] = topics.REWARDS
    request_id: NonEmptyStr
    event_time_ms: NonNegativeInt
    user_id: NonEmptyStr
    context: Context
    item_id: NonNegativeInt
    position: NonNegativeInt
    reward: float
    propensity: Probability
    policy_name: NonEmptyStr
    policy_version: NonNegativeInt
    propensity_se: StandardError = 0.0

    def __post_init__(self) -> None:
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            super().__post_init__()  # raises, with the message
        if not _isfinite(self.reward):
            raise EventValidationError(f"reward: must be finite, got {self.reward}")


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A record that failed to decode or validate (topic ``recsys.dead-letter``): the raw bytes,
    where they came from and why they were rejected, so nothing bad is ever dropped silently."""

    topic: ClassVar[str] = topics.DEAD_LETTER
    source_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    failed_at_ms: int
    schema_version: int = SCHEMA_VERSION


Event = Impression | Feedback | Reward
EVENT_TYPES: tuple[type[_Event], ...] = (Impression, Feedback, Reward)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Event] = msgspec.msgpack.Decoder(Event)


def encode(event: Event) -> bytes:
    """Serialise one event to msgpack bytes."""
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    """Decode and validate one event.

    Raises ``EventValidationError`` naming the field and what was expected; malformed bytes,
    wrong types and out-of-range values all come out as this one exception type.
    """
    try:
        return _decoder.decode(data)
    except EventValidationError:
        raise
    except msgspec.ValidationError as exc:
        if str(exc).startswith("Expected `object`"):  # not even a map: not an event record
            raise EventValidationError(f"not a msgpack-encoded event record: {exc}") from exc
        raise EventValidationError(f"invalid event: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise EventValidationError(f"not a msgpack-encoded event: {exc}") from exc


TOMBSTONE = "empty record value (tombstone)"
"""Why a record without a value (a Kafka tombstone) is not an event."""
_BAD_BATCH = (msgspec.DecodeError, msgspec.ValidationError, EventValidationError, TypeError)


def decode_batch(
    values: Sequence[bytes | None],
) -> tuple[list[Event | None], list[tuple[int, EventValidationError]]]:
    """Decode and validate many records at once: the events (None where a record is bad) and
    ``(index, error)`` for each bad record, with the reason ``decode`` gives for it.

    The whole batch goes through the decoder in one C-level pass; only a batch holding a bad
    record (or a tombstone, ``None``) is decoded again one record at a time to find which and
    why. Accepts and rejects exactly what ``decode`` does (tested)."""
    try:
        return list(map(_decoder.decode, values)), []  # type: ignore[arg-type]
    except _BAD_BATCH:
        pass
    events: list[Event | None] = []
    errors: list[tuple[int, EventValidationError]] = []
    for index, value in enumerate(values):
        try:
            if value is None:
                raise EventValidationError(TOMBSTONE)
            events.append(decode(value))
        except EventValidationError as exc:
            events.append(None)
            errors.append((index, exc))
    return events, errors


_dead_letter_decoder = msgspec.msgpack.Decoder(DeadLetter)


def encode_dead_letter(record: DeadLetter) -> bytes:
    return _encoder.encode(record)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(data)


def validate(event: Event) -> Event:
    """Check an event built in code against the contract (constructors do not check types or
    ranges; decoding does). Returns the event, or raises ``EventValidationError``."""
    return decode(encode(event))
