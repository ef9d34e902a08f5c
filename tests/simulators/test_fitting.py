"""Fitting the simulator to logs with the slate choice likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from simulators.fitting import SlateChoiceModel, reproduction_report
from simulators.ground_truth import policy_value
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.obd import choice_data, load_obd
from simulators.policies import SoftmaxPolicy, UniformPolicy


@pytest.fixture(scope="module")
def simulated_logs():
    config = SimulatorConfig(
        n_users=30, n_items=15, dim=3, slate_size=3, no_click_utility=2.0, feature_noise=0.0
    )
    sim = SlateSimulator(config)
    rng = np.random.default_rng(0)
    requests = sim.sample_requests(24_000, rng)
    slates = UniformPolicy(15, random_state=rng).recommend(requests.context, 3).items
    responses = sim.respond(requests, slates, rng)
    return sim, requests.user_id, slates, responses.clicked_position


def test_fit_recovers_the_simulator_and_reproduces_held_out_click_rates(simulated_logs):
    sim, users, slates, clicked = simulated_logs
    train, test = slice(0, 16_000), slice(16_000, None)
    model = SlateChoiceModel(30, 15, 3, dim=3, max_iter=250, learning_rate=0.05)
    model.fit(users[train], slates[train], None, clicked[train])
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    np.testing.assert_allclose(model.examination_, sim.examination, atol=0.1)
    report = reproduction_report(model, users[test], slates[test], None, clicked[test])
    summary = report["summary"].row(0, named=True)
    assert summary["log_likelihood"] > summary["baseline_log_likelihood"] + 0.02
    assert summary["per_position_weighted_abs_error"] < 0.01
    assert summary["per_item_weighted_abs_error"] < 0.02
    true_p = 1 - sim.click_probabilities(users[test], slates[test])[:, -1]
    fitted_p = 1 - model.click_probabilities(users[test], slates[test])[:, -1]
    assert np.corrcoef(true_p, fitted_p)[0, 1] > 0.9
    # The fitted simulator ranks policies like the real one.
    fitted_sim = model.to_simulator(user_weights=np.bincount(users, minlength=30))
    good = SoftmaxPolicy(sim.item_latent, temperature=0.3)
    fitted_good = SoftmaxPolicy(fitted_sim.item_features, temperature=0.3)
    uniform = UniformPolicy(15)

    def value(world, policy):
        return policy_value(world, clone(policy).set_params(random_state=0), n_monte_carlo=30).value

    assert value(fitted_sim, fitted_good) > value(fitted_sim, uniform)
    assert value(sim, good) > value(sim, uniform)


def test_fit_validates_logs():
    model = SlateChoiceModel(2, 5, 3)
    with pytest.raises(ValueError, match=r"^slates: expected item ids < n_items"):
        model.fit(np.zeros(2, int), np.array([[0, 9, 1], [1, 2, 3]]), None, np.array([0, -1]))
    with pytest.raises(ValueError, match=r"^clicked: expected shown slots"):
        model.fit(np.zeros(2, int), np.array([[0, -1, 1], [1, 2, 3]]), None, np.array([1, -1]))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.click_probabilities(np.zeros(1, int), np.array([[0, 1, 2]]))


def test_fit_to_open_bandit_dataset(shared_data):
    """Mirroring real users: held-out click rates per position and per item on OBD (random)."""
    data = choice_data(load_obd(shared_data, "random"))
    n = len(data["clicked"])
    order = np.random.default_rng(0).permutation(n)
    train, test = order[: int(0.7 * n)], order[int(0.7 * n) :]
    model = SlateChoiceModel(data["n_users"], 80, 3, dim=2, l2=100.0, max_iter=200)
    model.fit(*(data[k][train] for k in ("user_index", "slates", "positions", "clicked")))
    report = reproduction_report(
        model, *(data[k][test] for k in ("user_index", "slates", "positions", "clicked"))
    )
    summary = report["summary"].row(0, named=True)
    # About 0.4% of impressions are clicked: errors are judged against that scale.
    assert summary["per_position_weighted_abs_error"] < 0.0015
    assert summary["per_item_weighted_abs_error"] < 0.01
    # ~40 clicks identify little beyond the base rate: the fit must not be worse than knowing
    # the held-out rate by more than 1%.
    assert summary["log_likelihood"] > 1.01 * summary["baseline_log_likelihood"]
    assert report["per_item"].height == 80 and report["per_position"].height == 3
