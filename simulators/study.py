"""The evaluation studies behind ``recsys ope-check``: estimators against known truths.

``coverage_study``: one simulated world, a softmax logging policy, three target policies with
exact true values; each repetition logs fresh rounds, estimates every target with IPS, SNIPS, DM
and DR (DM and DR share a deliberately misspecified, action-only reward model, cross-fitted) and
bootstraps 95% intervals. Every interval is exactly what ``estimate_interval(random_state=seed,
n_bootstrap_samples=B)`` returns: resampling depends only on (n, B, random_state), so the resample
counts are drawn once and applied to every estimator of every repetition by one matrix product.

``obd_check``: the Bernoulli-TS policy's value estimated from the uniform-random OBD logs against
the mean reward (click) of the Bernoulli-TS logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, Ridge

from recsys.obd import load_action_dist
from recsys.ope import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    RegressionModel,
    SelfNormalizedDoublyRobust,
    SelfNormalizedInverseProbabilityWeighting,
    SwitchDoublyRobust,
    bandit_feedback_from_frame,
)
from recsys.ope.bootstrap import means_from_counts, resample_counts, summarize_bootstrap
from recsys.policy import Policy
from simulators.fitting import SlateChoiceModel, reproduction_report
from simulators.ground_truth import policy_value
from simulators.model import SimulatorConfig, SlateSimulator
from simulators.obd import choice_data, load_obd, obd_dir, user_context
from simulators.policies import (
    EpsilonMixturePolicy,
    FixedPolicy,
    GreedyPolicy,
    SoftmaxPolicy,
    UniformPolicy,
)


@dataclass(frozen=True)
class StudySetup:
    """The world, the logging policy and the target policies of the coverage study."""

    sim: SlateSimulator
    logging_policy: FixedPolicy
    targets: dict[str, Policy]
    truths: dict[str, float]


def study_setup(seed: int = 0, n_items: int = 20) -> StudySetup:
    """A single-slot world (a slate of one: the listwise choice is click vs no click)."""
    config = SimulatorConfig(
        n_users=2000, n_items=n_items, dim=8, slate_size=1, no_click_utility=3.0, seed=seed
    )
    sim = SlateSimulator(config)
    features = sim.item_features
    logging_policy = SoftmaxPolicy(features, temperature=1.0)
    targets: dict[str, Policy] = {
        "epsilon_greedy_0.1": EpsilonMixturePolicy(GreedyPolicy(features), 0.1),
        "softmax_T0.5": SoftmaxPolicy(features, temperature=0.5),
        "uniform": UniformPolicy(n_items),
    }
    truths = {name: policy_value(sim, policy).value for name, policy in targets.items()}
    return StudySetup(sim, logging_policy, targets, truths)


def coverage_study(
    n_rounds: int = 100_000,
    n_repetitions: int = 50,
    seed: int = 0,
    n_bootstrap_samples: int = 200,
    alpha: float = 0.05,
    setup: StudySetup | None = None,
) -> pl.DataFrame:
    """One row per (repetition, target, estimator): estimate, interval, truth, covered."""
    setup = setup or study_setup(seed)
    sim = setup.sim
    n_items = sim.config.n_items
    users = np.arange(sim.config.n_users)
    user_ctx = sim.user_features(users)
    # Policies depend on the user only, so action_dist is computed per user and gathered.
    target_dist = {name: p.action_dist(user_ctx) for name, p in setup.targets.items()}
    estimators = {
        "ipw": InverseProbabilityWeighting(),
        "snipw": SelfNormalizedInverseProbabilityWeighting(),
        "dm": DirectMethod(),
        "dr": DoublyRobust(),
    }
    lower_key = f"{100 * (1 - alpha)}% CI (lower)"
    upper_key = f"{100 * (1 - alpha)}% CI (upper)"
    rows = []
    counts = resample_counts(n_rounds, n_bootstrap_samples, random_state=seed)
    for rep in range(n_repetitions):  # one vectorised experiment per repetition
        # one generator per repetition draws the requests, the logged slates and the clicks
        rng = np.random.default_rng([seed, rep])
        logging_policy = clone(setup.logging_policy).set_params(random_state=rng)
        requests = sim.sample_requests(n_rounds, rng)
        slate = logging_policy.recommend(requests.context)
        responses = sim.respond(requests, slate.items, rng)
        action = slate.items[:, 0]
        pscore = slate.propensities[:, 0]
        reward = responses.clicks[:, 0].astype(float)
        # Misspecified on purpose: the reward model ignores the context (one-hot action only).
        q_hat = RegressionModel(Ridge(alpha=1.0), n_items).fit_predict(
            np.empty((n_rounds, 0)), action, reward, n_folds=2, random_state=rep
        )
        columns, labels = [], []
        for name in setup.targets:
            dist = target_dist[name][requests.user_id]
            kwargs = {
                "reward": reward,
                "action": action,
                "pscore": pscore,
                "action_dist": dist,
                "estimated_rewards_by_reg_model": q_hat,
            }
            for est_name, est in estimators.items():
                columns.append(est.estimate_round_rewards(**kwargs))
                labels.append((name, est_name))
        samples = np.stack(columns, axis=1)
        means = means_from_counts(counts, samples)
        for j, (name, est_name) in enumerate(labels):
            interval = summarize_bootstrap(means[:, j], alpha)
            truth = setup.truths[name]
            rows.append(
                {
                    "repetition": rep,
                    "policy": name,
                    "estimator": est_name,
                    "estimate": float(samples[:, j].mean()),
                    "lower": interval[lower_key],
                    "upper": interval[upper_key],
                    "truth": truth,
                    "covered": interval[lower_key] <= truth <= interval[upper_key],
                }
            )
    return pl.DataFrame(rows)


def summarize_study(results: pl.DataFrame) -> pl.DataFrame:
    """Per (policy, estimator): truth, mean estimate, bias in standard errors, coverage."""
    n = pl.len()
    return (
        results.group_by("policy", "estimator", maintain_order=True)
        .agg(
            pl.col("truth").first(),
            pl.col("estimate").mean().alias("mean_estimate"),
            pl.col("estimate").std().alias("sd_estimate"),
            pl.col("covered").mean().alias("coverage"),
            ((pl.col("upper") - pl.col("lower")).mean()).alias("mean_width"),
            n.alias("repetitions"),
        )
        .with_columns(
            (pl.col("mean_estimate") - pl.col("truth")).alias("bias"),
            (
                (pl.col("mean_estimate") - pl.col("truth"))
                / (pl.col("sd_estimate") / pl.col("repetitions").sqrt())
            ).alias("bias_z"),
        )
    )


OBD_ESTIMATORS = {
    "ipw": InverseProbabilityWeighting(),
    "snipw": SelfNormalizedInverseProbabilityWeighting(),
    "dm": DirectMethod(),
    "dr": DoublyRobust(),
    "sndr": SelfNormalizedDoublyRobust(),
    "switch-dr": SwitchDoublyRobust(lambda_=10.0),
}


def obd_check(
    shared_data: Path | str,
    n_bootstrap_samples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pl.DataFrame:
    """Estimate Bernoulli-TS's value from the random logs; compare with the bts logs' mean click.

    The truth is itself a sample mean (a few dozen clicks), so its standard error is reported
    next to each estimator's relative error.
    """
    random_logs = load_obd(shared_data, "random")
    bts_logs = load_obd(shared_data, "bts")
    dist_matrix = load_action_dist(obd_dir(shared_data) / "bts_action_dist.csv", n_items=80)
    n_items, len_list = dist_matrix.shape
    feedback = bandit_feedback_from_frame(random_logs, n_actions=n_items, len_list=len_list)
    action_dist = np.broadcast_to(dist_matrix, (feedback.n_rounds, n_items, len_list))
    context = user_context(random_logs)
    q_hat = RegressionModel(
        LogisticRegression(C=0.1, max_iter=1000), n_items, len_list
    ).fit_predict(
        context,
        feedback.action,
        feedback.reward,
        position=feedback.position,
        n_folds=2,
        random_state=seed,
    )
    clicks = bts_logs["reward"].to_numpy()
    truth = float(clicks.mean())
    truth_se = float(clicks.std(ddof=1) / np.sqrt(clicks.size))
    kwargs = feedback.estimator_kwargs(action_dist, q_hat)
    diagnostics = feedback.diagnostics(action_dist)
    rows = []
    for name, est in OBD_ESTIMATORS.items():
        interval = est.estimate_interval(
            alpha=alpha, n_bootstrap_samples=n_bootstrap_samples, random_state=seed, **kwargs
        )
        estimate = est.estimate_policy_value(**kwargs)
        lower, upper = (interval[k] for k in list(interval)[1:])
        rows.append(
            {
                "estimator": name,
                "estimate": estimate,
                "lower": lower,
                "upper": upper,
                "truth": truth,
                "truth_se": truth_se,
                "relative_error": abs(estimate - truth) / truth,
                "ess": diagnostics.effective_sample_size,
            }
        )
    return pl.DataFrame(rows)


def obd_mirroring(shared_data: Path | str, seed: int = 0, train_share: float = 0.7) -> dict:
    """Fit the slate choice model to 70% of the random OBD logs; held-out click rates per
    position and per item, observed vs fitted (see ``simulators.fitting.reproduction_report``)."""
    data = choice_data(load_obd(shared_data, "random"))
    n = len(data["clicked"])
    order = np.random.default_rng(seed).permutation(n)
    cut = int(train_share * n)
    keys = ("user_index", "slates", "positions", "clicked")
    # About 40 clicks: strong shrinkage keeps user and item effects from fitting noise.
    model = SlateChoiceModel(data["n_users"], 80, 3, dim=2, l2=100.0, random_state=seed)
    model.fit(*(data[k][order[:cut]] for k in keys))
    return reproduction_report(model, *(data[k][order[cut:]] for k in keys))
