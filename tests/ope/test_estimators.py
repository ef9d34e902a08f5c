"""Estimators: same numbers as OBP's formulas, properties, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ope import (
    DirectMethod,
    DoublyRobust,
    DoublyRobustWithShrinkage,
    InverseProbabilityWeighting,
    ReplayMethod,
    SelfNormalizedDoublyRobust,
    SelfNormalizedInverseProbabilityWeighting,
    SwitchDoublyRobust,
)
from tests.ope import obp_reference as obp


def logged_data(seed: int, n: int = 2000, n_actions: int = 7, len_list: int = 3) -> dict:
    """Random logged feedback with a stochastic evaluation policy and a reward model."""
    rng = np.random.default_rng(seed)
    behavior = rng.dirichlet(np.ones(n_actions), size=(n, len_list)).transpose(0, 2, 1)
    position = rng.integers(len_list, size=n)
    cum = behavior[np.arange(n), :, position].cumsum(axis=1)
    action = np.minimum((cum < rng.random((n, 1))).sum(axis=1), n_actions - 1)
    pscore = behavior[np.arange(n), action, position]
    action_dist = rng.dirichlet(np.ones(n_actions), size=(n, len_list)).transpose(0, 2, 1)
    return {
        "reward": rng.binomial(1, 0.2, size=n).astype(float),
        "action": action,
        "pscore": pscore,
        "position": position,
        "action_dist": action_dist,
        "estimated_rewards_by_reg_model": rng.random((n, n_actions, len_list)),
    }


CASES = [
    (InverseProbabilityWeighting(), obp.ipw, {}),
    (InverseProbabilityWeighting(lambda_=3.0), obp.ipw, {"lambda_": 3.0}),
    (SelfNormalizedInverseProbabilityWeighting(), obp.snipw, {}),
    (DoublyRobust(), obp.dr, {}),
    (DoublyRobust(lambda_=2.0), obp.dr, {"lambda_": 2.0}),
    (SelfNormalizedDoublyRobust(), obp.sndr, {}),
    (SwitchDoublyRobust(lambda_=2.0), obp.switch_dr, {"lambda_": 2.0}),
    (DoublyRobustWithShrinkage(lambda_=5.0), obp.dr_os, {"lambda_": 5.0}),
    (DoublyRobustWithShrinkage(lambda_=np.inf), obp.dr_os, {"lambda_": np.inf}),
]


@pytest.mark.parametrize(("estimator", "reference", "params"), CASES)
def test_point_estimates_and_intervals_match_obp(estimator, reference, params):
    data = logged_data(seed=1)
    ref_args = {k: data[k] for k in reference.__code__.co_varnames if k in data}
    expected = reference(**ref_args, **params)
    kwargs = {k: v for k, v in data.items() if k in ref_args}
    assert estimator.estimate_policy_value(**kwargs) == pytest.approx(expected.mean(), rel=1e-12)
    got = estimator.estimate_interval(n_bootstrap_samples=60, random_state=7, **kwargs)
    want = obp.bootstrap(expected, n_bootstrap_samples=60, random_state=7)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12)


def test_direct_method_and_replay_match_obp():
    data = logged_data(seed=2)
    dm_args = {k: data[k] for k in ("action_dist", "estimated_rewards_by_reg_model", "position")}
    assert DirectMethod().estimate_policy_value(**dm_args) == pytest.approx(
        obp.dm(**dm_args).mean(), rel=1e-12
    )
    n, n_actions, len_list = data["action_dist"].shape
    greedy = np.zeros((n, n_actions, len_list))
    greedy[:, 0, :] = 1.0
    args = {"reward": data["reward"], "action": data["action"], "position": data["position"]}
    assert ReplayMethod().estimate_policy_value(action_dist=greedy, **args) == pytest.approx(
        obp.replay(action_dist=greedy, **args).mean()
    )


def test_interval_keys_follow_alpha():
    data = logged_data(seed=3, n=300)
    kwargs = {k: data[k] for k in ("reward", "action", "pscore", "position", "action_dist")}
    interval = InverseProbabilityWeighting().estimate_interval(
        alpha=0.1, n_bootstrap_samples=50, random_state=0, **kwargs
    )
    assert set(interval) == {"mean", "90.0% CI (lower)", "90.0% CI (upper)"}
    assert interval["90.0% CI (lower)"] <= interval["mean"] <= interval["90.0% CI (upper)"]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 200),
    n_actions=st.integers(1, 12),
    len_list=st.integers(1, 4),
)
def test_ipw_with_target_equal_to_logging_policy_returns_logged_mean(seed, n, n_actions, len_list):
    data = logged_data(seed, n, n_actions, len_list)
    rows = np.arange(n)
    # Make the logged propensities the evaluation policy's own probabilities: w = 1 everywhere.
    pscore = data["action_dist"][rows, data["action"], data["position"]]
    value = InverseProbabilityWeighting().estimate_policy_value(
        reward=data["reward"],
        action=data["action"],
        pscore=pscore,
        position=data["position"],
        action_dist=data["action_dist"],
    )
    assert value == pytest.approx(data["reward"].mean(), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.01, 1.0))
def test_snipw_is_invariant_to_scaling_the_weights(seed, scale):
    data = logged_data(seed, n=150)
    kwargs = {k: data[k] for k in ("reward", "action", "position", "action_dist")}
    est = SelfNormalizedInverseProbabilityWeighting()
    base = est.estimate_policy_value(pscore=data["pscore"], **kwargs)
    # Weights w / scale: pscore * scale stays a valid propensity in (0, 1].
    scaled = est.estimate_policy_value(pscore=data["pscore"] * scale, **kwargs)
    assert scaled == pytest.approx(base, rel=1e-9, abs=1e-12)
    # IPW is not invariant: the property is specific to self-normalisation.
    if data["reward"].any() and scale < 0.99:
        ipw = InverseProbabilityWeighting()
        assert ipw.estimate_policy_value(pscore=data["pscore"] * scale, **kwargs) != (
            pytest.approx(ipw.estimate_policy_value(pscore=data["pscore"], **kwargs))
        )


def _malformed(name: str, data: dict) -> dict:
    data = dict(data)
    n = len(data["reward"])
    if name == "reward":
        data["reward"] = data["reward"].copy()
        data["reward"][0] = np.nan
    elif name == "action":
        data["action"] = data["action"] + data["action_dist"].shape[1]
    elif name == "pscore-zero":
        data["pscore"] = data["pscore"].copy()
        data["pscore"][3] = 0.0
    elif name == "pscore-above-one":
        data["pscore"] = data["pscore"] * 0 + 1.5
    elif name == "pscore-shape":
        data["pscore"] = data["pscore"][:-1]
    elif name == "position":
        data["position"] = None
    elif name == "position-range":
        data["position"] = np.full(n, 9)
    elif name == "action_dist":
        data["action_dist"] = data["action_dist"] * 2.0
    elif name == "action_dist-ndim":
        data["action_dist"] = data["action_dist"][:, :, 0]
    elif name == "estimated_rewards_by_reg_model":
        data["estimated_rewards_by_reg_model"] = data["estimated_rewards_by_reg_model"][:, :-1]
    return data


MALFORMED = [
    ("reward", "reward"),
    ("action", "action"),
    ("pscore-zero", "pscore"),
    ("pscore-above-one", "pscore"),
    ("pscore-shape", "pscore"),
    ("position", "position"),
    ("position-range", "position"),
    ("action_dist", "action_dist"),
    ("action_dist-ndim", "action_dist"),
    ("estimated_rewards_by_reg_model", "estimated_rewards_by_reg_model"),
]


@pytest.mark.parametrize(
    ("estimator", "case", "argument"),
    [
        (est, case, argument)
        for est in (InverseProbabilityWeighting(), DoublyRobust(), SwitchDoublyRobust())
        for case, argument in MALFORMED
        if est.requires_reward_model or argument != "estimated_rewards_by_reg_model"
    ],
)
def test_malformed_inputs_are_rejected_naming_the_argument(estimator, case, argument):
    data = _malformed(case, logged_data(seed=4, n=50))
    if not estimator.requires_reward_model:
        data.pop("estimated_rewards_by_reg_model")
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        estimator.estimate_policy_value(**data)


@pytest.mark.parametrize(
    "make",
    [
        lambda: InverseProbabilityWeighting(lambda_=-1.0),
        lambda: DoublyRobust(lambda_=float("nan")),
        lambda: SwitchDoublyRobust(lambda_=-0.5),
        lambda: DoublyRobustWithShrinkage(lambda_=-2.0),
    ],
)
def test_hyperparameters_are_validated(make):
    with pytest.raises(ValueError, match=r"^lambda_: "):
        make()


def test_missing_required_arguments_are_named():
    data = logged_data(seed=5, n=20)
    with pytest.raises(ValueError, match=r"^estimated_rewards_by_reg_model: "):
        DoublyRobust().estimate_policy_value(
            reward=data["reward"],
            action=data["action"],
            pscore=data["pscore"],
            position=data["position"],
            action_dist=data["action_dist"],
            estimated_rewards_by_reg_model=None,
        )
    with pytest.raises(ValueError, match=r"^pscore: "):
        InverseProbabilityWeighting().estimate_policy_value(
            reward=data["reward"],
            action=data["action"],
            position=data["position"],
            action_dist=data["action_dist"],
        )


def test_bootstrap_arguments_are_validated():
    data = logged_data(seed=6, n=20)
    kwargs = {k: data[k] for k in ("reward", "action", "pscore", "position", "action_dist")}
    est = InverseProbabilityWeighting()
    with pytest.raises(ValueError, match=r"^alpha: "):
        est.estimate_interval(alpha=1.5, **kwargs)
    with pytest.raises(ValueError, match=r"^n_bootstrap_samples: "):
        est.estimate_interval(n_bootstrap_samples=0, **kwargs)
    with pytest.raises(ValueError, match=r"^random_state: "):
        est.estimate_interval(random_state="seed", **kwargs)


def test_replay_is_unbiased_on_uniform_logs():
    rng = np.random.default_rng(8)
    n, n_actions = 200_000, 5
    means = np.linspace(0.05, 0.25, n_actions)
    action = rng.integers(n_actions, size=n)
    reward = (rng.random(n) < means[action]).astype(float)
    target = rng.integers(n_actions, size=n)  # a deterministic policy, a random choice per round
    dist = np.zeros((n, n_actions, 1))
    dist[np.arange(n), target, 0] = 1.0
    value = ReplayMethod().estimate_policy_value(reward=reward, action=action, action_dist=dist)
    truth = means.mean()
    se = np.sqrt(truth * (1 - truth) / (n / n_actions))
    assert abs(value - truth) < 4 * se


def test_positional_arguments_follow_obp_order():
    """An OBP user calling positionally gets the same numbers as with keywords."""
    d = logged_data(seed=9, n=400)
    r, a, ad, q, ps, pos = (
        d["reward"],
        d["action"],
        d["action_dist"],
        d["estimated_rewards_by_reg_model"],
        d["pscore"],
        d["position"],
    )
    boot = {"n_bootstrap_samples": 30, "random_state": 1}
    ipw, dm, dr = InverseProbabilityWeighting(), DirectMethod(), DoublyRobust()
    assert ipw.estimate_policy_value(r, a, ad, ps, pos) == ipw.estimate_policy_value(
        reward=r, action=a, action_dist=ad, pscore=ps, position=pos
    )
    assert ipw.estimate_interval(r, a, ad, ps, pos, None, 0.05, 30, 1) == ipw.estimate_interval(
        reward=r, action=a, action_dist=ad, pscore=ps, position=pos, **boot
    )
    assert dm.estimate_interval(ad, q, pos, 0.05, 30, 1) == dm.estimate_interval(
        action_dist=ad, estimated_rewards_by_reg_model=q, position=pos, **boot
    )
    assert dr.estimate_interval(r, a, ad, q, ps, pos, None, 0.05, 30, 1) == dr.estimate_interval(
        reward=r,
        action=a,
        action_dist=ad,
        estimated_rewards_by_reg_model=q,
        pscore=ps,
        position=pos,
        **boot,
    )
    greedy = np.zeros_like(ad)
    greedy[:, 0, :] = 1.0
    rm = ReplayMethod()
    assert rm.estimate_interval(r, a, greedy, pos, 0.05, 30, 1) == rm.estimate_interval(
        reward=r, action=a, action_dist=greedy, position=pos, **boot
    )


def test_snipw_clips_weights_at_lambda_unlike_obp():
    """OBP's SNIPW ignores ``lambda_``; ours clips before normalising, as the argument says."""
    action_dist = np.array([[[1.0], [0.0]], [[1.0], [0.0]]])
    data = {"reward": np.array([1.0, 0.0]), "action": np.array([0, 0]),
            "pscore": np.array([0.01, 0.5]), "action_dist": action_dist}
    # weights 100 and 2; clipped at 10: (10·1 + 2·0) / (10 + 2)
    clipped = SelfNormalizedInverseProbabilityWeighting(lambda_=10.0).estimate_policy_value(**data)
    assert clipped == pytest.approx(10.0 / 12.0)
    plain = SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**data)
    assert plain == pytest.approx(100.0 / 102.0)
