"""Regret of Diag-LinUCB and Diag-LinTS on the full slate simulator and on the minimal
linear-logistic environment.

* Simulator (``simulators.bandit_env.SimulatorBanditEnv``: observable user features as contexts,
  one-item slates, click as reward, pseudo-regret against the simulator's exact per-user optimum):
  the per-round regret of the second half is clearly below the first half's, the last quarter is
  near the level a converged linear policy can reach (``linear_floor``: feature noise and the
  listwise choice model keep it above 0), and the total is clearly below ε-greedy and random.
* Linear-logistic: one-hot segments (Diag-LinUCB's exact case) with the plain statistics, and
  dense Gaussian contexts with the centred statistics; kept because they pin the well-specified
  cases (no floor), where the last quarter's regret is a small fraction of the first quarter's.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import DiagLinTS, DiagLinUCB, EpsilonGreedy
from recsys.bandits.regret import run_regret
from simulators.bandit_env import SimulatorBanditEnv
from simulators.linear_logistic import LinearLogisticEnv
from simulators.model import SimulatorConfig

N_ACTIONS, DIM, ROUNDS, BATCH = 10, 8, 100_000, 200
SEEDS = (0, 1, 2)

# The simulator at a test-sized scale: 1,000 users, 20 items, 8 latent dimensions; features with
# half the default noise and a no-click utility of 1 (a click rate of about 30 % under random
# choice) so that 100k rounds are enough to see learning flatten out.
SIM_ROUNDS, SIM_BATCH = 100_000, 500


def simulator_env(seed: int) -> SimulatorBanditEnv:
    config = SimulatorConfig(n_items=20, dim=8, no_click_utility=1.0, feature_noise=0.25,
                             seed=seed)
    return SimulatorBanditEnv(config, seed=seed + 100)  # request stream seeded apart from world


def simulator_curves(make_policy) -> list:
    curves = []
    for seed in SEEDS:
        env = simulator_env(seed)
        policy = make_policy(seed + 1000).init(np.arange(env.n_actions), env.dim)
        curves.append(run_regret(policy, env, SIM_ROUNDS, batch_size=SIM_BATCH))
    return curves


@pytest.fixture(scope="module")
def simulator_baselines() -> tuple[float, float]:
    eps = simulator_curves(lambda s: EpsilonGreedy(0.05, centred=True, random_state=s))
    rand = simulator_curves(lambda s: EpsilonGreedy(1.0, random_state=s))
    for c in rand:  # the harness sees no learning where there is none: linear regret
        assert 0.9 < c.window_rate(0.5, 1.0) / c.window_rate(0.0, 0.5) < 1.1
    return np.mean([c.total for c in eps]), np.mean([c.total for c in rand])


@pytest.mark.parametrize(
    "make_policy",
    [lambda s: DiagLinUCB(alpha=0.5, centred=True, random_state=s),
     lambda s: DiagLinTS(v=0.25, centred=True, n_mc_draws=0, random_state=s)],
    ids=["DiagLinUCB-centred", "DiagLinTS-centred"],
)
def test_simulator_regret_is_sublinear_and_below_baselines(make_policy,
                                                           simulator_baselines) -> None:
    eps_total, random_total = simulator_baselines
    curves = simulator_curves(make_policy)
    for seed, c in zip(SEEDS, curves, strict=True):
        first, second = c.window_rate(0.0, 0.5), c.window_rate(0.5, 1.0)
        assert second < 0.75 * first, (seed, first, second)  # linear regret: ratio ≈ 1
        floor = simulator_env(seed).linear_floor()
        assert c.window_rate(0.75, 1.0) < 2.5 * floor, (seed, c.window_rate(0.75, 1.0), floor)
    total = np.mean([c.total for c in curves])
    assert total < 0.85 * eps_total, (total, eps_total)
    assert total < 0.15 * random_total, (total, random_total)


def mean_curve(make_policy):
    curves = []
    for seed in SEEDS:
        env = LinearLogisticEnv(N_ACTIONS, DIM, context="segments", seed=seed)
        policy = make_policy(seed + 1000).init(np.arange(N_ACTIONS), DIM)  # not the env's seed
        curves.append(run_regret(policy, env, ROUNDS, batch_size=BATCH))
    return curves


@pytest.fixture(scope="module")
def baselines():
    eps = mean_curve(lambda s: EpsilonGreedy(0.05, random_state=s))
    rand = mean_curve(lambda s: EpsilonGreedy(1.0, random_state=s))
    return np.mean([c.total for c in eps]), np.mean([c.total for c in rand])


@pytest.mark.parametrize(
    "make_policy",
    [lambda s: DiagLinUCB(alpha=1.0, random_state=s),
     lambda s: DiagLinTS(v=0.5, n_mc_draws=0, random_state=s)],
    ids=["DiagLinUCB", "DiagLinTS"],
)
def test_regret_is_sublinear_and_below_baselines(make_policy, baselines) -> None:
    eps_total, random_total = baselines
    curves = mean_curve(make_policy)
    for c in curves:
        assert c.window_rate(0.75, 1.0) < 0.2 * c.window_rate(0.0, 0.25)
        half = c.cumulative_regret[ROUNDS // 2 - 1]
        assert c.total < 1.5 * half  # linear regret would double from T/2 to T
    total = np.mean([c.total for c in curves])
    assert total < 0.6 * eps_total
    assert total < 0.1 * random_total


DENSE_ROUNDS = 50_000


def dense_total(make_policy) -> tuple[float, list]:
    curves = []
    for seed in SEEDS:
        env = LinearLogisticEnv(N_ACTIONS, DIM, context="gaussian", seed=seed)
        policy = make_policy(seed + 1000).init(np.arange(N_ACTIONS), DIM)
        curves.append(run_regret(policy, env, DENSE_ROUNDS, batch_size=BATCH))
    return float(np.mean([c.total for c in curves])), curves


@pytest.mark.parametrize(
    "make_policy",
    [lambda s: DiagLinUCB(alpha=0.5, centred=True, random_state=s),
     lambda s: DiagLinTS(v=0.25, centred=True, n_mc_draws=0, random_state=s)],
    ids=["DiagLinUCB-centred", "DiagLinTS-centred"],
)
def test_dense_contexts_centred_diag_regret_is_sublinear_and_below_baselines(make_policy) -> None:
    total, curves = dense_total(make_policy)
    for c in curves:
        assert c.window_rate(0.75, 1.0) < 0.3 * c.window_rate(0.0, 0.25)
    eps_total, _ = dense_total(lambda s: EpsilonGreedy(0.05, centred=True, random_state=s))
    plain_total, _ = dense_total(lambda s: DiagLinTS(v=0.5, n_mc_draws=0, random_state=s))
    random_total, _ = dense_total(lambda s: EpsilonGreedy(1.0, random_state=s))
    assert total < 0.7 * eps_total
    assert total < 0.5 * plain_total  # centring is what makes Diag work on dense contexts
    assert total < 0.1 * random_total
