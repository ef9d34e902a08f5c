"""The chunked comparison engine against recsys.ope on dense arrays, chunking, unknown items,
results and argument errors.

Logs come from the simulator (an ε-mixture of a softmax policy, slates of 1 and 3); candidates are
simulator policies behind a small adapter (contexts = ``batch.dense``). The dense reference builds
the ``(rows, n_items, k)`` arrays that the engine never holds and runs ``recsys.ope``'s estimators
with the same q̂ (the engine's reward model refitted, which is deterministic); with k slots the
engine's value is the sum over positions of each estimator on that position's rows.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import recsys.ope as ope
from recsys.comparison import (
    Comparison,
    LoggedSlates,
    ShrunkRateModel,
    compare_policies,
)
from simulators.logged_data import collect_logs
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.policies import (
    EpsilonMixturePolicy,
    GreedyPolicy,
    SoftmaxPolicy,
    UniformPolicy,
)

N_ITEMS = 12


class Adapter:
    """A simulator policy as a comparison candidate: it scores ``batch.dense``."""

    def __init__(self, policy, **attributes) -> None:
        self.policy = policy
        self.__dict__.update(attributes)

    @property
    def item_ids_(self) -> np.ndarray:
        return self.policy.item_ids_

    def action_dist(self, batch, k):
        return self.policy.action_dist(batch.dense, k)


class Subset:
    """Uniform over a few items (in a shuffled column order): logged items outside get π_e = 0."""

    def __init__(self, items) -> None:
        self.item_ids_ = np.asarray(items)

    def action_dist(self, batch, k):
        return np.full((len(batch), self.item_ids_.size, k), 1.0 / self.item_ids_.size)


def simulated(k: int, n_requests: int = 600, seed: int = 0):
    sim = SlateSimulator(SimulatorConfig(n_users=80, n_items=N_ITEMS, dim=4, slate_size=k,
                                         seed=seed))
    logging = EpsilonMixturePolicy(SoftmaxPolicy(sim.item_features, temperature=0.7), 0.3,
                                   random_state=seed + 1)
    frame = collect_logs(sim, logging, n_requests, np.random.default_rng(seed))
    return sim, logging, frame


@pytest.fixture(scope="module", params=[1, 3], ids=["k1", "k3"])
def case(request):
    k = request.param
    sim, logging, frame = simulated(k)
    logs = LoggedSlates.from_frame(frame)
    candidates = {
        "logging": Adapter(logging),
        "softmax": Adapter(SoftmaxPolicy(sim.item_features, temperature=0.3)),
        "greedy": Adapter(EpsilonMixturePolicy(GreedyPolicy(sim.item_features), 0.2)),
        "uniform": Adapter(UniformPolicy(N_ITEMS)),
    }
    return logs, candidates


def dense_reference(logs: LoggedSlates, candidate, switch_tau: float) -> dict[str, float]:
    """recsys.ope's estimators on the dense per-row arrays, summed over positions."""
    k = logs.len_list
    dist = candidate.action_dist(logs.requests, k)[logs.request_index]  # (rows, items, k)
    model = ShrunkRateModel().fit(logs.items_, logs.action, logs.position, logs.reward,
                                  logs.request_index, k)
    q_hat = model.tables_for(candidate.item_ids_)[model.fold_of(logs.request_index)]
    estimators = {
        "ips": ope.InverseProbabilityWeighting(),
        "snips": ope.SelfNormalizedInverseProbabilityWeighting(),
        "dm": ope.DirectMethod(),
        "dr": ope.DoublyRobust(),
        "sndr": ope.SelfNormalizedDoublyRobust(),
        "switch-dr": ope.SwitchDoublyRobust(lambda_=switch_tau),
    }
    out = dict.fromkeys(estimators, 0.0)
    for p in range(k):
        at = logs.position == p
        share = at.sum() / logs.n_requests  # 1 with full slates
        for name, estimator in estimators.items():
            out[name] += share * estimator.estimate_policy_value(
                reward=logs.reward[at], action=logs.action[at], pscore=logs.pscore[at],
                position=logs.position[at], action_dist=dist[at],
                estimated_rewards_by_reg_model=q_hat[at])
    return out


