"""Logged interaction data: simulate a logging policy, get a polars frame and event records.

The frame has one row per shown item (the ``recsys.rewards`` grain): request_id, user_id,
event_time_ms, policy_name, policy_version, position, item_id, score (the policy's score of the
shown item), propensity, click, noise (ground-truth label of an accidental
click) and the request's context as a list column. ``to_events`` turns it into the
``recsys.events`` Impression and Feedback records so logs can be replayed through Kafka.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.events import Context, Feedback, Impression, SlateEntry
from simulators.model import SlateSimulator
from simulators.policies import SlatePolicy

LOG_COLUMNS = (
    "request_id",
    "user_id",
    "event_time_ms",
    "policy_name",
    "policy_version",
    "position",
    "item_id",
    "score",
    "propensity",
    "click",
    "noise",
    "context",
)


def collect_logs(
    sim: SlateSimulator,
    policy: SlatePolicy,
    n_requests: int,
    rng: np.random.Generator,
    batch_size: int = 100_000,
    start_time_ms: int = 1_700_000_000_000,
    ms_per_request: int = 10,
    policy_version: int = 0,
) -> pl.DataFrame:
    """Run ``policy`` on ``n_requests`` simulated requests and return the long log frame."""
    frames = []
    done = 0
    while done < n_requests:
        n = min(batch_size, n_requests - done)
        requests = sim.sample_requests(n, rng)
        available = None if requests.available.all() else requests.available
        slates, pscore = policy.sample(requests.context, rng, available)
        responses = sim.respond(requests, slates, rng)
        scores = policy.shown_scores(requests.context, slates)
        frames.append(
            _batch_frame(requests, slates, pscore, scores, responses, policy.name, policy_version)
        )
        done += n
    frame = pl.concat(frames)
    return frame.with_columns(
        (pl.lit(start_time_ms) + pl.col("event_time_ms") * ms_per_request).alias("event_time_ms")
    )


def _batch_frame(
    requests, slates, pscore, scores, responses, policy_name, policy_version
) -> pl.DataFrame:
    n, k = slates.shape
    req = np.repeat(requests.time, k)
    noise = np.repeat(responses.noise, k) & (responses.clicks.ravel() == 1)
    context = requests.context.astype(np.float32)
    return pl.DataFrame(
        {
            "request_id": req,
            "user_id": np.repeat(requests.user_id, k),
            "event_time_ms": req,
            "policy_name": np.full(n * k, policy_name),
            "policy_version": np.full(n * k, policy_version),
            "position": np.tile(np.arange(k), n),
            "item_id": slates.ravel(),
            "score": scores.ravel(),
            "propensity": pscore.ravel(),
            "click": responses.clicks.ravel().astype(np.int8),
            "noise": noise,
            "context": np.repeat(context, k, axis=0),
        }
    )


def to_events(frame: pl.DataFrame) -> tuple[list[Impression], list[Feedback]]:
    """One Impression per request (its slate with propensities) and one click Feedback per click.

    Columns are pulled out as numpy arrays once and the slates sliced by request boundaries;
    only the record construction itself is per request, as the contract's objects require.
    """
    missing = [c for c in LOG_COLUMNS if c not in frame.columns and c != "noise"]
    if missing:
        raise ValueError(f"`frame` lacks the log columns {missing}")
    frame = frame.sort(["request_id", "position"])
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
    contexts = frame["context"].to_list()
    request_ids = frame["request_id"].cast(pl.Utf8).to_list()
    impressions = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
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
                context=Context(dense=tuple(float(x) for x in contexts[s])),
                policy_name=policy[s],
                policy_version=int(version[s]),
                slate=slate,
            )
        )
    clicked = np.flatnonzero(frame["click"].to_numpy() > 0)
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
