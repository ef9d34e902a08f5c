"""Inverse-propensity weights and their diagnostics: clipping, self-normalisation, effective
sample size, a summary for mlflow metrics and a histogram plot for mlflow artifacts.

A few huge weights (tiny propensities) make IPS estimates and IPS-trained models noisy; the
effective sample size (Σw)² / Σw² says how many equally weighted rows the weights are worth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from recsys.validation import message

__all__ = [
    "clip_propensities",
    "effective_sample_size",
    "inverse_propensity_weights",
    "plot_weight_diagnostics",
    "weight_summary",
]


def _check_minimum(minimum: float) -> float:
    """``minimum`` as a float after checking it lies in (0, 1]."""
    value = float(minimum)
    if not (0 < value <= 1):
        raise ValueError(f"the propensity clip minimum must lie in (0, 1], got {minimum!r}")
    return value


def _as_propensities(p: ArrayLike, allow_zero: bool) -> np.ndarray:
    """A 1-d float array of propensities in (0, 1] (or [0, 1] when ``allow_zero``)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    low_ok = p >= 0 if allow_zero else p > 0
    bad = ~(np.isfinite(p) & low_ok & (p <= 1))
    if bad.any():
        interval = "[0, 1]" if allow_zero else "(0, 1] (clip them first)"
        raise ValueError(
            f"propensities must lie in {interval}; {int(bad.sum())} of {p.size} do not "
            f"(e.g. {p[bad][0]!r})"
        )
    return p


def _as_weights(weights: ArrayLike) -> np.ndarray:
    """A non-empty 1-d float array of finite, non-negative weights, not all zero."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size == 0:
        raise ValueError("weights are empty")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError(message("weights", "finite values >= 0",
                                 "a negative or non-finite weight"))
    if not w.any():
        raise ValueError("weights are all zero")
    return w


def clip_propensities(p: ArrayLike, minimum: float) -> np.ndarray:
    """Raise every propensity below ``minimum`` to it, capping the weights at 1 / minimum."""
    return np.maximum(_as_propensities(p, allow_zero=True), _check_minimum(minimum))


def inverse_propensity_weights(
    p: ArrayLike, clip: float | None = None, self_normalise: bool = False
) -> np.ndarray:
    """1 / p per observed row, optionally clipped and self-normalised (scaled to average 1)."""
    if clip is None:
        weights = 1.0 / _as_propensities(p, allow_zero=False)
    else:
        weights = 1.0 / clip_propensities(p, clip)
    if weights.size and self_normalise:
        weights = weights * (weights.size / weights.sum())
    return weights


def effective_sample_size(weights: ArrayLike) -> float:
    """(Σw)² / Σw²: n for equal weights, 1 when a single row carries all the weight."""
    w = _as_weights(weights)
    w = w / w.max()  # scale-free, and keeps the squares away from overflow
    return float(w.sum() ** 2 / np.square(w).sum())


def weight_summary(
    weights: ArrayLike, propensities: ArrayLike | None = None, clip: float | None = None
) -> dict[str, float]:
    """Min, max, mean, ESS, ESS / n and the share of rows whose propensity was clipped.

    The clipped share needs the raw ``propensities`` and the ``clip`` minimum that produced the
    weights; without a ``clip`` nothing was clipped and the share is 0.
    """
    w = _as_weights(weights)
    if clip is None:
        share_clipped = 0.0
    else:
        if propensities is None:
            raise ValueError("weight_summary needs the raw propensities to count clipped rows")
        p = _as_propensities(propensities, allow_zero=True)
        if p.size != w.size:
            raise ValueError(f"{p.size} propensities for {w.size} weights")
        share_clipped = float(np.mean(p < _check_minimum(clip)))
    ess = effective_sample_size(w)
    return {
        "n": float(w.size),
        "min": float(w.min()),
        "max": float(w.max()),
        "mean": float(w.mean()),
        "ess": ess,
        "ess_ratio": ess / w.size,
        "share_clipped": share_clipped,
    }


def plot_weight_diagnostics(
    weights: ArrayLike, path: str | Path, title: str = "inverse-propensity weights"
) -> Path:
    """Save a PNG histogram of the weights (log-spaced bins, log counts) with ESS and max weight."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the diagnostics plot is a PNG: give a path ending in .png, not {path}")
    summary = weight_summary(weights)
    w = np.asarray(weights, dtype=np.float64).ravel()
    positive = w[w > 0]
    low, high = positive.min(), positive.max()
    if high <= low * (1 + 1e-9):  # all equal: a narrow band around the single value
        low, high = low / 1.1, high * 1.1
    bins = np.geomspace(low, high, 51)

    figure = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(positive, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.3)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("weight")
    axes.set_ylabel("rows")
    axes.set_title(title)
    text = (
        f"n = {int(summary['n']):,}\n"
        f"ESS = {summary['ess']:,.1f} ({summary['ess_ratio']:.1%})\n"
        f"max = {summary['max']:.4g}, mean = {summary['mean']:.4g}"
    )
    if positive.size < w.size:
        text += f"\nzero weights (not drawn) = {w.size - positive.size:,}"
    axes.text(
        0.98,
        0.97,
        text,
        transform=axes.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
