"""Replay of learning configurations: it ranks configurations like their on-policy runs, it is
Li et al.'s replay on uniform logs, and it says what is wrong with bad logs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.bandits import DiagLinUCB, EpsilonGreedy, policy_spec
from recsys.comparison.replay import replay_events, replay_value
from simulators.ground_truth import policy_value
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import EpsilonMixturePolicy, SoftmaxPolicy, UniformPolicy

CONFIG = SimulatorConfig(n_users=200, n_items=20, dim=8, slate_size=1, no_click_utility=1.0,
                         affinity=2.0, seed=0)
"""Clicks vary a lot between items, so a learner soon beats random recommendations."""


def skewed_logs(n: int, seed: int) -> pl.DataFrame:
    """Logs of a softmax policy mixed half and half with uniform: non-uniform propensities."""
    sim = SlateSimulator(CONFIG)
    rng = np.random.default_rng(seed)
    logging = EpsilonMixturePolicy(SoftmaxPolicy(sim.item_features), 0.5)
    return collect_logs(sim, logging.set_params(random_state=rng), n, rng)


def uniform_logs(n: int, seed: int, config: SimulatorConfig = CONFIG) -> pl.DataFrame:
    sim = SlateSimulator(config)
    rng = np.random.default_rng(seed)
    return collect_logs(sim, UniformPolicy(config.n_items).set_params(random_state=rng), n, rng)


def on_policy_value(policy, n_steps: int, batch_size: int, seeds: range) -> tuple[float, float]:
    """The configuration run live in the simulator (mean reward over ``n_steps``, learning every
    ``batch_size`` requests), averaged over runs: the truth the replay estimates; and its se."""
    runs = []
    for seed in seeds:
        sim, rng = SlateSimulator(CONFIG), np.random.default_rng(seed)
        live = policy.set_params(random_state=seed).init(np.arange(CONFIG.n_items),
                                                         sim.n_features)
        total = 0.0
        for _ in range(n_steps // batch_size):
            requests = sim.sample_requests(batch_size, rng)
            shown = live.recommend(requests.context, 1).items
            reward = sim.respond(requests, shown, rng).clicks[:, 0].astype(float)
            live.learn(requests.context, shown[:, 0], reward)
            total += reward.sum()
        runs.append(total / (n_steps // batch_size * batch_size))
    return float(np.mean(runs)), float(np.std(runs, ddof=1) / np.sqrt(len(runs)))


def test_replay_recovers_the_better_of_two_configurations_on_skewed_logs():
    logs = skewed_logs(40_000, seed=1)
    learner = replay_value(logs, DiagLinUCB(alpha=0.5), batch_size=50)
    explorer = replay_value(logs, policy_spec(EpsilonGreedy(epsilon=1.0)), batch_size=50)

    assert learner.lower > explorer.upper  # the learner is better, and the replay is sure
    assert learner.n_capped == explorer.n_capped == 0  # the default M never caps
    assert learner.max_ratio == pytest.approx(1 / logs["propensity"].min())
    # about n_rows / M events are accepted, whatever the policy
    for result in (learner, explorer):
        assert result.n_accepted == pytest.approx(logs.height / result.max_ratio, rel=0.1)
    # the pure explorer's value is the uniform policy's, which the simulator knows exactly
    truth = policy_value(SlateSimulator(CONFIG), UniformPolicy(CONFIG.n_items)).value
    assert explorer.lower <= truth <= explorer.upper
    # the learner's replay estimates its live run over as many steps
    live, se = on_policy_value(DiagLinUCB(alpha=0.5), learner.n_accepted, 50, range(8))
    assert abs(learner.value - live) < 3 * np.hypot(se, (learner.upper - learner.lower) / 3.92)
    assert learner.policy.stats_.count.sum() == learner.n_accepted  # it learned what it saw


def li_replay(logs: pl.DataFrame, policy, batch_size: int) -> tuple[float, int]:
    """Li et al. (2011), written as the paper states it, one event at a time: keep the event
    when the policy's choice is the logged item; learn after every ``batch_size`` kept."""
    logs = logs.sort(["event_time_ms", "request_id"])
    contexts = np.stack(logs["context_dense"].to_list()).astype(np.float64)
    items, rewards = logs["item_id"].to_numpy(), logs["reward"].to_numpy()
    kept, pending = [], []
    for t in range(logs.height):
        choice = policy.item_ids_[np.argmax(policy.score(contexts[t : t + 1])[0])]
        if choice == items[t]:
            kept.append(rewards[t])
            pending.append(t)
            if len(pending) == batch_size:
                policy.learn(contexts[pending], items[pending], rewards[pending])
                pending = []
    return float(np.mean(kept)), len(kept)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_on_uniform_logs_a_deterministic_policy_replays_as_li_et_al(batch_size):
    config = SimulatorConfig(n_users=50, n_items=10, dim=4, slate_size=1, no_click_utility=1.0,
                             seed=3)
    logs = uniform_logs(3000, seed=4, config=config)
    prior = np.random.default_rng(5).normal(size=(config.n_items, 4))  # no ties at the start

    def fresh() -> DiagLinUCB:
        return DiagLinUCB(alpha=0.3).init(np.arange(config.n_items), 4, prior_mean=prior)

    result = replay_value(logs, fresh, batch_size=batch_size)
    value, n_kept = li_replay(logs, fresh(), batch_size)
    assert result.max_ratio == pytest.approx(config.n_items)
    assert result.n_accepted == n_kept > 200
    assert result.value == pytest.approx(value)


