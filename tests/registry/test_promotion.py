"""Promotion moves the champion alias exactly when the rule holds, and rollback moves it back."""

from __future__ import annotations

import math

import pytest

from recsys.comparison.result import CandidateResult, Comparison, Estimate
from recsys.registry.promotion import PromotionRule, decide


def _result(name: str, value: float, lower: float, upper: float, *,
            estimator: str = "snips") -> CandidateResult:
    return CandidateResult(name, "online", None, None, None,
                           {estimator: Estimate(estimator, value, lower, upper)}, {})


def _comparison(*results: CandidateResult) -> Comparison:
    return Comparison(list(results), n_requests=100, n_rows=100, len_list=1, n_actions=5,
                      alpha=0.05, n_bootstrap=200, logs={})


@pytest.mark.parametrize(("kind", "challenger", "promote"), [
    ("lower_bound", (0.60, 0.52, 0.68), True),    # lower bound above the champion's estimate
    ("lower_bound", (0.60, 0.49, 0.70), False),   # better estimate, interval too wide
    ("estimate", (0.60, 0.49, 0.70), True),       # the point rule takes it
    ("estimate", (0.45, 0.40, 0.50), False),
])
def test_the_rule_reads_the_bound_or_the_estimate(kind, challenger, promote) -> None:
    comparison = _comparison(_result("champ", 0.50, 0.45, 0.55), _result("new", *challenger))
    decision = decide(comparison, "champ", "new", PromotionRule(kind=kind))
    assert decision.promote is promote
    assert decision.champion_value == 0.50 and decision.threshold == 0.50
    assert ("does not exceed" in decision.reason) is not promote


def test_the_margin_raises_the_bar_and_nan_never_promotes() -> None:
    comparison = _comparison(_result("champ", 0.50, 0.45, 0.55), _result("new", 0.6, 0.52, 0.7),
                             _result("broken", math.nan, math.nan, math.nan))
    assert decide(comparison, "champ", "new", PromotionRule(margin=0.0)).promote
    assert not decide(comparison, "champ", "new", PromotionRule(margin=0.05)).promote
    assert not decide(comparison, "champ", "broken", PromotionRule(kind="estimate")).promote


def test_bad_rules_and_names_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"rule: expected one of lower_bound, estimate, got "
                                         r"'lower_bond'; did you mean lower_bound\?"):
        PromotionRule(kind="lower_bond")
    comparison = _comparison(_result("champ", 0.5, 0.4, 0.6), _result("new", 0.6, 0.5, 0.7))
    with pytest.raises(ValueError, match="did you mean champ"):
        decide(comparison, "chmp", "new")
    with pytest.raises(ValueError, match=r"new: expected a dr estimate.*got only snips"):
        decide(comparison, "champ", "new", PromotionRule(estimator="dr"))


