"""Logged data as a polars frame and as recsys event records."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.events import Feedback, Impression, decode, encode
from recsys.ope import bandit_feedback_from_frame
from recsys.schema import validate_frame
from simulators.logged_data import LOG_COLUMNS, LOG_EXTRAS, collect_logs, to_events
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import SoftmaxPolicy


def test_logs_round_trip_through_the_event_contract():
    sim = SlateSimulator(SimulatorConfig(n_items=30, click_noise=0.02))
    rng = np.random.default_rng(0)
    frame = collect_logs(sim, SoftmaxPolicy(sim.item_features, random_state=rng), 2000, rng,
                         batch_size=700)
    assert tuple(frame.columns) == LOG_COLUMNS
    validate_frame(frame, "rewards", LOG_EXTRAS)
    assert frame.height == 6000 and frame["request_id"].n_unique() == 2000
    assert frame.filter(frame["noise"])["reward"].min() == 1  # noise labels only mark clicks
    impressions, feedback = to_events(frame)
    assert len(impressions) == 2000
    assert len(feedback) == int(frame["reward"].sum())
    for event in impressions[:50] + feedback[:50]:
        assert decode(encode(event)) == event  # decoding validates every field
    first = impressions[0]
    assert isinstance(first, Impression) and len(first.slate) == 3
    rows = frame.filter(frame["request_id"] == first.request_id).sort("position")
    assert first.event_time_ms == frame["event_time_ms"].min()  # replayed in event-time order
    assert [e.item_id for e in first.slate] == rows["item_id"].to_list()
    assert [e.propensity for e in first.slate] == rows["propensity"].to_list()
    assert list(first.context.dense) == rows["context_dense"][0].to_list()
    assert all(isinstance(f, Feedback) and f.event_type == "click" for f in feedback)


def test_logs_feed_the_estimators():
    sim = SlateSimulator(SimulatorConfig(n_items=10, slate_size=2))
    rng = np.random.default_rng(1)
    frame = collect_logs(sim, SoftmaxPolicy(sim.item_features, random_state=rng), 500, rng)
    feedback = bandit_feedback_from_frame(frame, n_actions=10, len_list=2)
    assert feedback.context is not None and feedback.context.shape == (1000, sim.n_features)
    assert feedback.pscore.max() <= 1


def test_to_events_needs_a_schema_frame_with_scores():
    sim = SlateSimulator(SimulatorConfig(n_items=10, slate_size=2))
    rng = np.random.default_rng(2)
    frame = collect_logs(sim, SoftmaxPolicy(sim.item_features, random_state=rng), 20, rng)
    with pytest.raises(ValueError, match=r"^frame: expected a score column"):
        to_events(frame.drop("score"))
    with pytest.raises(ValueError, match=r"^rewards\.reward: expected a Float64 column"):
        to_events(frame.rename({"reward": "click"}).drop("click"))