def test_point_estimates_equal_recsys_ope_on_the_dense_arrays(case):
    logs, candidates = case
    result = compare_policies(logs, candidates, n_bootstrap=20, switch_tau=4.0,
                              chunk_requests=128, progress=False)
    for name, candidate in candidates.items():
        reference = dense_reference(logs, candidate, switch_tau=4.0)
        got = {e: est.value for e, est in result.result(name).estimates.items()}
        for estimator, value in reference.items():
            assert got[estimator] == pytest.approx(value, abs=1e-9), (name, estimator)
    # Switch-DR with a finite threshold differs from DR somewhere (the test can fail).
    greedy = result.result("greedy").estimates
    assert greedy["switch-dr"].value != pytest.approx(greedy["dr"].value, abs=1e-12)


def test_the_pseudo_inverse_equals_recsys_ope_with_the_empirical_gamma():
    _, logging, frame = simulated(3, n_requests=400)
    logs = LoggedSlates.from_frame(frame)
    sim_soft = Adapter(logging)
    result = compare_policies(logs, {"c": sim_soft}, estimators=["pi", "ips"], n_bootstrap=10,
                              chunk_requests=50, progress=False)
    codes = logs.action_code.reshape(logs.n_requests, 3)  # full slates, rows in position order
    gamma = ope.empirical_slate_gamma(codes, logs.items_.size)
    theta = sim_soft.action_dist(logs.requests, 3)[:, logs.items_, :]
    expected = ope.SlatePseudoInverse().estimate_policy_value(
        slate_id=logs.request_index, reward=logs.reward, position=logs.position,
        action=logs.action_code, evaluation_policy_action_dist=theta,
        behavior_slate_gamma=gamma)
    assert result.result("c").estimates["pi"].value == pytest.approx(expected, abs=1e-9)


def test_chunk_size_and_threads_do_not_change_any_number(case):
    logs, candidates = case
    small = compare_policies(logs, candidates, n_bootstrap=50, chunk_requests=7, n_jobs=3,
                             progress=False)
    whole = compare_policies(logs, candidates, n_bootstrap=50, progress=False)
    a, b = small.to_dict(), whole.to_dict()
    for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
        for name, ea in ca["estimates"].items():
            for key in ("value", "lower", "upper"):
                assert ea[key] == pytest.approx(cb["estimates"][name][key], abs=1e-12)
        for name, da in ca["diagnostics"].items():
            assert da == pytest.approx(cb["diagnostics"][name], rel=1e-12)


def test_items_the_candidate_does_not_know_get_zero_probability():
    _, _, frame = simulated(1)
    logs = LoggedSlates.from_frame(frame)
    known = [7, 2, 5, 0]
    result = compare_policies(logs, {"subset": Subset(known)}, estimators=["ips"],
                              n_bootstrap=10, progress=False).result("subset")
    inside = np.isin(logs.action, known)
    expected = (logs.reward * inside * 0.25 / logs.pscore).sum() / logs.n_requests
    assert result.estimates["ips"].value == pytest.approx(expected, abs=1e-12)
    assert result.diagnostics["unknown_item_rows"] == pytest.approx(1 - inside.mean())


def test_a_catalogue_wider_than_the_logs_shows_its_mass_on_unlogged_pairs():
    _, _, frame = simulated(1)
    logs = LoggedSlates.from_frame(frame)
    wide = Subset(np.arange(100, 100 + 3 * N_ITEMS).tolist() + logs.items_.tolist())
    diag = compare_policies(logs, {"wide": wide}, n_bootstrap=10,
                            progress=False).result("wide").diagnostics
    n_wide = wide.item_ids_.size
    assert diag["unlogged_target_mass"] == pytest.approx((n_wide - logs.items_.size) / n_wide)
    assert diag["unknown_item_rows"] == 0.0


