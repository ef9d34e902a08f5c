"""The bulk bootstrap reproduces OBP's per-resample RandomState loop exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ope.bootstrap import (
    bootstrap_means,
    estimate_confidence_interval_by_bootstrap,
    means_from_counts,
    resample_counts,
)
from tests.ope import obp_reference as obp


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**31 - 1), n_boot=st.integers(1, 40))
def test_bootstrap_means_equal_obp_loop(n, seed, n_boot):
    samples = np.random.default_rng(seed).random(n)
    rs = np.random.RandomState(seed)
    expected = [np.mean(rs.choice(samples, size=n)) for _ in range(n_boot)]
    np.testing.assert_allclose(bootstrap_means(samples, n_boot, seed), expected, rtol=1e-12)


def test_interval_equals_obp_and_caller_random_state_advances_identically():
    samples = np.random.default_rng(0).random(777)
    got = estimate_confidence_interval_by_bootstrap(samples, 0.1, 300, random_state=3)
    want = obp.bootstrap(samples, 0.1, 300, random_state=3)
    assert got == pytest.approx(want, rel=1e-12)
    mine, theirs = np.random.RandomState(9), np.random.RandomState(9)
    got = estimate_confidence_interval_by_bootstrap(
        samples, n_bootstrap_samples=20, random_state=mine
    )
    want = obp.bootstrap(samples, n_bootstrap_samples=20, random_state=theirs)
    assert got == pytest.approx(want, rel=1e-12)
    assert mine.randint(10**9) == theirs.randint(10**9)


def test_stream_stays_aligned_across_word_blocks():
    """More indices than one block of raw words: resamples straddle block boundaries."""
    n, n_boot = 3001, 3000  # 9M indices > the 8.4M words drawn per block
    samples = np.random.default_rng(5).random(n)
    rs = np.random.RandomState(4)
    expected = [np.mean(rs.choice(samples, size=n)) for _ in range(n_boot)]
    np.testing.assert_allclose(bootstrap_means(samples, n_boot, 4), expected, rtol=1e-12)


def test_shared_resamples_for_many_columns_equal_one_column_at_a_time():
    samples = np.random.default_rng(1).random((5000, 4))
    together = bootstrap_means(samples, 50, random_state=11)
    for j in range(4):
        np.testing.assert_allclose(together[:, j], bootstrap_means(samples[:, j], 50, 11))
    counts = resample_counts(5000, 50, random_state=11)
    assert counts.dtype == np.uint8
    assert (counts.sum(axis=1, dtype=np.int64) == 5000).all()
    np.testing.assert_allclose(means_from_counts(counts, samples), together)


def test_bootstrap_rejects_empty_samples():
    with pytest.raises(ValueError, match=r"^samples: "):
        bootstrap_means(np.array([]), 10)
