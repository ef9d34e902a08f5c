"""``--search`` entries: parsed into a checked grid, bad entries named, configurations ranked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.bandits import DiagLinUCB, EpsilonGreedy, policy_from_spec, policy_spec
from recsys.comparison.search import parse_search, rank_configurations, search_grid
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import UniformPolicy

BASE = policy_spec(DiagLinUCB())


def test_entries_become_the_product_of_their_values_in_order():
    grid = search_grid(["alpha=0.1,0.5,1", "lam=1,10", "centred=true"], BASE)
    assert grid[0] == {"alpha": 0.1, "lam": 1, "centred": True}
    assert len(grid) == 6 and grid[-1] == {"alpha": 1, "lam": 10, "centred": True}
    assert isinstance(grid[-1]["alpha"], int) and isinstance(grid[0]["alpha"], float)
    assert search_grid([], json.dumps(BASE)) == [{}]  # the base configuration alone


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        (["alpah=0.1"], r"--search: expected a hyperparameter of DiagLinUCB .* got 'alpah'; "
                        r"did you mean alpha\?"),
        (["alpha"], r"--search: expected NAME=V1,V2,... \(e.g. alpha=0.1,0.5,1\), got 'alpha'"),
        (["alpha="], r"expected NAME=V1,V2,..."),
        (["alpha=0.1,,1"], r"--search alpha: expected comma-separated values, none empty"),
        (["alpha=fast"], r"--search alpha: expected finite numbers or true/false, got 'fast'"),
        (["alpha=nan"], r"expected finite numbers"),
        (["alpha=0.1", "alpha=1"], r"expected each hyperparameter once, got alpha twice"),
        (["alpha=1,1.0"], r"--search alpha: expected distinct values"),
        (["alpha=-1,1"], r"--search: expected a valid DiagLinUCB configuration, got alpha=-1; "
                         r"alpha: expected"),
    ],
)
def test_bad_entries_say_what_was_expected(entries, error):
    with pytest.raises((ValueError, TypeError), match=error):
        search_grid(entries, BASE)


def test_a_bad_base_spec_is_refused_before_the_entries():
    with pytest.raises(ValueError, match="class: expected one of"):
        parse_search(["alpha=1"], {**BASE, "class": "LinUCBB"})


def test_configurations_are_ranked_best_first_on_the_same_logs():
    config = SimulatorConfig(n_users=100, n_items=10, dim=6, slate_size=1, no_click_utility=1.0,
                             affinity=2.0, seed=0)
    sim, rng = SlateSimulator(config), np.random.default_rng(0)
    logs = collect_logs(sim, UniformPolicy(10).set_params(random_state=rng), 8000, rng)
    base = policy_spec(EpsilonGreedy())
    grid = search_grid(["epsilon=1,0.05"], base)
    table = rank_configurations(logs, base, grid, batch_size=20)
    assert table["config"].to_list() == ["epsilon=0.05", "epsilon=1"]
    assert table["value"][0] > table["upper"][1]  # learning beats never learning, clearly
    assert (table["n_capped"] == 0).all() and (table["n_accepted"] > 500).all()
    best = policy_from_spec(table["spec"][0])  # the winner can be built and registered
    assert isinstance(best, EpsilonGreedy) and best.epsilon == 0.05