def test_a_smaller_bound_accepts_more_and_counts_the_capped_rows():
    logs = skewed_logs(5000, seed=2)
    exact = replay_value(logs, DiagLinUCB(alpha=0.5), batch_size=20)
    capped = replay_value(logs, DiagLinUCB(alpha=0.5), batch_size=20, max_ratio=4.0)
    assert exact.n_capped == 0 < capped.n_capped
    assert capped.n_accepted > 3 * exact.n_accepted
    assert capped.to_dict()["max_ratio"] == 4.0


def test_the_same_seed_gives_the_same_replay_and_the_policy_is_not_changed():
    logs = skewed_logs(3000, seed=3)
    given = DiagLinUCB(alpha=0.5)
    first = replay_value(logs, given, random_state=7)
    second = replay_value(logs, given, random_state=7)
    assert (first.value, first.n_accepted) == (second.value, second.n_accepted)
    assert not hasattr(given, "stats_")  # an instance is cloned, never trained in place


def test_slates_replay_one_slot_and_say_so_when_no_slot_is_given():
    config = SimulatorConfig(n_users=50, n_items=12, dim=4, slate_size=3, seed=1)
    logs = uniform_logs(4000, seed=2, config=config)
    with pytest.raises(ValueError, match=r"slates of one item .* got slates of up to 3 items; "
                                         r"pass position=0"):
        replay_value(logs, DiagLinUCB())
    lead = replay_value(logs, DiagLinUCB(), position=0)
    assert lead.n_rows == 4000 and lead.max_ratio == pytest.approx(12)
    second = replay_events(logs, position=1)
    assert len(second) == 4000 and (second.propensities == pytest.approx(1 / 12))
    assert replay_value(second, DiagLinUCB(), position=1).n_accepted > 0


def test_logged_slates_replay_like_the_frame_they_came_from():
    logs_module = pytest.importorskip("recsys.comparison.logs")
    logs = skewed_logs(3000, seed=5)
    slates = logs_module.LoggedSlates.from_frame(logs)
    assert (replay_value(slates, DiagLinUCB()).to_dict()
            == replay_value(logs, DiagLinUCB()).to_dict())


@pytest.mark.parametrize(
    ("change", "kwargs", "error"),
    [
        (pl.col("propensity") * 0, {}, r"propensity: expected a logged probability in \(0, 1\]"),
        (None, {"dim": 3}, r"dim: expected the logged contexts' length \(8\), got 3"),
        (None, {"batch_size": 0}, r"batch_size: expected an integer >= 1, got 0"),
        (None, {"position": -1}, r"position: expected None or an integer >= 0, got -1"),
        (None, {"alpha": 1.5}, r"alpha: expected"),
    ],
)
def test_bad_logs_and_arguments_are_named(change, kwargs, error):
    logs = skewed_logs(500, seed=6)
    if change is not None:
        logs = logs.with_columns(change.alias("propensity"))
    with pytest.raises(ValueError, match=error):
        replay_value(logs, DiagLinUCB(), **kwargs)


def test_no_accepted_event_is_an_error_that_says_why():
    logs = skewed_logs(300, seed=7)  # items 0..19; a policy over other items never agrees
    with pytest.raises(ValueError, match=r"at least one event accepted .* about n_rows / M"):
        replay_value(logs, DiagLinUCB(), item_ids=[100, 101])
