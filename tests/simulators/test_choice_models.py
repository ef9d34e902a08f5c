"""The two choice models: the position-based model (PBM) against Monte Carlo clicks, brute-force
optimal slates and its agreement with the MNL on one item; and why it exists: per-slot IPS is
unbiased on PBM logs and not on MNL logs (slate OPE assumes a reward additive over slots)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from recsys.ope import SlateIndependentIPS
from simulators.ground_truth import (
    item_click_probabilities,
    optimal_slates,
    optimal_value,
    policy_value,
)
from simulators.http_traffic import HttpUsers
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import SoftmaxPolicy, UniformPolicy
from simulators.world import simulator_of, world_of, write_world
from tests.client.stub_server import serve_app
from tests.simulators.test_http_traffic import Stub

SMALL = SimulatorConfig(n_users=40, n_items=6, dim=4, slate_size=3, no_click_utility=0.5,
                        affinity=2.0, seed=5)


def pbm(config: SimulatorConfig = SMALL, **changes) -> SlateSimulator:
    return SlateSimulator(dataclasses.replace(config, choice_model="pbm", **changes))


def random_slates(sim: SlateSimulator, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(rng.random((n, sim.config.n_items)), axis=1)[:, : sim.config.slate_size]


@pytest.mark.parametrize("click_noise", [0.0, 0.2])
def test_pbm_expected_clicks_are_the_monte_carlo_mean_of_its_clicks(click_noise):
    sim = pbm(click_noise=click_noise)
    rng = np.random.default_rng(0)
    user, slate = np.array([7]), np.array([[4, 0, 2]])
    n = 100_000
    requests = sim.sample_requests(n, rng)
    requests = type(requests)(np.repeat(user, n), requests.context, requests.time,
                              requests.available)
    responses = sim.respond(requests, np.repeat(slate, n, axis=0), rng)
    probs = sim.click_probabilities(user, slate)[0]
    clicks = responses.clicks.astype(float)
    # per slot, P(no click at all) and the expected clicks of the slate
    observed = np.r_[clicks.mean(axis=0), (clicks.sum(axis=1) == 0).mean()]
    se = np.sqrt(probs * (1 - probs) / n)
    assert (np.abs(observed - probs) < 4 * se).all()
    expected = sim.expected_clicks(user, slate)[0]
    assert expected == pytest.approx(probs[:-1].sum())
    total = clicks.sum(axis=1)
    assert abs(total.mean() - expected) < 4 * total.std() / np.sqrt(n)
    assert (total > 1).any()  # several clicks per slate happen
    first = np.where(total > 0, clicks.argmax(axis=1), -1)
    np.testing.assert_array_equal(responses.clicked_position, first)
    if click_noise:  # an accident replaces the request's clicks by one click
        assert (total[responses.noise] == 1).all()
        assert responses.noise.mean() == pytest.approx(click_noise, abs=0.005)


@pytest.mark.parametrize("click_noise", [0.0, 0.1])
def test_one_item_alone_at_the_top_has_the_same_click_probability_in_both_models(click_noise):
    mnl = SlateSimulator(dataclasses.replace(SMALL, click_noise=click_noise))
    other = pbm(click_noise=click_noise)
    users = np.arange(SMALL.n_users)
    slates = (users % SMALL.n_items)[:, None]
    np.testing.assert_allclose(other.click_probabilities(users, slates),
                               mnl.click_probabilities(users, slates), rtol=1e-12)
    np.testing.assert_allclose(other.expected_clicks(users, slates),
                               mnl.expected_clicks(users, slates), rtol=1e-12)
    np.testing.assert_allclose(item_click_probabilities(other),
                               item_click_probabilities(mnl), rtol=1e-12)
    # lower positions differ: the PBM discounts the click, the MNL the item's weight
    attractiveness = (item_click_probabilities(other) - click_noise) / (1 - click_noise)
    q = item_click_probabilities(other, position=2)
    np.testing.assert_allclose(
        q, (1 - click_noise) * other.examination[2] * attractiveness + click_noise
    )
    assert not np.allclose(q, item_click_probabilities(mnl, position=2))


def test_pbm_optimal_slates_are_the_brute_force_best_and_beat_random_slates():
    sim = pbm(click_noise=0.05)
    users = np.arange(SMALL.n_users)
    slates = np.array(list(itertools.permutations(range(SMALL.n_items), SMALL.slate_size)))
    values = np.stack([sim.expected_clicks(users, np.repeat(s[None], users.size, axis=0))
                       for s in slates], axis=1)  # (users, all ordered slates)
    best = optimal_slates(sim)
    np.testing.assert_array_equal(best, slates[values.argmax(axis=1)])
    assert optimal_value(sim).value == pytest.approx(sim.user_weights @ values.max(axis=1))
    shuffled = random_slates(sim, users.size, np.random.default_rng(1))
    assert (sim.expected_clicks(users, shuffled) <= sim.expected_clicks(users, best) + 1e-12).all()
    assert sim.user_weights @ sim.expected_clicks(users, shuffled) < optimal_value(sim).value


def test_choice_model_is_validated_and_travels_in_the_world_file(tmp_path):
    with pytest.raises(ValueError, match=r"^choice_model: expected one of 'mnl' .* or 'pbm' .*, "
                                         r"got 'pmb'; did you mean pbm\?"):
        SimulatorConfig(choice_model="pmb")
    with pytest.raises(ValueError, match=r"^choice_model: expected .*, got None$"):
        SimulatorConfig(choice_model=None)
    assert SimulatorConfig().choice_model == "mnl"
    config = dataclasses.replace(SMALL, choice_model="pbm")
    world = json.loads(write_world(tmp_path, config).read_text())
    assert world == world_of(config) and world["config"]["choice_model"] == "pbm"
    again = simulator_of(world)
    assert again.config == config
    users, slate = np.arange(3), np.array([[0, 1, 2]] * 3)
    np.testing.assert_array_equal(again.expected_clicks(users, slate),
                                  pbm().expected_clicks(users, slate))


def test_http_users_post_every_click_of_a_pbm_slate():
    sim = pbm(SimulatorConfig(n_users=50, n_items=10, slate_size=3, no_click_utility=-1.0,
                              seed=3))
    stub = Stub(10)
    with serve_app(stub.app()) as url:
        result = HttpUsers(url, sim, seed=1).run(n_rounds=1, round_size=40)[0]
    per_request: dict[str, int] = {}
    for event in stub.feedback:
        per_request[event.request_id] = per_request.get(event.request_id, 0) + 1
        assert stub.served[event.request_id].items[event.position] == event.item_id
    assert max(per_request.values()) > 1
    assert len(stub.feedback) == result.feedback_posted == result.clicks > result.served / 2


def slot_ips(choice_model: str, n: int = 20_000) -> tuple[float, float, float, float]:
    """Per-slot IPS of a softmax policy on uniform logs (k = 3), with its standard error, and
    the policy's true value with its Monte Carlo standard error."""
    config = SimulatorConfig(n_users=200, n_items=10, dim=4, slate_size=3, no_click_utility=0.0,
                             affinity=2.0, feature_noise=0.2, choice_model=choice_model, seed=1)
    sim = SlateSimulator(config)
    rng = np.random.default_rng(0)
    requests = sim.sample_requests(n, rng)
    logged = UniformPolicy(10, random_state=rng).recommend(requests.context, 3)
    clicks = sim.respond(requests, logged.items, rng).clicks
    evaluation = SoftmaxPolicy(sim.item_features, temperature=0.3, random_state=0)
    dist = evaluation.action_dist(requests.context, 3)  # (n, items, positions)
    target = dist[np.arange(n)[:, None], logged.items, np.arange(3)]
    per_slate = SlateIndependentIPS(len_list=3).estimate_round_rewards(
        slate_id=np.repeat(np.arange(n), 3), reward=clicks.ravel().astype(float),
        position=np.tile(np.arange(3), n), pscore_item_position=logged.propensities.ravel(),
        evaluation_policy_pscore_item_position=target.ravel(),
    )
    truth = policy_value(sim, evaluation, n_monte_carlo=100)
    return (float(per_slate.mean()), float(per_slate.std(ddof=1) / np.sqrt(n)), truth.value,
            truth.standard_error)


def test_slot_ips_is_unbiased_on_pbm_logs_and_overestimates_on_mnl_logs():
    # PBM: E[clicks] = Σ_k E[click at k | item at k], so per-slot IPS estimates it without bias.
    estimate, se, truth, truth_se = slot_ips("pbm")
    assert abs(estimate - truth) < 4 * np.hypot(se, truth_se)
    # MNL: a slot's click depends on the other items shown; uniform logs fill the other slots
    # with weaker competitors than the softmax policy does, so the estimate is far too high.
    estimate, se, truth, truth_se = slot_ips("mnl")
    assert estimate - truth > 10 * np.hypot(se, truth_se)
    assert estimate > 1.3 * truth
