"""The simulator's world hook: world.json written and read back, true values of registered
policies equal the ground truth, bad worlds and policies named."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import numpy as np
import pytest

from recsys.bandits import DiagLinUCB
from recsys.policies import LinearScorePolicy, uniform_policy
from recsys.registry import bandit_model, baseline_model, scored_model
from simulators.ground_truth import optimal_value, policy_value
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.offline_data import write_exposure_dataset
from simulators.policies import UniformPolicy
from simulators.world import simulator_of, true_policy_value, true_value, world_of, write_world

CONFIG = SimulatorConfig(n_users=60, n_items=15, dim=6, slate_size=3, seed=2)


def test_the_world_file_rebuilds_the_same_world(tmp_path):
    sim = SlateSimulator(CONFIG)
    path = write_world(tmp_path / "lake", sim)
    world = json.loads(path.read_text())
    assert path.name == "world.json" and world == world_of(CONFIG)
    assert world["kind"] == "simulator" and world["config"]["seed"] == 2
    again = simulator_of(world)
    np.testing.assert_array_equal(again.user_features(), sim.user_features())
    np.testing.assert_array_equal(again.item_latent, sim.item_latent)


def test_the_entry_point_is_the_hook():
    (hook,) = entry_points(group="recsys.worlds", name="simulator")
    assert hook.load() is true_value


def test_a_uniform_baseline_is_worth_the_ground_truth_of_a_uniform_policy():
    sim, world = SlateSimulator(CONFIG), world_of(CONFIG)
    model = baseline_model("uniform", uniform_policy(np.arange(CONFIG.n_items), random_state=0))
    exact = policy_value(sim, UniformPolicy(CONFIG.n_items), slate_size=1).value
    assert true_value(world, model, 1) == pytest.approx(exact, rel=1e-12)
    # slates of three: Monte Carlo over the policy's slates on both sides
    mc = true_policy_value(world, model, 3, n_monte_carlo=100)
    direct = policy_value(sim, UniformPolicy(CONFIG.n_items, random_state=1), 100, 3)
    assert not mc.exact and mc.standard_error > 0
    assert abs(mc.value - direct.value) < 4 * np.hypot(mc.standard_error, direct.standard_error)


def test_a_bandit_scores_the_users_dense_features():
    sim = SlateSimulator(CONFIG)
    prior = np.random.default_rng(0).normal(size=(CONFIG.n_items, sim.n_features))
    bandit = DiagLinUCB(alpha=0.1, epsilon=0.2).init(np.arange(CONFIG.n_items), sim.n_features,
                                                     prior_mean=prior)
    expected = policy_value(sim, bandit, slate_size=1).value
    assert true_value(world_of(sim), bandit_model(bandit), 1) == pytest.approx(expected)


def test_a_scored_policy_with_the_true_utilities_is_optimal_by_user_id():
    """Users are looked up by id str(i): the right vectors give the oracle's value exactly."""
    sim = SlateSimulator(CONFIG)
    users = np.arange(CONFIG.n_users)
    policy = LinearScorePolicy(exploration="greedy").fit(
        np.arange(CONFIG.n_items), sim.item_latent, sim.item_bias, user_ids=users.astype(str),
        user_vectors=CONFIG.affinity * sim.user_latent / np.sqrt(CONFIG.dim))
    model = scored_model(policy)
    for k in (1, 3):
        assert true_value(world_of(sim), model, k) == pytest.approx(optimal_value(sim, k).value)


def test_users_are_named_as_the_logs_name_them():
    """Logs of served traffic call user i "u{i}": the world says so, and a policy trained on
    those ids is valued on them (with the plain ids it would see only unknown users)."""
    sim = SlateSimulator(CONFIG)
    users = np.arange(CONFIG.n_users)
    policy = LinearScorePolicy(exploration="greedy").fit(
        np.arange(CONFIG.n_items), sim.item_latent, sim.item_bias,
        user_ids=np.char.add("u", users.astype(str)),
        user_vectors=CONFIG.affinity * sim.user_latent / np.sqrt(CONFIG.dim))
    world = world_of(sim, user_id_prefix="u")
    assert json.loads(json.dumps(world))["user_id_prefix"] == "u"
    best = optimal_value(sim, 3).value
    assert true_value(world, scored_model(policy), 3) == pytest.approx(best)
    assert true_value(world_of(sim), scored_model(policy), 3) < best - 0.01


def test_thompson_sampling_is_valued_on_its_slates_without_propensities():
    from recsys.bandits import DiagLinTS

    sim = SlateSimulator(CONFIG)
    bandit = DiagLinTS(v=0.5, n_mc_draws=500, random_state=0).init(
        np.arange(CONFIG.n_items), sim.n_features)
    value = true_policy_value(world_of(sim), bandit_model(bandit), 3)
    assert value.value > 0 and value.standard_error > 0


def test_simulated_data_sets_carry_their_world_at_the_lake_root(tmp_path):
    out = write_exposure_dataset(tmp_path / "data", seed=3, n_users=20, n_items=10,
                                 n_requests=300)
    world = json.loads((out / "lake" / "world.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world"] == "lake/world.json"
    assert world["config"] == manifest["simulator_config"]
    logs = pytest.importorskip("recsys.comparison.logs")
    assert logs.LoggedSlates.from_lake(out / "lake").world == world


@pytest.mark.parametrize(
    ("world", "error"),
    [
        ({"kind": "obd", "config": {}}, r"world.kind: expected 'simulator', got 'obd'"),
        ({"kind": "simulator"}, r"world.config: expected a mapping"),
        ({"kind": "simulator", "config": {"n_user": 5}},
         r"world.config: expected SimulatorConfig fields, got unknown \['n_user'\]; "
         r"did you mean n_users\?"),
    ],
)
def test_bad_worlds_are_named(world, error):
    with pytest.raises(ValueError, match=error):
        simulator_of(world)


def test_bad_policies_and_slate_sizes_are_named():
    world = world_of(CONFIG)
    model = baseline_model("uniform", uniform_policy(np.arange(CONFIG.n_items) + 100))
    with pytest.raises(ValueError, match=r"policy.item_ids_: expected the simulator's items, "
                                         r"integers in \[0, 15\), got ids in \[100, 114\]"):
        true_value(world, model, 1)
    with pytest.raises(ValueError, match=r"slate_size: expected an integer in \[1, 3\]"):
        true_value(world, model, 4)
    with pytest.raises(TypeError, match="policy: expected a registered policy"):
        true_value(world, object(), 1)