# --- on a real mlflow store, with registered policies and simulator logs ------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real sqlite store holding ``pol``: v1 uniform, v2 clearly better than the uniform
    logging policy, v3 clearly worse; and the logs (3,000 uniformly logged one-item slates)."""
    import mlflow
    import numpy as np

    from recsys.comparison import LoggedSlates
    from recsys.policies.baselines import uniform_policy
    from recsys.policies.linear import LinearScorePolicy
    from recsys.registry import baseline_model, log_policy_model, scored_model
    from simulators.logged_data import collect_logs
    from simulators.model import SimulatorConfig, SlateSimulator
    from simulators.policies import UniformPolicy

    root = tmp_path_factory.mktemp("promotion")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "promotion", artifact_location=str(root / "artifacts")))
    config = SimulatorConfig(n_users=200, n_items=20, dim=4, slate_size=1, affinity=2.0,
                             no_click_utility=1.0, feature_noise=0.1, seed=0)
    sim = SlateSimulator(config)
    rng = np.random.default_rng(0)
    logs = LoggedSlates.from_frame(
        collect_logs(sim, UniformPolicy(config.n_items, random_state=rng), 3000, rng))
    items = np.arange(config.n_items)
    weights = sim.item_features * config.affinity / np.sqrt(config.dim)
    good, bad = (LinearScorePolicy(exploration="epsilon_greedy", epsilon=0.1, random_state=0)
                 .fit(items, sign * weights, sign * sim.item_bias) for sign in (1, -1))
    for model in (baseline_model("uniform", uniform_policy(items)), scored_model(good),
                  scored_model(bad)):
        with mlflow.start_run():
            log_policy_model(model, registered_model_name="pol")
    yield logs
    mlflow.set_tracking_uri(previous)


def test_promotion_moves_the_alias_exactly_when_the_rule_holds_and_rollback_undoes_it(
        registry) -> None:
    from mlflow import MlflowClient

    from recsys.comparison.report import RUN_TAG
    from recsys.registry.promotion import (
        PREVIOUS_CHAMPION_TAG,
        PROMOTED_FROM_TAG,
        REASON_TAG,
        PromotionError,
        champion_version,
        promote,
        rollback,
    )

    client = MlflowClient()
    logs = registry
    # No champion: a first champion must beat the logging policy; uniform (the logging policy
    # itself) does not, the better model does.
    kept = promote("pol", 1, logs=logs, n_bootstrap=200)
    assert not kept.promote and not kept.applied and champion_version("pol") is None
    assert kept.champion == "logging"
    first = promote("pol", 2, logs=logs, n_bootstrap=200)
    assert first.promote and first.applied and champion_version("pol") == "2"
    assert first.challenger_lower > first.champion_value
    assert client.get_registered_model("pol").tags[PREVIOUS_CHAMPION_TAG] == "none"
    tags = client.get_model_version("pol", "2").tags
    assert tags[PROMOTED_FROM_TAG] == "logging" and tags[REASON_TAG] == first.reason
    assert tags[RUN_TAG] == first.comparison_run_id
    # The worse challenger is refused, and the run that refused it gives the same verdict.
    worse = promote("pol", "3", logs=logs, n_bootstrap=200)
    assert not worse.promote and not worse.applied and champion_version("pol") == "2"
    assert worse.challenger_lower < worse.champion_value
    again = promote("pol", "3", comparison_run_id=worse.comparison_run_id)
    assert again.comparison_run_id == worse.comparison_run_id
    assert (again.promote, again.challenger_lower, again.champion_value) == (
        False, worse.challenger_lower, worse.champion_value)
    with pytest.raises(PromotionError, match="version 2 is the first champion"):
        rollback("pol")
    # A negative margin on the point rule takes even a worse version; a dry run moves nothing.
    lax = PromotionRule(kind="estimate", margin=-1.0)
    dry = promote("pol", 1, comparison_run_id=None, logs=logs, rule=lax, n_bootstrap=200,
                  dry_run=True, log=False)
    assert dry.promote and not dry.applied and champion_version("pol") == "2"
    assert promote("pol", 1, logs=logs, rule=lax, n_bootstrap=200, log=False).applied
    assert champion_version("pol") == "1"
    assert client.get_registered_model("pol").tags[PREVIOUS_CHAMPION_TAG] == "2"
    back = rollback("pol")
    assert (back.from_version, back.to_version) == ("1", "2") and champion_version("pol") == "2"
    with pytest.raises(PromotionError, match="previous champion to roll back to"):
        rollback("pol")


def test_unknown_models_versions_and_runs_are_clear_errors(registry) -> None:
    from recsys.registry.promotion import PromotionError, promote

    with pytest.raises(PromotionError, match=r"model: expected a registered model, got "
                                             r"'poll'; did you mean pol\?"):
        promote("poll", 1, logs=registry)
    with pytest.raises(PromotionError, match=r"pol version: expected one of 1, 2, 3, got '7'"):
        promote("pol", 7, logs=registry)
    with pytest.raises(PromotionError, match="expected logs to compare on or a comparison run"):
        promote("pol", 3)
