"""Slate estimators, overlap diagnostics and the polars adapter."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.ope import (
    InverseProbabilityWeighting,
    SlateIndependentIPS,
    SlatePseudoInverse,
    bandit_feedback_from_frame,
    empirical_slate_gamma,
    overlap_diagnostics,
    uniform_slate_gamma,
)

M, K = 6, 3


def uniform_slates(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.argsort(rng.random((n, M)), axis=1)[:, :K]


def test_uniform_gamma_matches_the_empirical_pairwise_marginals():
    slates = uniform_slates(np.random.default_rng(0), 200_000)
    np.testing.assert_allclose(
        empirical_slate_gamma(slates, M), uniform_slate_gamma(M, K), atol=4e-3
    )


def test_slate_estimators_are_unbiased_for_additive_slot_rewards():
    """Slot rewards depend on (item, position) only; the target mixes two fixed slates."""
    rng = np.random.default_rng(1)
    effect = 0.3 * rng.random((M, K))
    target = np.zeros((M, K))
    slate_a, slate_b = np.array([0, 1, 2]), np.array([3, 4, 5])
    target[slate_a, np.arange(K)] += 0.7
    target[slate_b, np.arange(K)] += 0.3
    truth = 0.7 * effect[slate_a, np.arange(K)].sum() + 0.3 * effect[slate_b, np.arange(K)].sum()
    n, reps = 20_000, 40
    gamma = uniform_slate_gamma(M, K)
    errors = {"pi": [], "iips": []}
    for rep in range(reps):  # repetitions of a vectorised experiment
        slates = uniform_slates(rng, n)
        slot_reward = (rng.random((n, K)) < effect[slates, np.arange(K)]).astype(float)
        long = {
            "slate_id": np.repeat(np.arange(n), K) + rep * n,
            "reward": slot_reward.ravel(),
            "position": np.tile(np.arange(K), n),
        }
        pi = SlatePseudoInverse().estimate_policy_value(
            action=slates.ravel(),
            evaluation_policy_action_dist=np.broadcast_to(target, (n, M, K)),
            behavior_slate_gamma=gamma,
            **long,
        )
        iips = SlateIndependentIPS().estimate_policy_value(
            pscore_item_position=np.full(n * K, 1 / M),
            evaluation_policy_pscore_item_position=target[slates.ravel(), long["position"]],
            **long,
        )
        errors["pi"].append(pi - truth)
        errors["iips"].append(iips - truth)
    for name, err in errors.items():
        err = np.asarray(err)
        assert abs(err.mean()) < 4 * err.std(ddof=1) / np.sqrt(reps), name


def test_iips_matches_obp_formula_and_bootstraps_over_slates():
    rng = np.random.default_rng(2)
    slate_id = np.repeat(rng.permutation(50) * 3, K)  # unsorted, non-contiguous ids
    reward = rng.random(50 * K)
    pscore = rng.uniform(0.1, 1, 50 * K)
    target = rng.uniform(0, 1, 50 * K)
    value = SlateIndependentIPS().estimate_policy_value(
        slate_id=slate_id,
        reward=reward,
        position=np.tile(np.arange(K), 50),
        pscore_item_position=pscore,
        evaluation_policy_pscore_item_position=target,
    )
    assert value == pytest.approx((reward * target / pscore).sum() / 50)
    args = {"slate_id": slate_id, "reward": reward, "position": np.tile(np.arange(K), 50),
            "pscore_item_position": pscore, "evaluation_policy_pscore_item_position": target}
    assert SlateIndependentIPS(len_list=K).estimate_policy_value(**args) == value  # OBP's form
    with pytest.raises(ValueError, match=r"^position: expected integers in \[0, len_list=2\)"):
        SlateIndependentIPS(len_list=2).estimate_policy_value(**args)
    interval = SlateIndependentIPS().estimate_interval(
        slate_id=slate_id,
        reward=reward,
        position=np.tile(np.arange(K), 50),
        pscore_item_position=pscore,
        evaluation_policy_pscore_item_position=target,
        n_bootstrap_samples=100,
        random_state=0,
    )
    assert interval["95.0% CI (lower)"] < value < interval["95.0% CI (upper)"]


def test_slate_inputs_are_validated():
    with pytest.raises(ValueError, match=r"^pscore_item_position: "):
        SlateIndependentIPS().estimate_policy_value(
            slate_id=np.zeros(3, int),
            reward=np.ones(3),
            position=np.arange(3),
            pscore_item_position=np.zeros(3),
            evaluation_policy_pscore_item_position=np.ones(3),
        )
    with pytest.raises(ValueError, match=r"^behavior_slate_gamma: "):
        SlatePseudoInverse().estimate_policy_value(
            slate_id=np.zeros(3, int),
            reward=np.ones(3),
            position=np.arange(3),
            action=np.arange(3),
            evaluation_policy_action_dist=np.full((1, M, K), 1 / M),
            behavior_slate_gamma=np.eye(4),
        )


def test_overlap_diagnostics():
    n, n_actions = 1000, 4
    rng = np.random.default_rng(3)
    action = rng.integers(3, size=n)  # action 3 is never logged
    dist = np.full((n, n_actions, 1), 0.25)
    diag = overlap_diagnostics(action, None, np.full(n, 0.25), dist)
    assert diag.effective_sample_size == pytest.approx(n)
    assert diag.max_weight == pytest.approx(1.0)
    assert diag.unlogged_target_mass == pytest.approx(0.25)
    peaked = np.zeros((n, n_actions, 1))
    peaked[:, 0, 0] = 1.0
    diag = overlap_diagnostics(action, None, np.full(n, 0.25), peaked)
    n0 = (action == 0).sum()
    assert diag.effective_sample_size == pytest.approx(n0)  # (4 n0)² / (16 n0)
    assert diag.max_weight == pytest.approx(4.0)


def frame(**overrides) -> pl.DataFrame:
    base = {
        "item_id": [0, 1, 2, 1],
        "position": [0, 1, 0, 1],
        "reward": [0, 1, 0, 0],
        "propensity": [0.5, 0.25, 0.5, 0.25],
    }
    return pl.DataFrame({**base, **overrides})


def test_frame_to_estimator_inputs():
    fb = bandit_feedback_from_frame(frame())
    assert (fb.n_actions, fb.len_list, fb.n_rounds) == (3, 2, 4)
    dist = np.full((4, 3, 2), 1 / 3)
    value = InverseProbabilityWeighting().estimate_policy_value(**fb.estimator_kwargs(dist))
    assert value == pytest.approx((1 / 3 / 0.25) / 4)
    assert fb.diagnostics(dist).n_rounds == 4


@pytest.mark.parametrize(
    ("df", "message"),
    [
        (frame().drop("propensity"), r"^propensity: expected a column .* got no such column"),
        (frame(propensity=[0.5, None, 0.5, 0.25]), r"^propensity: expected no nulls"),
        (frame(propensity=[0.5, 0.0, 0.5, 0.25]), r"^propensity: .* got 1 values <= 0"),
        (frame(propensity=[0.5, 1.5, 0.5, 0.25]), r"^propensity: .* got 1 values above 1"),
        (frame(propensity=[0.5, float("nan"), 0.5, 0.25]), r"^propensity: expected finite"),
        (frame(position=[0, -1, 0, 0]), r"^position: expected positions >= position_offset"),
        (frame(context_dense=[[1.0], [1.0, 2.0], [1.0], [1.0]]), r"^context_dense: expected"),
    ],
)
def test_frame_with_bad_propensities_is_rejected_clearly(df, message):
    with pytest.raises(ValueError, match=message):
        bandit_feedback_from_frame(df)