def test_the_logging_policy_has_weights_one_and_full_overlap(case):
    logs, candidates = case
    diag = compare_policies(logs, {"logging": candidates["logging"]}, n_bootstrap=10,
                            progress=False).result("logging").diagnostics
    # Contexts are logged as float32: the weights are 1 up to that rounding.
    assert diag["mean_weight"] == pytest.approx(1.0, abs=1e-5)
    assert diag["max_weight"] == pytest.approx(1.0, abs=1e-4)
    assert diag["effective_sample_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert diag["unlogged_target_mass"] == 0.0


def test_intervals_bracket_the_estimate_and_widen_with_confidence(case):
    logs, candidates = case
    pick = {"softmax": candidates["softmax"]}
    narrow = compare_policies(logs, pick, alpha=0.5, n_bootstrap=200, progress=False)
    wide = compare_policies(logs, pick, alpha=0.05, n_bootstrap=200, progress=False)
    for name in ("ips", "snips", "dr", "sndr"):
        n, w = narrow.result("softmax").estimates[name], wide.result("softmax").estimates[name]
        assert w.lower < n.lower <= n.upper < w.upper
        assert w.lower <= w.value <= w.upper


def test_results_table_dict_and_metadata(case):
    logs, candidates = case
    truths = {"logging": 0.1, "softmax": 0.2, "greedy": 0.3, "uniform": 0.4}
    registered = Adapter(candidates["uniform"].policy, name="recsys-bandit", version="3",
                         kind="bandit")
    cands = {**candidates, "uniform": registered}
    result = compare_policies(logs, cands, n_bootstrap=10, truth=lambda n, c: truths[n],
                              kinds={"logging": "baseline"}, progress=False)
    table = result.table()
    expected = ["ips", "snips", "dm", "dr", "sndr", "switch-dr"] + (
        ["pi"] if logs.len_list > 1 else [])
    assert result.estimators == expected
    assert table.height == len(cands) * len(expected)
    assert table.columns[:7] == ["candidate", "kind", "estimator", "value", "lower", "upper",
                                 "true_value"]
    row = table.filter(pl.col("candidate") == "uniform").row(0, named=True)
    assert (row["kind"], row["model_name"], row["model_version"], row["true_value"]) == (
        "online", "recsys-bandit", "3", 0.4)
    assert result.result("uniform").uri == "models:/recsys-bandit/3"
    assert result.result("logging").kind == "baseline"
    assert result.result("softmax").kind == "offline"
    if logs.len_list == 1:
        assert "one-slot" in result.omitted["pi"]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert Comparison.from_dict(data).table().equals(table)
    assert data["n_requests"] == logs.n_requests and data["len_list"] == logs.len_list
    with pytest.raises(KeyError, match="did you mean softmax"):
        result.result("sofmax")


def test_the_pseudo_inverse_is_omitted_on_large_catalogues_and_iips_is_ips():
    _, _, frame = simulated(3)
    logs = LoggedSlates.from_frame(frame)
    result = compare_policies(logs, {"u": Subset(range(N_ITEMS))}, max_pi_cells=10,
                              estimators=["ips", "iips", "pi"], n_bootstrap=10, progress=False)
    assert result.estimators == ["ips"]
    assert "max_pi_cells" in result.omitted["pi"] and "ips" in result.omitted["iips"]


def test_progress_callback_counts_every_chunk_of_every_candidate(case):
    logs, candidates = case
    seen = []
    compare_policies(logs, candidates, n_bootstrap=5, chunk_requests=100,
                     progress=lambda done, total: seen.append((done, total)))
    total = -(-logs.n_requests // 100) * len(candidates)
    assert seen[-1] == (total, total) and len(seen) == total


def test_the_reward_model_is_cross_fitted_and_shrinks_sparse_items():
    rng = np.random.default_rng(0)
    n = 4000
    request = np.arange(n)
    items = np.array([10, 11, 12])
    # Item 10 is shown 3800 times at rate 0.5, items 11 and 12 100 times each at 0.1 and 0.9.
    action = np.where(request < 3800, 10, np.where(request < 3900, 11, 12))
    reward = (rng.random(n) < np.select([action == 10, action == 11], [0.5, 0.1], 0.9)) * 1.0
    position = np.zeros(n, dtype=np.int64)
    model = ShrunkRateModel(n_folds=4).fit(items, action, position, reward, request)
    fold = model.fold_of(request)
    assert np.bincount(fold).min() > 500  # blocks of requests spread over every fold
    # Fold f's table ignores fold f's rewards: flipping them changes only fold f's entries.
    flipped = np.where(fold == 2, 1.0 - reward, reward)
    other = ShrunkRateModel(n_folds=4).fit(items, action, position, flipped, request)
    assert np.array_equal(other.table_[2], model.table_[2])
    assert not np.array_equal(other.table_[0], model.table_[0])
    # A well-observed item keeps its own rate; sparse ones move toward the position's mean.
    q = ShrunkRateModel(n_folds=1).fit(items, action, position, reward, request).table_[0, :, 0]
    raw = np.array([reward[action == i].mean() for i in items])
    mean = reward.mean()
    assert abs(q[0] - raw[0]) < 0.01
    assert all(min(r, mean) < v < max(r, mean) for r, v in zip(raw[1:], q[1:], strict=True))
    assert np.isinf(ShrunkRateModel(n_folds=1).fit(
        items, action, position, np.ones(n), request).strength_).all()  # no spread: mean only
    assert model.predict(np.array([99]), np.array([0]), np.array([0]))[0] == model.prior_[
        fold[0], 0]


def test_registered_baselines_are_candidates(case):
    from recsys.policies.baselines import popularity_policy, uniform_policy
    from recsys.registry.model import baseline_model

    logs, _ = case
    items = np.arange(N_ITEMS)
    counts = np.bincount(logs.action, minlength=N_ITEMS)
    result = compare_policies(logs, {
        "uniform": baseline_model("uniform", uniform_policy(items)),
        "popularity": baseline_model("popularity", popularity_policy(items, counts, 0.2)),
        "reference": Subset(items),
    }, n_bootstrap=20, progress=False)
    assert result.result("uniform").kind == result.result("popularity").kind == "baseline"
    for name, estimate in result.result("uniform").estimates.items():
        assert estimate.value == pytest.approx(
            result.result("reference").estimates[name].value, abs=1e-12)
    assert result.result("popularity").diagnostics["max_weight"] > 1.0


class Broken:
    def __init__(self, dist_fn, n_items=N_ITEMS) -> None:
        self.item_ids_ = np.arange(n_items)
        self.dist_fn = dist_fn

    def action_dist(self, batch, k):
        return self.dist_fn(len(batch), k)


def negative_but_summing_to_one(n: int, k: int) -> np.ndarray:
    dist = np.full((n, N_ITEMS, k), 1.0 / N_ITEMS)
    dist[:, 0] += 0.5
    dist[:, 1] -= 0.5
    return dist


@pytest.mark.parametrize(("candidate", "match"), [
    (Broken(lambda n, k: np.ones((n, N_ITEMS, k))), r"sums to 1\), got request 0 position 0"),
    (Broken(lambda n, k: np.ones((n, 3, k)) / 3), r"shape \(\d+, 12, 1\)"),
    (Broken(lambda n, k: np.full((n, N_ITEMS, k), np.nan)), "summing to nan"),
    (Broken(negative_but_summing_to_one), "probabilities >= 0"),
    (object(), "without item_ids_"),
    (Subset(["a", "b"]), "integer item ids"),
    (Subset([1, 1, 2]), "1 repeated"),
])
def test_bad_candidates_are_named_in_the_error(candidate, match):
    _, _, frame = simulated(1, n_requests=50)
    logs = LoggedSlates.from_frame(frame)
    with pytest.raises((ValueError, TypeError), match=match) as info:
        compare_policies(logs, {"bad": candidate}, n_bootstrap=5, progress=False)
    assert "bad" in str(info.value)


def test_bad_arguments_are_named():
    _, _, frame = simulated(3, n_requests=50)
    logs = LoggedSlates.from_frame(frame)
    good = {"u": Subset(range(N_ITEMS))}
    with pytest.raises(ValueError, match=r"estimators: .*did you mean snips"):
        compare_policies(logs, good, estimators=["snip"])
    with pytest.raises(ValueError, match="at least len_list=3 items"):
        compare_policies(logs, {"u": Subset([0, 1])})
    with pytest.raises(ValueError, match="candidates: expected a non-empty mapping"):
        compare_policies(logs, {})
    with pytest.raises(TypeError, match="logs: expected a LoggedSlates"):
        compare_policies(frame, good)
    with pytest.raises(ValueError, match="alpha"):
        compare_policies(logs, good, alpha=1.5)
    with pytest.raises(ValueError, match="chunk_requests"):
        compare_policies(logs, good, chunk_requests=0)
    with pytest.raises(ValueError, match="n_jobs: expected an integer >= 1"):
        compare_policies(logs, good, n_jobs=0)
    with pytest.raises(ValueError, match="kinds\\['u'\\]"):
        compare_policies(logs, good, kinds={"u": "champion"}, n_bootstrap=5, progress=False)
