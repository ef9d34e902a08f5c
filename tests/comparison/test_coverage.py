"""On simulator logs the comparison ranks policies in the order of their true values, and its 95%
bootstrap intervals cover the true values at about the nominal rate over repeated logs.

One world (k = 1, 30 items, a click-through rate of 20–50% so 10k requests separate the
candidates); 20 independent logs of 10k requests from an ε-mixture of a softmax logging policy;
three candidates whose exact true values (``simulators.ground_truth.policy_value``) are about
0.22 (uniform), 0.36 (softmax) and 0.49 (ε-greedy). Every seed must rank them in true order by
SNIPS and by DR. Coverage is pooled over candidates and seeds (60 intervals per estimator); the
nominal rate is 0.95 and a binomial 60-draw sample of it falls below 0.8 with probability under
1e-5, so ``>= 0.8`` fails only when the intervals are really too narrow or biased (about 0.97 is
typical here). DM is not asserted: its reward model is context-free (one rate per item and
position), so it is biased toward the logged mix on contextual logs — the reason DR exists.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.comparison import LoggedSlates, compare_policies
from simulators.ground_truth import policy_value
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import EpsilonMixturePolicy, GreedyPolicy, SoftmaxPolicy, UniformPolicy

N_SEEDS = 20
N_REQUESTS = 10_000
COVERED = ("ips", "snips", "dr", "sndr", "switch-dr")


class Adapter:
    """A simulator policy as a comparison candidate: it scores ``batch.dense``."""

    def __init__(self, policy) -> None:
        self.policy = policy

    @property
    def item_ids_(self) -> np.ndarray:
        return self.policy.item_ids_

    def action_dist(self, batch, k):
        return self.policy.action_dist(batch.dense, k)


@pytest.fixture(scope="module")
def study():
    sim = SlateSimulator(SimulatorConfig(n_users=300, n_items=30, dim=6, slate_size=1,
                                         no_click_utility=1.5, seed=0))
    logging = EpsilonMixturePolicy(SoftmaxPolicy(sim.item_features), 0.2)
    policies = {
        "uniform": UniformPolicy(30),
        "softmax": SoftmaxPolicy(sim.item_features, temperature=1.0),
        "greedy": EpsilonMixturePolicy(GreedyPolicy(sim.item_features), 0.1),
    }
    truth = {name: policy_value(sim, policy) for name, policy in policies.items()}
    assert all(value.exact for value in truth.values())
    comparisons = []
    for seed in range(N_SEEDS):
        logging.set_params(random_state=seed)
        frame = collect_logs(sim, logging, N_REQUESTS, np.random.default_rng(1000 + seed))
        comparisons.append(compare_policies(
            LoggedSlates.from_frame(frame),
            {name: Adapter(policy) for name, policy in policies.items()},
            n_bootstrap=200, random_state=seed, progress=False,
            truth=lambda name, candidate: truth[name].value))
    return {name: value.value for name, value in truth.items()}, comparisons


def test_every_seed_ranks_the_candidates_in_true_order(study):
    truth, comparisons = study
    true_order = sorted(truth, key=truth.get)
    assert true_order == ["uniform", "softmax", "greedy"]
    for comparison in comparisons:
        for estimator in ("snips", "dr"):
            values = {c.name: c.estimates[estimator].value for c in comparison.candidates}
            assert sorted(values, key=values.get) == true_order, (estimator, values)


def test_intervals_cover_the_true_values_at_about_the_nominal_rate(study):
    truth, comparisons = study
    for estimator in COVERED:
        hits = [c.estimates[estimator].lower <= truth[c.name] <= c.estimates[estimator].upper
                for comparison in comparisons for c in comparison.candidates]
        assert len(hits) == 3 * N_SEEDS
        assert np.mean(hits) >= 0.8, (estimator, np.mean(hits))


def test_the_true_values_are_carried_into_the_results(study):
    truth, comparisons = study
    for c in comparisons[0].candidates:
        assert c.true_value == truth[c.name]
    assert comparisons[0].table()["true_value"].null_count() == 0
