"""Hostile events cannot make the streamed statistics non-finite: learners clip every context the
way learning the joiner's rewards does (the equivalence holds with extreme contexts too), refuse
and report joined examples no joiner could have produced, and shards refuse non-finite deltas
and count them. No Kafka or Ray here (``tests/serving/test_poisoning.py`` runs the live path)."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import stats_from_arrays
from recsys.events import Context, Reward
from streaming.consumer import ConsumedEvent
from streaming.join import EventTimeJoiner
from streaming.learner import REFUSED_REWARD, LearnerCore
from streaming.metrics import dead_letters
from streaming.shards import ParameterShard, dense_statistics
from tests.streaming.event_log import LATENESS, MAPPING, WINDOW
from tests.streaming.test_learner import (
    DIM,
    FBS,
    _consumed,
    _fb,
    _imp,
    core,
    feed,
    learned,
    shards_for,
)

HOSTILE = (1e200, -1e308, 1e160)
"""Finite, so it decodes; its squares overflow unless clipped first."""


def test_hostile_impressions_are_clipped_alike_online_and_from_the_joiners_rewards() -> None:
    base = dense_statistics(np.arange(100), DIM, clip_norm=10.0)
    shards = shards_for(base)
    learner = core(template=dense_statistics(np.zeros(0, dtype=np.int64), DIM,
                                             clip_norm=10.0).to_arrays())
    events = [_imp("a", 1_000, dense=HOSTILE), _imp("b", 1_010), _fb("a", 1_100, 10),
              _fb("b", 1_150, 11, "add_to_cart")]
    imps, fbs = events[:2], events[2:]
    feed(learner, shards, [_consumed(imps), _consumed(fbs, FBS)])
    stats = learned(shards)
    assert all(np.isfinite(v).all() for v in stats._sums().values())
    # each shown item got exactly C² = 100 of Σx² from the hostile impression (and 5.25 from b)
    np.testing.assert_allclose(stats.sxx[[10, 11, 12]].sum(axis=1), 105.25, rtol=1e-12)
    joiner = EventTimeJoiner(WINDOW, LATENESS, MAPPING)
    joiner.add(imps, 0)
    joiner.add(fbs, 0)
    rewards = joiner.flush().rewards
    joined = base.copy().learn(np.array([r.context.dense for r in rewards]),
                               np.array([r.item_id for r in rewards]),
                               np.array([r.reward for r in rewards]))
    assert stats.allclose(joined, rtol=1e-9, atol=1e-9)
    mean, var, _ = stats.moments(np.ones((2, DIM)))
    assert np.isfinite(mean).all() and np.isfinite(var).all()


def _reward(rid: str, item: int, reward: float, dense=(1.0, 0.0, -1.0)) -> Reward:
    return Reward(request_id=rid, event_time_ms=1_000, user_id="u", context=Context(dense=dense),
                  item_id=item, position=0, reward=reward, propensity=0.5, policy_name="ts",
                  policy_version=1)


def test_window_mode_refuses_rewards_no_joiner_could_emit_and_reports_them() -> None:
    base = dense_statistics(np.arange(20), DIM)
    shards = shards_for(base)
    learner = core(mode="window")
    assert learner.reward_range == (0.0, 1.0)
    batch = [ConsumedEvent(e, "rewards", 1, k, 0) for k, e in enumerate([
        _reward("a", 1, 1.0), _reward("b", 2, 1e308), _reward("c", 3, -0.5),
        _reward("d", 4, 0.5, dense=HOSTILE)])]
    feed(learner, shards, [batch])
    refused = learner.take_refused()
    assert [(c.offset, reason.split(":")[0]) for c, reason in refused] == [
        (1, REFUSED_REWARD), (2, REFUSED_REWARD)]
    assert "reward 1e+308 for item 2 of request 'b'" in refused[0][1]
    assert "expected a value in [0, 1] (stream.reward_mapping)" in refused[0][1]
    assert learner.take_refused() == []  # reported once
    assert learner.counts[REFUSED_REWARD] == 2
    truth = base.copy().learn(np.array([[1.0, 0.0, -1.0], HOSTILE]), [1, 4], [1.0, 0.5])
    assert learned(shards).allclose(truth, rtol=1e-12, atol=1e-12)
    # the pipeline's metrics show them as the learner's dead letters, by reason
    counters = {"dead_lettered": 0, "counts": dict(learner.counts)}
    assert dead_letters("learner-0", counters) == {"undecodable": 0.0, REFUSED_REWARD: 2.0}


def test_a_reward_mapping_that_would_overflow_with_the_clip_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"reward_mapping: .*lower the rewards or "
                                         r"stream\.context_clip_norm"):
        LearnerCore(dense_statistics(np.zeros(0, dtype=np.int64), DIM).to_arrays(), 1,
                    reward_mapping={"click": 1e306, "skip": -1e306})


def test_a_shard_refuses_non_finite_deltas_whole_and_counts_them() -> None:
    base = dense_statistics(np.arange(4), DIM)
    shard = ParameterShard(0, 1, *base.to_arrays())
    good = base.delta_from_batch(np.ones((2, DIM)), [0, 1], [1.0, 0.0])
    bad = good.copy()
    bad.sxx[1, 0] = np.inf
    version = shard.apply([good.to_arrays()])
    assert shard.apply([bad.to_arrays()]) == version  # nothing of it merged
    shard.apply([good.to_arrays()])
    counters = shard.counters()
    assert (counters["non_finite_deltas"], counters["deltas_applied"]) == (1, 2)
    assert counters["deltas_rejected"] == {}
    merged = stats_from_arrays(*shard.checkpoint())
    assert merged.allclose(base.copy().merge_inplace(good).merge_inplace(good))
