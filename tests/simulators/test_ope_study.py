"""The issue's simulator checks: interval coverage, IPS unbiasedness, DM bias vs DR.

100k rounds logged by a softmax policy, three target policies with exact true values, 50 seeded
repetitions. Intervals are the estimators' own bootstrap intervals (200 resamples, the same
stream ``estimate_interval(random_state=0, n_bootstrap_samples=200)`` uses).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from simulators.study import coverage_study, summarize_study

N_ROUNDS = 100_000
N_REPETITIONS = 50


@pytest.fixture(scope="module")
def study() -> pl.DataFrame:
    return coverage_study(
        n_rounds=N_ROUNDS, n_repetitions=N_REPETITIONS, seed=0, n_bootstrap_samples=200
    )


@pytest.fixture(scope="module")
def summary(study: pl.DataFrame) -> pl.DataFrame:
    return summarize_study(study)


def _row(summary: pl.DataFrame, policy: str, estimator: str) -> dict:
    return summary.filter((pl.col("policy") == policy) & (pl.col("estimator") == estimator)).row(
        0, named=True
    )


def test_study_shape(study: pl.DataFrame):
    assert study.height == N_REPETITIONS * 3 * 4
    assert study["policy"].n_unique() == 3
    # Three genuinely different targets.
    assert study.group_by("policy").agg(pl.col("truth").first())["truth"].n_unique() == 3


@pytest.mark.parametrize("estimator", ["dr", "snipw"])
def test_95_percent_intervals_cover_the_truth_in_at_least_90_percent(summary, estimator):
    rows = summary.filter(pl.col("estimator") == estimator)
    assert rows.height == 3
    for row in rows.iter_rows(named=True):
        assert row["coverage"] >= 0.90, row


def test_ipw_is_unbiased_within_its_standard_error(summary):
    for policy in summary["policy"].unique().to_list():
        row = _row(summary, policy, "ipw")
        standard_error = row["sd_estimate"] / np.sqrt(row["repetitions"])
        assert abs(row["mean_estimate"] - row["truth"]) < 3 * standard_error, row


def test_dm_with_a_misspecified_model_is_biased_and_dr_is_not(summary):
    """The reward model ignores the context; targets that depend on it expose the bias."""
    for policy in summary["policy"].unique().to_list():
        dm, dr = _row(summary, policy, "dm"), _row(summary, policy, "dr")
        dm_se = dm["sd_estimate"] / np.sqrt(dm["repetitions"])
        dr_se = dr["sd_estimate"] / np.sqrt(dr["repetitions"])
        assert abs(dm["bias"]) > 10 * dm_se, dm
        assert abs(dm["bias"]) > 5 * abs(dr["bias"]), (dm, dr)
        assert abs(dr["bias"]) < 3 * dr_se, dr
