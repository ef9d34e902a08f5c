"""A recsys bandit policy is evaluated by ``recsys.ope`` directly, and the estimate is right.

On the slate simulator (one-item slates, so the position-wise estimators are unbiased and the true
value is exact): a logging policy with exact propensities (the simulator's ε-greedy) writes a
training log and a held-out log; a recsys bandit learns on the training log and is frozen; its
``action_dist`` on the held-out contexts goes straight into IPS, SNIPS and DR, whose bootstrap
intervals must cover the policy's true value — and must not cover the values of clearly different
policies (uniformly random, and a policy trained to pick the worst items), so the check can fail.
The true value comes from ``simulators.ground_truth`` through the policy's ``action_dist`` and,
independently, from serving the policy with ``recommend`` to every user.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from recsys.bandits import BasePolicy, DiagLinTS, DiagLinUCB, Greedy
from recsys.ope import (
    BanditFeedback,
    DoublyRobust,
    InverseProbabilityWeighting,
    SelfNormalizedInverseProbabilityWeighting,
    bandit_feedback_from_frame,
)
from simulators.ground_truth import item_click_probabilities, policy_value
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import EpsilonMixturePolicy, GreedyPolicy, UniformPolicy

CONFIG = SimulatorConfig(n_users=500, n_items=20, dim=8, slate_size=1, no_click_utility=1.0,
                         feature_noise=0.25, seed=0)
N_LOGGED = 20_000
ALPHA = 0.01  # 99 % intervals: a seeded test that misses 1 time in 100 if the code is right
SERVED_DRAWS = 200


@pytest.fixture(scope="module")
def world() -> tuple[SlateSimulator, BanditFeedback, BanditFeedback]:
    sim = SlateSimulator(CONFIG)
    rng = np.random.default_rng(0)  # one stream for the requests, the slates and the clicks
    logger = EpsilonMixturePolicy(GreedyPolicy(sim.item_features), 0.5, random_state=rng)
    train, held_out = (bandit_feedback_from_frame(collect_logs(sim, logger, N_LOGGED, rng),
                                                  n_actions=CONFIG.n_items) for _ in range(2))
    return sim, train, held_out


def trained(policy: BasePolicy, logs: BanditFeedback, *, worst: bool = False) -> BasePolicy:
    policy.init(np.arange(CONFIG.n_items), logs.context.shape[1])
    reward = 1.0 - logs.reward if worst else logs.reward
    return policy.learn(logs.context, logs.action, reward)


def served_value(sim: SlateSimulator, policy: BasePolicy) -> tuple[float, float]:
    """Clicks per request when ``recommend`` serves every user ``SERVED_DRAWS`` times, with its
    Monte Carlo standard error; independent of ``action_dist``."""
    server = clone(policy).set_params(n_mc_draws=0) if "n_mc_draws" in policy.get_params() \
        else clone(policy)
    server.use(policy.stats_)
    users = np.arange(CONFIG.n_users)
    contexts = np.repeat(sim.user_features(users), SERVED_DRAWS, axis=0)
    items = server.recommend(contexts, 1).items[:, 0].reshape(CONFIG.n_users, SERVED_DRAWS)
    clicks = np.take_along_axis(item_click_probabilities(sim), items, axis=1)
    per_draw = sim.user_weights @ clicks
    return float(per_draw.mean()), float(per_draw.std(ddof=1) / np.sqrt(SERVED_DRAWS))


POLICIES = {
    "diag-linucb-eps": lambda: DiagLinUCB(alpha=0.3, epsilon=0.1, centred=True, random_state=0),
    "diag-lints": lambda: DiagLinTS(v=0.3, n_mc_draws=SERVED_DRAWS, centred=True,
                                    random_state=0),
}


@pytest.mark.parametrize("make", POLICIES.values(), ids=POLICIES.keys())
def test_ope_of_a_trained_bandit_covers_its_true_value(world, make) -> None:
    sim, train, held_out = world
    policy = trained(make(), train)
    truth = policy_value(sim, policy).value
    served, served_se = served_value(sim, policy)
    # action_dist is what recommend serves (both sides Monte Carlo for TS: hence √2)
    assert abs(truth - served) <= 4.5 * np.sqrt(2) * served_se, (truth, served, served_se)

    uniform = policy_value(sim, UniformPolicy(CONFIG.n_items)).value
    worst = policy_value(sim, trained(Greedy(centred=True, random_state=0), train,
                                      worst=True)).value
    assert truth > uniform + 0.2 and uniform > worst + 0.1  # the three are far apart

    action_dist = policy.action_dist(held_out.context, 1)
    # DR's reward model: the bandit's own posterior means, fitted on the training log only
    reward_model = np.clip(policy.score(held_out.context, exploit=True), 0.0, 1.0)[:, :, None]
    kwargs = held_out.estimator_kwargs(action_dist)
    lower, upper = f"{100 * (1 - ALPHA)}% CI (lower)", f"{100 * (1 - ALPHA)}% CI (upper)"
    for estimator, extra in (
        (InverseProbabilityWeighting(), {}),
        (SelfNormalizedInverseProbabilityWeighting(), {}),
        (DoublyRobust(), {"estimated_rewards_by_reg_model": reward_model}),
    ):
        interval = estimator.estimate_interval(**kwargs, **extra, alpha=ALPHA,
                                               n_bootstrap_samples=1000, random_state=0)
        low, high = interval[lower], interval[upper]
        name = type(estimator).__name__
        assert low <= truth <= high, (name, low, truth, high)
        for other in (uniform, worst):
            assert not low <= other <= high, (name, low, other, high)
