"""The shared input-checking convention, and both packages following it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.bandits import validation as bandits_validation
from recsys.ope import validation as ope_validation
from recsys.validation import (
    as_array,
    check_finite,
    check_index,
    check_probabilities,
    check_scalar,
    first_non_finite,
    message,
)


def test_message_names_the_argument_first_then_expected_received_and_fix():
    assert message("lam", "a real number > 0", 0) == "lam: expected a real number > 0, got 0"
    assert (
        message("k", "an int", "'3'", "pass an int") == "k: expected an int, got '3'; pass an int"
    )


def test_first_non_finite_finds_the_first_bad_cell_and_nothing_in_valid_arrays():
    x = np.zeros((3, 4))
    assert first_non_finite(x) is None
    x[2, 1] = np.inf
    x[1, 3] = np.nan
    assert first_non_finite(x) == (1, 3)
    assert first_non_finite(np.arange(5)) is None  # integers are always finite


def test_a_sum_that_overflows_is_not_mistaken_for_a_non_finite_value():
    huge = np.array([1e308, 1e308, -5.0])
    with np.errstate(over="ignore"):
        assert not math.isfinite(huge.sum())
    assert first_non_finite(huge) is None
    check_finite(huge, "x")


def test_check_finite_reports_the_position_and_the_fix():
    with pytest.raises(
        ValueError, match=r"^reward: expected finite values, got nan at index 2; drop"
    ):
        check_finite(np.array([0.0, 1.0, np.nan]), "reward", fix="drop the rows")


def test_as_array_names_the_argument():
    with pytest.raises(
        ValueError, match=r"^pscore: expected a 1-d array, got None; it is required"
    ):
        as_array(None, "pscore", 1)
    with pytest.raises(ValueError, match=r"^context: expected a 2-d array, got shape \(3,\)"):
        as_array(np.ones(3), "context", 2)
    with pytest.raises(ValueError, match=r"^action: expected a numeric array, got dtype object"):
        as_array(np.array([1, "a"], dtype=object), "action", 1)


def test_check_index_says_where_the_bound_comes_from():
    check_index(np.array([0, 2]), "action", 3, "n_actions")
    with pytest.raises(
        ValueError,
        match=r"^action: expected integers in \[0, n_actions\) = \[0, 3\), got values in \[0, 3\]",
    ):
        check_index(np.array([0, 3]), "action", 3, "n_actions")
    with pytest.raises(ValueError, match=r"^position: expected integers .* got dtype float64"):
        check_index(np.array([0.0]), "position", 3, "len_list")


def test_check_probabilities_counts_the_bad_values_and_suggests_the_cause():
    check_probabilities(np.array([0.1, 1.0]), "pscore")
    with pytest.raises(
        ValueError, match=r"^pscore: expected probabilities in \(0, 1\], got 2 values <= 0"
    ):
        check_probabilities(np.array([0.0, -1.0, 0.5]), "pscore")
    with pytest.raises(ValueError, match=r"got 1 values above 1 \(max 2\.5\); were scores logged"):
        check_probabilities(np.array([2.5, 0.5]), "pscore")
    with pytest.raises(ValueError, match=r"^pscore: expected finite values"):
        check_probabilities(np.array([np.nan, 0.5]), "pscore")


@pytest.mark.parametrize(
    ("kwargs", "value", "expected"),
    [
        ({"low": 0.0, "low_open": True, "high_open": True}, 0.0, r"a finite real number > 0"),
        ({"low": 0.0, "low_open": True, "high_open": True}, math.inf, r"a finite real number > 0"),
        ({"low": 0.0, "high": 1.0}, 1.5, r"a real number in \[0, 1\]"),
        ({"low": 0.0, "high": 1.0, "high_open": True}, 1.0, r"a real number in \[0, 1\)"),
        ({"low": 0.0}, math.nan, r"a real number >= 0"),
        ({"high": 3.0}, 4.0, r"a real number <= 3"),
    ],
)
def test_check_scalar_rejects_values_outside_the_interval(kwargs, value, expected):
    with pytest.raises(ValueError, match=rf"^alpha: expected {expected}, got "):
        check_scalar(value, "alpha", **kwargs)


def test_check_scalar_accepts_numpy_scalars_and_rejects_other_kinds():
    assert check_scalar(np.float32(0.5), "eps", 0.0, 1.0) == 0.5
    assert check_scalar(np.array(2), "k", 0.0) == 2.0
    assert check_scalar(math.inf, "lambda_", 0.0) == math.inf  # a closed infinite bound allows it
    with pytest.raises(
        TypeError, match=r"^eps: expected a real number in .* got True of type bool"
    ):
        check_scalar(True, "eps", 0.0, 1.0)
    with pytest.raises(TypeError, match=r"^eps: expected .* got '0.1' of type str"):
        check_scalar("0.1", "eps", 0.0, 1.0)


@pytest.mark.parametrize(
    ("check", "prefix"),
    [
        (lambda: bandits_validation.check_contexts(np.ones((2, 3)), 4), "contexts: expected 4"),
        (lambda: bandits_validation.check_context_one(np.ones(5), 4), "context: expected shape"),
        (lambda: bandits_validation.check_items([1, 2], 3), "items: expected one item id"),
        (lambda: bandits_validation.check_rewards([0.0, 2.0], 2, (0, 1)), "rewards: expected"),
        (lambda: bandits_validation.check_reward_one("x", (0, 1)), "reward: expected a number"),
        (lambda: bandits_validation.check_positive(0, "lam"), "lam: expected a finite real"),
        (lambda: bandits_validation.check_probability(1.5, "epsilon"), "epsilon: expected"),
        (lambda: ope_validation.check_pscore([0.5, 2.0], 2), "pscore: expected probabilities"),
        (lambda: ope_validation.check_scalar(-1.0, "lambda_", 0.0), "lambda_: expected"),
        (
            lambda: ope_validation.check_ope_inputs(np.ones((2, 1, 2)) / 1, None),
            "position: expected",
        ),
        (
            lambda: ope_validation.check_ope_inputs(
                np.ones((2, 2, 1)) / 2, action=[0, 5], reward=[0.0, 1.0]
            ),
            "action: expected integers",
        ),
    ],
)
def test_bandits_and_ope_follow_the_one_convention(check, prefix):
    with pytest.raises(ValueError, match=f"^{prefix}"):
        check()


def test_bandits_keep_locating_bad_features():
    x = np.ones((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(
        ValueError,
        match=r"^contexts: expected finite features, got NaN or infinity "
        r"\(first at row 1, feature 2\)",
    ):
        bandits_validation.check_contexts(x, 4)
