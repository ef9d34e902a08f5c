"""Inverse-propensity weights: clipping, self-normalisation, ESS, summary and diagnostics plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline.weights import (
    clip_propensities,
    effective_sample_size,
    inverse_propensity_weights,
    plot_weight_diagnostics,
    weight_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_effective_sample_size() -> None:
    assert effective_sample_size(np.full(37, 2.5)) == pytest.approx(37, rel=1e-12)
    assert effective_sample_size([0.0, 0.0, 7.0, 0.0]) == pytest.approx(1.0, rel=1e-12)
    assert effective_sample_size([1.0, 2.0, 3.0]) == pytest.approx(36 / 14, rel=1e-12)
    assert effective_sample_size([1e200, 1e200]) == pytest.approx(2.0, rel=1e-12)  # no overflow
    for bad in ([], [0.0, 0.0], [1.0, -1.0], [1.0, np.inf]):
        with pytest.raises(ValueError, match="weights"):
            effective_sample_size(bad)


def test_clip_propensities() -> None:
    np.testing.assert_array_equal(clip_propensities([0.01, 0.5, 1.0, 0.0], 0.1), [0.1, 0.5, 1, 0.1])
    np.testing.assert_array_equal(clip_propensities([0.3], 1.0), [1.0])
    for minimum in (0.0, -0.1, 1.5, np.nan):
        with pytest.raises(ValueError, match=r"clip minimum must lie in \(0, 1\]"):
            clip_propensities([0.5], minimum)
    with pytest.raises(ValueError, match=r"propensities must lie in \[0, 1\]"):
        clip_propensities([1.2], 0.1)


def test_inverse_propensity_weights() -> None:
    np.testing.assert_allclose(inverse_propensity_weights([0.5, 0.25]), [2.0, 4.0])
    np.testing.assert_allclose(inverse_propensity_weights([0.5, 0.25], clip=0.5), [2.0, 2.0])
    snips = inverse_propensity_weights([0.5, 0.25, 0.1], self_normalise=True)
    np.testing.assert_allclose(snips, np.array([2.0, 4.0, 10.0]) * 3 / 16)
    assert snips.mean() == pytest.approx(1.0, rel=1e-12)
    both = inverse_propensity_weights([0.5, 0.25, 0.01], clip=0.25, self_normalise=True)
    np.testing.assert_allclose(both, np.array([2.0, 4.0, 4.0]) * 3 / 10)
    with pytest.raises(ValueError, match="clip them first"):
        inverse_propensity_weights([0.5, 0.0])
    # a zero propensity is acceptable once clipped
    np.testing.assert_allclose(inverse_propensity_weights([0.0], clip=0.2), [5.0])


def test_weight_summary() -> None:
    p = np.array([0.01, 0.5, 0.05, 1.0])
    weights = inverse_propensity_weights(p, clip=0.1)  # 10, 2, 10, 1
    summary = weight_summary(weights, propensities=p, clip=0.1)
    expected_ess = 23**2 / (100 + 4 + 100 + 1)
    assert summary == pytest.approx(
        {
            "n": 4.0,
            "min": 1.0,
            "max": 10.0,
            "mean": 23 / 4,
            "ess": expected_ess,
            "ess_ratio": expected_ess / 4,
            "share_clipped": 0.5,
        },
        rel=1e-12,
    )
    assert weight_summary(weights)["share_clipped"] == 0.0
    with pytest.raises(ValueError, match="needs the raw propensities"):
        weight_summary(weights, clip=0.1)
    with pytest.raises(ValueError, match="3 propensities for 4 weights"):
        weight_summary(weights, propensities=p[:3], clip=0.1)


def test_plot_weight_diagnostics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = 1.0 / rng.uniform(0.005, 1.0, size=2_000)
    path = plot_weight_diagnostics(weights, tmp_path / "plots" / "weights.png", "Coat IPS weights")
    assert path == tmp_path / "plots" / "weights.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    # degenerate inputs still plot: equal weights, and zeros (which a log axis cannot show)
    for name, values in (("equal", np.ones(10)), ("zeros", np.array([0.0, 0.0, 3.0, 1.0]))):
        out = plot_weight_diagnostics(values, tmp_path / f"{name}.png", name)
        assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match=r"ending in \.png"):
        plot_weight_diagnostics(weights, tmp_path / "weights.jpg", "x")
    with pytest.raises(ValueError, match="weights are all zero"):
        plot_weight_diagnostics(np.zeros(3), tmp_path / "none.png", "x")
