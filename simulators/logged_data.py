"""Logged interaction data: simulate a logging policy, get a polars frame and event records.

The frame is in the lake's ``rewards`` schema (``recsys.schema.REWARDS``): one row per shown item
with request_id, event_time_ms, user_id, policy_name, policy_version, the request's dense context
(``context_dense``; the cluster context columns are empty lists), position, item_id, ``reward``
(1.0 for a click), propensity and schema_version; the Kafka provenance columns are null (the rows
did not come from Kafka). Two declared simulator-only columns follow (``LOG_EXTRAS``): ``score``,
the logging policy's score of the shown item, and ``noise``, the ground-truth label of an
accidental click. ``to_events`` turns the frame into the ``recsys.events`` Impression and Feedback
records so logs can be replayed through Kafka.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.events import Context, Feedback, Impression, SlateEntry
from recsys.policy import Policy
from recsys.schema import SCHEMA_VERSION, conform, polars_schema, validate_frame
from simulators.model import SlateSimulator

LOG_EXTRAS: dict[str, pl.DataType] = {"score": pl.Float64(), "noise": pl.Boolean()}
"""Simulator-only columns after the ``rewards`` schema's: the shown item's policy score and the
accidental-click label."""

LOG_COLUMNS = (*polars_schema("rewards").names(), *LOG_EXTRAS)


def collect_logs(
    sim: SlateSimulator,
    policy: Policy,
    n_requests: int,
    rng: np.random.Generator,
    batch_size: int = 100_000,
    start_time_ms: int = 1_700_000_000_000,
    ms_per_request: int = 10,
    policy_version: int = 0,
) -> pl.DataFrame:
    """Run ``policy`` on ``n_requests`` simulated requests (slates of the simulator's
    ``slate_size``); the log frame in the ``rewards`` schema plus ``LOG_EXTRAS``.

    ``rng`` draws the requests and the clicks; the slates come from the policy's own
    ``random_state`` (give it ``rng`` too for one stream). In a world where items arrive over
    time the policy is passed ``available``, the mask of the items that have arrived.
    """
    policy_name = getattr(policy, "name", type(policy).__name__)
    k = sim.config.slate_size
    frames = []
    done = 0
    while done < n_requests:
        n = min(batch_size, n_requests - done)
        requests = sim.sample_requests(n, rng)
        if requests.available.all():
            slate = policy.recommend(requests.context, k)
        else:
            slate = policy.recommend(requests.context, k, available=requests.available)
        responses = sim.respond(requests, slate.items, rng)
        frames.append(_batch_frame(requests, slate, responses, policy_name, policy_version))
        done += n
    frame = pl.concat(frames).with_columns(
        (pl.lit(start_time_ms) + pl.col("event_time_ms") * ms_per_request).alias("event_time_ms")
    )
    return conform(frame, "rewards", LOG_EXTRAS)


def _batch_frame(requests, slate, responses, policy_name, policy_version) -> pl.DataFrame:
    n, k = slate.items.shape
    req = np.repeat(requests.time, k)
    noise = np.repeat(responses.noise, k) & (responses.clicks.ravel() == 1)
    context = pl.Series(np.repeat(requests.context.astype(np.float32), k, axis=0))
    no_clusters = pl.repeat([], n * k, dtype=pl.List(pl.Int64), eager=True)
    return pl.DataFrame(
        {
            "request_id": pl.Series(req).cast(pl.String),
            "event_time_ms": req,
            "user_id": pl.Series(np.repeat(requests.user_id, k)).cast(pl.String),
            "policy_name": np.full(n * k, policy_name),
            "policy_version": np.full(n * k, policy_version),
            "context_dense": context.cast(pl.List(pl.Float32)),
            "context_cluster_ids": no_clusters,
            "context_cluster_weights": no_clusters.cast(pl.List(pl.Float32)),
            "position": np.tile(np.arange(k), n),
            "item_id": slate.items.ravel(),
            "reward": responses.clicks.ravel().astype(np.float64),
            "propensity": slate.propensities.ravel(),
            "schema_version": np.full(n * k, SCHEMA_VERSION, dtype=np.int32),
            "score": slate.scores.ravel(),
            "noise": noise,
        }
    )


def to_events(frame: pl.DataFrame) -> tuple[list[Impression], list[Feedback]]:
    """One Impression per request (its slate with propensities) and one click Feedback per
    rewarded shown item, from a frame in the ``rewards`` schema with a ``score`` column.

    Columns are pulled out as numpy arrays once and the slates sliced by request boundaries;
    only the record construction itself is per request, as the contract's objects require.
    """
    validate_frame(frame, "rewards", LOG_EXTRAS)
    if "score" not in frame.columns:
        raise ValueError(
            "frame: expected a score column (the policy's score of each shown item), got none; "
            "impressions carry the score"
        )
    frame = frame.sort(["event_time_ms", "request_id", "position"])
    request = frame["request_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    ends = np.r_[starts[1:], len(request)]
    user = frame["user_id"].cast(pl.Utf8).to_list()
    times = frame["event_time_ms"].to_numpy()
    policy = frame["policy_name"].to_list()
    version = frame["policy_version"].to_numpy()
    position = frame["position"].to_numpy()
    item = frame["item_id"].to_numpy()
    score = frame["score"].to_numpy().astype(float)
    propensity = frame["propensity"].to_numpy().astype(float)
    first_rows = pl.Series(starts)
    dense = frame["context_dense"].gather(first_rows).to_list()
    cluster_ids = frame["context_cluster_ids"].gather(first_rows).to_list()
    cluster_weights = frame["context_cluster_weights"].gather(first_rows).to_list()
    request_ids = frame["request_id"].cast(pl.Utf8).to_list()
    impressions = []
    for r, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        slate = tuple(
            SlateEntry(
                item_id=int(item[j]),
                position=int(position[j]),
                score=float(score[j]),
                propensity=float(propensity[j]),
            )
            for j in range(s, e)
        )
        impressions.append(
            Impression(
                request_id=request_ids[s],
                event_time_ms=int(times[s]),
                user_id=user[s],
                context=Context(
                    dense=tuple(dense[r]),
                    cluster_ids=tuple(cluster_ids[r]),
                    cluster_weights=tuple(cluster_weights[r]),
                ),
                policy_name=policy[s],
                policy_version=int(version[s]),
                slate=slate,
            )
        )
    clicked = np.flatnonzero(frame["reward"].to_numpy() > 0)
    feedback = [
        Feedback(
            request_id=request_ids[j],
            event_time_ms=int(times[j]),
            user_id=user[j],
            item_id=int(item[j]),
            position=int(position[j]),
            event_type="click",
        )
        for j in clicked.tolist()
    ]
    return impressions, feedback
