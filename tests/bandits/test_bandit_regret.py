"""Regret on the seeded linear-logistic environment.

One-hot segments (Diag-LinUCB's exact case) with the plain statistics, and dense Gaussian contexts
with the centred statistics. Sublinear: the per-round regret in the last quarter is a small
fraction of the first quarter's. Clearly better than ε-greedy on the same statistics (whose
regret grows linearly with ε) and than random.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.bandits import DiagLinTS, DiagLinUCB, EpsilonGreedy
from recsys.bandits.regret import run_regret
from simulators.linear_logistic import LinearLogisticEnv

N_ACTIONS, DIM, ROUNDS, BATCH = 10, 8, 100_000, 200
SEEDS = (0, 1, 2)


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
