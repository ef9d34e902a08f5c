"""The HTTP contract of the serving app: request and response bodies (pydantic models).

FastAPI validates every body against them: a malformed body gets a 422 whose ``detail`` names the
field (``loc``) and what was expected (``msg``). Request bodies are strict: JSON types are not
coerced (``true``, ``"5"`` or ``5.0`` is not an integer; a number field takes integers, as JSON
numbers are), unknown keys are refused. The served OpenAPI schema is built per replica from these
(``recsys.serving.openapi``). Names follow the event contract (``recsys.events``): ``user_id``,
``item_id``, ``position``, ``propensity``, ``event_type``, ``value``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

FeedbackType = Literal["click", "add_to_cart", "purchase", "dwell", "rating", "skip"]
Id = Annotated[str, Field(min_length=1, max_length=256)]
ItemId = Annotated[int, Field(ge=0, le=2**63 - 1)]
MAX_K = 1000
MAX_CANDIDATES = 100_000
MAX_FEEDBACK_BATCH = 10_000


class _Strict(BaseModel):
    """A request body: unknown keys refused, no type coercion (JSON's types as they are)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _finite(values: list[float], name: str) -> list[float]:
    if not all(map(math.isfinite, values)):
        raise ValueError(f"{name} must be finite numbers (no NaN or infinity)")
    return values


class ContextIn(_Strict):
    """The context to score with: a dense user embedding, sparse cluster weights, or both."""

    dense: list[float] = Field(default_factory=list, max_length=4096)
    cluster_ids: list[ItemId] = Field(default_factory=list, max_length=4096)
    cluster_weights: list[float] = Field(default_factory=list, max_length=4096)

    @field_validator("dense", "cluster_weights")
    @classmethod
    def _check_finite(cls, values: list[float], info) -> list[float]:  # type: ignore[no-untyped-def]
        return _finite(values, info.field_name)

    @model_validator(mode="after")
    def _check_pairs(self) -> ContextIn:
        if len(self.cluster_ids) != len(self.cluster_weights):
            raise ValueError(f"cluster_ids has {len(self.cluster_ids)} entries but "
                             f"cluster_weights has {len(self.cluster_weights)}; they must pair up")
        if any(w < 0 for w in self.cluster_weights):
            raise ValueError("cluster_weights must be >= 0")
        if not self.dense and not self.cluster_ids:
            raise ValueError("give dense features, cluster weights, or omit context to use the "
                             "user-feature table")
        return self


class RecommendRequest(_Strict):
    """``POST /recommend``. ``context`` omitted: looked up by ``user_id`` in the user-feature
    table. ``policy`` omitted: the configured traffic split picks one. ``request_id`` omitted:
    the server makes one (give your own to correlate with your logs; it must be unique).
    Integers are written as integers (``5``, not ``5.0``, ``"5"`` or ``true``)."""

    user_id: Id
    context: ContextIn | None = None
    k: int = Field(default=10, ge=1, le=MAX_K)
    candidates: list[ItemId] | None = Field(default=None, min_length=1, max_length=MAX_CANDIDATES)
    policy: Id | None = None
    request_id: Id | None = None


class RecommendResponse(BaseModel):
    """A served slate. ``propensities[p]`` is P(the policy shows ``items[p]`` at position p),
    ``propensity_se[p]`` its Monte Carlo standard error (0 when exact). ``policy_version`` is the
    version the impression logs: for a policy given as a spec, the version of the learned state
    it scored with (the snapshot's); for a policy that follows a registered model, that model's
    version, also given with its name as ``model_name``/``model_version`` (null otherwise).
    ``snapshot_age_ms`` is how long ago the snapshot was published by the shards."""

    request_id: str
    user_id: str
    policy: str
    policy_version: int
    snapshot_id: str
    snapshot_age_ms: float
    items: list[int]
    scores: list[float]
    propensities: list[float]
    propensity_se: list[float]
    model_name: str | None = None
    model_version: int | None = None


class FeedbackIn(_Strict):
    """One user action on a shown item (``POST /feedback``, alone or in a list). Integers are
    written as integers (``3``, not ``3.0``, ``"3"`` or ``true``)."""

    request_id: Id
    user_id: Id
    item_id: ItemId
    position: int = Field(ge=0, le=MAX_K)
    event_type: FeedbackType = "click"
    value: float = 1.0
    event_time_ms: int | None = Field(default=None, ge=0, le=2**63 - 1)

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value


FEEDBACK_TAGS = ("event", "events")
"""How :data:`FeedbackBody` names its two shapes; the error handler drops them from ``loc``."""


def _feedback_shape(value: Any) -> str:
    return FEEDBACK_TAGS[1] if isinstance(value, list) else FEEDBACK_TAGS[0]


FeedbackBody = Annotated[
    Annotated[FeedbackIn, Tag(FEEDBACK_TAGS[0])]
    | Annotated[list[FeedbackIn], Field(max_length=MAX_FEEDBACK_BATCH), Tag(FEEDBACK_TAGS[1])],
    Discriminator(_feedback_shape),
]
"""``POST /feedback``: one event or a list of at most 10,000. The shape picks the branch, so a
bad event is reported once, at its own path (not once per branch of a plain union)."""


class FeedbackResponse(BaseModel):
    """How many feedback events the server has (``accepted``: all of the batch, queued for Kafka
    by an idempotent producer, or none with a 503), and how many of them it already had
    (``duplicates``: retries and repeats within the batch, not queued again)."""

    accepted: int
    duplicates: int = 0


class ModelArmHealth(BaseModel):
    """A policy that follows a registered model: the URI, the version it serves (null before
    the first load), how many versions it switched to, and the last look-up or load error."""

    uri: str
    ready: bool
    model_name: str
    model_version: int | None
    kind: str | None
    switches: int
    error: str | None


class KafkaHealth(BaseModel):
    """Whether Kafka accepts this replica's writes, as last checked in the background
    (``recsys.serving.readiness``): why, and how long ago (ms)."""

    writable: bool
    detail: str
    checked_ms_ago: float


class Health(BaseModel):
    """``GET /health/ready`` (and ``GET /health``): ready once a snapshot is loaded, every model
    arm was looked up once and Kafka accepts writes (``kafka``). A model arm that has not loaded
    is listed in ``models`` (``ready`` false, with the error) and in ``detail``; its requests
    get a 503 while the replica's other policies serve."""

    ready: bool
    snapshot_id: str | None
    snapshot_age_ms: float | None
    policies: list[str]
    detail: str
    models: dict[str, ModelArmHealth] = Field(default_factory=dict)
    kafka: KafkaHealth | None = None


class Live(BaseModel):
    """``GET /health/live``: the replica's process and event loop answer (nothing else is
    checked: a liveness probe that failed on Kafka would restart healthy replicas)."""

    live: bool
